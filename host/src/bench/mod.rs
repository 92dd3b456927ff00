//! The standard benchmark: what one message costs in each plugin stage, and
//! how many messages a second the whole pipeline routes, with the stages as
//! WebAssembly plugins and with the same work done by native Rust stages.
//!
//! Both `switchyard bench` and `cargo bench -p switchyard` print [`run`]'s
//! [`Report`]. Call it from a plain thread, never from async code: the plugin
//! measurements call plugins on the calling thread (wasmtime-wasi's sync
//! bindings block on a runtime of their own), and the routed measurements
//! start a runtime of their own.
//!
//! Stage costs are what the pipeline pays per stage: encoding the messages
//! into a wire batch (heads only for a filter), the plugin call, and reading
//! the answer (for a transform, decoding its outputs into [`Message`]s).

use crate::config::{Config, PluginConfig, RouteConfig};
use crate::destination::MemoryDestination;
use crate::host::{BuildError, Host, SendError};
use crate::message::{Message, Verdict};
mod http_case;
mod instructions;
mod latency;
mod native;
mod report;
mod routed;
mod stage;

use crate::plugin::{
    EngineError, LoadError, PluginEngine, PluginError, PluginFault, PluginInstance, load_file,
};
pub use instructions::{CASES, count_instructions, instructions_begin, instructions_end};
pub use latency::Latency;
use report::targets;
use routed::routed;
use serde::Serialize;
use stage::{filter_costs, stamp_costs, transform_cost};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Messages sent through the routed pipeline per timed run, by default.
pub const DEFAULT_MESSAGES: usize = 200_000;
/// Messages per call in the batched measurements: the host's default batch size.
const BATCH: usize = 64;
/// Per plugin measurement: a warm-up that also sizes the runs, then timed runs.
const WARM_UP: Duration = Duration::from_millis(150);
const RUN_TIME: Duration = Duration::from_millis(120);
const RUNS: usize = 5;
/// Timed runs per routed pipeline, alternating between the pipelines.
const ROUTED_RUNS: usize = 7;
/// Tokio tasks sending into the host.
const SENDERS: usize = 2;

const FILTER: &str = "header-filter";
const TRANSFORM: &str = "redact-transform";
const STAMP: &str = "stamp-transform";
/// Payload bytes of the messages the stamp pipeline routes.
const STAMP_PAYLOAD: usize = 256;
/// The transform's input: a ~200 B order whose `card` gets redacted. Keys are
/// sorted, so the plugin and the native stage serialize it identically.
const ORDER: &str = concat!(
    r#"{"amount":129.5,"card":"4111 1111 1111 1111","currency":"EUR","#,
    r#""customer":{"id":"c-1029","name":"Ada Lovelace","tier":"gold"},"#,
    r#""items":[{"qty":2,"sku":"A-17"},{"qty":1,"sku":"B-3"}],"order":"o-88121","ts":1718000000}"#,
);

/// The plugin files to measure.
#[derive(Debug, Clone)]
pub struct BenchPlugins {
    /// The `header-filter` plugin (.wasm).
    pub filter: PathBuf,
    /// The `redact-transform` plugin (.wasm).
    pub transform: PathBuf,
    /// The same two plugins built as native libraries (filter, transform),
    /// to measure their calls too.
    pub native_libraries: Option<(PathBuf, PathBuf)>,
    /// The `stamp-transform` plugin (.wasm), to measure the cheap-transform
    /// pipeline and the transform at 64 KiB, when given.
    pub stamp: Option<PathBuf>,
}

/// How much work to measure.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Messages per timed run of the routed pipeline.
    pub messages: usize,
    /// How long to measure latency at half the routed maximum; none when zero.
    pub latency: Duration,
    /// The rate the latency run offers, msgs/s, instead of half the routed maximum.
    pub latency_rate: Option<f64>,
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings { messages: DEFAULT_MESSAGES, latency: Duration::ZERO, latency_rate: None }
    }
}

/// Why the benchmark could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A plugin faulted while being measured.
    #[error("a plugin faulted during the benchmark: {0}")]
    Fault(#[from] PluginFault),
    /// The host could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The host refused a message.
    #[error("the host refused a benchmark message: {0}")]
    Send(#[from] SendError),
    /// The runtime or the plugin directory could not be set up.
    #[error("benchmark setup: {0}")]
    Io(#[from] std::io::Error),
    /// What ran was not the work the benchmark claims to measure.
    #[error("the benchmark did not do the work it measures: {0}")]
    Check(String),
}

/// Repeated measurements of one figure and their median.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The median of `runs`.
    pub median: f64,
    /// Each timed run, in the order they ran.
    pub runs: Vec<f64>,
}

impl Sample {
    fn new(runs: Vec<f64>) -> Sample {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
        Sample { median, runs }
    }
}

/// What a message costs in one plugin stage (host encode + call + host decode).
#[derive(Debug, Clone, Serialize)]
pub struct StageCost {
    /// The plugin measured.
    pub plugin: &'static str,
    /// Payload size of the messages, bytes.
    pub payload_bytes: usize,
    /// Nanoseconds per call carrying one message.
    pub unbatched_ns: Sample,
    /// Nanoseconds per message in calls carrying `batch_size` messages.
    pub batched_ns_per_message: Sample,
    /// Nanoseconds per message for the native twin of the plugin (the native
    /// stage of the routed benchmark) on the same message.
    pub native_ns_per_message: Sample,
    /// The same plugin built as a native library and called through the
    /// same [`PluginInstance`] methods, when measured.
    pub native_library: Option<CallCost>,
}

/// What one plugin's calls cost, unbatched and batched.
#[derive(Debug, Clone, Serialize)]
pub struct CallCost {
    /// Nanoseconds per call carrying one message.
    pub unbatched_ns: Sample,
    /// Nanoseconds per message in calls carrying `batch_size` messages.
    pub batched_ns_per_message: Sample,
}

/// Routed throughput: filter → transform → memory destination.
#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    /// Messages per timed run.
    pub messages: usize,
    /// Pipeline worker threads (the host's default: one per core).
    pub workers: usize,
    /// Tokio tasks sending.
    pub senders: usize,
    /// Messages per second with WASM plugin stages.
    pub wasm_msgs_per_sec: Sample,
    /// Messages per second with native Rust stages doing the same work.
    pub native_msgs_per_sec: Sample,
    /// Messages per second on a route without stages: what the pipeline
    /// itself (admission, queue, workers, delivery) costs.
    pub no_stages_msgs_per_sec: Sample,
    /// `wasm / native`, of the medians.
    pub wasm_to_native: f64,
    /// Messages per second with the WASM filter and the stamp transform, on
    /// 256 B payloads (when the stamp plugin was given).
    pub stamp_msgs_per_sec: Option<Sample>,
    /// CPU time the whole process spent per message on that pipeline.
    pub stamp_cpu_ns_per_message: Option<Sample>,
    /// CPU time the whole process spent per message (WASM, native, no
    /// stages): unlike messages per second, it does not move when the
    /// pipeline's threads wait for a core.
    pub cpu_ns_per_message: [Sample; 3],
    /// The same pipelines with metrics off.
    pub metrics_off: MetricsOff,
}

/// Routed throughput with metrics off, and what metrics cost.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsOff {
    /// Messages per second with WASM plugin stages.
    pub wasm_msgs_per_sec: Sample,
    /// Messages per second with native stages.
    pub native_msgs_per_sec: Sample,
    /// Messages per second on a route without stages.
    pub no_stages_msgs_per_sec: Sample,
    /// Throughput lost to metrics, percent of the throughput without them
    /// (WASM, native, no stages; of the medians).
    pub cost_percent: [f64; 3],
    /// CPU time per message (WASM, native, no stages).
    pub cpu_ns_per_message: [Sample; 3],
    /// CPU time per message that metrics add, percent of the time without
    /// them (WASM, native, no stages): the median over rounds of each
    /// round's pair of runs, which ran back to back.
    pub cpu_cost_percent: [f64; 3],
}

/// One performance target and whether the measurements meet it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured, e.g. `header filter batched`.
    pub name: String,
    /// The goal, e.g. `<= 150 ns/msg`.
    pub goal: String,
    /// The measured figure, with its unit.
    pub measured: String,
    /// Whether the measured figure meets the goal.
    pub met: bool,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Cores available to this process.
    pub cores: usize,
    /// Messages per call in the batched measurements.
    pub batch_size: usize,
    /// `header-filter` on 64 B payloads.
    pub filter_small: StageCost,
    /// `header-filter` on 64 KiB payloads.
    pub filter_large: StageCost,
    /// `redact-transform` on a ~200 B JSON order.
    pub transform: StageCost,
    /// `stamp-transform` on 256 B and on 64 KiB payloads (when given).
    pub stamp: Option<[StageCost; 2]>,
    /// Whole-pipeline throughput.
    pub routed: Routed,
    /// Send-to-delivery latency at half the routed maximum (when asked).
    pub latency: Option<Latency>,
    /// The targets, each met or not.
    pub targets: Vec<Target>,
}

/// Run the standard benchmark with [`BenchSettings::default`].
pub fn run(plugins: &BenchPlugins) -> Result<Report, BenchError> {
    run_with(plugins, &BenchSettings::default())
}

/// Run the standard benchmark: plugin stage costs first, then the routed
/// pipeline with WASM stages, with native stages and with none.
pub fn run_with(plugins: &BenchPlugins, settings: &BenchSettings) -> Result<Report, BenchError> {
    if settings.messages == 0 {
        return Err(BenchError::Check("the routed pipeline needs at least one message".into()));
    }
    let engine = PluginEngine::new(None)?;
    let libraries = plugins.native_libraries.as_ref();
    let (filter_small, filter_large) =
        filter_costs(&engine, &plugins.filter, libraries.map(|(filter, _)| filter.as_path()))?;
    let transform =
        transform_cost(&engine, &plugins.transform, libraries.map(|(_, transform)| transform.as_path()))?;
    let stamp = plugins.stamp.as_deref().map(|path| stamp_costs(&engine, path)).transpose()?;
    let routed = routed(plugins, settings.messages)?;
    let latency = match settings.latency.is_zero() {
        true => None,
        false => Some(latency::latency(plugins, &routed, settings.latency, settings.latency_rate)?),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = Report {
        cores,
        batch_size: BATCH,
        filter_small,
        filter_large,
        transform,
        stamp,
        routed,
        latency,
        targets: Vec::new(),
    };
    Ok(Report { targets: targets(&report), ..report })
}

/// Shut `host` down and check that it accepted, delivered and settled each of the `sent` messages.
async fn shut_down_and_account(host: &Host, sent: u64) -> Result<(), BenchError> {
    host.shutdown().await;
    let stats = host.stats();
    match stats.accepted == sent && stats.delivered == sent && stats.settled() == sent {
        true => Ok(()),
        false => Err(BenchError::Check(format!("sent {sent} but the host counted {stats:?}"))),
    }
}
