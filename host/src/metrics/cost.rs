//! What metrics cost a message, measured apart from the pipeline: the
//! routed benchmark's throughput swings more between runs than this cost.

use super::{Metrics, Settled};
use std::hint::black_box;
use std::time::Instant;

/// Messages per timed run; the route's counter moves once per batch of 64.
const MESSAGES: u32 = 2_000_000;
const BATCH: u32 = 64;
const RUNS: usize = 7;

/// Median ns per message of the counting a delivered message gets on a
/// route without stages: accepted (per batch), settled with its latency,
/// and the destination's delivery counter.
fn ns_per_message(enabled: bool) -> f64 {
    let metrics = std::sync::Arc::new(Metrics::new(enabled));
    let route = metrics.route("orders");
    let deliveries = metrics.deliveries("out");
    let accepted_at = Instant::now();
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for n in 0..MESSAGES {
                if n % BATCH == 0 {
                    route.accepted(black_box(BATCH as usize));
                }
                route.settled(Settled::Delivered, black_box(accepted_at), Instant::now());
                deliveries.count(true);
            }
            start.elapsed().as_nanos() as f64 / f64::from(MESSAGES)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

#[test]
#[ignore = "a measurement, not a check: cargo test --release -p switchyard --lib report_metrics_ns -- --ignored --nocapture"]
fn report_metrics_ns_per_message() {
    let (on, off) = (ns_per_message(true), ns_per_message(false));
    println!("metrics per delivered message, one thread, median of {RUNS} runs of {MESSAGES}:");
    println!("  on {on:.1} ns, off {off:.1} ns: metrics add {:.1} ns", on - off);
}
