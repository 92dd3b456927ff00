//! Endpoint health: active checks and passive observations move one Up/Down state, with hysteresis.

use super::outcome::Outcome;
use super::slow_start::SlowStart;
use tokio::time::Instant;

/// Thresholds of a [`Health`] state. Defaults: rise 2, fall 3 (HAProxy's `rise` / `fall`), starting
/// `Up`, with a [`SlowStart`] after each recovery.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthConfig {
    /// Passes in a row that bring a `Down` endpoint back `Up` (at least 1).
    pub rise: u32,
    /// Failures in a row that take an `Up` endpoint `Down` (at least 1).
    pub fall: u32,
    /// The state before any observation.
    pub initial: HealthState,
    /// The weight ramp after the endpoint comes back `Up`; `None` gives it full weight at once.
    pub slow_start: Option<SlowStart>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { rise: 2, fall: 3, initial: HealthState::Up, slow_start: Some(SlowStart::default()) }
    }
}

/// Whether an endpoint should get traffic, as far as health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Serving.
    Up,
    /// Failing: gets traffic only in panic mode (see [`EligibilityPolicy`](super::EligibilityPolicy)).
    Down,
}

/// A change of health, returned by the observation that caused it, for the caller to act on (close
/// the endpoint's pooled connections when it goes down), log or emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthTransition {
    /// `Up → Down`: `fall` failures in a row.
    WentDown,
    /// `Down → Up`: `rise` passes in a row; the slow-start ramp begins.
    WentUp,
}

/// The health of one endpoint.
///
/// Every observation is a pass or a failure, whether it comes from an active check (an HTTP path, a
/// TCP connect) or passively from real traffic: one pass resets the failure streak and one failure the
/// pass streak, so only *consecutive* results move the state (HAProxy's hysteresis). An endpoint Down
/// gets no traffic outside panic mode, so in practice active checks bring it back: give an endpoint
/// without active checks no `Health` at all and let its [`Breaker`](super::Breaker) eject it.
///
/// A plain value (`&mut self`): the destination core keeps it with the endpoint's other state.
#[derive(Clone, Debug)]
pub struct Health {
    config: HealthConfig,
    state: HealthState,
    /// Passes in a row (only counted while `Down`).
    passes: u32,
    /// Failures in a row (only counted while `Up`).
    failures: u32,
    /// When the current slow-start ramp began.
    ramp_since: Option<Instant>,
}

impl Health {
    /// A health state before any observation: `config.initial`, and no ramp.
    pub fn new(config: HealthConfig) -> Self {
        Health { config, state: config.initial, passes: 0, failures: 0, ramp_since: None }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Records the result of one active check.
    pub fn record_check(&mut self, passed: bool, now: Instant) -> Option<HealthTransition> {
        self.observe(passed, now)
    }

    /// Records the outcome of one real request: an [endpoint failure](Outcome::is_endpoint_failure)
    /// fails, `Shed` (which never reached the endpoint) is ignored, anything else passes.
    pub fn record_passive(&mut self, outcome: &Outcome, now: Instant) -> Option<HealthTransition> {
        match outcome {
            Outcome::Shed => None,
            outcome => self.observe(!outcome.is_endpoint_failure(), now),
        }
    }

    /// Starts a slow-start ramp now, for a recovery health did not see (the endpoint's breaker closed
    /// after an ejection). Does nothing without a configured [`SlowStart`].
    pub fn begin_slow_start(&mut self, now: Instant) {
        self.ramp_since = self.config.slow_start.map(|_| now);
    }

    /// The multiplier of the endpoint's weight at `now`, in `[floor, 1]`: below 1 only during a
    /// slow-start ramp after a recovery.
    pub fn weight_factor(&self, now: Instant) -> f64 {
        match (self.config.slow_start, self.ramp_since) {
            (Some(ramp), Some(since)) => ramp.factor(now.saturating_duration_since(since)),
            _ => 1.0,
        }
    }

    fn observe(&mut self, passed: bool, now: Instant) -> Option<HealthTransition> {
        match (self.state, passed) {
            (HealthState::Up, true) => self.failures = 0,
            (HealthState::Up, false) => {
                self.failures += 1;
                if self.failures >= self.config.fall.max(1) {
                    (self.state, self.failures, self.ramp_since) = (HealthState::Down, 0, None);
                    return Some(HealthTransition::WentDown);
                }
            }
            (HealthState::Down, false) => self.passes = 0,
            (HealthState::Down, true) => {
                self.passes += 1;
                if self.passes >= self.config.rise.max(1) {
                    (self.state, self.passes) = (HealthState::Up, 0);
                    self.begin_slow_start(now);
                    return Some(HealthTransition::WentUp);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::{FatalReason, RetryReason};
    use std::time::Duration;

    fn health() -> Health {
        Health::new(HealthConfig::default())
    }

    #[test]
    fn endpoint_goes_down_after_fall_failures_in_a_row() {
        let (mut health, now) = (health(), Instant::now());
        assert_eq!(health.record_check(false, now), None);
        assert_eq!(health.record_check(false, now), None);
        assert_eq!(health.record_check(false, now), Some(HealthTransition::WentDown));
        assert_eq!(health.state(), HealthState::Down);
        assert_eq!(health.record_check(false, now), None, "already down");
    }

    #[test]
    fn a_pass_between_failures_keeps_the_endpoint_up() {
        let (mut health, now) = (health(), Instant::now());
        for _ in 0..10 {
            assert_eq!(health.record_check(false, now), None);
            assert_eq!(health.record_check(false, now), None);
            assert_eq!(health.record_check(true, now), None);
        }
        assert_eq!(health.state(), HealthState::Up);
    }

    #[test]
    fn endpoint_comes_back_after_rise_passes_in_a_row() {
        let (mut health, now) = (
            Health::new(HealthConfig { initial: HealthState::Down, ..HealthConfig::default() }),
            Instant::now(),
        );
        assert_eq!(health.record_check(true, now), None);
        assert_eq!(health.record_check(false, now), None, "a failure restarts the count");
        assert_eq!(health.record_check(true, now), None);
        assert_eq!(health.record_check(true, now), Some(HealthTransition::WentUp));
        assert_eq!(health.state(), HealthState::Up);
    }

    #[test]
    fn passive_failures_feed_the_same_state_as_checks() {
        let (mut health, now) = (health(), Instant::now());
        assert_eq!(health.record_check(false, now), None);
        assert_eq!(health.record_passive(&Outcome::Retryable(RetryReason::Timeout), now), None);
        assert_eq!(
            health.record_passive(&Outcome::Shed, now),
            None,
            "shed work says nothing about the endpoint"
        );
        let reset = Outcome::Retryable(RetryReason::Reset);
        assert_eq!(health.record_passive(&reset, now), Some(HealthTransition::WentDown));
    }

    #[test]
    fn passive_answers_from_a_working_endpoint_reset_the_failure_streak() {
        let (mut health, now) = (health(), Instant::now());
        let timeout = Outcome::Retryable(RetryReason::Timeout);
        for answer in [Outcome::Ok, Outcome::Fatal(FatalReason::Status(404))] {
            assert_eq!(health.record_passive(&timeout, now), None);
            assert_eq!(health.record_passive(&timeout, now), None);
            assert_eq!(health.record_passive(&answer, now), None);
        }
        assert_eq!(health.state(), HealthState::Up);
    }

    #[test]
    fn recovered_endpoint_ramps_its_weight_over_the_slow_start_window() {
        let (mut health, t0) = (health(), Instant::now());
        assert_eq!(health.weight_factor(t0), 1.0, "no slow start at process start");
        (0..3).for_each(|_| _ = health.record_check(false, t0));
        health.record_check(true, t0);
        assert_eq!(health.record_check(true, t0), Some(HealthTransition::WentUp));
        let at = |seconds| (health.weight_factor(t0 + Duration::from_secs(seconds)) * 100.0).round();
        assert_eq!([at(0), at(10), at(15), at(20), at(30), at(300)], [10.0, 40.0, 55.0, 70.0, 100.0, 100.0]);
    }

    #[test]
    fn going_down_mid_ramp_ends_the_ramp() {
        let (mut health, t0) = (health(), Instant::now());
        health.begin_slow_start(t0);
        assert!(health.weight_factor(t0) < 1.0);
        (0..3).for_each(|_| _ = health.record_check(false, t0));
        assert_eq!(health.weight_factor(t0), 1.0);
    }

    #[test]
    fn without_slow_start_weight_is_full_at_once() {
        let config = HealthConfig { slow_start: None, initial: HealthState::Down, ..HealthConfig::default() };
        let (mut health, now) = (Health::new(config), Instant::now());
        health.record_check(true, now);
        assert_eq!(health.record_check(true, now), Some(HealthTransition::WentUp));
        assert_eq!(health.weight_factor(now), 1.0);
    }
}
