//! The work the instruction-count guard measures (`scripts/instructions`):
//! one unbatched filter call, one filter call of 64 messages, one unbatched
//! transform call, messages through the routed pipeline (WASM header filter →
//! redact transform → memory destination), the same through the plugins'
//! native twins (the pipeline's cost without WebAssembly, so that the gap
//! between the two shows what WebAssembly adds), and messages on the HTTP path
//! (ingress → `http` destination, see [`http_case`](super::http_case)), and
//! messages through the stamp pipeline in bulk and one at a time (each
//! message its own call of each stage, as at a light load), each repeated
//! `iterations` times between two marker functions.
//!
//! Run under callgrind with `--zero-before='*instructions_begin*'` and
//! `--dump-before='*instructions_end*'`, the counters are zeroed as a case
//! starts and written out as it ends, over every thread of the process: the
//! engine's start-up, plugin compiles, host builds and warm-up calls never
//! count. Dumps come in [`CASES`] order. Run natively, the same work is done
//! and checked, so a broken case fails before it is counted.
//!
//! The system-call guard (`scripts/syscalls`) traces the same cases with
//! strace: a marker system call before and after each case, outside
//! callgrind's window, tells where each case's calls begin and end.

use super::http_case::HttpPath;
use super::routed::{PluginDir, RoutedHost, Sending, Stages};
use super::stage::{
    check_redacted, filter_call, filter_config, instantiate, order_message, transform_call, transform_config,
};
use super::*;

/// The measured cases, in the order they run (and callgrind dumps them); the
/// last two run only when the stamp plugin is given.
pub const CASES: [&str; 8] = [
    "filter_call",
    "filter_batch_64",
    "transform_call",
    "routed_message",
    "routed_native",
    "http_message",
    "routed_stamp",
    "routed_one_at_a_time",
];

/// Iterations of each case that run before its counters are zeroed: the
/// first calls grow instance memory and fill caches that a steady host has.
const WARM_UP: usize = 200;

/// Run every case in [`CASES`] order, `iterations` times each (one call, or
/// one message routed), between [`instructions_begin`] and [`instructions_end`];
/// the cases that ran, in that order.
pub fn count_instructions(
    plugins: &BenchPlugins,
    iterations: usize,
) -> Result<&'static [&'static str], BenchError> {
    if iterations == 0 {
        return Err(BenchError::Check("the instruction count needs at least one iteration".into()));
    }
    let engine = PluginEngine::new(None)?;
    let message = order_message(vec![b'x'; 64]);
    let mut filter = instantiate(&engine, &plugins.filter, &filter_config())?;
    let (batch, mut buffer) = (vec![message], Vec::new());
    measured(CASES[0], iterations, || filter_call(&mut filter, &batch, &mut buffer))?;
    let batch = vec![batch[0].clone(); BATCH];
    measured(CASES[1], iterations, || filter_call(&mut filter, &batch, &mut buffer))?;

    let mut transform = instantiate(&engine, &plugins.transform, &transform_config())?;
    let (batch, mut checked) = (vec![order_message(ORDER)], false);
    measured(CASES[2], iterations, || {
        transform_call(&mut transform, &batch, &mut buffer, &mut checked, check_redacted)
    })?;

    let dir = PluginDir::new(plugins)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(routed_case(&dir.0, (Stages::Wasm, Sending::AllAtOnce), CASES[3], iterations))?;
    let native = (Stages::Native, Sending::AllAtOnce);
    runtime.block_on(routed_case(&dir.without_plugins(), native, CASES[4], iterations))?;
    runtime.block_on(http_case(&dir, CASES[5], iterations))?;
    if plugins.stamp.is_none() {
        return Ok(&CASES[..6]);
    }
    runtime.block_on(routed_case(&dir.0, (Stages::Stamp, Sending::AllAtOnce), CASES[6], iterations))?;
    runtime.block_on(routed_case(&dir.0, (Stages::Stamp, Sending::OneAtATime), CASES[7], iterations))?;
    Ok(&CASES)
}

/// Route `iterations` messages (with the payload of `stages`) through a host
/// running `stages` with the plugins of `plugin_dir`, sent as `sending` says,
/// counted as `case`.
async fn routed_case(
    plugin_dir: &std::path::Path,
    (stages, sending): (Stages, Sending),
    case: &'static str,
    iterations: usize,
) -> Result<(), BenchError> {
    let mut host = RoutedHost::start(plugin_dir, stages, true).await?;
    let payload = host.payload();
    let messages = |count: usize| (0..count).map(|_| order_message(payload.clone())).collect::<Vec<_>>();
    host.deliver_sending(sending, messages(WARM_UP)).await?;
    let messages = messages(iterations);
    system_call_marker("begin", case);
    instructions_begin(case);
    let delivered = host.deliver_sending(sending, messages).await;
    instructions_end(case);
    system_call_marker("end", case);
    delivered?;
    host.finish().await
}

/// POST `iterations` messages, one at a time, on the HTTP path, counted as `case`.
async fn http_case(dir: &PluginDir, case: &'static str, iterations: usize) -> Result<(), BenchError> {
    let mut path = HttpPath::start(&dir.0).await?;
    path.deliver(WARM_UP).await?;
    system_call_marker("begin", case);
    instructions_begin(case);
    let delivered = path.deliver(iterations).await;
    instructions_end(case);
    system_call_marker("end", case);
    delivered?;
    path.finish().await
}

/// Warm up, then run `step` `iterations` times between the markers.
fn measured(
    case: &'static str,
    iterations: usize,
    mut step: impl FnMut() -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    for _ in 0..WARM_UP {
        step()?;
    }
    system_call_marker("begin", case);
    instructions_begin(case);
    let mut result = Ok(());
    for _ in 0..iterations {
        result = step();
        if result.is_err() {
            break;
        }
    }
    instructions_end(case);
    system_call_marker("end", case);
    result
}

/// Marks where a case begins or ends in a trace of system calls
/// (`scripts/syscalls`): the opening of a file that does not exist, named
/// after the case. Called outside callgrind's window, so it never counts as
/// an instruction of the case.
fn system_call_marker(edge: &str, case: &str) {
    let path = format!("/nonexistent/switchyard-case-{edge}/{case}");
    let _not_found = std::fs::File::open(path);
}

/// Where a case starts: callgrind zeroes its counters on entry. Never
/// inlined, and unlike [`instructions_end`] in its body, so that neither is
/// folded into the other.
#[inline(never)]
pub fn instructions_begin(case: &'static str) {
    std::hint::black_box((0x5359_0001_u32, case));
}

/// Where a case ends: callgrind dumps its counters on entry.
#[inline(never)]
pub fn instructions_end(case: &'static str) {
    std::hint::black_box((0x5359_0002_u32, case.len()));
}
