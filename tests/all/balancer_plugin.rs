//! WASM `balancer` plugins behind `PluginBalancer`: their picks are used when valid, and every way of
//! failing (a wrong answer, a trap, a deadline, the memory cap) falls back to p2c with a typed reason.

use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::balance::{Balancer, EndpointView, FallbackReason, P2cPeakEwma, PluginBalancer, endpoint_id};
use switchyard::config::{PluginConfig, PluginLimits};
use switchyard::metrics::Metrics;
use switchyard::plugin::{
    CompiledPlugin, EndpointRecord, PluginEngine, PluginFault, PluginInstance, load_file,
};
use switchyard::{Message, PluginKind};
use switchyard_plugin_artifacts as artifacts;

use crate::support::{PATIENCE, within};

/// Every reason `on_fallback` was called with, in order.
type Reasons = Arc<Mutex<Vec<FallbackReason>>>;

/// The plugin `artifact` loaded as `name`, with config `pairs` and `limits`.
fn load(
    engine: &PluginEngine,
    artifact: &str,
    pairs: &[(&str, &str)],
    limits: PluginLimits,
) -> Arc<CompiledPlugin> {
    let config = PluginConfig {
        name: "lb".into(),
        config: pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        limits,
        ..PluginConfig::default()
    };
    load_file(engine, Path::new(artifact), Some(&config)).unwrap_or_else(|err| panic!("{err}"))
}

/// The address of endpoint `n`.
fn address(n: usize) -> String {
    format!("10.0.0.{n}:9000")
}

/// A balancer over `count` endpoints running `artifact`, and the reasons of its fallbacks.
fn balancer_with(
    artifact: &str,
    pairs: &[(&str, &str)],
    limits: PluginLimits,
    count: usize,
) -> (PluginBalancer, Reasons) {
    let (balancer, reasons, _) = counted_balancer(artifact, pairs, limits, count);
    (balancer, reasons)
}

/// [`balancer_with`], and the metrics its plugin's calls are counted in.
fn counted_balancer(
    artifact: &str,
    pairs: &[(&str, &str)],
    limits: PluginLimits,
    count: usize,
) -> (PluginBalancer, Reasons, Arc<Metrics>) {
    let engine = Arc::new(PluginEngine::new(None).unwrap());
    let plugin = load(&engine, artifact, pairs, limits);
    let (reasons, metrics) = (Reasons::default(), Arc::<Metrics>::default());
    let seen = reasons.clone();
    let on_fallback = Box::new(move |reason: &FallbackReason| seen.lock().unwrap().push(reason.clone()));
    let addresses = (0..count).map(address).collect();
    let balancer = PluginBalancer::new(engine, metrics.clone(), plugin, addresses, on_fallback);
    (balancer.unwrap_or_else(|err| panic!("{err}")), reasons, metrics)
}

/// `count` eligible, idle endpoints of weight 1 at 5 ms, identified by their addresses.
fn endpoints(count: usize) -> Vec<EndpointView> {
    (0..count).map(|n| EndpointView::new(endpoint_id(&address(n)), Duration::from_millis(5))).collect()
}

/// Three endpoints where the faulty plugin, behaving, picks a different one than p2c would: 0 is
/// ineligible, 1 (the first eligible, the plugin's pick) is much slower than 2 (always p2c's pick).
fn plugin_and_p2c_disagree() -> Vec<EndpointView> {
    let mut endpoints = endpoints(3);
    endpoints[0].eligible = false;
    endpoints[1].latency = Duration::from_millis(500);
    endpoints
}

fn taken(reasons: &Reasons) -> Vec<FallbackReason> {
    std::mem::take(&mut *reasons.lock().unwrap())
}

fn poison() -> Message {
    Message::new("orders.eu", "{}").with_header("x-poison", "1")
}

#[test]
fn least_loaded_plugin_picks_the_lowest_weighted_load_among_eligible_endpoints() {
    let (balancer, reasons) =
        balancer_with(artifacts::LEAST_LOADED_BALANCER, &[], PluginLimits::default(), 4);
    // (in_flight + 1) * latency / weight: 10 000, 4 000 (ineligible), 6 000, 9 000 µs. The plugin is
    // shown the configured weight: by the weight slow start scales (endpoint 2 at 10 % of 200, the
    // others at 100 per unit), endpoint 3 would be the cheapest.
    let mut endpoints = endpoints(4);
    let stats = [(10, 0, 1), (1, 3, 1), (6, 1, 2), (3, 2, 1)];
    for (endpoint, (millis, in_flight, weight)) in endpoints.iter_mut().zip(stats) {
        (endpoint.latency, endpoint.in_flight, endpoint.configured_weight, endpoint.weight) =
            (Duration::from_millis(millis), in_flight, weight, 100 * weight);
    }
    endpoints[2].weight = 20;
    endpoints[1].eligible = false;
    assert_eq!(balancer.pick(&endpoints, None), Some(2));
    assert_eq!(balancer.pick_for(&Message::new("orders.eu", "{}"), &endpoints), Some(2));
    endpoints[1].eligible = true;
    assert_eq!(balancer.pick(&endpoints, None), Some(1));
    endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
    assert_eq!(balancer.pick(&endpoints, None), None, "no eligible endpoint: the plugin's none is honoured");
    assert_eq!(balancer.pick(&[], None), None);
    assert_eq!(taken(&reasons), []);
}

#[test]
pub fn faulty_balancer() {
    // Each wrong answer is refused, p2c picks an eligible endpoint instead, and the reason says what the
    // plugin answered. The instance is kept: the plugin answers right again as soon as it is not poisoned.
    let endpoints = plugin_and_p2c_disagree();
    for (mode, answer) in [("out-of-range", Some(3)), ("ineligible", Some(0)), ("none", None)] {
        let pairs = [("mode", mode), ("trigger", "x-poison")];
        let (balancer, reasons) =
            balancer_with(artifacts::FAULTY_BALANCER, &pairs, PluginLimits::default(), 3);
        for _ in 0..3 {
            assert_eq!(balancer.pick_for(&poison(), &endpoints), Some(2), "{mode}: p2c picks the cheaper");
        }
        let invalid = FallbackReason::Invalid { answer, endpoints: 3, eligible: 2 };
        assert_eq!(taken(&reasons), [invalid.clone(), invalid.clone(), invalid.clone()], "{mode}");
        assert_eq!(invalid.kind(), "invalid");
        assert_eq!(balancer.pick(&endpoints, None), Some(1), "{mode}: the plugin answers again");
        assert_eq!(taken(&reasons), [], "{mode}");
    }
    let invalid = FallbackReason::Invalid { answer: Some(3), endpoints: 3, eligible: 2 };
    assert_eq!(invalid.to_string(), "the plugin answered 3, not one of the 2 eligible endpoints (of 3)");
    let invalid = FallbackReason::Invalid { answer: None, endpoints: 3, eligible: 2 };
    assert_eq!(invalid.to_string(), "the plugin answered none, not one of the 2 eligible endpoints (of 3)");
}

#[test]
fn none_from_the_plugin_is_honoured_when_no_endpoint_is_eligible() {
    let pairs = [("mode", "none")];
    let (balancer, reasons) = balancer_with(artifacts::FAULTY_BALANCER, &pairs, PluginLimits::default(), 3);
    let mut endpoints = endpoints(3);
    endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
    assert_eq!(balancer.pick(&endpoints, None), None);
    assert_eq!(taken(&reasons), []);
}

/// Asserts a poisoned pick falls back to p2c with a fault matching `expected`, twice (each fault costs
/// the instance), and that the plugin answers the next clean pick from a fresh instance.
fn assert_fault_falls_back_and_recovers(
    mode: &str,
    limits: PluginLimits,
    expected: impl Fn(&PluginFault) -> bool,
) -> FallbackReason {
    let pairs = [("mode", mode), ("trigger", "x-poison")];
    let (balancer, reasons, metrics) = counted_balancer(artifacts::FAULTY_BALANCER, &pairs, limits, 3);
    let endpoints = plugin_and_p2c_disagree();
    for faults in 1..=2 {
        assert_eq!(balancer.pick_for(&poison(), &endpoints), Some(2), "{mode}: p2c picks the cheaper");
        let [FallbackReason::Fault(fault)] = &taken(&reasons)[..] else {
            panic!("{mode}: one fault expected")
        };
        assert!(expected(fault), "{mode}: {fault}");
        assert_eq!(metrics.plugin_counts("lb").faults(), faults, "{mode}: counted as the plugin's fault");
        assert_eq!(metrics.last_fault("lb").map(|last| last.kind), Some(fault.kind()), "{mode}");
        assert_eq!(balancer.pick(&endpoints, None), Some(1), "{mode}: a fresh instance answers");
        assert_eq!(taken(&reasons), [], "{mode}");
    }
    balancer.pick_for(&poison(), &endpoints);
    taken(&reasons).remove(0)
}

#[test]
fn trapping_plugin_falls_back_reports_the_trap_and_is_reinstantiated() {
    let reason = assert_fault_falls_back_and_recovers(
        "trap",
        PluginLimits::default(),
        |fault| matches!(fault, PluginFault::Trapped(trap) if trap.contains("unreachable")),
    );
    assert_eq!(reason.kind(), "trapped");
    assert_eq!(
        reason.to_string(),
        "the plugin trapped: wasm trap: wasm `unreachable` instruction executed; it logged: panicked at plugins/faulty-balancer/src/lib.rs:39:29: faulty-balancer traps on message 0"
    );
}

#[test]
fn deadline_violated_falls_back_and_reports_the_timeout() {
    let limits = PluginLimits { timeout_ms: 50, ..PluginLimits::default() };
    let reason = assert_fault_falls_back_and_recovers("spin", limits, |fault| {
        *fault == PluginFault::TimedOut(Duration::from_millis(50))
    });
    assert_eq!(reason.to_string(), "the plugin timed out after 50ms");
}

#[test]
fn memory_limit_violated_falls_back_and_reports_the_cap() {
    let limits = PluginLimits { memory_mb: 16, ..PluginLimits::default() };
    let reason = assert_fault_falls_back_and_recovers("memory-hog", limits, |fault| {
        *fault == PluginFault::MemoryCap(16)
    });
    assert_eq!(reason.to_string(), "the plugin hit its memory cap of 16 MiB");
}

#[test]
fn a_balancer_that_leaks_is_renewed_between_picks_before_its_memory_cap_and_never_falls_back() {
    // 1 MiB kept for good per pick under a 16 MiB cap: without renewal, a pick
    // fails at the cap within sixteen picks, and p2c makes it.
    let limits = PluginLimits { memory_mb: 16, ..PluginLimits::default() };
    let pairs = [("mode", "leak")];
    let (balancer, reasons, metrics) = counted_balancer(artifacts::FAULTY_BALANCER, &pairs, limits, 3);
    let endpoints = plugin_and_p2c_disagree();
    for n in 0..48 {
        assert_eq!(balancer.pick_for(&poison(), &endpoints), Some(1), "pick {n} is the plugin's");
    }
    assert_eq!(taken(&reasons), []);
    let counts = metrics.plugin_counts("lb");
    assert_eq!((counts.calls, counts.faults()), (48, 0), "{counts:?}");
    let renewed = metrics.plugin_renewals("lb");
    assert!((3..48).contains(&renewed), "renewed every few picks, not on every one: {renewed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_from_tokio_worker_threads_never_run_the_plugin_there() {
    // A trapping Rust plugin first prints its panic to stderr through WASI, whose synchronous bindings
    // would panic ("cannot start a runtime from within a runtime") on a tokio worker thread.
    let pairs = [("mode", "trap"), ("trigger", "x-poison")];
    let (balancer, reasons) = balancer_with(artifacts::FAULTY_BALANCER, &pairs, PluginLimits::default(), 3);
    let balancer = Arc::new(balancer);
    let endpoints = plugin_and_p2c_disagree();
    assert_eq!(balancer.pick_for(&poison(), &endpoints), Some(2));
    assert!(matches!(&taken(&reasons)[..], [FallbackReason::Fault(PluginFault::Trapped(_))]));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (balancer, endpoints) = (balancer.clone(), endpoints.clone());
            tokio::spawn(async move { (0..25).map(|_| balancer.pick(&endpoints, None)).collect::<Vec<_>>() })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().iter().all(|&pick| pick == Some(1)));
    }
    assert_eq!(taken(&reasons), []);
}

/// Runs a poisoned `pick_async` on a spinning plugin (1 s deadline) beside another task on a runtime
/// whose every thread the pick could block, and returns in which order the two finished.
async fn spinning_pick_beside_another_task() -> Vec<&'static str> {
    let limits = PluginLimits { timeout_ms: 1_000, ..PluginLimits::default() };
    let pairs = [("mode", "spin"), ("trigger", "x-poison")];
    let (balancer, reasons) = balancer_with(artifacts::FAULTY_BALANCER, &pairs, limits, 3);
    let (done, finished) = flume::unbounded();
    let picked = done.clone();
    let pick = tokio::spawn(async move {
        let pick = balancer.pick_async(&poison(), &plugin_and_p2c_disagree()).await;
        picked.send("pick").unwrap();
        pick
    });
    tokio::task::yield_now().await; // the pick is on its way to the plugin, which spins
    let other = tokio::spawn(async move { done.send("other").unwrap() });
    within(other).await.unwrap();
    assert_eq!(within(pick).await.unwrap(), Some(2), "the spin timed out: p2c picks the cheaper");
    // The plugin times out at its deadline; on a loaded machine the pick's patience may run out first.
    let reasons = taken(&reasons);
    let [FallbackReason::Fault(PluginFault::TimedOut(_)) | FallbackReason::Overdue(_)] = &reasons[..] else {
        panic!("one timeout expected: {reasons:?}")
    };
    finished.drain().collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_plugin_does_not_stall_other_tasks_on_a_current_thread_runtime() {
    assert_eq!(spinning_pick_beside_another_task().await, ["other", "pick"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_spinning_plugin_does_not_stall_other_tasks_on_a_one_worker_runtime() {
    assert_eq!(spinning_pick_beside_another_task().await, ["other", "pick"]);
}

#[tokio::test(flavor = "current_thread")]
async fn awaited_picks_use_the_plugins_answer_and_see_the_message() {
    let pairs = [("mode", "ineligible"), ("trigger", "x-poison")];
    let (balancer, reasons) = balancer_with(artifacts::FAULTY_BALANCER, &pairs, PluginLimits::default(), 3);
    let endpoints = plugin_and_p2c_disagree();
    let clean = Message::new("orders.eu", "{}");
    assert_eq!(within(balancer.pick_async(&clean, &endpoints)).await, Some(1), "the plugin's pick");
    assert_eq!(within(balancer.pick_async(&poison(), &endpoints)).await, Some(2), "p2c's pick");
    assert_eq!(taken(&reasons), [FallbackReason::Invalid { answer: Some(0), endpoints: 3, eligible: 2 }]);
}

#[test]
fn dropping_the_balancer_ends_its_plugin_thread() {
    let engine = Arc::new(PluginEngine::new(None).unwrap());
    let plugin = load(&engine, artifacts::LEAST_LOADED_BALANCER, &[], PluginLimits::default());
    let balancer =
        PluginBalancer::new(engine, Arc::default(), plugin.clone(), vec![address(0)], Box::new(|_| {}))
            .unwrap();
    assert_eq!(balancer.pick(&endpoints(1), None), Some(0));
    assert!(Arc::strong_count(&plugin) > 1, "the thread and its instance hold the plugin");
    drop(balancer);
    // The thread drops its instance and its handle on the plugin as it exits.
    let started = Instant::now();
    while Arc::strong_count(&plugin) > 1 {
        assert!(started.elapsed() < PATIENCE, "the plugin thread did not end");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_plugin_of_another_kind_is_refused() {
    let engine = Arc::new(PluginEngine::new(None).unwrap());
    let plugin = load(&engine, artifacts::HEADER_FILTER, &[], PluginLimits::default());
    assert_eq!(plugin.kind, PluginKind::Filter);
    let error =
        PluginBalancer::new(engine, Arc::default(), plugin, Vec::new(), Box::new(|_| {})).unwrap_err();
    assert_eq!(error.to_string(), "plugin \"lb\": is a filter, not a balancer");
}

/// Mean time of one pick over `rounds` picks, after a warm-up.
fn ns_per_pick(pick: impl Fn() -> Option<usize>, rounds: usize) -> f64 {
    (0..rounds / 10).for_each(|_| _ = black_box(pick()));
    let start = Instant::now();
    (0..rounds).for_each(|_| _ = black_box(pick()));
    start.elapsed().as_nanos() as f64 / rounds as f64
}

#[test]
#[ignore = "a measurement, not a check: run by hand in release mode, see the report it prints"]
fn report_plugin_ns_per_pick() {
    println!("ns per pick through the least-loaded-balancer plugin, one picking thread:");
    println!("  pick:      PluginBalancer::pick (blank head), via the plugin thread");
    println!("  pick_for:  PluginBalancer::pick_for (a message with one header), via the plugin thread");
    println!(
        "  async:     PluginBalancer::pick_async (as destinations pick), awaited on a current-thread runtime"
    );
    println!("  instance:  PluginInstance::pick on the calling thread (the wasm call alone, no thread hop)");
    println!("  p2c-ewma:  the native fallback, for scale");
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "endpoints", "pick", "pick_for", "async", "instance", "p2c-ewma"
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for count in [3, 10] {
        let engine = Arc::new(PluginEngine::new(None).unwrap());
        let plugin = load(&engine, artifacts::LEAST_LOADED_BALANCER, &[], PluginLimits::default());
        let reasons = Reasons::default();
        let seen = reasons.clone();
        let on_fallback = Box::new(move |reason: &FallbackReason| seen.lock().unwrap().push(reason.clone()));
        let addresses = (0..count).map(address).collect();
        let balancer =
            PluginBalancer::new(engine.clone(), Arc::default(), plugin.clone(), addresses, on_fallback)
                .unwrap();
        let mut endpoints = endpoints(count);
        for (n, endpoint) in endpoints.iter_mut().enumerate() {
            endpoint.configured_weight = 1 + n as u32 % 4;
            endpoint.in_flight = (n as u32 * 7) % 5;
            endpoint.latency += Duration::from_millis(n as u64);
        }
        let records: Vec<EndpointRecord> = endpoints
            .iter()
            .enumerate()
            .map(|(n, view)| EndpointRecord {
                index: n as u32,
                address: address(n),
                weight: view.configured_weight,
                in_flight: view.in_flight,
                latency_micros: view.latency.as_micros() as u64,
                healthy: view.eligible,
            })
            .collect();
        let message = Message::new("orders.eu", "{}").with_header("x-tenant", "acme");
        // The blank head `pick` shows: id 0, source 0, priority 0, flags 1 (payload omitted), empty
        // topic, no headers, payload length 0.
        let mut head = vec![0_u8; 13];
        head.push(1);
        head.extend_from_slice(&[0; 12]);
        let instance = std::cell::RefCell::new(PluginInstance::new(&engine, plugin).unwrap());
        let p2c = P2cPeakEwma::with_seed(1);
        let blank = ns_per_pick(|| balancer.pick(black_box(&endpoints), None), 100_000);
        let with_head = ns_per_pick(|| balancer.pick_for(&message, black_box(&endpoints)), 100_000);
        let direct = ns_per_pick(
            || instance.borrow_mut().pick(&head, black_box(&records)).unwrap().map(|index| index as usize),
            100_000,
        );
        let awaited = runtime.block_on(async {
            let rounds = 100_000;
            let start = Instant::now();
            for _ in 0..rounds {
                black_box(balancer.pick_async(&message, black_box(&endpoints)).await);
            }
            start.elapsed().as_nanos() as f64 / f64::from(rounds)
        });
        let native = ns_per_pick(|| p2c.pick(black_box(&endpoints), None), 1_000_000);
        println!("{count:<10} {blank:>10.0} {with_head:>10.0} {awaited:>10.0} {direct:>10.0} {native:>10.1}");
        assert_eq!(taken(&reasons), []);
    }
}
