//! Least-in-flight: the endpoint with the fewest requests outstanding.

use std::cmp::Ordering;

use super::Balancer;
use super::round_robin::RoundRobin;
use super::view::EndpointView;

/// Picks the eligible endpoint with the fewest requests in flight; endpoints tied for fewest take turns.
///
/// Weights and latencies are ignored: this is HAProxy's `leastconn` without weights, and suits
/// endpoints of equal capacity whose requests vary in length. Use [`P2cPeakEwma`](super::P2cPeakEwma)
/// when endpoints differ in speed, [`Weighted`](super::Weighted) when they differ in capacity.
///
/// It reads every view on every pick, so its cost grows with the number of endpoints (a few nanoseconds
/// each); p2c looks at two.
#[derive(Debug, Default)]
pub struct LeastInFlight {
    /// Breaks ties: without it the first of several idle endpoints would take every pick.
    ties: RoundRobin,
}

impl LeastInFlight {
    /// A least-in-flight balancer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for LeastInFlight {
    fn pick(&self, endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
        // One pass finds the fewest and how many endpoints share it, a second finds the tied one whose turn it is.
        let (mut fewest, mut tied) = (u32::MAX, 0);
        for endpoint in endpoints.iter().filter(|endpoint| endpoint.eligible) {
            match endpoint.in_flight.cmp(&fewest) {
                Ordering::Less => (fewest, tied) = (endpoint.in_flight, 1),
                Ordering::Equal => tied += 1,
                Ordering::Greater => {}
            }
        }
        if tied == 0 {
            return None;
        }
        let turn = self.ties.next_turn() % tied;
        endpoints
            .iter()
            .enumerate()
            .filter(|(_, endpoint)| endpoint.eligible && endpoint.in_flight == fewest)
            .nth(turn)
            .map(|(index, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::rng::SplitMix;
    use crate::balance::sim::{assert_shares, endpoints, shares};

    #[test]
    fn always_picks_an_endpoint_with_the_fewest_in_flight() {
        let balancer = LeastInFlight::new();
        let rng = SplitMix::with_seed(3);
        let mut endpoints = endpoints(10);
        for _ in 0..100_000 {
            for endpoint in &mut endpoints {
                endpoint.in_flight = rng.below(8) as u32;
                endpoint.eligible = rng.below(10) != 0;
            }
            let fewest = endpoints.iter().filter(|endpoint| endpoint.eligible).map(|e| e.in_flight).min();
            let picked = balancer.pick(&endpoints, None);
            assert_eq!(picked.map(|index| endpoints[index].in_flight), fewest);
            assert!(picked.is_none_or(|index| endpoints[index].eligible));
        }
    }

    #[test]
    fn tied_endpoints_take_turns_within_one_percent() {
        let balancer = LeastInFlight::new();
        let mut endpoints = endpoints(4);
        endpoints[1].in_flight = 1;
        assert_shares(&shares(&balancer, &endpoints, 100_000), &[1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0], 0.01);
    }

    #[test]
    fn picks_follow_in_flight_counts_as_requests_start_and_finish() {
        let balancer = LeastInFlight::new();
        let mut endpoints = endpoints(3);
        for _ in 0..3 {
            let index = balancer.pick(&endpoints, None).unwrap();
            endpoints[index].in_flight += 1;
        }
        assert!(endpoints.iter().all(|endpoint| endpoint.in_flight == 1));
        endpoints[2].in_flight = 0;
        assert_eq!(balancer.pick(&endpoints, None), Some(2));
    }

    #[test]
    fn no_eligible_endpoint_picks_none() {
        let balancer = LeastInFlight::new();
        let mut endpoints = endpoints(2);
        endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
        assert_eq!(balancer.pick(&endpoints, None), None);
        assert_eq!(balancer.pick(&[], None), None);
    }
}
