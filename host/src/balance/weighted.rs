//! Weighted: smooth weighted round-robin, as nginx interleaves its upstreams.

use std::sync::{Mutex, PoisonError};

use super::Balancer;
use super::view::EndpointView;

/// Picks eligible endpoints in proportion to their weights, interleaved as evenly as possible.
///
/// nginx's smooth weighted round-robin: each pick adds every eligible endpoint's weight to its running
/// score, picks the highest score (the first on a tie) and takes the total weight off the winner. Over any
/// `Σ weights` consecutive picks each endpoint gets exactly its weight's worth, and the heavy ones are spread
/// out: weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`. Ineligible endpoints are skipped and
/// keep their score, as nginx does for a down peer.
///
/// The scores sit behind a [`Mutex`] rather than in per-endpoint atomics because one pick reads and
/// writes all of them as one step: with separate atomics two concurrent picks could both see the same
/// leader and both pick it, breaking the interleaving the algorithm exists for. The lock is held for
/// one pass of additions over the endpoints (tens of nanoseconds for ten), never across anything else.
#[derive(Debug, Default)]
pub struct Weighted {
    /// The running scores, for the endpoint list they were computed for.
    scores: Mutex<Scores>,
}

/// Running scores, and the identities of the endpoints they belong to.
#[derive(Debug, Default)]
struct Scores {
    /// `EndpointView::id` of each endpoint, in slice order.
    ids: Vec<u64>,
    /// Running score of each endpoint, in slice order.
    current: Vec<i64>,
}

impl Weighted {
    /// A smooth weighted round-robin balancer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Scores {
    /// Starts the scores over when the endpoint list is not the one they were kept for.
    fn follow(&mut self, endpoints: &[EndpointView]) {
        let same = self.ids.len() == endpoints.len()
            && self.ids.iter().zip(endpoints).all(|(&id, endpoint)| id == endpoint.id);
        if !same {
            self.ids = endpoints.iter().map(|endpoint| endpoint.id).collect();
            self.current = vec![0; endpoints.len()];
        }
    }
}

impl Balancer for Weighted {
    fn pick(&self, endpoints: &[EndpointView], _key: Option<&str>) -> Option<usize> {
        let mut scores = self.scores.lock().unwrap_or_else(PoisonError::into_inner);
        scores.follow(endpoints);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (index, endpoint) in endpoints.iter().enumerate().filter(|(_, endpoint)| endpoint.eligible) {
            let weight = i64::from(endpoint.effective_weight());
            scores.current[index] += weight;
            total += weight;
            if best.is_none_or(|best| scores.current[index] > scores.current[best]) {
                best = Some(index);
            }
        }
        let best = best?;
        scores.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::sim::{assert_shares, endpoints, shares};

    fn weighted(weights: &[u32]) -> Vec<EndpointView> {
        let mut endpoints = endpoints(weights.len());
        endpoints.iter_mut().zip(weights).for_each(|(endpoint, &weight)| endpoint.weight = weight);
        endpoints
    }

    #[test]
    fn heavy_endpoints_are_interleaved_not_bunched() {
        let balancer = Weighted::new();
        let endpoints = weighted(&[5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| balancer.pick(&endpoints, None).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn hundred_thousand_picks_follow_weights_within_one_percent() {
        let balancer = Weighted::new();
        let endpoints = weighted(&[1, 2, 3, 4]);
        assert_shares(&shares(&balancer, &endpoints, 100_000), &[0.1, 0.2, 0.3, 0.4], 0.01);
    }

    #[test]
    fn ineligible_endpoints_are_never_picked_and_the_rest_keep_their_proportions() {
        let balancer = Weighted::new();
        let mut endpoints = weighted(&[1, 2, 3, 4]);
        endpoints[2].eligible = false;
        let expected = [1.0 / 7.0, 2.0 / 7.0, 0.0, 4.0 / 7.0];
        assert_shares(&shares(&balancer, &endpoints, 100_000), &expected, 0.01);
    }

    #[test]
    fn changed_endpoint_list_starts_the_scores_over() {
        let balancer = Weighted::new();
        balancer.pick(&weighted(&[3, 1]), None);
        let mut replaced = weighted(&[1, 1]);
        replaced[0].id = 99;
        let picks: Vec<_> = (0..2).map(|_| balancer.pick(&replaced, None).unwrap()).collect();
        assert_eq!(picks, [0, 1]);
    }

    #[test]
    fn no_eligible_endpoint_picks_none() {
        let balancer = Weighted::new();
        let mut endpoints = weighted(&[2, 2]);
        endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
        assert_eq!(balancer.pick(&endpoints, None), None);
        assert_eq!(balancer.pick(&[], None), None);
    }
}
