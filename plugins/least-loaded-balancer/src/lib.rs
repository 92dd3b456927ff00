//! A balancer that picks the healthy endpoint with the least weighted load:
//! the lowest `(in_flight + 1) * latency / weight`, ties going to the
//! earlier endpoint. No healthy endpoint: no pick.
//!
//! A latency of 0 (an endpoint not yet measured) counts as 1 µs and a
//! weight of 0 as 1. No config keys.

use switchyard_plugin::{Balancer, Endpoint, Message, export_balancer};

struct LeastLoadedBalancer;

/// `(in_flight + 1) * latency` and the weight, compared as fractions.
fn load(endpoint: &Endpoint) -> (u128, u128) {
    let work = u128::from(endpoint.in_flight) + 1;
    let latency = u128::from(endpoint.latency_micros.max(1));
    (work * latency, u128::from(endpoint.weight.max(1)))
}

impl Balancer for LeastLoadedBalancer {
    fn pick(_message: &Message<'_>, endpoints: &[Endpoint]) -> Option<u32> {
        let mut best: Option<(&Endpoint, (u128, u128))> = None;
        for endpoint in endpoints.iter().filter(|endpoint| endpoint.healthy) {
            let (cost, weight) = load(endpoint);
            // cost / weight < best_cost / best_weight, without division.
            if best.is_none_or(|(_, (best_cost, best_weight))| cost * best_weight < best_cost * weight) {
                best = Some((endpoint, (cost, weight)));
            }
        }
        best.map(|(endpoint, _)| endpoint.index)
    }
}

export_balancer!(LeastLoadedBalancer);
