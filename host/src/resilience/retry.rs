//! Retry policy: how many attempts a message gets and how long to wait between them.

use super::outcome::Outcome;
use super::{exponential, jittered};
use rand::Rng;
use std::time::Duration;

/// How many attempts one message gets at a destination, and the backoff between them.
///
/// The delay before retry `n` is drawn with *full jitter*: uniformly from `[(1 − jitter) × cap, cap]`
/// where `cap = min(max, base × 2^(n−1))`, so with the default `jitter = 1.0` from `[0, cap]`. Full
/// jitter rather than decorrelated jitter because it is a pure function of the retry number (no previous
/// delay to carry between attempts, so `backoff` can be called from anywhere with any generator), it is
/// what Envoy uses for its retries, and AWS's comparison ("Exponential Backoff and Jitter") found it
/// does the least total work among the jittered variants, with decorrelated a close second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included: `1` disables retries. Default 2, one retry (Envoy's
    /// `num_retries` and linkerd's retry limit both default to 1).
    pub attempts: u32,
    /// Cap of the first retry's delay. Default 25 ms (Envoy's `base_interval`).
    pub base: Duration,
    /// Largest delay. Default 250 ms (Envoy: 10 × `base_interval`).
    pub max: Duration,
    /// Share of the delay that is random, in `[0, 1]` (values outside are clamped): `1.0` is full
    /// jitter, `0.0` waits exactly `min(max, base × 2^(n−1))`. Default 1.0.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            jitter: 1.0,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (the first retry is 1), always within `[0, max]`.
    ///
    /// Draws one number from `rng`; a seeded generator gives the same delays every run.
    pub fn backoff<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        jittered(exponential(self.base, self.max, retry), self.jitter, rng)
    }

    /// Whether the policy allows another attempt after `attempts_made` attempts ended in `outcome`, and
    /// if so after how long: `None` when the outcome is not retryable (including work we shed) or the
    /// attempts are used up.
    ///
    /// The retry budget is a separate, destination-wide check: take a
    /// [`RetryPermit`](super::RetryPermit) before waiting this delay.
    pub fn backoff_after<R: Rng + ?Sized>(
        &self,
        attempts_made: u32,
        outcome: &Outcome,
        rng: &mut R,
    ) -> Option<Duration> {
        (outcome.is_retryable() && attempts_made < self.attempts).then(|| self.backoff(attempts_made, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::RetryReason;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy { attempts: 10, base: Duration::from_millis(100), max: Duration::from_secs(1), jitter }
    }

    #[test]
    fn backoff_without_jitter_doubles_up_to_max() {
        let mut rng = SmallRng::seed_from_u64(1);
        let delays: Vec<_> = (1..=6).map(|retry| policy(0.0).backoff(retry, &mut rng).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jittered_backoff_stays_between_zero_and_its_cap() {
        let mut rng = SmallRng::seed_from_u64(2);
        for retry in 1..=8 {
            let cap = exponential(Duration::from_millis(100), Duration::from_secs(1), retry);
            for _ in 0..1_000 {
                assert!(policy(1.0).backoff(retry, &mut rng) <= cap);
            }
        }
    }

    #[test]
    fn partial_jitter_keeps_the_delay_above_its_floor() {
        let mut rng = SmallRng::seed_from_u64(3);
        let delays: Vec<_> = (0..1_000).map(|_| policy(0.25).backoff(3, &mut rng)).collect();
        assert!(
            delays
                .iter()
                .all(|delay| (Duration::from_millis(300)..=Duration::from_millis(400)).contains(delay))
        );
    }

    #[test]
    fn full_jitter_spreads_delays_over_the_whole_range() {
        let mut rng = SmallRng::seed_from_u64(4);
        let delays: Vec<_> = (0..1_000).map(|_| policy(1.0).backoff(4, &mut rng)).collect();
        assert!(delays.iter().any(|delay| *delay < Duration::from_millis(80)));
        assert!(delays.iter().any(|delay| *delay > Duration::from_millis(720)));
        let mean = delays.iter().sum::<Duration>() / 1_000;
        assert!((Duration::from_millis(360)..Duration::from_millis(440)).contains(&mean), "{mean:?}");
    }

    #[test]
    fn seeded_generators_give_the_same_backoffs() {
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (1..=5).map(|retry| RetryPolicy::default().backoff(retry, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    #[test]
    fn retries_stop_when_attempts_run_out_or_the_outcome_is_final() {
        let policy = RetryPolicy { attempts: 3, jitter: 0.0, ..RetryPolicy::default() };
        let mut rng = SmallRng::seed_from_u64(5);
        let timeout = Outcome::Retryable(RetryReason::Timeout);
        assert_eq!(policy.backoff_after(1, &timeout, &mut rng), Some(Duration::from_millis(25)));
        assert_eq!(policy.backoff_after(2, &timeout, &mut rng), Some(Duration::from_millis(50)));
        assert_eq!(policy.backoff_after(3, &timeout, &mut rng), None);
        assert_eq!(policy.backoff_after(1, &Outcome::Shed, &mut rng), None);
        assert_eq!(policy.backoff_after(1, &Outcome::Ok, &mut rng), None);
    }
}
