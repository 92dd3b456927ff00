//! `GET /v1/history`: the recent past of the host's traffic, one sample a
//! second for five minutes, so a freshly opened dashboard plots what just
//! happened. A task of the admin server reads the counters each second and
//! keeps the rates in a ring; nothing on the message path changes.

use crate::host::Host;
use crate::metrics::{HistogramTotals, LATENCY_BOUNDS, RouteTotals};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a sample is taken.
pub(super) const INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: five minutes' worth.
pub(super) const CAPACITY: usize = 300;

/// The traffic between two readings of the counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct Sample {
    /// When the interval ended, milliseconds since the Unix epoch; each sample's later
    /// than the one before, though the wall clock step back.
    pub(super) at_ms: u64,
    /// Messages admitted per second.
    pub(super) accepted_per_s: f64,
    /// Messages delivered, filtered or answered per second.
    pub(super) settled_per_s: f64,
    /// Messages dead-lettered per second.
    pub(super) dead_lettered_per_s: f64,
    /// Mean admission-to-settlement latency of the messages settled in the
    /// interval; `None` when none was.
    pub(super) latency_mean_ms: Option<f64>,
    /// The upper bound of the latency bucket holding the 99th percentile;
    /// `None` when none settled, or when it is past the last bucket.
    pub(super) latency_p99_ms: Option<f64>,
    /// When the 99th percentile is past the last bucket (it has no upper
    /// bound): that bucket's bound, which it exceeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) latency_p99_over_ms: Option<f64>,
    /// Messages matched per second, by route.
    pub(super) routes: BTreeMap<String, f64>,
}

/// The counters at one moment.
#[derive(Clone, Debug)]
pub(super) struct Reading {
    pub(super) at: Instant,
    pub(super) accepted: u64,
    /// Every dead letter, a route's or not (one no route matched).
    pub(super) dead_lettered: u64,
    pub(super) routes: BTreeMap<String, RouteTotals>,
}

impl Reading {
    /// The counters of `host` now, for the routes it has now.
    pub(super) fn of(host: &Host) -> Reading {
        let (metrics, config) = (host.metrics(), host.config());
        let routes =
            config.routes.iter().map(|route| (route.name.clone(), metrics.route_totals(&route.name)));
        Reading {
            at: Instant::now(),
            accepted: metrics.accepted_counter().get(),
            dead_lettered: host.stats().dead_lettered,
            routes: routes.collect(),
        }
    }
}

/// The rates between `before` and `now`. A route new in `now` has no rate
/// yet (its counters may hold what it did before a reload removed it).
pub(super) fn sample(before: &Reading, now: &Reading, at_ms: u64) -> Sample {
    let seconds = now.at.saturating_duration_since(before.at).as_secs_f64().max(1e-3);
    let rate = |from: u64, to: u64| to.saturating_sub(from) as f64 / seconds;
    let mut total = RouteTotals::default();
    let mut routes = BTreeMap::new();
    for (name, now) in &now.routes {
        let Some(before) = before.routes.get(name) else { continue };
        routes.insert(name.clone(), rate(before.accepted, now.accepted));
        total.settled += now.settled.saturating_sub(before.settled);
        total.latency.sum_seconds += (now.latency.sum_seconds - before.latency.sum_seconds).max(0.0);
        for ((sum, now), before) in
            total.latency.buckets.iter_mut().zip(&now.latency.buckets).zip(&before.latency.buckets)
        {
            *sum += now.saturating_sub(*before);
        }
    }
    let (latency_mean_ms, p99) = latencies(&total.latency);
    let (latency_p99_ms, latency_p99_over_ms) = match p99 {
        Some(P99::AtMost(bound)) => (Some(bound), None),
        Some(P99::Over(bound)) => (None, Some(bound)),
        None => (None, None),
    };
    Sample {
        at_ms,
        accepted_per_s: rate(before.accepted, now.accepted),
        settled_per_s: total.settled as f64 / seconds,
        dead_lettered_per_s: rate(before.dead_lettered, now.dead_lettered),
        latency_mean_ms,
        latency_p99_ms,
        latency_p99_over_ms,
        routes,
    }
}

/// Where a histogram's 99th percentile is, milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum P99 {
    /// In the bucket up to this bound.
    AtMost(f64),
    /// Past the last bucket, whose bound this is.
    Over(f64),
}

/// The mean and the 99th percentile's bucket of the latencies in `histogram`,
/// milliseconds.
fn latencies(histogram: &HistogramTotals) -> (Option<f64>, Option<P99>) {
    let count: u64 = histogram.buckets.iter().sum();
    if count == 0 {
        return (None, None);
    }
    let wanted = (count as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    let bucket = histogram.buckets.iter().position(|in_bucket| {
        seen += in_bucket;
        seen >= wanted
    });
    let p99 = match bucket.and_then(|bucket| LATENCY_BOUNDS.get(bucket)) {
        Some(bound) => P99::AtMost(bound * 1e3),
        None => P99::Over(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1] * 1e3),
    };
    (Some(histogram.sum_seconds / count as f64 * 1e3), Some(p99))
}

/// The last [`CAPACITY`] samples, oldest first.
#[derive(Clone, Debug, Default)]
pub(super) struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    /// Keep `sample`, dropping the oldest when full. Its `at_ms` is made later
    /// than the last one's if it is not (the wall clock stepped back): a client
    /// asking for what came after the last sample it has must still get it.
    pub(super) fn push(&self, mut sample: Sample) {
        let mut samples = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(last) = samples.back() {
            sample.at_ms = sample.at_ms.max(last.at_ms + 1);
        }
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples that ended after `since_ms`, oldest first.
    pub(super) fn since(&self, since_ms: u64) -> Vec<Sample> {
        let samples = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        samples.iter().filter(|sample| sample.at_ms > since_ms).cloned().collect()
    }
}

/// Sample `host` into `history` every [`INTERVAL`], the first from
/// `baseline`, until `stopping` turns true.
pub(super) async fn record(
    host: Host,
    baseline: Reading,
    history: History,
    mut stopping: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(baseline.at + INTERVAL, INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = baseline;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let now = Reading::of(&host);
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        history.push(sample(&before, &now, at_ms));
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, accepted: u64, routes: &[(&str, RouteTotals)]) -> Reading {
        let routes = routes.iter().map(|(name, totals)| (name.to_string(), totals.clone())).collect();
        Reading { at, accepted, dead_lettered: 0, routes }
    }

    fn totals(accepted: u64, settled: u64, latencies_us: &[u64]) -> RouteTotals {
        let mut latency = HistogramTotals::default();
        for micros in latencies_us {
            let bucket = LATENCY_BOUNDS.partition_point(|bound| *bound < *micros as f64 / 1e6);
            latency.buckets[bucket] += 1;
            latency.sum_seconds += *micros as f64 / 1e6;
        }
        RouteTotals { accepted, settled, latency }
    }

    #[test]
    fn rates_are_what_the_counters_gained_over_the_seconds_between_readings() {
        let start = Instant::now();
        let before = reading(start, 10, &[("a", totals(4, 2, &[100]))]);
        let now = reading(
            start + Duration::from_secs(2),
            30,
            &[("a", totals(24, 20, &[100, 100, 200, 200, 5_000_000])), ("new", totals(50, 50, &[]))],
        );
        let now = Reading { dead_lettered: 2, ..now };
        let sample = sample(&before, &now, 7);
        assert_eq!((sample.at_ms, sample.accepted_per_s, sample.settled_per_s), (7, 10.0, 9.0));
        assert_eq!(sample.dead_lettered_per_s, 1.0);
        // Only route a has a reading before: a route that just appeared gets its rate next time.
        assert_eq!(sample.routes, BTreeMap::from([("a".to_string(), 10.0)]));
        // Four new latencies: 100 µs, 200 µs, 200 µs, 5 s.
        let mean = sample.latency_mean_ms.unwrap();
        assert!((mean - 5000.5 / 4.0).abs() < 1e-9, "{mean}");
        // The 99th percentile of four is the slowest: the 5 s one, in the bucket up to 10.48576 s.
        assert_eq!(
            (sample.latency_p99_ms, sample.latency_p99_over_ms),
            (Some(LATENCY_BOUNDS[10] * 1e3), None)
        );
    }

    #[test]
    fn a_99th_percentile_past_the_last_bucket_is_told_as_over_its_bound() {
        let start = Instant::now();
        // Queue timeouts of 30 s: past the last bucket, up to 10.48576 s.
        let timed_out = totals(2, 2, &[30_000_000, 30_000_000]);
        let sample = sample(
            &reading(start, 0, &[("a", totals(0, 0, &[]))]),
            &reading(start + INTERVAL, 2, &[("a", timed_out)]),
            1,
        );
        assert_eq!(sample.latency_mean_ms, Some(30_000.0));
        assert_eq!((sample.latency_p99_ms, sample.latency_p99_over_ms), (None, Some(10_485.76)));
        let json = serde_json::to_value(&sample).unwrap();
        assert_eq!(
            (&json["latency_p99_ms"], &json["latency_p99_over_ms"]),
            (&serde_json::json!(null), &serde_json::json!(10485.76))
        );
    }

    #[test]
    fn a_sample_taken_after_the_wall_clock_stepped_back_still_comes_after_the_last() {
        let history = History::default();
        let quiet = |at_ms| sample(&reading(Instant::now(), 0, &[]), &reading(Instant::now(), 0, &[]), at_ms);
        history.push(quiet(1_000));
        history.push(quiet(500));
        assert_eq!(history.since(1_000).iter().map(|s| s.at_ms).collect::<Vec<_>>(), [1_001]);
    }

    #[test]
    fn dead_letters_no_route_matched_count_in_the_dead_lettered_rate() {
        let start = Instant::now();
        let before = Reading { dead_lettered: 5, ..reading(start, 10, &[("a", totals(10, 10, &[]))]) };
        let now = reading(start + INTERVAL, 40, &[("a", totals(10, 10, &[]))]);
        let now = Reading { dead_lettered: 35, ..now };
        let sample = sample(&before, &now, 1);
        assert_eq!(
            (sample.accepted_per_s, sample.settled_per_s, sample.dead_lettered_per_s),
            (30.0, 0.0, 30.0)
        );
    }

    #[test]
    fn an_interval_without_settled_messages_has_no_latency() {
        let start = Instant::now();
        let quiet = totals(5, 5, &[300]);
        let sample = sample(
            &reading(start, 5, &[("a", quiet.clone())]),
            &reading(start + INTERVAL, 5, &[("a", quiet)]),
            1,
        );
        assert_eq!((sample.accepted_per_s, sample.latency_mean_ms, sample.latency_p99_ms), (0.0, None, None));
    }

    #[test]
    fn the_ring_keeps_the_last_five_minutes_and_answers_what_came_after_a_time() {
        let history = History::default();
        let quiet = |at_ms| sample(&reading(Instant::now(), 0, &[]), &reading(Instant::now(), 0, &[]), at_ms);
        for at_ms in 1..=CAPACITY as u64 + 5 {
            history.push(quiet(at_ms));
        }
        let all = history.since(0);
        assert_eq!((all.len(), all[0].at_ms, all[CAPACITY - 1].at_ms), (CAPACITY, 6, CAPACITY as u64 + 5));
        assert_eq!(
            history.since(CAPACITY as u64 + 3).iter().map(|s| s.at_ms).collect::<Vec<_>>(),
            [304, 305]
        );
    }
}
