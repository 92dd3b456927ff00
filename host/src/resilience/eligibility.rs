//! Eligibility: which endpoints of a destination a message may go to, given their breakers and health,
//! with Envoy's guard rails (a cap on the ejected share, panic mode), which never send to an endpoint
//! that just refused a connection.

use super::breaker::BreakerState;
use super::health::HealthState;
use tokio::time::Instant;

/// The destination-wide guard rails over per-endpoint verdicts. Defaults: at most 50 % ejected, panic
/// below 50 % healthy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EligibilityPolicy {
    /// Largest share of endpoints the breakers may keep out, counted *after* the ejection (so 50 % of 3
    /// is 1, not 2: envoyproxy/envoy#27066). Envoy defaults to 10 %, which ejects nothing below 10
    /// endpoints; destinations here are small, so 50 %, the panic threshold, which the cap alone then
    /// never pushes a destination below.
    pub max_ejected: f64,
    /// Let one endpoint be ejected even where the share rounds down to none (Envoy's
    /// `always_eject_one_host`, default off: a single-endpoint destination keeps its endpoint).
    pub always_eject_one: bool,
    /// Below this share of healthy endpoints the destination panics and routes across all of them,
    /// ejected and down included: when most endpoints look bad, the checks are more likely wrong than
    /// the endpoints, and failing everything is worse (Envoy's `healthy_panic_threshold`, 50 %). 0
    /// disables panic mode.
    pub panic_threshold: f64,
}

impl Default for EligibilityPolicy {
    fn default() -> Self {
        EligibilityPolicy { max_ejected: 0.5, always_eject_one: false, panic_threshold: 0.5 }
    }
}

/// What eligibility needs to know of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointCondition {
    /// Up, and its breaker admits a request (closed, or half-open with the probe slot free).
    Ready,
    /// Its breaker keeps it out (open, or half-open with the probe in flight), since `since`.
    Ejected {
        /// When the breaker tripped: the earliest ejections are the ones the cap keeps.
        since: Instant,
    },
    /// Health checks marked it down.
    Down,
    /// Its last connection was refused, recently (within its breaker's window): nothing can reach it,
    /// so neither the ejection cap nor panic mode admits it.
    Refusing,
}

/// How a message may reach one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Through its breaker: [`Breaker::try_acquire`](super::Breaker::try_acquire).
    Normal,
    /// Despite its breaker or health, because of the ejection cap or panic mode:
    /// [`Breaker::acquire_forced`](super::Breaker::acquire_forced).
    Forced,
    /// Not at all.
    Excluded,
}

/// The answer for a whole destination, in the order of the conditions given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eligibility {
    /// One admission per endpoint.
    pub admissions: Vec<Admission>,
    /// Whether too few endpoints were healthy and every endpoint is admitted (Envoy's
    /// `lb_healthy_panic`): worth a metric and a log line when it changes.
    pub panic: bool,
}

impl EndpointCondition {
    /// The condition of an endpoint from its health (`Up` for an endpoint without health checks) and
    /// its breaker's [`state`](super::Breaker::state) at the time of the decision.
    pub fn of(health: HealthState, breaker: BreakerState) -> Self {
        match (health, breaker) {
            (HealthState::Down, _) => EndpointCondition::Down,
            (HealthState::Up, BreakerState::Closed | BreakerState::HalfOpen { probing: false, .. }) => {
                EndpointCondition::Ready
            }
            (HealthState::Up, BreakerState::Open { since, .. } | BreakerState::HalfOpen { since, .. }) => {
                EndpointCondition::Ejected { since }
            }
        }
    }
}

impl Admission {
    /// Whether the balancer may pick the endpoint (the `eligible` of its view).
    pub fn is_eligible(self) -> bool {
        self != Admission::Excluded
    }
}

impl EligibilityPolicy {
    /// Decides the admission of each endpoint. Pure: the destination core can compute it once per
    /// breaker or health transition (and when an ejection ends) rather than once per message.
    ///
    /// Ejected endpoints beyond the cap are admitted `Forced`, the latest ejections first (as Envoy
    /// refuses the ejection that would pass the cap); `Refusing` endpoints count against the cap first.
    /// Then, if fewer than `panic_threshold` of all endpoints are admitted, every endpoint but the
    /// `Refusing` ones is: `Ready` ones `Normal`, the others `Forced`.
    pub fn admit(&self, conditions: &[EndpointCondition]) -> Eligibility {
        let total = conditions.len();
        let mut admissions: Vec<Admission> = conditions
            .iter()
            .map(|condition| match condition {
                EndpointCondition::Ready => Admission::Normal,
                EndpointCondition::Ejected { .. } | EndpointCondition::Down | EndpointCondition::Refusing => {
                    Admission::Excluded
                }
            })
            .collect();
        let refusing = conditions.iter().filter(|condition| **condition == EndpointCondition::Refusing);
        let cap = self.max_ejected_count(total).saturating_sub(refusing.count());

        let mut ejected: Vec<(Instant, usize)> = conditions
            .iter()
            .enumerate()
            .filter_map(|(index, condition)| match condition {
                EndpointCondition::Ejected { since } => Some((*since, index)),
                _ => None,
            })
            .collect();
        ejected.sort_unstable();
        for &(_, index) in ejected.iter().skip(cap) {
            admissions[index] = Admission::Forced;
        }

        let healthy = admissions.iter().filter(|admission| admission.is_eligible()).count();
        let panic = (healthy as f64) < self.panic_threshold * total as f64;
        if panic {
            for (admission, condition) in admissions.iter_mut().zip(conditions) {
                if *admission == Admission::Excluded && *condition != EndpointCondition::Refusing {
                    *admission = Admission::Forced;
                }
            }
        }
        Eligibility { admissions, panic }
    }

    /// How many of `total` endpoints may be ejected at once.
    fn max_ejected_count(&self, total: usize) -> usize {
        let share = (self.max_ejected.clamp(0.0, 1.0) * total as f64 + 1e-9).floor() as usize;
        if self.always_eject_one && total > 0 { share.max(1) } else { share }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Admission::{Excluded, Forced, Normal};
    use EndpointCondition::{Down, Ready, Refusing};
    use std::time::Duration;

    fn ejected_at(t0: Instant, seconds: u64) -> EndpointCondition {
        EndpointCondition::Ejected { since: t0 + Duration::from_secs(seconds) }
    }

    #[test]
    fn all_ready_endpoints_are_admitted_normally() {
        let eligibility = EligibilityPolicy::default().admit(&[Ready, Ready, Ready]);
        assert_eq!(eligibility, Eligibility { admissions: vec![Normal, Normal, Normal], panic: false });
    }

    #[test]
    fn ejections_within_the_cap_are_excluded() {
        let t0 = Instant::now();
        let conditions = [Ready, ejected_at(t0, 0), Ready, ejected_at(t0, 1)];
        let eligibility = EligibilityPolicy::default().admit(&conditions);
        assert_eq!(eligibility.admissions, [Normal, Excluded, Normal, Excluded]);
        assert!(!eligibility.panic);
    }

    #[test]
    fn ejections_beyond_the_cap_are_forced_back_latest_first() {
        let t0 = Instant::now();
        let conditions = [ejected_at(t0, 5), Ready, ejected_at(t0, 1), ejected_at(t0, 3), Ready];
        let eligibility = EligibilityPolicy::default().admit(&conditions);
        // 50 % of 5 is 2 ejections: the two earliest (at 1 s and 3 s) stay out.
        assert_eq!(eligibility.admissions, [Forced, Normal, Excluded, Excluded, Normal]);
        assert!(!eligibility.panic);
    }

    #[test]
    fn cap_counts_the_share_after_ejection() {
        let t0 = Instant::now();
        let policy =
            EligibilityPolicy { max_ejected: 0.67, panic_threshold: 0.0, ..EligibilityPolicy::default() };
        let all_ejected = [ejected_at(t0, 0), ejected_at(t0, 1), ejected_at(t0, 2)];
        assert_eq!(
            policy.admit(&all_ejected).admissions,
            [Excluded, Excluded, Forced],
            "3 × 67 % is 2, not 3"
        );
        let half = EligibilityPolicy { max_ejected: 0.5, ..policy };
        assert_eq!(half.admit(&all_ejected).admissions, [Excluded, Forced, Forced], "3 × 50 % is 1, not 2");
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected_unless_always_eject_one() {
        let t0 = Instant::now();
        let policy = EligibilityPolicy { panic_threshold: 0.0, ..EligibilityPolicy::default() };
        assert_eq!(policy.admit(&[ejected_at(t0, 0)]).admissions, [Forced]);
        let eager = EligibilityPolicy { always_eject_one: true, ..policy };
        assert_eq!(eager.admit(&[ejected_at(t0, 0)]).admissions, [Excluded]);
    }

    #[test]
    fn too_few_healthy_endpoints_panic_and_admit_all() {
        let t0 = Instant::now();
        let eligibility = EligibilityPolicy::default().admit(&[Down, Down, ejected_at(t0, 0), Ready]);
        assert_eq!(
            eligibility,
            Eligibility { admissions: vec![Forced, Forced, Forced, Normal], panic: true }
        );
    }

    #[test]
    fn panic_mode_never_admits_an_endpoint_that_refuses_connections() {
        let t0 = Instant::now();
        let eligibility = EligibilityPolicy::default().admit(&[Refusing, Down, ejected_at(t0, 0), Ready]);
        assert_eq!(
            eligibility,
            Eligibility { admissions: vec![Excluded, Forced, Forced, Normal], panic: true }
        );
    }

    #[test]
    fn refusing_endpoints_count_against_the_ejection_cap_first() {
        let t0 = Instant::now();
        let eligibility = EligibilityPolicy::default().admit(&[Refusing, ejected_at(t0, 0)]);
        assert_eq!(
            eligibility,
            Eligibility { admissions: vec![Excluded, Forced], panic: false },
            "50 % of 2 is one endpoint out: the refusing one"
        );
    }

    #[test]
    fn exactly_the_panic_threshold_healthy_does_not_panic() {
        let eligibility = EligibilityPolicy::default().admit(&[Down, Ready, Down, Ready]);
        assert_eq!(
            eligibility,
            Eligibility { admissions: vec![Excluded, Normal, Excluded, Normal], panic: false }
        );
    }

    #[test]
    fn zero_panic_threshold_never_panics() {
        let policy = EligibilityPolicy { panic_threshold: 0.0, ..EligibilityPolicy::default() };
        assert_eq!(
            policy.admit(&[Down, Down]),
            Eligibility { admissions: vec![Excluded, Excluded], panic: false }
        );
        assert_eq!(policy.admit(&[]), Eligibility { admissions: vec![], panic: false });
    }

    #[test]
    fn conditions_combine_health_and_breaker_state() {
        let t0 = Instant::now();
        let open = BreakerState::Open { since: t0, until: t0 + Duration::from_secs(1) };
        let probing = BreakerState::HalfOpen { since: t0, probing: true };
        let probe_free = BreakerState::HalfOpen { since: t0, probing: false };
        assert_eq!(EndpointCondition::of(HealthState::Up, BreakerState::Closed), Ready);
        assert_eq!(EndpointCondition::of(HealthState::Up, probe_free), Ready);
        assert_eq!(EndpointCondition::of(HealthState::Up, open), ejected_at(t0, 0));
        assert_eq!(EndpointCondition::of(HealthState::Up, probing), ejected_at(t0, 0));
        assert_eq!(EndpointCondition::of(HealthState::Down, BreakerState::Closed), Down);
    }
}
