use super::*;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use std::sync::Barrier;

const SECOND: Duration = Duration::from_secs(1);

/// Trips after `consecutive` failures; ejections of exactly 1 s, 2 s, 4 s … 60 s (no jitter).
fn exact(consecutive: u32) -> BreakerConfig {
    let ejection = EjectionBackoff { base: SECOND, max: Duration::from_secs(60), jitter: 0.0 };
    BreakerConfig { consecutive_failures: consecutive, failure_rate: None, ejection }
}

fn fail(breaker: &Breaker, now: Instant) -> Option<Transition> {
    breaker.try_acquire(now).expect("admitted").failed(now)
}

fn succeed(breaker: &Breaker, now: Instant) -> Option<Transition> {
    breaker.try_acquire(now).expect("admitted").succeeded(now)
}

/// A breaker of `exact(1)` tripped at `t0`, open until `t0 + 1 s`.
fn tripped() -> (Breaker, Instant) {
    let (breaker, t0) = (Breaker::with_seed(exact(1), 0), Instant::now());
    assert!(matches!(fail(&breaker, t0), Some(Transition::Tripped { .. })));
    (breaker, t0)
}

#[test]
fn consecutive_failures_trip_the_breaker() {
    let (breaker, now) = (Breaker::with_seed(exact(3), 0), Instant::now());
    assert_eq!(fail(&breaker, now), None);
    assert_eq!(fail(&breaker, now), None);
    let reason = TripReason::ConsecutiveFailures(3);
    assert_eq!(fail(&breaker, now), Some(Transition::Tripped { reason, until: now + SECOND }));
    assert_eq!(breaker.state(now), BreakerState::Open { since: now, until: now + SECOND });
    assert_eq!(breaker.ejections(), 1);
}

#[test]
fn a_success_resets_the_consecutive_count() {
    let (breaker, now) = (Breaker::with_seed(exact(3), 0), Instant::now());
    for _ in 0..10 {
        assert_eq!(fail(&breaker, now), None);
        assert_eq!(fail(&breaker, now), None);
        assert_eq!(succeed(&breaker, now), None);
    }
    assert_eq!(breaker.state(now), BreakerState::Closed);
}

#[test]
fn failure_rate_trips_only_once_the_minimum_volume_is_in() {
    let rate = FailureRate { threshold: 0.5, window: 20, min_volume: 10 };
    let (breaker, now) =
        (Breaker::with_seed(BreakerConfig { failure_rate: Some(rate), ..exact(0) }, 0), Instant::now());
    // Alternating outcomes: a 50 % failure rate, never two failures in a row.
    for _ in 0..4 {
        assert_eq!(succeed(&breaker, now), None);
        assert_eq!(fail(&breaker, now), None, "fewer than 10 outcomes: the rate does not count yet");
    }
    assert_eq!(succeed(&breaker, now), None);
    let reason = TripReason::FailureRate { failures: 5, outcomes: 10 };
    assert_eq!(fail(&breaker, now), Some(Transition::Tripped { reason, until: now + SECOND }));
}

#[test]
fn failure_rate_below_its_threshold_never_trips() {
    let rate = FailureRate { threshold: 0.5, window: 10, min_volume: 10 };
    let (breaker, now) =
        (Breaker::with_seed(BreakerConfig { failure_rate: Some(rate), ..exact(0) }, 0), Instant::now());
    for _ in 0..100 {
        assert_eq!(fail(&breaker, now), None);
        (0..2).for_each(|_| assert_eq!(succeed(&breaker, now), None));
    }
}

#[test]
fn open_breaker_rejects_until_the_ejection_ends() {
    let (breaker, t0) = tripped();
    assert!(breaker.try_acquire(t0).is_none());
    assert!(breaker.try_acquire(t0 + SECOND - Duration::from_millis(1)).is_none());
    assert_eq!(breaker.state(t0 + SECOND), BreakerState::HalfOpen { since: t0, probing: false });
    assert!(breaker.try_acquire(t0 + SECOND).expect("the ejection is over").is_probe());
}

#[tokio::test(start_paused = true)]
async fn open_breaker_rejects_until_the_jittered_ejection_ends_on_a_paused_clock() {
    let config = BreakerConfig { consecutive_failures: 2, ..BreakerConfig::default() };
    let breaker = Breaker::with_seed(config, 42);
    assert_eq!(fail(&breaker, Instant::now()), None);
    let Some(Transition::Tripped { until, .. }) = fail(&breaker, Instant::now()) else {
        panic!("not tripped")
    };
    let ejection = until - Instant::now();
    assert!(Duration::from_millis(500) < ejection && ejection <= SECOND, "{ejection:?} off 1 s − 50 %");
    tokio::time::advance(ejection - Duration::from_millis(1)).await;
    assert!(breaker.try_acquire(Instant::now()).is_none());
    tokio::time::sleep_until(until).await;
    assert!(breaker.try_acquire(Instant::now()).expect("the ejection is over").is_probe());
}

#[test]
fn same_seed_gives_the_same_jittered_ejections() {
    let ejections = |seed| {
        let config = BreakerConfig { consecutive_failures: 1, ..BreakerConfig::default() };
        let (breaker, mut now) = (Breaker::with_seed(config, seed), Instant::now());
        let mut ends = vec![];
        for _ in 0..6 {
            let (Some(Transition::Tripped { until, .. }) | Some(Transition::Reopened { until, .. })) =
                fail(&breaker, now)
            else {
                panic!("the failure did not eject");
            };
            ends.push(until - now);
            now = until;
        }
        ends
    };
    assert_eq!(ejections(3), ejections(3));
    assert_ne!(ejections(3), ejections(4));
}

#[test]
fn half_open_admits_exactly_one_probe() {
    let (breaker, t0) = tripped();
    let probe = breaker.try_acquire(t0 + SECOND).expect("probe");
    assert!(breaker.try_acquire(t0 + SECOND).is_none());
    assert!(breaker.try_acquire(t0 + 10 * SECOND).is_none());
    assert_eq!(breaker.state(t0 + SECOND), BreakerState::HalfOpen { since: t0, probing: true });
    drop(probe);
}

#[test]
fn exactly_one_probe_is_admitted_under_concurrent_acquisition() {
    for _ in 0..50 {
        let (breaker, t0) = tripped();
        let barrier = Barrier::new(8);
        let permits: Vec<BreakerPermit> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        breaker.try_acquire(t0 + SECOND)
                    })
                })
                .collect();
            handles.into_iter().filter_map(|handle| handle.join().unwrap()).collect()
        });
        assert_eq!(permits.len(), 1);
        assert!(permits[0].is_probe());
    }
}

#[test]
fn a_dropped_probe_frees_the_slot_without_counting() {
    let (breaker, t0) = tripped();
    let probe = breaker.try_acquire(t0 + SECOND).expect("probe");
    drop(probe);
    assert_eq!(breaker.state(t0 + SECOND), BreakerState::HalfOpen { since: t0, probing: false });
    assert_eq!(breaker.ejections(), 1, "a cancelled probe is neither a success nor a failure");
    let again = std::thread::spawn(move || breaker.try_acquire(t0 + SECOND).map(|permit| permit.is_probe()));
    assert_eq!(again.join().unwrap(), Some(true));
}

#[test]
fn a_successful_probe_closes_and_resets_the_counts() {
    let (breaker, t0) = tripped();
    let t1 = t0 + SECOND;
    assert_eq!(succeed(&breaker, t1 + SECOND), Some(Transition::Recovered { ejected_for: 2 * SECOND }));
    assert_eq!((breaker.state(t1), breaker.ejections()), (BreakerState::Closed, 0));
    let Some(Transition::Tripped { until, .. }) = fail(&breaker, t1) else { panic!("not tripped") };
    assert_eq!(until, t1 + SECOND, "a fresh trip starts again from the base ejection");
}

#[test]
fn a_failed_probe_reopens_with_a_longer_ejection() {
    let (breaker, t0) = tripped();
    let mut now = t0 + SECOND;
    for (ejections, seconds) in [(2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 60), (8, 60)] {
        let until = now + Duration::from_secs(seconds);
        assert_eq!(fail(&breaker, now), Some(Transition::Reopened { until, ejections }));
        assert_eq!(breaker.state(now), BreakerState::Open { since: t0, until });
        now = until;
    }
}

#[test]
fn jittered_reejections_grow_until_the_cap_and_never_pass_it() {
    let config = BreakerConfig { consecutive_failures: 1, ..BreakerConfig::default() };
    for seed in 0..20 {
        let (breaker, mut now) = (Breaker::with_seed(config, seed), Instant::now());
        let mut previous = Duration::ZERO;
        for ejections in 1..=12 {
            fail(&breaker, now);
            let BreakerState::Open { until, .. } = breaker.state(now) else { panic!("not open") };
            let ejection = until - now;
            // Nominal ejections 1, 2, 4 … 32 s are uncapped: with jitter 0.5 each is at least the last.
            assert!(ejections > 6 || previous <= ejection, "{previous:?} then {ejection:?}");
            assert!(Duration::from_secs(30) < ejection || ejections < 7, "at the cap: {ejection:?}");
            assert!(ejection <= Duration::from_secs(60), "{ejection:?}");
            (previous, now) = (ejection, until);
        }
    }
}

#[test]
fn reports_of_requests_sent_before_a_trip_are_ignored() {
    let (breaker, now) = (Breaker::with_seed(exact(2), 0), Instant::now());
    let late_success = breaker.try_acquire(now).expect("closed");
    let late_failure = breaker.try_acquire(now).expect("closed");
    fail(&breaker, now);
    assert!(matches!(fail(&breaker, now), Some(Transition::Tripped { .. })));
    let probe = breaker.try_acquire(now + SECOND).expect("probe");
    assert_eq!(late_success.succeeded(now + SECOND), None, "must not close the breaker");
    assert_eq!(late_failure.failed(now + SECOND), None, "must not re-open the breaker");
    assert_eq!(breaker.state(now + SECOND), BreakerState::HalfOpen { since: now, probing: true });
    assert!(matches!(probe.succeeded(now + SECOND), Some(Transition::Recovered { .. })));
}

#[test]
fn forced_permits_pass_an_open_breaker_without_changing_it() {
    let (breaker, t0) = tripped();
    let forced = breaker.acquire_forced(t0);
    assert!(!forced.is_probe());
    assert_eq!(forced.succeeded(t0), None);
    assert_eq!(breaker.acquire_forced(t0).failed(t0), None);
    assert_eq!(breaker.state(t0), BreakerState::Open { since: t0, until: t0 + SECOND });
    assert!(breaker.acquire_forced(t0 + SECOND).is_probe(), "once the ejection is over, it probes");
}

#[test]
fn outcomes_report_as_failure_success_or_nothing() {
    let (breaker, t0) = tripped();
    let t1 = t0 + SECOND;
    let shed = breaker.try_acquire(t1).expect("probe").report(&Outcome::Shed, t1);
    assert_eq!((shed, breaker.state(t1)), (None, BreakerState::HalfOpen { since: t0, probing: false }));
    let rejected = Outcome::Fatal(FatalReason::Status(404));
    assert!(matches!(
        breaker.try_acquire(t1).unwrap().report(&rejected, t1),
        Some(Transition::Recovered { .. })
    ));
    let reset = Outcome::Retryable(RetryReason::Reset);
    assert!(matches!(breaker.try_acquire(t1).unwrap().report(&reset, t1), Some(Transition::Tripped { .. })));
}

#[test]
fn a_reconfigured_breaker_keeps_its_ejection_and_counts_by_its_new_thresholds() {
    let (breaker, t0) = tripped();
    breaker.reconfigure(BreakerConfig {
        ejection: EjectionBackoff { base: 10 * SECOND, ..exact(1).ejection },
        ..exact(2)
    });
    assert_eq!(
        breaker.state(t0),
        BreakerState::Open { since: t0, until: t0 + SECOND },
        "the ejection under way stays"
    );
    let t1 = t0 + SECOND;
    let until = t1 + 20 * SECOND;
    assert_eq!(
        fail(&breaker, t1),
        Some(Transition::Reopened { until, ejections: 2 }),
        "the new ejection time"
    );
    assert!(matches!(succeed(&breaker, until), Some(Transition::Recovered { .. })));
    assert_eq!(fail(&breaker, until), None, "two failures in a row trip it now");
    assert!(matches!(fail(&breaker, until), Some(Transition::Tripped { .. })));
}
