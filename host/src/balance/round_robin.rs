//! Round-robin: each eligible endpoint in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Balancer;
use super::view::{EndpointView, eligible_count, nth_eligible};

/// Picks the eligible endpoints in turn, ignoring weights and load.
///
/// The turn counts eligible endpoints only: with one of three endpoints ejected, the other two get half
/// the traffic each, rather than the endpoint after the ejected one getting its turn as well.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// Picks made so far; `fetch_add` hands concurrent pickers different turns without a lock.
    turn: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin balancer whose first pick is the first eligible endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter's next value: shared with [`LeastInFlight`](super::LeastInFlight) to break ties.
    pub(crate) fn next_turn(&self) -> usize {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
        let eligible = eligible_count(endpoints);
        if eligible == 0 {
            return None;
        }
        nth_eligible(endpoints, eligible, self.next_turn() % eligible)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::sim::{assert_shares, endpoints, shares};

    #[test]
    fn picks_each_endpoint_in_turn() {
        let balancer = RoundRobin::new();
        let endpoints = endpoints(3);
        let picks: Vec<_> = (0..6).map(|_| balancer.pick(&endpoints, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn hundred_thousand_picks_share_evenly_within_one_percent() {
        let balancer = RoundRobin::new();
        let endpoints = endpoints(7);
        assert_shares(&shares(&balancer, &endpoints, 100_000), &[1.0 / 7.0; 7], 0.01);
    }

    #[test]
    fn ineligible_endpoints_are_never_picked_and_the_rest_share_evenly() {
        let balancer = RoundRobin::new();
        let mut endpoints = endpoints(5);
        endpoints[0].eligible = false;
        endpoints[3].eligible = false;
        assert_shares(
            &shares(&balancer, &endpoints, 100_000),
            &[0.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0],
            0.01,
        );
    }

    #[test]
    fn no_eligible_endpoint_picks_none() {
        let balancer = RoundRobin::new();
        let mut endpoints = endpoints(2);
        endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
        assert_eq!(balancer.pick(&endpoints, None), None);
        assert_eq!(balancer.pick(&[], None), None);
    }
}
