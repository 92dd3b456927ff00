//! Test support: endpoint lists, pick simulations and the ns-per-pick report.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::{
    Balancer, ConsistentHash, DEFAULT_RTT, EndpointView, LeastInFlight, P2cPeakEwma, RoundRobin, Weighted,
    endpoint_id,
};

/// `count` eligible, idle endpoints of weight 1 at the default RTT, with ids from addresses `10.0.0.N:9000`.
pub(crate) fn endpoints(count: usize) -> Vec<EndpointView> {
    (0..count).map(|n| EndpointView::new(endpoint_id(&format!("10.0.0.{n}:9000")), DEFAULT_RTT)).collect()
}

/// Share of `picks` picks (without a key) that went to each endpoint.
pub(crate) fn shares(balancer: &dyn Balancer, endpoints: &[EndpointView], picks: usize) -> Vec<f64> {
    let mut counts = vec![0usize; endpoints.len()];
    for _ in 0..picks {
        counts[balancer.pick(endpoints, None).expect("an eligible endpoint")] += 1;
    }
    counts.into_iter().map(|count| count as f64 / picks as f64).collect()
}

/// Asserts each share is within `tolerance` × its expected share (relative), and exactly 0 where 0 is expected.
#[track_caller]
pub(crate) fn assert_shares(actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len());
    for (index, (&actual, &expected)) in actual.iter().zip(expected).enumerate() {
        let within =
            if expected == 0.0 { actual == 0.0 } else { (actual - expected).abs() <= tolerance * expected };
        assert!(
            within,
            "endpoint {index}: share {actual:.4}, expected {expected:.4} ± {tolerance:.0e} (shares {actual:?})"
        );
    }
}

/// Mean time of one pick over `rounds` picks, after a warm-up.
fn ns_per_pick(balancer: &dyn Balancer, endpoints: &[EndpointView], keys: &[String], rounds: usize) -> f64 {
    let pick =
        |round: usize| balancer.pick(black_box(endpoints), keys.get(round % keys.len().max(1)).map(|k| &**k));
    (0..rounds / 10).for_each(|round| _ = black_box(pick(round)));
    let start = Instant::now();
    (0..rounds).for_each(|round| _ = black_box(pick(round)));
    start.elapsed().as_nanos() as f64 / rounds as f64
}

#[test]
#[ignore = "a measurement, not a check: run by hand in release mode, see the report it prints"]
fn report_ns_per_pick() {
    let mut endpoints = endpoints(10);
    for (n, endpoint) in endpoints.iter_mut().enumerate() {
        (endpoint.weight, endpoint.configured_weight) = (1 + n as u32 % 4, 1 + n as u32 % 4);
        endpoint.in_flight = (n as u32 * 7) % 5;
        endpoint.latency = DEFAULT_RTT + Duration::from_millis(n as u64);
    }
    let mut one_down = endpoints.clone();
    one_down[0].eligible = false;
    let keys: Vec<String> = (0..1024).map(|n| format!("user-{n}")).collect();
    let cases: [(&str, Box<dyn Balancer>, &[String]); 6] = [
        ("round-robin", Box::new(RoundRobin::new()), &[]),
        ("weighted", Box::new(Weighted::new()), &[]),
        ("least-inflight", Box::new(LeastInFlight::new()), &[]),
        ("p2c-ewma", Box::new(P2cPeakEwma::with_seed(1)), &[]),
        ("hash:header (key)", Box::new(ConsistentHash::with_fallback(P2cPeakEwma::with_seed(1))), &keys),
        ("hash:header (no key)", Box::new(ConsistentHash::with_fallback(P2cPeakEwma::with_seed(1))), &[]),
    ];
    println!("ns per pick, 10 endpoints (weights 1-4), one thread:");
    println!("{:<22} {:>10} {:>16}", "balancer", "all up", "first ineligible");
    for (name, balancer, keys) in &cases {
        let all_up = ns_per_pick(&**balancer, &endpoints, keys, 5_000_000);
        let one_ineligible = ns_per_pick(&**balancer, &one_down, keys, 5_000_000);
        println!("{name:<22} {all_up:>10.1} {one_ineligible:>16.1}");
    }
}
