//! Metrics for the message path: every thread adds to a shard of its own,
//! and a scrape sums the shards. Workers then never contend for a lock or a
//! cache line (prometheus-client's own histogram takes a mutex on every
//! observation); the exposition is still encoded by prometheus-client.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Shards per metric; threads beyond share them round-robin.
const SHARDS: usize = 8;

/// Upper bounds of the latency buckets, seconds: 10 µs × 4ⁿ, up to ~10 s.
pub(crate) const LATENCY_BOUNDS: [f64; 11] =
    [1e-5, 4e-5, 1.6e-4, 6.4e-4, 2.56e-3, 1.024e-2, 4.096e-2, 0.16384, 0.65536, 2.62144, 10.48576];

/// One cache line (two, against adjacent-line prefetch) per shard.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The calling thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS);
    SHARD.with(|shard| *shard)
}

/// A counter sharded by thread.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    /// Add one.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Relaxed);
    }

    /// The total.
    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|shard| shard.0.load(Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One thread's part of a latency histogram (its count is the buckets' sum).
#[derive(Debug, Default)]
struct HistogramShard {
    /// The sum of the latencies observed, seconds, as the bits of an `f64` (0 is 0.0): a sum of
    /// `u64` nanoseconds wraps at 584 years of latency, which a busy route sums in weeks (10⁵
    /// messages a second taking 100 ms each: 21 days).
    sum_seconds: AtomicU64,
    /// Per bucket of [`LATENCY_BOUNDS`], then `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
}

/// A latency histogram (buckets [`LATENCY_BOUNDS`]) sharded by thread.
#[derive(Clone, Debug, Default)]
pub(crate) struct LatencyHistogram(Arc<[Padded<HistogramShard>; SHARDS]>);

impl LatencyHistogram {
    /// Record one latency.
    pub(crate) fn observe(&self, latency: Duration) {
        let shard = &self.0[shard()].0;
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS.partition_point(|bound| *bound < seconds);
        shard.buckets[bucket].fetch_add(1, Relaxed);
        // Another thread adds to this shard only when there are more threads than shards.
        let add = |sum: u64| Some((f64::from_bits(sum) + seconds).to_bits());
        let _ = shard.sum_seconds.fetch_update(Relaxed, Relaxed, add);
    }

    /// Add what `totals` counted, as if observed here: a histogram that comes back holds what it
    /// held when it went.
    pub(crate) fn add(&self, totals: &HistogramTotals) {
        let shard = &self.0[shard()].0;
        for (bucket, count) in shard.buckets.iter().zip(totals.buckets) {
            bucket.fetch_add(count, Relaxed);
        }
        let add = |sum: u64| Some((f64::from_bits(sum) + totals.sum_seconds).to_bits());
        let _ = shard.sum_seconds.fetch_update(Relaxed, Relaxed, add);
    }

    /// Observations in all.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.0.iter().flat_map(|shard| &shard.0.buckets).map(|bucket| bucket.load(Relaxed)).sum()
    }

    /// The shards summed: observations per bucket and the sum of latencies.
    pub(crate) fn totals(&self) -> HistogramTotals {
        let mut totals = HistogramTotals::default();
        for shard in self.0.iter() {
            totals.sum_seconds += f64::from_bits(shard.0.sum_seconds.load(Relaxed));
            for (total, bucket) in totals.buckets.iter_mut().zip(&shard.0.buckets) {
                *total += bucket.load(Relaxed);
            }
        }
        totals
    }
}

/// A latency histogram read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HistogramTotals {
    /// Observations per bucket of [`LATENCY_BOUNDS`], then `+Inf`.
    pub(crate) buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// The sum of all latencies observed, seconds.
    pub(crate) sum_seconds: f64,
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.totals();
        let bounds = LATENCY_BOUNDS.iter().chain([&f64::INFINITY]);
        let buckets: Vec<(f64, u64)> =
            bounds.zip(totals.buckets).map(|(bound, count)| (*bound, count)).collect();
        let count = totals.buckets.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(totals.sum_seconds, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_across_threads() {
        let (counter, histogram) = (ShardedCounter::default(), LatencyHistogram::default());
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.inc();
                        histogram.observe(Duration::from_micros(50));
                    }
                });
            }
        });
        assert_eq!((counter.get(), histogram.count()), (12_000, 12_000));
    }

    /// The `_sum` of `histogram`, as a scrape reads it.
    fn scraped_sum(histogram: &LatencyHistogram) -> f64 {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("latency_seconds", "test", histogram.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text.lines().find(|line| line.starts_with("latency_seconds_sum ")).unwrap();
        line["latency_seconds_sum ".len()..].parse().unwrap()
    }

    #[test]
    fn the_sum_holds_more_latency_than_u64_nanoseconds_do() {
        // 2⁶⁴ ns are 584 years: 100 000 messages a second of a route, taking 100 ms each from
        // admission to settlement, add 10⁴ s a second, and sum that much in 21 days.
        let histogram = LatencyHistogram::default();
        let century = Duration::from_secs(100 * 365 * 86_400);
        for _ in 0..9 {
            histogram.observe(century);
        }
        let (sum, due) = (scraped_sum(&histogram), 9.0 * century.as_secs_f64());
        assert!((sum / due - 1.0).abs() < 1e-9, "sum {sum} s, due {due} s");
        assert!((histogram.totals().sum_seconds / due - 1.0).abs() < 1e-9);
    }

    #[test]
    fn latencies_land_in_their_bucket_and_sum() {
        let histogram = LatencyHistogram::default();
        for micros in [5, 10, 11, 2_000_000, 20_000_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("latency_seconds", "test", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("latency_seconds_bucket{le=\"0.00001\"} 2\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"0.00004\"} 3\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"2.62144\"} 4\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("latency_seconds_count 5\n"), "{text}");
        assert!(text.contains("latency_seconds_sum 22.000026\n"), "{text}");
    }
}
