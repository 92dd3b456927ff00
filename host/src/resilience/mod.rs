//! Resilience state machines: circuit breakers, retry budgets and backoff, endpoint health.
//!
//! Every type here is a small, deterministic state machine driven by explicit events: the caller passes
//! the time (`now`) and the random source in, and gets transitions back as return values to log or
//! emit. Nothing here sleeps, spawns or reads a clock, so tests step the machines with instants they
//! build themselves, and the destination core drives them with `tokio::time::Instant::now()`, which
//! follows a paused clock (`tokio::time::pause`) in integration tests.
//!
//! One message at a destination goes through them like this:
//!
//! ```text
//! accepted ─► budget.start_request()                      (RequestGuard held until the final outcome)
//! attempt:  eligibility.admit(conditions) ─► balancer picks among eligible endpoints (an untried one on
//!           retry while there is one; none eligible: wait for one, spending no attempt)
//!           breaker.try_acquire(now)  (acquire_forced if the pick's admission is Forced; None: pick again)
//!           send ─► Outcome ─► permit.report(&outcome, now)    ─► Option<Transition> to log
//!                           └► health.record_passive(&outcome) ─► Option<HealthTransition>
//! retry?    retry.backoff_after(attempts, &outcome, rng) ─► Some(delay)
//!           && budget.first_retry() (a message's first) or budget.acquire() (later ones, may wait)
//!           ─► RetryPermit, held through the delay and the next attempt
//! otherwise the final outcome: delivered, or dead-lettered with its reason
//! ```
//!
//! ```
//! use std::time::Duration;
//! use switchyard::resilience::{Breaker, BreakerConfig, Outcome, RetryReason, Transition};
//! use tokio::time::Instant;
//!
//! let config = BreakerConfig { consecutive_failures: 2, ..BreakerConfig::default() };
//! let breaker = Breaker::with_seed(config, 7);
//! let now = Instant::now();
//! let failure = Outcome::Retryable(RetryReason::Connect);
//! assert_eq!(breaker.try_acquire(now).unwrap().report(&failure, now), None);
//! let tripped = breaker.try_acquire(now).unwrap().report(&failure, now);
//! assert!(matches!(tripped, Some(Transition::Tripped { .. })));
//! assert!(breaker.try_acquire(now + Duration::from_millis(10)).is_none());
//! ```

mod outcome;
mod window;

mod budget;
mod retry;

mod breaker;
mod slow_start;

mod health;

mod eligibility;

pub use breaker::{Breaker, BreakerConfig, BreakerPermit, BreakerState, EjectionBackoff, FailureRate};
pub use breaker::{Transition, TripReason};
pub use budget::{RequestGuard, RetryBudget, RetryPermit};
pub use eligibility::{Admission, Eligibility, EligibilityPolicy, EndpointCondition};
pub use health::{Health, HealthConfig, HealthState, HealthTransition};
pub use outcome::{FatalReason, Outcome, RetryReason};
pub use retry::RetryPolicy;
pub use slow_start::SlowStart;

use rand::{Rng, RngExt};
use std::time::Duration;

/// `base × 2^(step − 1)`, capped at `max`: the un-jittered delay of the `step`th backoff (from 1).
///
/// Step 0 is read as step 1. Saturates instead of overflowing, so any step is safe.
fn exponential(base: Duration, max: Duration, step: u32) -> Duration {
    let doublings = step.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(max)
}

/// `cap` shortened by a random share of up to `jitter` (clamped to `[0, 1]`): uniform in
/// `((1 − jitter) × cap, cap]`, so never above `cap`. Draws one number from `rng`.
fn jittered<R: Rng + ?Sized>(cap: Duration, jitter: f64, rng: &mut R) -> Duration {
    // `random::<f64>()` is in [0, 1), so the factor is in (1 − jitter, 1].
    cap.mul_f64(1.0 - jitter.clamp(0.0, 1.0) * rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_from_base_and_stops_at_max() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..=6).map(|step| exponential(base, max, step).as_millis()).collect();
        assert_eq!(delays, [100, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exponential(base, Duration::MAX, u32::MAX), base.saturating_mul(1 << 31));
    }

    #[test]
    fn jitter_only_ever_shortens_and_by_at_most_its_share() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let cap = Duration::from_secs(1);
        assert_eq!(jittered(cap, 0.0, &mut rng), cap);
        for _ in 0..1_000 {
            let delay = jittered(cap, 0.5, &mut rng);
            assert!(Duration::from_millis(500) < delay && delay <= cap, "{delay:?}");
            assert!(jittered(cap, 7.0, &mut rng) <= cap, "jitter above 1 is read as 1");
        }
    }
}
