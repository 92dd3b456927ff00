//! What a balancer sees of one endpoint, and the walks over eligible endpoints every algorithm shares.

use std::time::Duration;

/// A snapshot of one endpoint, taken by the destination core just before a pick.
///
/// It mirrors the `endpoint` record the WASM `balancer` world receives (whose `weight` is
/// [`configured_weight`](Self::configured_weight)), minus the address: `id` stands for it, so a
/// consistent-hash ring can tell endpoints apart without comparing strings on every pick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointView {
    /// Stable identity of the endpoint, the same across picks, reloads and processes: use
    /// [`endpoint_id`](super::endpoint_id) of its configured address. Only [`ConsistentHash`](super::ConsistentHash)
    /// reads it (an endpoint keeps its place on the ring while others come and go).
    pub id: u64,
    /// Relative weight of the endpoint's share of traffic for the balancers that weigh shares or load
    /// (`weighted`, `p2c-ewma`), at least 1 (0 is read as 1). The destination core gives 100 per unit
    /// of configured weight, less while the endpoint slowly starts after it came back.
    pub weight: u32,
    /// The endpoint's weight from the config, 1 when unset (0 is read as 1), which slow start leaves
    /// alone: what [`ConsistentHash`](super::ConsistentHash) sizes its share of the ring by (a share
    /// that moved with slow start would move keys between the endpoints that stay), and the `weight`
    /// a balancer plugin is shown.
    pub configured_weight: u32,
    /// Requests currently in flight to the endpoint.
    pub in_flight: u32,
    /// The endpoint's [`PeakEwma`](super::PeakEwma) latency estimate at the time of the pick.
    pub latency: Duration,
    /// Whether health checks and the circuit breaker currently admit the endpoint. A balancer never
    /// picks an endpoint that is not eligible.
    pub eligible: bool,
    /// Whether an eligible endpoint is known to take traffic, or is only being tried. Only the
    /// [`StreamTable`](super::StreamTable) reads it: it moves streams only to endpoints that serve.
    pub standing: Standing,
}

/// How far an eligible endpoint is known to take traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Standing {
    /// It takes traffic: its breaker is closed and health and the guard rails admit it.
    #[default]
    Serving,
    /// One attempt may find out whether it takes traffic again: its breaker is half-open with the
    /// probe not sent yet.
    OnTrial,
    /// That attempt is out: its breaker is half-open with the probe in flight.
    Probing,
    /// It is ejected or down, and admitted only by the ejection cap or panic mode: it keeps its
    /// streams, and takes another only while no endpoint serves (that stream's message trying it).
    Forced,
}

impl EndpointView {
    /// An eligible, idle endpoint with weight 1 (configured and effective), the given id and latency
    /// estimate.
    pub fn new(id: u64, latency: Duration) -> Self {
        EndpointView {
            id,
            weight: 1,
            configured_weight: 1,
            in_flight: 0,
            latency,
            eligible: true,
            standing: Standing::Serving,
        }
    }

    /// The weight `weighted` and `p2c-ewma` use: [`weight`](Self::weight), with 0 read as 1.
    pub(crate) fn effective_weight(&self) -> u32 {
        self.weight.max(1)
    }

    /// The weight a hash ring and a balancer plugin use: [`configured_weight`](Self::configured_weight),
    /// with 0 read as 1.
    pub(crate) fn effective_configured_weight(&self) -> u32 {
        self.configured_weight.max(1)
    }
}

/// How many of `endpoints` are eligible.
pub(crate) fn eligible_count(endpoints: &[EndpointView]) -> usize {
    endpoints.iter().filter(|endpoint| endpoint.eligible).count()
}

/// Position in `endpoints` of the `nth` (from 0) eligible endpoint, given that `eligible` of them are.
///
/// When all are eligible the position is `nth` itself, without a walk.
pub(crate) fn nth_eligible(endpoints: &[EndpointView], eligible: usize, nth: usize) -> Option<usize> {
    if eligible == endpoints.len() {
        return (nth < eligible).then_some(nth);
    }
    endpoints.iter().enumerate().filter(|(_, endpoint)| endpoint.eligible).nth(nth).map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(eligible: &[bool]) -> Vec<EndpointView> {
        eligible
            .iter()
            .enumerate()
            .map(|(id, &eligible)| EndpointView { eligible, ..EndpointView::new(id as u64, Duration::ZERO) })
            .collect()
    }

    #[test]
    fn nth_eligible_skips_ineligible_endpoints() {
        let endpoints = views(&[false, true, false, true, true]);
        assert_eq!(eligible_count(&endpoints), 3);
        let found: Vec<_> = (0..4).map(|nth| nth_eligible(&endpoints, 3, nth)).collect();
        assert_eq!(found, [Some(1), Some(3), Some(4), None]);
    }

    #[test]
    fn nth_eligible_of_all_eligible_is_the_position_itself() {
        let endpoints = views(&[true, true]);
        assert_eq!(nth_eligible(&endpoints, 2, 1), Some(1));
        assert_eq!(nth_eligible(&endpoints, 2, 2), None);
    }

    #[test]
    fn zero_weight_is_read_as_one() {
        let endpoint =
            EndpointView { weight: 0, configured_weight: 0, ..EndpointView::new(0, Duration::ZERO) };
        assert_eq!((endpoint.effective_weight(), endpoint.effective_configured_weight()), (1, 1));
    }
}
