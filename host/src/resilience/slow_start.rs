//! Slow start: a recovered endpoint's share of traffic ramps up instead of jumping to full.

use std::time::Duration;

/// Ramps the weight of an endpoint that just recovered linearly from `floor` to 1 over `window`, so it
/// warms its caches and connection pool before taking a full share (HAProxy `slowstart`, Envoy
/// `slow_start_config`). Applied only after a recovery, never at process start (HAProxy's rule: at
/// start every endpoint is equally cold).
///
/// The factor at `t` into the ramp is `floor + (1 − floor) × t / window`. Envoy's is `max(floor, t /
/// window)` (with `aggression` 1), which holds the floor for the first tenth of the window; the
/// interpolation rises from the first instant and reaches 1 at the same time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    /// How long the ramp lasts. Default 30 s: Envoy and HAProxy have no default; ours spans several
    /// health-check intervals, so a recovering endpoint is checked a few times before full load.
    pub window: Duration,
    /// Weight factor at the start of the ramp, in `[0, 1]` (values outside are clamped). Default 0.1,
    /// Envoy's `min_weight_percent` 10 %.
    pub floor: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart { window: Duration::from_secs(30), floor: 0.1 }
    }
}

impl SlowStart {
    /// The weight factor, in `[floor, 1]`, `elapsed` into the ramp; 1 from `window` on.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        let floor = self.floor.clamp(0.0, 1.0);
        if self.window.is_zero() || elapsed >= self.window {
            return 1.0;
        }
        floor + (1.0 - floor) * elapsed.as_secs_f64() / self.window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_ramps_linearly_from_its_floor_to_full() {
        let ramp = SlowStart { window: Duration::from_secs(10), floor: 0.1 };
        let factors: Vec<_> = [0, 1, 5, 9, 10, 60]
            .map(|seconds| (ramp.factor(Duration::from_secs(seconds)) * 1_000.0).round() / 1_000.0)
            .to_vec();
        assert_eq!(factors, [0.1, 0.19, 0.55, 0.91, 1.0, 1.0]);
    }

    #[test]
    fn empty_window_means_no_ramp() {
        let ramp = SlowStart { window: Duration::ZERO, floor: 0.1 };
        assert_eq!(ramp.factor(Duration::ZERO), 1.0);
    }
}
