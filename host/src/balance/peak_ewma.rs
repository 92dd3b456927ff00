//! Peak-EWMA: an endpoint's latency estimate that jumps up to bad news and forgets it slowly.

use std::time::{Duration, Instant};

/// Estimate of an endpoint nobody has timed yet (linkerd's outbound default). A new endpoint starts at
/// this latency so that it neither wins every pick (at zero) nor is starved (at a huge value).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// Time constant of the decay (linkerd's default): an old estimate keeps `e^(-t/10 s)` of its weight.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// A peak-sensitive exponentially weighted moving average of round-trip times (Finagle, tower, linkerd).
///
/// A sample above the estimate replaces it at once (the *peak*), so a slowing endpoint is avoided from
/// its first slow reply. A sample below it is blended in with weight `1 - e^(-Δt/τ)`, where Δt is the time
/// since the previous sample and τ the decay constant. Between samples the estimate read by
/// [`estimate`](Self::estimate) decays toward zero with the same τ, so an endpoint that was slow and then
/// left alone is eventually tried again.
///
/// Time is an argument (`now`), never read from a clock, so tests step it. Unlike tower's, reading does
/// not write: in tower every `load()` also folds a zero sample in, which makes a real sample's weight
/// depend on how often the balancer happened to look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakEwma {
    /// Estimate at `updated_at`, in nanoseconds.
    estimate_ns: f64,
    /// When `estimate_ns` was last set (creation or last sample).
    updated_at: Instant,
    /// Decay time constant τ in nanoseconds, > 0.
    decay_ns: f64,
}

impl PeakEwma {
    /// A new endpoint's estimate: `default_rtt` as of `now`, decaying with time constant `decay`
    /// (a zero `decay` is read as one nanosecond).
    pub fn new(default_rtt: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma { estimate_ns: nanos(default_rtt), updated_at: now, decay_ns: nanos(decay).max(1.0) }
    }

    /// Folds in one measured round trip `rtt` that completed at `now`. Called once per reply.
    ///
    /// A `now` earlier than the previous sample (replies complete out of order across threads) counts
    /// as no time elapsed.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = nanos(rtt);
        if rtt_ns > self.estimate_ns {
            self.estimate_ns = rtt_ns;
        } else {
            let kept = self.kept_since_update(now);
            self.estimate_ns = self.estimate_ns * kept + rtt_ns * (1.0 - kept);
        }
        self.updated_at = self.updated_at.max(now);
    }

    /// Starts again, as of `now`, from at least `default_rtt`: called when the endpoint comes back
    /// after it took no traffic for a while (down by health checks). Its estimate decayed toward
    /// zero meanwhile, which would make it cheaper than every peer and win it a burst of picks; a
    /// higher estimate, still measured, stays.
    pub fn restart(&mut self, default_rtt: Duration, now: Instant) {
        self.estimate_ns = nanos(self.estimate(now)).max(nanos(default_rtt));
        self.updated_at = self.updated_at.max(now);
    }

    /// The estimate as of `now`: the last value decayed toward zero for the time since it was set.
    /// Called on every pick, for each endpoint the balancer looks at.
    pub fn estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos((self.estimate_ns * self.kept_since_update(now)) as u64)
    }

    /// Share of the estimate still held after the time from the last update to `now`: `e^(-Δt/τ)`.
    fn kept_since_update(&self, now: Instant) -> f64 {
        let elapsed_ns = nanos(now.saturating_duration_since(self.updated_at));
        (-elapsed_ns / self.decay_ns).exp()
    }
}

/// A duration in nanoseconds as a float (exact below 104 days, rounded beyond).
fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1e3
    }

    #[test]
    fn new_endpoint_starts_at_the_default_rtt() {
        let start = Instant::now();
        let ewma = PeakEwma::new(DEFAULT_RTT, DEFAULT_DECAY, start);
        assert_eq!(ewma.estimate(start), DEFAULT_RTT);
    }

    #[test]
    fn spike_raises_the_estimate_immediately() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(10 * MS, DEFAULT_DECAY, start);
        ewma.observe(500 * MS, start + MS);
        assert_eq!(ewma.estimate(start + MS), 500 * MS);
    }

    #[test]
    fn lower_samples_pull_the_estimate_down_at_the_time_constant() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(10 * MS, Duration::from_secs(10), start);
        ewma.observe(500 * MS, start);
        // One time constant later a 100 ms sample keeps e^-1 of the 500 ms peak: 100 + 400/e ≈ 247 ms.
        ewma.observe(100 * MS, start + Duration::from_secs(10));
        let expected = 100.0 + 400.0 * (-1.0f64).exp();
        assert!((ms(ewma.estimate(start + Duration::from_secs(10))) - expected).abs() < 0.01);
        // Samples at the new level every second converge on it.
        for second in 11..=60 {
            ewma.observe(100 * MS, start + Duration::from_secs(second));
        }
        let settled = ms(ewma.estimate(start + Duration::from_secs(60)));
        assert!((100.0..101.0).contains(&settled), "{settled} ms");
    }

    #[test]
    fn samples_close_together_barely_move_the_estimate() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(100 * MS, Duration::from_secs(10), start);
        ewma.observe(10 * MS, start + MS);
        // Δt = 1 ms: the sample's weight is 1 - e^(-1e-4) ≈ 1e-4.
        assert!(ms(ewma.estimate(start + MS)) > 99.9);
    }

    #[test]
    fn estimate_of_an_idle_endpoint_decays_toward_zero() {
        let start = Instant::now();
        let ewma = PeakEwma::new(DEFAULT_RTT, Duration::from_secs(10), start);
        let later = ms(ewma.estimate(start + Duration::from_secs(10)));
        assert!((later - 30.0 * (-1.0f64).exp()).abs() < 0.001, "{later} ms");
        assert!(ewma.estimate(start + Duration::from_secs(300)) < Duration::from_micros(1));
    }

    #[test]
    fn a_restart_after_a_long_silence_starts_again_from_the_default_rtt() {
        // A minute without samples took a 30 ms estimate down to 74 µs: back at 30 ms, decaying
        // from the restart on.
        let start = Instant::now();
        let minute = start + Duration::from_secs(60);
        let mut ewma = PeakEwma::new(DEFAULT_RTT, DEFAULT_DECAY, start);
        assert!(ewma.estimate(minute) < Duration::from_micros(75));
        ewma.restart(DEFAULT_RTT, minute);
        assert_eq!(ewma.estimate(minute), DEFAULT_RTT);
        let later = ms(ewma.estimate(minute + DEFAULT_DECAY));
        assert!((later - 30.0 * (-1.0f64).exp()).abs() < 0.001, "{later} ms");
    }

    #[test]
    fn a_restart_keeps_an_estimate_above_the_default_rtt() {
        // A 500 ms peak a second old is still 452 ms: the restart keeps it.
        let start = Instant::now();
        let second = start + Duration::from_secs(1);
        let mut ewma = PeakEwma::new(DEFAULT_RTT, DEFAULT_DECAY, start);
        ewma.observe(500 * MS, start);
        let held = ewma.estimate(second);
        ewma.restart(DEFAULT_RTT, second);
        assert_eq!(ewma.estimate(second), held);
        assert!(ms(held) > 450.0, "{held:?}");
    }

    #[test]
    fn out_of_order_sample_counts_as_no_time_elapsed() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut ewma = PeakEwma::new(50 * MS, DEFAULT_DECAY, start);
        ewma.observe(10 * MS, start - Duration::from_secs(1));
        assert_eq!(ewma.estimate(start), 50 * MS);
    }
}
