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
/// Active checks (an HTTP path, a TCP connect) and real traffic keep failure streaks of their own:
/// `fall` failed checks in a row, or `fall` failed requests in a row, take an endpoint `Down`. A
/// request that went through does not make up for a failing check, so an endpoint whose check fails
/// goes down under traffic too (an operator drains one so); a check that passes does not make up for
/// failing requests. Only checks bring an endpoint back `Up`, after `rise` passes in a row (a failed
/// check or request restarts the count): traffic reaches a `Down` endpoint only in panic mode, and a
/// request that went through there does not end it. Give an endpoint without active checks no
/// `Health` at all and let its [`Breaker`](super::Breaker) eject it.
///
/// A plain value (`&mut self`): the destination core keeps it with the endpoint's other state.
#[derive(Clone, Debug)]
pub struct Health {
    config: HealthConfig,
    state: HealthState,
    /// Passing checks in a row (only counted while `Down`).
    passes: u32,
    /// Failed checks in a row (only counted while `Up`).
    check_failures: u32,
    /// Failed requests in a row (only counted while `Up`).
    request_failures: u32,
    /// When the current slow-start ramp began.
    ramp_since: Option<Instant>,
}

impl Health {
    /// A health state before any observation: `config.initial`, and no ramp.
    pub fn new(config: HealthConfig) -> Self {
        let state = config.initial;
        Health { config, state, passes: 0, check_failures: 0, request_failures: 0, ramp_since: None }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Judge by `config`'s thresholds from now on (a reload changed them): the state, the streaks
    /// counted so far and a slow-start ramp under way stay (`config.initial` is for a new one).
    pub fn reconfigure(&mut self, config: HealthConfig) {
        self.config = config;
    }

    /// Records the result of one active check.
    pub fn record_check(&mut self, passed: bool, now: Instant) -> Option<HealthTransition> {
        match (self.state, passed) {
            (HealthState::Up, true) => self.check_failures = 0,
            (HealthState::Up, false) => {
                self.check_failures += 1;
                return self.down_after(self.check_failures);
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

    /// Records the outcome of one real request: an [endpoint failure](Outcome::is_endpoint_failure)
    /// fails, `Shed` (which never reached the endpoint) is ignored, anything else passes.
    pub fn record_passive(&mut self, outcome: &Outcome) -> Option<HealthTransition> {
        let failed = outcome.is_endpoint_failure();
        match (self.state, outcome) {
            (_, Outcome::Shed) => None,
            (HealthState::Up, _) if failed => {
                self.request_failures += 1;
                self.down_after(self.request_failures)
            }
            (HealthState::Up, _) => {
                self.request_failures = 0;
                None
            }
            (HealthState::Down, _) => {
                if failed {
                    self.passes = 0;
                }
                None
            }
        }
    }

    /// Down when `streak` failures in a row reached `fall`.
    fn down_after(&mut self, streak: u32) -> Option<HealthTransition> {
        if streak < self.config.fall.max(1) {
            return None;
        }
        (self.state, self.check_failures, self.request_failures, self.ramp_since) =
            (HealthState::Down, 0, 0, None);
        Some(HealthTransition::WentDown)
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
    fn failed_requests_in_a_row_take_an_endpoint_down_on_their_own() {
        let (mut health, now) = (health(), Instant::now());
        assert_eq!(health.record_passive(&Outcome::Retryable(RetryReason::Timeout)), None);
        assert_eq!(health.record_passive(&Outcome::Shed), None, "shed work says nothing about the endpoint");
        assert_eq!(health.record_check(true, now), None, "a passing check does not end the streak");
        assert_eq!(health.record_passive(&Outcome::Retryable(RetryReason::Reset)), None);
        let reset = Outcome::Retryable(RetryReason::Reset);
        assert_eq!(health.record_passive(&reset), Some(HealthTransition::WentDown));
    }

    #[test]
    fn a_failing_check_takes_an_endpoint_down_while_its_requests_go_through() {
        // Each request that went through used to end the checks' failure streak: an endpoint under
        // traffic never went down however long its check failed.
        let (mut health, now) = (health(), Instant::now());
        for _ in 0..2 {
            assert_eq!(health.record_check(false, now), None);
            assert_eq!(health.record_passive(&Outcome::Ok), None);
        }
        assert_eq!(health.record_check(false, now), Some(HealthTransition::WentDown));
    }

    #[test]
    fn only_checks_bring_a_down_endpoint_back() {
        let (mut health, now) = (
            Health::new(HealthConfig { initial: HealthState::Down, ..HealthConfig::default() }),
            Instant::now(),
        );
        for _ in 0..5 {
            assert_eq!(health.record_passive(&Outcome::Ok), None, "panic-mode traffic that went through");
        }
        assert_eq!(health.record_check(true, now), None);
        assert_eq!(health.record_passive(&Outcome::Retryable(RetryReason::Timeout)), None);
        assert_eq!(health.record_check(true, now), None, "the failed request restarted the count");
        assert_eq!(health.record_check(true, now), Some(HealthTransition::WentUp));
    }

    #[test]
    fn passive_answers_from_a_working_endpoint_reset_the_failure_streak() {
        let mut health = health();
        let timeout = Outcome::Retryable(RetryReason::Timeout);
        for answer in [Outcome::Ok, Outcome::Fatal(FatalReason::Status(404))] {
            assert_eq!(health.record_passive(&timeout), None);
            assert_eq!(health.record_passive(&timeout), None);
            assert_eq!(health.record_passive(&answer), None);
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
    fn a_reconfigured_health_keeps_its_state_and_streaks_under_the_new_thresholds() {
        let (mut health, now) = (health(), Instant::now());
        (0..3).for_each(|_| _ = health.record_check(false, now));
        health.reconfigure(HealthConfig { rise: 5, ..HealthConfig::default() });
        assert_eq!(health.state(), HealthState::Down, "still down");
        for _ in 0..4 {
            assert_eq!(health.record_check(true, now), None);
        }
        assert_eq!(health.record_check(true, now), Some(HealthTransition::WentUp), "after the new rise");
        assert_eq!(health.record_check(false, now), None, "one of three");
        health.reconfigure(HealthConfig { fall: 2, ..HealthConfig::default() });
        assert_eq!(health.record_check(false, now), Some(HealthTransition::WentDown), "two of the new two");
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
