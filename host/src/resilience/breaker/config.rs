//! What trips a breaker, and how long its ejections last.

use crate::resilience::{exponential, jittered};
use rand::Rng;
use std::time::Duration;

/// When a [`Breaker`](super::Breaker) trips and how long it keeps its endpoint out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row; 0 disables this trigger. Default 7 (linkerd's
    /// `failure-accrual-consecutive-max-failures`).
    pub consecutive_failures: u32,
    /// Trip when the failure rate over the last outcomes reaches a threshold; `None` disables it.
    pub failure_rate: Option<FailureRate>,
    /// How long each ejection lasts.
    pub ejection: EjectionBackoff,
}

/// The failure-rate trigger: trips when, over the last `window` outcomes, at least `threshold` of them
/// failed, once at least `min_volume` outcomes are in. Defaults 50 % over 100 outcomes, 100 at least
/// (resilience4j's `failureRateThreshold`, `slidingWindowSize` and `minimumNumberOfCalls`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailureRate {
    /// Share of failures, in `[0, 1]`, that trips the breaker.
    pub threshold: f64,
    /// How many of the latest outcomes the rate is over.
    pub window: usize,
    /// How many outcomes the window must hold before the rate counts (read as at most `window`), so a
    /// quiet endpoint is not ejected on its first failed request.
    pub min_volume: usize,
}

/// Ejection time: `base × 2^(ejections − 1)`, capped at `max`, shortened by a random share of up to
/// `jitter`. Defaults 1 s, 60 s, 0.5 (linkerd's failure-accrual penalty and jitter ratio).
///
/// Jitter only shortens (uniform in `((1 − jitter) × d, d]`) rather than spreading `± jitter` around
/// `d`: so an ejection never exceeds `max`, endpoints ejected at the cap still spread out over
/// `((1 − jitter) × max, max]` instead of half of them probing together at exactly `max`, and, with
/// `jitter ≤ 0.5`, a re-ejection is never shorter than the one before it until the cap is reached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EjectionBackoff {
    /// Nominal length of the first ejection.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
    /// Share of the ejection that is random, in `[0, 1]` (values outside are clamped).
    pub jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 7,
            failure_rate: Some(FailureRate::default()),
            ejection: EjectionBackoff::default(),
        }
    }
}

impl Default for FailureRate {
    fn default() -> Self {
        FailureRate { threshold: 0.5, window: 100, min_volume: 100 }
    }
}

impl Default for EjectionBackoff {
    fn default() -> Self {
        EjectionBackoff { base: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.5 }
    }
}

impl EjectionBackoff {
    /// How long the `ejections`th ejection in a row (from 1) lasts. Draws one number from `rng`.
    pub fn duration<R: Rng + ?Sized>(&self, ejections: u32, rng: &mut R) -> Duration {
        jittered(exponential(self.base, self.max, ejections), self.jitter, rng)
    }
}
