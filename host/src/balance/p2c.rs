//! Power of two choices over peak-EWMA cost: the default balancer (tower, linkerd).

use super::Balancer;
use super::rng::SplitMix;
use super::view::{EndpointView, eligible_count, nth_eligible};

/// Picks two distinct eligible endpoints at random and takes the cheaper, where cost is the latency
/// estimate times `in_flight + 1` (tower's `PeakEwma` load) per unit of weight; on a tie, the first
/// drawn. Weights are equal but while an endpoint slowly starts after recovering: its lower weight makes
/// it dearer, so it gets less traffic until its ramp ends.
///
/// Comparing two random endpoints, rather than all of them, avoids the herd a global minimum causes
/// when many pickers see the same stale snapshot, and costs the same for 3 endpoints or 3 000. A slow
/// endpoint still gets traffic once the others' queues make them costlier, and while it gets none its
/// [`PeakEwma`](super::PeakEwma) estimate decays, so it is tried again. With one eligible endpoint, it
/// is picked.
///
/// The random generator is lock-free (one atomic add per draw), seeded from entropy by
/// [`new`](Self::new) or fixed by [`with_seed`](Self::with_seed) for reproducible simulations.
#[derive(Debug)]
pub struct P2cPeakEwma {
    /// Draws the two candidates.
    rng: SplitMix,
}

impl P2cPeakEwma {
    /// A p2c balancer seeded from the operating system's entropy.
    pub fn new() -> Self {
        P2cPeakEwma { rng: SplitMix::from_entropy() }
    }

    /// A p2c balancer whose draws are fixed by `seed`.
    pub fn with_seed(seed: u64) -> Self {
        P2cPeakEwma { rng: SplitMix::with_seed(seed) }
    }
}

impl Default for P2cPeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

/// tower's cost of sending one more request to `endpoint`, latency estimate × (in flight + 1), per
/// unit of weight.
fn cost(endpoint: &EndpointView) -> f64 {
    endpoint.latency.as_nanos() as f64 * (f64::from(endpoint.in_flight) + 1.0)
        / f64::from(endpoint.effective_weight())
}

impl Balancer for P2cPeakEwma {
    fn pick(&self, endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
        let eligible = eligible_count(endpoints);
        match eligible {
            0 => None,
            1 => nth_eligible(endpoints, eligible, 0),
            _ => {
                let a = self.draw(endpoints, eligible, None)?;
                let b = self.draw(endpoints, eligible, Some(a))?;
                Some(if cost(&endpoints[a]) <= cost(&endpoints[b]) { a } else { b })
            }
        }
    }
}

/// Random positions tried before [`P2cPeakEwma::draw`] walks the list instead.
const DRAWS: usize = 4;

impl P2cPeakEwma {
    /// A uniformly random eligible endpoint other than `other`, given that `eligible` endpoints are
    /// eligible and `other`, if any, is one of them.
    ///
    /// A few draws over all positions, rejecting the ineligible and `other`, find one without walking the
    /// list while most endpoints are eligible; when they all miss, a walk to a random eligible one. Both
    /// ways choose uniformly, so their mix does too.
    fn draw(&self, endpoints: &[EndpointView], eligible: usize, other: Option<usize>) -> Option<usize> {
        for _ in 0..DRAWS {
            let index = self.rng.below(endpoints.len());
            if endpoints[index].eligible && Some(index) != other {
                return Some(index);
            }
        }
        let nth = self.rng.below(eligible - usize::from(other.is_some()));
        endpoints
            .iter()
            .enumerate()
            .filter(|&(index, e)| e.eligible && Some(index) != other)
            .nth(nth)
            .map(|(index, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::sim::{assert_shares, endpoints, shares};

    #[test]
    fn equal_endpoints_share_evenly_within_three_percent() {
        // 10 000 expected picks per endpoint: one standard deviation is ~1 %, so 3 % is a 3-sigma bound
        // on a fixed seed that also holds for other seeds.
        let balancer = P2cPeakEwma::with_seed(11);
        let endpoints = endpoints(10);
        assert_shares(&shares(&balancer, &endpoints, 100_000), &[0.1; 10], 0.03);
    }

    #[test]
    fn slow_idle_endpoint_loses_every_comparison_with_idle_fast_ones() {
        // An endpoint slower than all others wins no comparison, and p2c never draws it twice, so it gets
        // nothing; the other nine share evenly (1/9 each).
        let balancer = P2cPeakEwma::with_seed(12);
        let mut endpoints = endpoints(10);
        endpoints[4].latency = Duration::from_millis(300);
        let mut expected = [1.0 / 9.0; 10];
        expected[4] = 0.0;
        assert_shares(&shares(&balancer, &endpoints, 100_000), &expected, 0.03);
    }

    #[test]
    fn an_endpoint_of_lower_weight_is_dearer_until_the_others_are_busier() {
        // Weight 10 against 100 (slow start at 10 %): idle, it loses every comparison; against
        // endpoints with 10 requests in flight each, it wins them.
        let balancer = P2cPeakEwma::with_seed(14);
        let mut endpoints = endpoints(10);
        endpoints.iter_mut().for_each(|endpoint| endpoint.weight = 100);
        endpoints[4].weight = 10;
        let mut expected = [1.0 / 9.0; 10];
        expected[4] = 0.0;
        assert_shares(&shares(&balancer, &endpoints, 100_000), &expected, 0.03);
        endpoints
            .iter_mut()
            .filter(|endpoint| endpoint.weight == 100)
            .for_each(|endpoint| endpoint.in_flight = 10);
        let picks = shares(&balancer, &endpoints, 100_000);
        assert!(picks[4] > 0.15, "it wins every comparison it is drawn into: {picks:?}");
    }

    #[test]
    fn slow_endpoint_with_an_empty_queue_still_beats_a_busy_fast_one() {
        // Cost is latency × (in flight + 1): 100 ms × 1 beats 30 ms × 5.
        let balancer = P2cPeakEwma::with_seed(13);
        let mut endpoints = endpoints(2);
        endpoints[0].latency = Duration::from_millis(100);
        endpoints[1].in_flight = 4;
        assert!((0..100).all(|_| balancer.pick(&endpoints, None) == Some(0)));
    }

    #[test]
    fn load_feedback_sends_a_slow_endpoint_less_than_its_capacity_share_but_not_nothing() {
        // A closed loop near saturation: 3 requests arrive per tick; three fast endpoints complete one
        // request per tick each, a 4x slower one (its estimate 4x higher) one every 4 ticks. Its even
        // share would be 25 %, its share of the capacity 0.25 / 3.25 = 7.7 %. p2c sends it less than the
        // latter (idle, it wins only against a fast endpoint with 4 or more queued: 30 ms x 5 > 120 ms),
        // but more than nothing: the fast endpoints' queues do make them costlier.
        let balancer = P2cPeakEwma::with_seed(14);
        let mut endpoints = endpoints(4);
        endpoints[0].latency = Duration::from_millis(120);
        let mut picked = [0u32; 4];
        for tick in 0u32..33_334 {
            for _ in 0..3 {
                let index = balancer.pick(&endpoints, None).unwrap();
                endpoints[index].in_flight += 1;
                picked[index] += 1;
            }
            for (position, endpoint) in endpoints.iter_mut().enumerate() {
                if position != 0 || tick % 4 == 0 {
                    endpoint.in_flight = endpoint.in_flight.saturating_sub(1);
                }
            }
        }
        let slow_share = f64::from(picked[0]) / f64::from(picked.iter().sum::<u32>());
        assert!((0.005..0.077).contains(&slow_share), "slow endpoint share {slow_share}, picks {picked:?}");
    }

    #[test]
    fn single_eligible_endpoint_is_picked() {
        let balancer = P2cPeakEwma::with_seed(15);
        let mut endpoints = endpoints(3);
        endpoints[0].eligible = false;
        endpoints[2].eligible = false;
        assert!((0..100).all(|_| balancer.pick(&endpoints, None) == Some(1)));
    }

    #[test]
    fn ineligible_endpoints_are_never_picked() {
        let balancer = P2cPeakEwma::with_seed(16);
        let mut endpoints = endpoints(6);
        endpoints[1].eligible = false;
        endpoints[5].eligible = false;
        endpoints[1].latency = Duration::ZERO;
        let expected = [0.25, 0.0, 0.25, 0.25, 0.25, 0.0];
        assert_shares(&shares(&balancer, &endpoints, 100_000), &expected, 0.03);
    }

    #[test]
    fn few_eligible_endpoints_among_many_are_drawn_uniformly() {
        // 3 of 12 eligible: random positions miss often, so the walk after four misses is exercised too.
        // Equal costs make the first drawn win, so each eligible endpoint is due a third.
        let balancer = P2cPeakEwma::with_seed(18);
        let mut endpoints = endpoints(12);
        endpoints.iter_mut().enumerate().for_each(|(n, endpoint)| endpoint.eligible = n % 5 == 0);
        let mut expected = [0.0; 12];
        [0, 5, 10].iter().for_each(|&n| expected[n] = 1.0 / 3.0);
        assert_shares(&shares(&balancer, &endpoints, 100_000), &expected, 0.03);
    }

    #[test]
    fn no_eligible_endpoint_picks_none() {
        let balancer = P2cPeakEwma::with_seed(17);
        let mut endpoints = endpoints(2);
        endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
        assert_eq!(balancer.pick(&endpoints, None), None);
        assert_eq!(balancer.pick(&[], None), None);
    }
}
