//! Retry budget: retries in progress stay a bounded share of the requests in progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Caps the retries in progress at a destination to a share of its requests in progress, with a floor
/// (Envoy's `retry_budget`: `budget_percent` 20 % of active requests, `min_retry_concurrency` 3).
///
/// A retry may start while, counting it, `retries ≤ max(floor, ⌊ratio × active⌋)`. A retry counts from
/// the moment its [`RetryPermit`] is taken, *before* its backoff, until the permit is dropped after the
/// retried attempt: Envoy counted only retries on the wire, so retries sleeping in backoff escaped the
/// budget and a 20 % budget could still release 100 % retries (envoyproxy/envoy#30205).
///
/// Cloning is cheap and shares the counts: one budget serves one destination.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    shared: Arc<Counts>,
}

#[derive(Debug)]
struct Counts {
    ratio: f64,
    floor: usize,
    /// Requests between [`RetryBudget::start_request`] and the drop of their guard.
    active: AtomicUsize,
    /// Signalled when a retry permit is dropped.
    freed: tokio::sync::Notify,
    /// Retries between [`RetryBudget::try_acquire`] and the drop of their permit.
    retries: AtomicUsize,
}

/// One request in progress at the destination, counted by the budget until dropped.
///
/// Taken when a message is accepted for the destination (queued or in flight) and held, across all of
/// its attempts, until its final outcome.
#[must_use = "the request counts only while its guard is held"]
#[derive(Debug)]
pub struct RequestGuard {
    shared: Arc<Counts>,
}

/// Leave to retry once, counted by the budget until dropped (after the retried attempt ends).
#[must_use = "the retry counts only while its permit is held"]
#[derive(Debug)]
pub struct RetryPermit {
    shared: Arc<Counts>,
}

impl Default for RetryBudget {
    /// 20 % of active requests, at least 3 retries at once: Envoy's `retry_budget` defaults.
    fn default() -> Self {
        RetryBudget::new(0.2, 3)
    }
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per active request (0.2 = 20 %; negative is read as 0), and
    /// `floor` retries at once however few requests are active.
    pub fn new(ratio: f64, floor: usize) -> Self {
        let counts = Counts {
            ratio: ratio.max(0.0),
            floor,
            active: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            retries: AtomicUsize::new(0),
        };
        RetryBudget { shared: Arc::new(counts) }
    }

    /// Counts one more request in progress until the guard is dropped.
    pub fn start_request(&self) -> RequestGuard {
        self.shared.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard { shared: self.shared.clone() }
    }

    /// Takes leave for one retry, or `None` when the budget is spent (Envoy then gives up; the
    /// destination core waits instead: [`RetryBudget::acquire`]).
    pub fn try_acquire(&self) -> Option<RetryPermit> {
        let limit = self.limit();
        self.shared
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |retries| {
                (retries < limit).then_some(retries + 1)
            })
            .ok()
            .map(|_| RetryPermit { shared: self.shared.clone() })
    }

    /// Takes leave for a message's first retry, which the budget always
    /// allows: it counts like any other retry (so later retries see it) but
    /// never waits. Envoy's floor (`min_retry_concurrency`) lets a few
    /// retries through however little traffic there is; this floor is per
    /// message, so a burst of messages that fail together are each retried
    /// once, on another endpoint, before the budget holds later retries back.
    pub fn first_retry(&self) -> RetryPermit {
        self.shared.retries.fetch_add(1, Ordering::AcqRel);
        RetryPermit { shared: self.shared.clone() }
    }

    /// Takes leave for one retry, waiting while the budget is spent: the
    /// retry is delayed, not given up. Retries in progress still never
    /// exceed the budget; a message waits for one of them to end.
    pub async fn acquire(&self) -> RetryPermit {
        loop {
            // Waiting before the check: a permit dropped between the check and the wait wakes this
            // one. An unpolled `notified()` is not waiting yet, and two drops that came then woke
            // one of two such retries only (`notify_one` keeps one wake-up for nobody).
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    /// How many retries may be in progress now: `max(floor, ⌊ratio × active⌋)`.
    pub fn limit(&self) -> usize {
        // The epsilon keeps 0.29 × 100 at 29 despite floating point (28.999…).
        let share = (self.shared.ratio * self.active() as f64 + 1e-9) as usize;
        share.max(self.shared.floor)
    }

    /// Requests in progress.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Retries in progress (in backoff or in flight).
    pub fn retries(&self) -> usize {
        self.shared.retries.load(Ordering::Relaxed)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.shared.retries.fetch_sub(1, Ordering::AcqRel);
        self.shared.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_floor_when_few_requests_are_active() {
        let budget = RetryBudget::default();
        let _request = budget.start_request();
        let permits: Vec<_> = (0..3).map(|_| budget.try_acquire().expect("within the floor")).collect();
        assert!(budget.try_acquire().is_none());
        assert_eq!((budget.retries(), permits.len()), (3, 3));
    }

    #[test]
    fn budget_allows_its_ratio_of_active_requests() {
        let budget = RetryBudget::default();
        let _requests: Vec<_> = (0..50).map(|_| budget.start_request()).collect();
        assert_eq!(budget.limit(), 10);
        let _permits: Vec<_> = (0..10).map(|_| budget.try_acquire().expect("within 20 % of 50")).collect();
        assert!(budget.try_acquire().is_none());
    }

    #[test]
    fn dropped_permits_and_finished_requests_free_the_budget() {
        let budget = RetryBudget::new(0.5, 0);
        let requests: Vec<_> = (0..4).map(|_| budget.start_request()).collect();
        let first = budget.try_acquire().expect("1 of 2");
        let _second = budget.try_acquire().expect("2 of 2");
        assert!(budget.try_acquire().is_none());
        drop(first);
        let _third = budget.try_acquire().expect("the dropped permit freed a retry");
        drop(requests);
        assert_eq!((budget.active(), budget.limit()), (0, 0));
        assert!(budget.try_acquire().is_none(), "no active requests and no floor");
    }

    #[test]
    fn budget_holds_under_concurrent_acquisition() {
        let budget = RetryBudget::new(0.0, 5);
        let permits = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..10).filter_map(|_| budget.try_acquire()).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect::<Vec<_>>()
        });
        assert_eq!((permits.len(), budget.retries()), (5, 5));
        drop(permits);
        assert_eq!(budget.retries(), 0);
    }

    #[tokio::test]
    async fn a_first_retry_is_allowed_past_the_budget_and_counts_against_later_ones() {
        let budget = RetryBudget::new(0.0, 1);
        let _request = budget.start_request();
        let _spent = budget.try_acquire().expect("the floor");
        let first = budget.first_retry();
        assert_eq!(budget.retries(), 2, "allowed over the budget, and counted");
        assert!(budget.try_acquire().is_none());
        drop(first);
        assert!(budget.try_acquire().is_none(), "still the floor's one retry in progress");
    }

    #[tokio::test]
    async fn a_retry_past_the_budget_waits_for_one_to_end() {
        let budget = RetryBudget::new(0.0, 1);
        let _request = budget.start_request();
        let first = budget.acquire().await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the budget allows one retry at a time");
        assert_eq!(budget.retries(), 1);
        drop(first);
        let second = waiting.await.unwrap();
        assert_eq!(budget.retries(), 1, "the second took the first's place");
        drop(second);
        assert_eq!(budget.retries(), 0);
    }
}
