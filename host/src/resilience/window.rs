//! A count window: the last `capacity` outcomes of an endpoint, for its failure rate.

/// The last `capacity` outcomes (success or failure) of one endpoint, oldest overwritten first.
///
/// Counting outcomes rather than time keeps the rate independent of traffic: a burst of failures weighs
/// the same at 10 and at 10 000 requests a second (linkerd's `success_rate` and resilience4j's
/// `COUNT_BASED` window make the same choice).
#[derive(Clone, Debug)]
pub(super) struct OutcomeWindow {
    /// `true` marks a failure. Fixed length `capacity`; only the first `len` slots are meaningful.
    slots: Box<[bool]>,
    /// Where the next outcome goes.
    next: usize,
    /// How many slots hold an outcome, up to `capacity`.
    len: usize,
    /// How many of those outcomes are failures.
    failures: usize,
}

impl OutcomeWindow {
    /// An empty window of the last `capacity` outcomes (at least 1).
    pub(super) fn new(capacity: usize) -> Self {
        OutcomeWindow { slots: vec![false; capacity.max(1)].into_boxed_slice(), next: 0, len: 0, failures: 0 }
    }

    /// Records one outcome, evicting the oldest once the window is full.
    pub(super) fn record(&mut self, failed: bool) {
        if self.len == self.slots.len() {
            self.failures -= usize::from(self.slots[self.next]);
        } else {
            self.len += 1;
        }
        self.slots[self.next] = failed;
        self.failures += usize::from(failed);
        self.next = (self.next + 1) % self.slots.len();
    }

    /// Forgets every outcome, as after a trip: the next verdict is about fresh evidence only.
    pub(super) fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
        self.failures = 0;
    }

    /// How many outcomes the window holds.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// How many of them are failures.
    pub(super) fn failures(&self) -> usize {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_only_the_last_capacity_outcomes() {
        let mut window = OutcomeWindow::new(4);
        for failed in [true, true, false, false] {
            window.record(failed);
        }
        assert_eq!((window.len(), window.failures()), (4, 2));
        window.record(false);
        window.record(false);
        assert_eq!((window.len(), window.failures()), (4, 0));
        window.record(true);
        assert_eq!((window.len(), window.failures()), (4, 1));
    }

    #[test]
    fn cleared_window_starts_from_nothing() {
        let mut window = OutcomeWindow::new(3);
        (0..5).for_each(|_| window.record(true));
        window.clear();
        assert_eq!((window.len(), window.failures()), (0, 0));
        window.record(true);
        assert_eq!((window.len(), window.failures()), (1, 1));
    }
}
