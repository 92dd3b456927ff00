//! Consistent hashing on a key (ketama): the same key goes to the same endpoint while it is there.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Balancer;
use super::hash::{GOLDEN_GAMMA, mix64, stable_hash};
use super::p2c::P2cPeakEwma;
use super::view::{EndpointView, eligible_count};

/// Points each endpoint puts on the ring per unit of weight, as nginx's and Pingora's ketama do.
const POINTS_PER_WEIGHT: u64 = 160;

/// Most points a ring holds (4 MiB): beyond it (configured weights adding up to more than 1638) every
/// endpoint's share of points is scaled down alike, and so an endpoint added to or removed from the list
/// moves some keys between the others too.
const MAX_POINTS: u64 = 1 << 18;

/// Sends each key to the endpoint that owns its place on a hash ring (ketama), so a key keeps its
/// endpoint, and only the keys of an endpoint that leaves or joins move (about 1/N of them).
///
/// Each endpoint puts 160 × its [configured weight](EndpointView::configured_weight) points on a ring
/// of 64-bit hashes, placed by its [`id`](EndpointView::id). Slow start, which scales only
/// [`weight`](EndpointView::weight), leaves the ring alone: a change of one endpoint's share would move
/// keys between endpoints that stay. A key goes to the owner of the first point at or after its hash,
/// walking on past ineligible owners, so the keys of an ejected endpoint spread over the others and come
/// back when it is readmitted. Hashes are [stable](super::endpoint_id) across processes and platforms:
/// every host of a fleet sends a key to the same endpoint.
///
/// The ring is built on the first pick and rebuilt only when the endpoints' ids or configured weights
/// change (a few tens of microseconds for ten endpoints); picks read it through an [`ArcSwap`], without
/// a lock. A pick without a key goes to the fallback balancer, [`P2cPeakEwma`] unless set otherwise.
pub struct ConsistentHash {
    /// The ring for the endpoint list last seen; swapped whole when that list changes.
    ring: ArcSwap<Ring>,
    /// Picks for messages that have no key.
    fallback: Box<dyn Balancer>,
}

/// A ketama ring, and the endpoints it was built for.
#[derive(Debug, Default)]
struct Ring {
    /// `(id, configured weight)` of each endpoint, in the slice order the ring's slots refer to.
    members: Vec<(u64, u32)>,
    /// `(hash, slot)` sorted by hash: the endpoint at position `slot` owns the arc ending at `hash`.
    points: Vec<(u64, u32)>,
}

impl ConsistentHash {
    /// A consistent-hash balancer that sends keyless messages to a [`P2cPeakEwma`] seeded from entropy.
    pub fn new() -> Self {
        Self::with_fallback(P2cPeakEwma::new())
    }

    /// A consistent-hash balancer that sends keyless messages to `fallback`.
    pub fn with_fallback(fallback: impl Balancer + 'static) -> Self {
        ConsistentHash { ring: ArcSwap::from_pointee(Ring::default()), fallback: Box::new(fallback) }
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ConsistentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring.load();
        f.debug_struct("ConsistentHash")
            .field("endpoints", &ring.members.len())
            .field("points", &ring.points.len())
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// The ring of `endpoints`: 160 points per unit of configured weight each, scaled down alike past
    /// [`MAX_POINTS`].
    fn build(endpoints: &[EndpointView]) -> Ring {
        let members: Vec<_> = endpoints.iter().map(member).collect();
        let wanted = |weight: u32| POINTS_PER_WEIGHT * u64::from(weight);
        let total: u64 = members.iter().map(|&(_, weight)| wanted(weight)).sum();
        let mut owners = Vec::with_capacity(total.min(MAX_POINTS) as usize + members.len());
        for (slot, &(id, weight)) in members.iter().enumerate() {
            let count = if total > MAX_POINTS {
                (wanted(weight) * MAX_POINTS / total).max(1)
            } else {
                wanted(weight)
            };
            // The endpoint's points are SplitMix64's output stream seeded with its id.
            for replica in 1..=count {
                let hash = mix64(id.wrapping_add(replica.wrapping_mul(GOLDEN_GAMMA)));
                owners.push((hash, id, slot as u32));
            }
        }
        // Ties on a hash (rare) go to the lower id, not the earlier slot, so list order never matters.
        owners.sort_unstable_by_key(|&(hash, id, _)| (hash, id));
        let points = owners.into_iter().map(|(hash, _, slot)| (hash, slot)).collect();
        Ring { members, points }
    }

    /// Whether this ring was built for exactly these endpoints, in this order, with these configured
    /// weights.
    fn is_for(&self, endpoints: &[EndpointView]) -> bool {
        self.members.len() == endpoints.len()
            && self.members.iter().zip(endpoints).all(|(&built, endpoint)| built == member(endpoint))
    }

    /// The eligible owner of the first point at or after `hash`, walking the ring once at most.
    fn owner(&self, hash: u64, endpoints: &[EndpointView]) -> Option<usize> {
        let start = self.points.partition_point(|&(point, _)| point < hash);
        let (after, before) = self.points.split_at(start);
        before.iter().chain(after).map(|&(_, slot)| slot as usize).find(|&slot| endpoints[slot].eligible)
    }
}

/// What the ring of `endpoint` is built from: its id and configured weight.
fn member(endpoint: &EndpointView) -> (u64, u32) {
    (endpoint.id, endpoint.effective_configured_weight())
}

impl Balancer for ConsistentHash {
    fn pick(&self, endpoints: &[EndpointView], key: Option<&str>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(endpoints, None);
        };
        if eligible_count(endpoints) == 0 {
            return None;
        }
        let hash = stable_hash(key);
        let ring = self.ring.load();
        if ring.is_for(endpoints) {
            return ring.owner(hash, endpoints);
        }
        // Two pickers may both rebuild after a change; they build the same ring, and the last store wins.
        let ring = Arc::new(Ring::build(endpoints));
        self.ring.store(Arc::clone(&ring));
        ring.owner(hash, endpoints)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::balance::round_robin::RoundRobin;
    use crate::balance::sim::endpoints;

    const KEYS: usize = 100_000;

    /// The id of the endpoint each of `KEYS` keys goes to.
    fn owners(balancer: &ConsistentHash, endpoints: &[EndpointView]) -> Vec<u64> {
        (0..KEYS)
            .map(|n| endpoints[balancer.pick(endpoints, Some(&format!("user-{n}"))).unwrap()].id)
            .collect()
    }

    fn shares(owners: &[u64]) -> HashMap<u64, f64> {
        let mut shares = HashMap::new();
        owners.iter().for_each(|&id| *shares.entry(id).or_default() += 1.0 / owners.len() as f64);
        shares
    }

    #[test]
    fn same_key_maps_to_the_same_endpoint_across_calls_and_fresh_rings() {
        let endpoints = endpoints(10);
        let first = owners(&ConsistentHash::with_fallback(RoundRobin::new()), &endpoints);
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        assert_eq!(owners(&balancer, &endpoints), first);
        assert_eq!(owners(&balancer, &endpoints), first);
    }

    #[test]
    fn endpoint_order_does_not_change_where_keys_go() {
        let endpoints = endpoints(10);
        let mut reversed = endpoints.clone();
        reversed.reverse();
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        assert_eq!(owners(&balancer, &reversed), owners(&balancer, &endpoints));
    }

    #[test]
    fn keys_are_pinned_to_endpoints_across_versions_and_platforms() {
        // Changing the hash, the points or the walk would send every key elsewhere in a running fleet:
        // this pins a few answers, computed once, so such a change cannot happen unnoticed.
        let endpoints = endpoints(10);
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        let picks: Vec<_> = ["alice", "bob", "carol", "dave", "erin"]
            .iter()
            .map(|key| balancer.pick(&endpoints, Some(key)).unwrap())
            .collect();
        assert_eq!(picks, PINNED);
    }
    const PINNED: [usize; 5] = [8, 0, 2, 8, 5];

    #[test]
    fn removing_one_of_ten_endpoints_moves_only_its_own_keys_about_a_tenth() {
        let endpoints = endpoints(10);
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        let before = owners(&balancer, &endpoints);
        let removed = endpoints[3].id;
        let remaining: Vec<_> = endpoints.iter().copied().filter(|e| e.id != removed).collect();
        let after = owners(&balancer, &remaining);
        let moved: Vec<_> = (0..KEYS).filter(|&n| before[n] != after[n]).collect();
        assert!(moved.iter().all(|&n| before[n] == removed), "a key of a remaining endpoint moved");
        let share = moved.len() as f64 / KEYS as f64;
        assert!((0.05..=0.15).contains(&share), "{share} of the keys moved");
    }

    #[test]
    fn keys_never_move_between_two_endpoints_while_a_third_slowly_starts() {
        // Configured weight 10 each, as the destination core shows it: a weight of 100 per unit, the
        // third's scaled down to 10 % and back as it slowly starts after a recovery.
        let mut endpoints = endpoints(3);
        endpoints.iter_mut().for_each(|endpoint| (endpoint.weight, endpoint.configured_weight) = (1000, 10));
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        let before = owners(&balancer, &endpoints);
        let third = endpoints[2].id;
        for weight in [100, 550, 1000] {
            endpoints[2].weight = weight;
            let after = owners(&balancer, &endpoints);
            let moved =
                (0..KEYS).filter(|&n| before[n] != third && after[n] != third && before[n] != after[n]);
            assert_eq!(moved.count(), 0, "keys moved between the other two with the third at {weight}");
        }
    }

    #[test]
    fn equal_weights_share_keys_roughly_evenly() {
        // 160 points each: an endpoint's share of the ring varies by about 1/√160 ≈ 8 % of its due.
        let endpoints = endpoints(10);
        let shares = shares(&owners(&ConsistentHash::with_fallback(RoundRobin::new()), &endpoints));
        assert!(shares.values().all(|share| (0.08..0.12).contains(share)), "{shares:?}");
    }

    #[test]
    fn weights_skew_the_shares_roughly_proportionally() {
        let mut endpoints = endpoints(4);
        endpoints
            .iter_mut()
            .zip([1, 2, 3, 4])
            .for_each(|(endpoint, weight)| endpoint.configured_weight = weight);
        let shares = shares(&owners(&ConsistentHash::with_fallback(RoundRobin::new()), &endpoints));
        for endpoint in &endpoints {
            let due = f64::from(endpoint.configured_weight) / 10.0;
            let share = shares[&endpoint.id];
            assert!((share - due).abs() < 0.2 * due, "weight {}: share {share}", endpoint.configured_weight);
        }
    }

    #[test]
    fn keys_of_an_ineligible_endpoint_go_elsewhere_and_come_back() {
        let mut endpoints = endpoints(10);
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        let before = owners(&balancer, &endpoints);
        endpoints[6].eligible = false;
        let ejected = owners(&balancer, &endpoints);
        assert!(!ejected.contains(&endpoints[6].id));
        assert!((0..KEYS).all(|n| before[n] == endpoints[6].id || before[n] == ejected[n]));
        endpoints[6].eligible = true;
        assert_eq!(owners(&balancer, &endpoints), before);
    }

    #[test]
    fn message_without_a_key_goes_to_the_fallback() {
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        let endpoints = endpoints(3);
        let picks: Vec<_> = (0..3).map(|_| balancer.pick(&endpoints, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn no_eligible_endpoint_picks_none() {
        let balancer = ConsistentHash::with_fallback(RoundRobin::new());
        let mut endpoints = endpoints(2);
        endpoints.iter_mut().for_each(|endpoint| endpoint.eligible = false);
        assert_eq!(balancer.pick(&endpoints, Some("alice")), None);
        assert_eq!(balancer.pick(&endpoints, None), None);
        assert_eq!(balancer.pick(&[], Some("alice")), None);
    }

    /// The share of the hash space each slot of `ring` owns: the arcs ending at its points.
    fn arc_shares(ring: &Ring, slots: usize) -> Vec<f64> {
        let mut shares = vec![0.0; slots];
        let last = ring.points.last().expect("a point").0;
        let mut previous = last;
        for &(hash, slot) in &ring.points {
            shares[slot as usize] += hash.wrapping_sub(previous) as f64 / 2f64.powi(64);
            previous = hash;
        }
        shares
    }

    #[test]
    fn a_weight_of_1_beside_5000_keeps_its_share_on_a_scaled_down_ring() {
        // 160 × 5001 points wanted, more than the cap: both are scaled down, the light one to 52
        // points (from 160) of its own, so its share varies more (about 1/√52) but stays its due.
        let mut endpoints = endpoints(2);
        (endpoints[0].configured_weight, endpoints[1].configured_weight) = (1, 5000);
        let ring = Ring::build(&endpoints);
        assert!(ring.points.len() as u64 <= MAX_POINTS + 2, "{} points", ring.points.len());
        let light = ring.points.iter().filter(|&&(_, slot)| slot == 0).count() as f64;
        let heavy = ring.points.len() as f64 - light;
        assert!((heavy / light / 5000.0 - 1.0).abs() < 0.01, "points {light} : {heavy}");
        let (share, due) = (arc_shares(&ring, 2)[0], 1.0 / 5001.0);
        assert!((share - due).abs() < 0.3 * due, "share {share}, due {due}");
    }

    #[test]
    fn huge_weights_are_scaled_down_to_the_ring_cap_keeping_proportions() {
        let mut endpoints = endpoints(2);
        endpoints[0].configured_weight = u32::MAX;
        endpoints[1].configured_weight = u32::MAX / 3;
        let ring = Ring::build(&endpoints);
        assert!(ring.points.len() as u64 <= MAX_POINTS + 2);
        let first = ring.points.iter().filter(|&&(_, slot)| slot == 0).count() as f64;
        assert!((first / ring.points.len() as f64 - 0.75).abs() < 0.001);
    }
}
