//! The settings of a [`StreamTable`](super::StreamTable): how loose the bound, how fast streams move.

use super::Duration;

/// `balance_factor` unless configured: an endpoint takes at most 25 % more streams than the average,
/// as Vimeo's and HAProxy's examples use.
pub const DEFAULT_BALANCE_FACTOR: f64 = 1.25;

/// How a [`StreamTable`](super::StreamTable) bounds, moves and forgets streams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffinityPolicy {
    /// `c` of the bound: an endpoint takes at most `ceil(c × average)` streams. Greater than 1.
    pub balance_factor: f64,
    /// Most streams of any one endpoint, whatever the average; `None`: no such cap.
    pub max_streams: Option<usize>,
    /// Most streams moved in any one second to even out the load (a dead endpoint's streams move at
    /// once, and do not count). At least 1.
    pub migrate_per_s: u32,
    /// A stream without a message for this long ends.
    pub idle_timeout: Duration,
    /// Most streams the table records.
    pub max_streams_tracked: usize,
}

impl Default for AffinityPolicy {
    fn default() -> Self {
        AffinityPolicy {
            balance_factor: DEFAULT_BALANCE_FACTOR,
            max_streams: None,
            migrate_per_s: 100,
            idle_timeout: Duration::from_secs(60),
            max_streams_tracked: 100_000,
        }
    }
}

impl AffinityPolicy {
    /// The most streams an endpoint may hold when `streams` streams share `endpoints` eligible
    /// endpoints: `ceil(balance_factor × streams / endpoints)`, at most `max_streams`, at least 1.
    pub fn capacity(&self, streams: usize, endpoints: usize) -> usize {
        let average = streams as f64 / endpoints.max(1) as f64;
        let bound = ((self.balance_factor * average).ceil() as usize).max(1);
        self.max_streams.map_or(bound, |max| bound.min(max))
    }

    /// The fewest streams an endpoint should hold in a balanced table: `floor(average / balance_factor)`.
    pub fn floor(&self, streams: usize, endpoints: usize) -> usize {
        let average = streams as f64 / endpoints.max(1) as f64;
        (average / self.balance_factor).floor() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_factor_times_the_average_rounded_up() {
        let policy = AffinityPolicy::default();
        assert_eq!(policy.capacity(10_000, 10), 1250);
        assert_eq!(policy.capacity(10_001, 10), 1251);
        assert_eq!(policy.capacity(0, 10), 1);
        assert_eq!(policy.floor(10_000, 11), 727);
    }

    #[test]
    fn max_streams_caps_the_capacity() {
        let policy = AffinityPolicy { max_streams: Some(300), ..AffinityPolicy::default() };
        assert_eq!(policy.capacity(10_000, 10), 300);
        assert_eq!(policy.capacity(100, 10), 13);
    }
}
