//! Times Switchyard's header-filter logic run as an Extism plugin
//! (`plugin/`), unbatched and 64 messages a call, for issue 16's ratio.
//!
//! Each timed call does what `switchyard bench` times for its own filter
//! (host/src/bench/stage.rs, `filter_call`): encode the heads of the batch
//! into a reused buffer in Switchyard's wire layout, call the plugin, read
//! every verdict (each must be "keep"). Prints one JSON object on stdout.
//!
//!   extism-compare [--plugin PATH] [--messages N] [--runs R]

use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use extism::{Function, Manifest, Plugin, UserData, Val, ValType, Wasm};
use switchyard_wire::{Head, Payload, write_message};

/// Messages per batched call, as Switchyard's bench (`BATCH`).
const BATCH: usize = 64;
/// Untimed calls before the timed runs, as long as Switchyard's bench warms up.
const WARM_UP: Duration = Duration::from_millis(150);

/// The message of Switchyard's bench (`order_message`): topic `orders.eu`,
/// three headers, a 64-byte payload (`filter_small`).
struct Order {
    topic: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    payload_len: usize,
}

fn order_message() -> Order {
    Order {
        topic: "orders.eu",
        headers: vec![
            ("x-tenant", "acme"),
            ("x-request-id", "r-1029"),
            ("content-type", "application/json"),
        ],
        payload_len: 64,
    }
}

impl Order {
    /// As the Switchyard host encodes a filter's input: the head, the payload
    /// omitted (only its length), `source` = index in the batch, id and priority 0.
    fn encode(&self, out: &mut Vec<u8>, source: u32) {
        let head = Head { id: 0, source, priority: 0, topic: self.topic };
        write_message(out, &head, self.headers.iter().copied(), Payload::Omitted(self.payload_len));
    }
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    kept: u64,
    dropped: u64,
}

struct Args {
    plugin: PathBuf,
    messages: usize,
    runs: usize,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        plugin: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("plugin/target/wasm32-unknown-unknown/release/extism_header_filter.wasm"),
        messages: 64_000,
        runs: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--plugin" => args.plugin = PathBuf::from(value()?),
            "--messages" => args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?,
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: extism-compare [--plugin PATH] [--messages N] [--runs R]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.messages < BATCH || args.runs == 0 {
        return Err(format!("--messages must be >= {BATCH} and --runs >= 1"));
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("extism-compare: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<serde_json::Value, String> {
    let args = args()?;
    let wasm = std::fs::read(&args.plugin)
        .map_err(|e| format!("{}: {e} (build it: scripts/extism-compare)", args.plugin.display()))?;
    // Configured as `switchyard bench` configures header-filter (`filter_config`).
    let manifest = Manifest::new([Wasm::data(wasm)])
        .with_config_key("require_header", "x-tenant")
        .with_config_key("require_value", "acme");
    let counts = UserData::new(Counts::default());
    let count = Function::new(
        "count",
        [ValType::I64, ValType::I64],
        [],
        counts.clone(),
        |_plugin, inputs: &[Val], _outputs: &mut [Val], counts: UserData<Counts>| {
            let counts = counts.get()?;
            let mut counts = counts.lock().map_err(|_| extism::Error::msg("counts lock poisoned"))?;
            counts.kept += inputs[0].unwrap_i64() as u64;
            counts.dropped += inputs[1].unwrap_i64() as u64;
            Ok(())
        },
    );
    // No WASI: the plugin is wasm32-unknown-unknown and needs none.
    let mut plugin = Plugin::new(&manifest, [count], false).map_err(|e| format!("loading the plugin: {e:#}"))?;
    let read_counts = |counts: &UserData<Counts>| -> Result<Counts, String> {
        let counts = counts.get().map_err(|e| e.to_string())?;
        let counts = *counts.lock().map_err(|_| "counts lock poisoned")?;
        Ok(counts)
    };

    check_decisions(&mut plugin)?;
    let after_checks = read_counts(&counts)?;
    if after_checks != (Counts { kept: 4, dropped: 6 }) {
        return Err(format!("after the checks the host counted {after_checks:?}, expected 4 kept, 6 dropped (the checks, one by one then batched)"));
    }

    let order = order_message();
    let mut buffer = Vec::new();
    let unbatched = measure(&mut plugin, &order, &mut buffer, "filter", 1, args.messages, args.runs)?;
    let batched = measure(&mut plugin, &order, &mut buffer, "filter_batch", BATCH, args.messages, args.runs)?;

    // Every timed and warm-up message was kept, and the host counted each one.
    let total = read_counts(&counts)?;
    let expected_kept = after_checks.kept + unbatched.messages + batched.messages;
    if total != (Counts { kept: expected_kept, dropped: after_checks.dropped }) {
        return Err(format!("the host counted {total:?}, expected {expected_kept} kept, {} dropped", after_checks.dropped));
    }

    let mut one = Vec::new();
    order.encode(&mut one, 0);
    Ok(serde_json::json!({
        "extism_version": extism::extism_version().trim_end_matches('\0'),
        "unbatched_ns": unbatched.summary(),
        "batched_ns_per_message": batched.summary(),
        "batch_size": BATCH,
        "messages_per_run": args.messages,
        "runs": args.runs,
        "input_bytes_per_message": one.len(),
        "payload_bytes": order.payload_len,
        "counted": { "kept": total.kept, "dropped": total.dropped },
        "with_wasi": false,
    }))
}

/// One call of `export` over `buffer`, which holds `count` messages: each
/// verdict must be "keep".
fn call(plugin: &mut Plugin, export: &str, buffer: &[u8], count: usize) -> Result<(), String> {
    let verdicts: &[u8] = plugin.call(export, buffer).map_err(|e| format!("{export}: {e:#}"))?;
    match verdicts.len() == count && verdicts.iter().all(|&verdict| verdict == 1) {
        true => Ok(()),
        false => Err(format!("{export} did not keep every message: {verdicts:?}")),
    }
}

struct Measured {
    /// ns per message of each timed run.
    runs: Vec<f64>,
    /// Messages the plugin was handed, warm-up included.
    messages: u64,
}

impl Measured {
    fn summary(&self) -> serde_json::Value {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() % 2 {
            1 => sorted[sorted.len() / 2],
            _ => (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0,
        };
        let round = |x: f64| (x * 10.0).round() / 10.0;
        serde_json::json!({
            "min": round(sorted[0]),
            "median": round(median),
            "runs": self.runs.iter().map(|&x| round(x)).collect::<Vec<_>>(),
        })
    }
}

/// Warm up, then `runs` timed runs of `messages / per_call` calls of `export`,
/// each call encoding `per_call` messages then checking every verdict.
fn measure(
    plugin: &mut Plugin,
    order: &Order,
    buffer: &mut Vec<u8>,
    export: &str,
    per_call: usize,
    messages: usize,
    runs: usize,
) -> Result<Measured, String> {
    let mut step = |plugin: &mut Plugin| -> Result<(), String> {
        buffer.clear();
        for index in 0..per_call {
            order.encode(buffer, index as u32);
        }
        call(plugin, export, black_box(buffer.as_slice()), per_call)
    };
    let mut handed = 0u64;
    let warm_up = Instant::now();
    while warm_up.elapsed() < WARM_UP {
        step(plugin)?;
        handed += per_call as u64;
    }
    let calls = messages / per_call;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        for _ in 0..calls {
            step(plugin)?;
        }
        times.push(started.elapsed().as_nanos() as f64 / (calls * per_call) as f64);
        handed += (calls * per_call) as u64;
    }
    Ok(Measured { runs: times, messages: handed })
}

/// Checks that can fail: a message without the header, with another value,
/// or on another topic is decided as Switchyard's filter decides it.
fn check_decisions(plugin: &mut Plugin) -> Result<(), String> {
    let message = |headers: Vec<(&'static str, &'static str)>| Order { topic: "orders.eu", headers, payload_len: 64 };
    let cases = [
        ("the bench's message", order_message(), 1u8),
        ("no x-tenant header", message(vec![("x-request-id", "r-1029")]), 0),
        ("x-tenant: other", message(vec![("x-tenant", "other")]), 0),
        ("X-Tenant: acme (name is case-insensitive)", message(vec![("X-Tenant", "acme")]), 1),
        ("x-tenant: ACME (value is exact)", message(vec![("x-tenant", "ACME")]), 0),
    ];
    let mut batch = Vec::new();
    for (index, (what, order, expected)) in cases.iter().enumerate() {
        let mut one = Vec::new();
        order.encode(&mut one, 0);
        let verdict: Vec<u8> = plugin.call("filter", one.as_slice()).map_err(|e| format!("filter: {e:#}"))?;
        if verdict != [*expected] {
            return Err(format!("filter, {what}: verdict {verdict:?}, expected [{expected}]"));
        }
        order.encode(&mut batch, index as u32);
    }
    // The same five in one batched call. With the calls above: 4 kept, 6 dropped in all.
    let verdicts: Vec<u8> = plugin.call("filter_batch", batch.as_slice()).map_err(|e| format!("filter_batch: {e:#}"))?;
    let expected: Vec<u8> = cases.iter().map(|(_, _, expected)| *expected).collect();
    if verdicts != expected {
        return Err(format!("filter_batch: verdicts {verdicts:?}, expected {expected:?}"));
    }
    // `filter` refuses anything but exactly one message (and counts nothing then).
    let refused: Result<Vec<u8>, _> = plugin.call("filter", batch.as_slice());
    if refused.is_ok() {
        return Err("filter accepted a batch of five messages".into());
    }
    Ok(())
}
