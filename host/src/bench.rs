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
use crate::plugin::{
    EngineError, LoadError, PluginEngine, PluginError, PluginFault, PluginInstance, load_file,
};
use serde::Serialize;
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
const ROUTED_RUNS: usize = 3;
/// Tokio tasks sending into the host.
const SENDERS: usize = 2;

const FILTER: &str = "header-filter";
const TRANSFORM: &str = "redact-transform";
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
}

/// How much work to measure.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Messages per timed run of the routed pipeline.
    pub messages: usize,
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings { messages: DEFAULT_MESSAGES }
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
    /// Whole-pipeline throughput.
    pub routed: Routed,
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
    let (filter_small, filter_large) = filter_costs(&engine, &plugins.filter)?;
    let transform = transform_cost(&engine, &plugins.transform)?;
    let routed = routed(plugins, settings.messages)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let targets = targets(&[&filter_small, &filter_large], &routed, cores);
    Ok(Report { cores, batch_size: BATCH, filter_small, filter_large, transform, routed, targets })
}

/// Nanoseconds per unit of `step`, which handles `units` units a call.
fn ns_per_unit(units: usize, mut step: impl FnMut() -> Result<(), BenchError>) -> Result<Sample, BenchError> {
    let warm_up = Instant::now();
    let mut steps = 0u32;
    while warm_up.elapsed() < WARM_UP {
        step()?;
        steps += 1;
    }
    let per_step = warm_up.elapsed() / steps;
    let steps = (RUN_TIME.as_nanos() / per_step.as_nanos().max(1)).max(1) as u64;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        for _ in 0..steps {
            step()?;
        }
        runs.push(started.elapsed().as_nanos() as f64 / (steps * units as u64) as f64);
    }
    Ok(Sample::new(runs))
}

/// A message on `orders.eu` with three headers, one of them `x-tenant: acme`.
fn order_message(payload: impl Into<bytes::Bytes>) -> Message {
    Message::new("orders.eu", payload)
        .with_header("x-tenant", "acme")
        .with_header("x-request-id", "r-1029")
        .with_header("content-type", "application/json")
}

fn plugin_config(name: &str, entries: &[(&str, &str)]) -> PluginConfig {
    let config = entries.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    PluginConfig { name: name.to_owned(), config, ..PluginConfig::default() }
}

fn filter_config() -> PluginConfig {
    plugin_config(FILTER, &[("require_header", "x-tenant"), ("require_value", "acme")])
}

fn transform_config() -> PluginConfig {
    plugin_config(TRANSFORM, &[("fields", "card")])
}

/// `header-filter` on 64 B and on 64 KiB payloads, one instance for both.
fn filter_costs(engine: &PluginEngine, path: &Path) -> Result<(StageCost, StageCost), BenchError> {
    let plugin = load_file(engine, path, Some(&filter_config()))?;
    let mut instance = PluginInstance::new(engine, plugin)?;
    let mut cost = |payload_bytes: usize| -> Result<StageCost, BenchError> {
        let message = order_message(vec![b'x'; payload_bytes]);
        let mut measure = |count: usize| {
            let batch = vec![message.clone(); count];
            let mut buffer = Vec::new();
            ns_per_unit(count, || {
                buffer.clear();
                for (index, message) in batch.iter().enumerate() {
                    message.encode(&mut buffer, index as u32, false);
                }
                let decisions = instance.filter(&buffer)?;
                match decisions.iter().filter(|d| matches!(d, Ok(Verdict::Keep))).count() == count {
                    true => Ok(()),
                    false => {
                        Err(BenchError::Check(format!("{FILTER} did not keep every message: {decisions:?}")))
                    }
                }
            })
        };
        let (unbatched_ns, batched_ns_per_message) = (measure(1)?, measure(BATCH)?);
        let native_ns_per_message = ns_per_unit(1, || match native_filter(std::hint::black_box(&message)) {
            Ok(Verdict::Keep) => Ok(()),
            other => Err(BenchError::Check(format!("the native filter did not keep the message: {other:?}"))),
        })?;
        Ok(StageCost {
            plugin: FILTER,
            payload_bytes,
            unbatched_ns,
            batched_ns_per_message,
            native_ns_per_message,
        })
    };
    Ok((cost(64)?, cost(64 << 10)?))
}

/// `redact-transform` on the JSON order.
fn transform_cost(engine: &PluginEngine, path: &Path) -> Result<StageCost, BenchError> {
    let plugin = load_file(engine, path, Some(&transform_config()))?;
    let mut instance = PluginInstance::new(engine, plugin)?;
    let message = order_message(ORDER);
    let mut measure = |count: usize| {
        let batch = vec![message.clone(); count];
        let mut buffer = Vec::new();
        let mut checked = false;
        ns_per_unit(count, || {
            buffer.clear();
            for (index, message) in batch.iter().enumerate() {
                message.encode(&mut buffer, index as u32, true);
            }
            let out = instance.transform(&buffer)?;
            if let Some((index, error)) = out.errors.first() {
                return Err(BenchError::Check(format!("{TRANSFORM} failed on message {index}: {error}")));
            }
            let mut outputs = 0;
            for output in switchyard_wire::decode(&out.messages) {
                let output = output.map_err(|err| BenchError::Check(format!("{TRANSFORM}: {err}")))?;
                let output = std::hint::black_box(Message::from_wire(&output));
                if !checked {
                    check_redacted(&output)?;
                    checked = true;
                }
                outputs += 1;
            }
            match outputs == count {
                true => Ok(()),
                false => Err(BenchError::Check(format!("{TRANSFORM}: {outputs} outputs for {count} inputs"))),
            }
        })
    };
    let (unbatched_ns, batched_ns_per_message) = (measure(1)?, measure(BATCH)?);
    check_redacted(&native_transform(&message).map_err(|err| BenchError::Check(err.to_string()))?[0])?;
    let native_ns_per_message = ns_per_unit(1, || match native_transform(std::hint::black_box(&message)) {
        Ok(outputs) if outputs.len() == 1 => {
            std::hint::black_box(outputs);
            Ok(())
        }
        other => Err(BenchError::Check(format!("the native transform made {other:?}"))),
    })?;
    Ok(StageCost {
        plugin: TRANSFORM,
        payload_bytes: ORDER.len(),
        unbatched_ns,
        batched_ns_per_message,
        native_ns_per_message,
    })
}

fn check_redacted(output: &Message) -> Result<(), BenchError> {
    let payload = String::from_utf8_lossy(&output.payload);
    match payload.contains(r#""card":"[redacted]""#) && output.header("x-transformed-by") == Some(TRANSFORM) {
        true => Ok(()),
        false => Err(BenchError::Check(format!("the transform did not redact: {output:?}"))),
    }
}

/// What the routed pipeline runs between admission and delivery.
#[derive(Debug, Clone, Copy)]
enum Stages {
    /// The two plugins.
    Wasm,
    /// Their native twins.
    Native,
    /// Nothing: the route goes straight to the destination.
    None,
}

/// A host routing `orders.*` through its [`Stages`] into a memory destination.
struct RoutedHost {
    host: Host,
    delivered: flume::Receiver<Message>,
    sent: u64,
}

/// Throughput of the three pipelines, built side by side; their timed runs
/// alternate so that drift on the machine affects all alike.
fn routed(plugins: &BenchPlugins, messages: usize) -> Result<Routed, BenchError> {
    let dir = PluginDir::new(plugins)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut wasm = RoutedHost::start(&dir.0, Stages::Wasm).await?;
        let mut native = RoutedHost::start(&dir.0.join("none"), Stages::Native).await?;
        let mut bare = RoutedHost::start(&dir.0.join("none"), Stages::None).await?;
        let warm_up = (messages / 4).max(1);
        let (_, wasm_output) = wasm.timed_run(warm_up).await?;
        let (_, native_output) = native.timed_run(warm_up).await?;
        bare.timed_run(warm_up).await?;
        check_redacted(&wasm_output)?;
        let same = |m: &Message| (m.topic.clone(), m.headers.clone(), m.payload.clone(), m.priority);
        if same(&wasm_output) != same(&native_output) {
            return Err(BenchError::Check(format!(
                "the native stages do other work than the plugins: {wasm_output:?} vs {native_output:?}"
            )));
        }
        let (mut wasm_runs, mut native_runs, mut bare_runs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUTED_RUNS {
            wasm_runs.push(wasm.timed_run(messages).await?.0);
            native_runs.push(native.timed_run(messages).await?.0);
            bare_runs.push(bare.timed_run(messages).await?.0);
        }
        for host in [wasm, native, bare] {
            host.finish().await?;
        }
        let (wasm, native) = (Sample::new(wasm_runs), Sample::new(native_runs));
        Ok(Routed {
            messages,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            senders: SENDERS,
            wasm_to_native: wasm.median / native.median,
            wasm_msgs_per_sec: wasm,
            native_msgs_per_sec: native,
            no_stages_msgs_per_sec: Sample::new(bare_runs),
        })
    })
}

impl RoutedHost {
    async fn start(plugin_dir: &Path, stages: Stages) -> Result<RoutedHost, BenchError> {
        let (out, delivered) = MemoryDestination::new();
        let mut config = Config { plugins: vec![filter_config(), transform_config()], ..Config::default() };
        // Steady state is measured: no watcher thread, no compile cache on disk.
        config.host.watch = false;
        config.host.cache_dir = PathBuf::new();
        let builder =
            Host::builder().config("<bench>", config).plugin_dir(plugin_dir).destination("out", out);
        let route = RouteConfig::new("orders", "orders.*", "out");
        let builder = match stages {
            Stages::Wasm => {
                builder.route(route.stage("filter:header-filter").stage("transform:redact-transform"))
            }
            Stages::Native => builder
                .filter("native-filter", native_filter)
                .transform("native-transform", native_transform)
                .route(route.stage("filter:native-filter").stage("transform:native-transform")),
            Stages::None => builder.route(route),
        };
        let host = builder.build().await?;
        if let Some(error) = host.load_errors().first() {
            return Err(BenchError::Check(format!("a plugin did not load: {error}")));
        }
        Ok(RoutedHost { host, delivered, sent: 0 })
    }

    /// Send `messages` from [`SENDERS`] tasks and time until the destination
    /// has all of them. Returns messages per second and one delivered message.
    async fn timed_run(&mut self, messages: usize) -> Result<(f64, Message), BenchError> {
        let shares: Vec<Vec<Message>> = (0..SENDERS)
            .map(|sender| (sender..messages).step_by(SENDERS).map(|_| order_message(ORDER)).collect())
            .collect();
        let started = Instant::now();
        let senders: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let host = self.host.clone();
                tokio::spawn(async move {
                    for message in share {
                        host.send(message).await?;
                    }
                    Ok::<_, SendError>(())
                })
            })
            .collect();
        let deadline =
            Duration::from_secs(30) + Duration::from_nanos(50_000u64.saturating_mul(messages as u64));
        let received = tokio::time::timeout(deadline, async {
            let first = self.delivered.recv_async().await;
            for _ in 1..messages {
                self.delivered.recv_async().await.ok()?;
            }
            first.ok()
        });
        let first = received.await.ok().flatten();
        let elapsed = started.elapsed();
        self.sent += messages as u64;
        let Some(first) = first else {
            return Err(BenchError::Check(format!(
                "not all {messages} messages reached the destination within {deadline:?}: {:?}",
                self.host.stats()
            )));
        };
        for sender in senders {
            sender.await.map_err(|err| BenchError::Check(format!("a sender task failed: {err}")))??;
        }
        Ok((messages as f64 / elapsed.as_secs_f64(), first))
    }

    /// Shut down and check that every message sent was delivered, none lost.
    async fn finish(self) -> Result<(), BenchError> {
        self.host.shutdown().await;
        let stats = self.host.stats();
        match stats.accepted == self.sent && stats.delivered == self.sent && stats.settled() == self.sent {
            true => Ok(()),
            false => Err(BenchError::Check(format!("sent {} but the host counted {stats:?}", self.sent))),
        }
    }
}

/// The native twin of `header-filter` with `require_header=x-tenant`, `require_value=acme`.
fn native_filter(message: &Message) -> Result<Verdict, PluginError> {
    Ok(if message.header("x-tenant") == Some("acme") { Verdict::Keep } else { Verdict::Drop })
}

/// The native twin of `redact-transform` with `fields=card`.
fn native_transform(message: &Message) -> Result<Vec<Message>, PluginError> {
    fn redact(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(object) => {
                object.iter_mut().for_each(|(name, field)| match name == "card" {
                    true => *field = serde_json::Value::from("[redacted]"),
                    false => redact(field),
                })
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    let mut document: serde_json::Value = serde_json::from_slice(&message.payload)
        .map_err(|err| PluginError::Rejected(format!("payload is not JSON: {err}")))?;
    redact(&mut document);
    let payload = serde_json::to_vec(&document).map_err(|err| PluginError::Failed(err.to_string()))?;
    let mut output = message.clone();
    output.payload = payload.into();
    output.set_header("x-transformed-by", TRANSFORM);
    Ok(vec![output])
}

/// A temporary plugin directory holding the two plugins under their names;
/// removed on drop.
struct PluginDir(PathBuf);

impl PluginDir {
    fn new(plugins: &BenchPlugins) -> Result<PluginDir, BenchError> {
        let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dir = PluginDir(dir);
        std::fs::copy(&plugins.filter, dir.0.join(format!("{FILTER}.wasm")))?;
        std::fs::copy(&plugins.transform, dir.0.join(format!("{TRANSFORM}.wasm")))?;
        Ok(dir)
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn targets(filters: &[&StageCost], routed: &Routed, cores: usize) -> Vec<Target> {
    let worst = |figure: fn(&StageCost) -> f64| filters.iter().map(|cost| figure(cost)).fold(0.0, f64::max);
    let batched = worst(|cost| cost.batched_ns_per_message.median);
    let unbatched = worst(|cost| cost.unbatched_ns.median);
    let rate = routed.wasm_msgs_per_sec.median;
    let target = |name: String, goal: &str, measured: String, met: bool| Target {
        name,
        goal: goal.to_owned(),
        measured,
        met,
    };
    vec![
        target(
            "header filter batched".into(),
            "<= 150 ns/msg",
            format!("{batched:.0} ns/msg"),
            batched <= 150.0,
        ),
        target(
            "header filter unbatched".into(),
            "<= 500 ns",
            format!("{unbatched:.0} ns"),
            unbatched <= 500.0,
        ),
        target(
            format!("routed on {cores} cores"),
            ">= 1M msgs/s",
            format!("{} msgs/s", grouped(rate)),
            rate >= 1e6,
        ),
        target(
            "WASM/native".into(),
            ">= 0.5",
            format!("{:.2}", routed.wasm_to_native),
            routed.wasm_to_native >= 0.5,
        ),
    ]
}

/// `1234567.8` as `1 234 568`.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}

fn bytes(size: usize) -> String {
    match size {
        size if size >= 1 << 10 && size % (1 << 10) == 0 => format!("{} KiB", size >> 10),
        size => format!("{size} B"),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runs =
            |sample: &Sample| sample.runs.iter().map(|run| grouped(*run)).collect::<Vec<_>>().join(", ");
        let batch = format!("batched ({}/call)", self.batch_size);
        writeln!(f, "Switchyard standard benchmark: {} cores, medians of {RUNS} runs", self.cores)?;
        writeln!(f)?;
        writeln!(
            f,
            "ns per message (host encode + plugin call + decode)  {:>10}  {batch:>18}  {:>11}",
            "unbatched", "native twin"
        )?;
        for cost in [&self.filter_small, &self.filter_large, &self.transform] {
            let name = format!("{}, {} payload", cost.plugin, bytes(cost.payload_bytes));
            let (unbatched, batched) = (cost.unbatched_ns.median, cost.batched_ns_per_message.median);
            let native = cost.native_ns_per_message.median;
            writeln!(f, "  {name:<50}{unbatched:>10.0}  {batched:>18.0}  {native:>11.0}")?;
        }
        let (small, large) = (&self.filter_small, &self.filter_large);
        let ratio = |cost: fn(&StageCost) -> &Sample| cost(large).median / cost(small).median;
        writeln!(
            f,
            "  filter {} vs {}: x{:.2} unbatched, x{:.2} batched (heads only: the payload is not copied)",
            bytes(large.payload_bytes),
            bytes(small.payload_bytes),
            ratio(|cost| &cost.unbatched_ns),
            ratio(|cost| &cost.batched_ns_per_message),
        )?;
        writeln!(f)?;
        let routed = &self.routed;
        writeln!(
            f,
            "routed msgs/s: filter -> transform -> memory, {} workers, {} senders, {} messages a run",
            routed.workers,
            routed.senders,
            grouped(routed.messages as f64),
        )?;
        let (wasm, native) = (&routed.wasm_msgs_per_sec, &routed.native_msgs_per_sec);
        writeln!(f, "  WASM stages    {:>11}  (runs: {})", grouped(wasm.median), runs(wasm))?;
        writeln!(f, "  native stages  {:>11}  (runs: {})", grouped(native.median), runs(native))?;
        let bare = &routed.no_stages_msgs_per_sec;
        writeln!(
            f,
            "  no stages      {:>11}  (runs: {}; the pipeline alone)",
            grouped(bare.median),
            runs(bare)
        )?;
        writeln!(f, "  WASM/native    {:>11.2}", routed.wasm_to_native)?;
        writeln!(f)?;
        let summary: Vec<String> = self
            .targets
            .iter()
            .map(|t| {
                format!("{} {} ({}) {}", t.name, t.measured, t.goal, if t.met { "met" } else { "NOT MET" })
            })
            .collect();
        write!(f, "targets: {}", summary.join("; "))
    }
}
