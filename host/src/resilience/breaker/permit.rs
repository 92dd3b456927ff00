//! The owned leave to send one request through a breaker, which reports back or frees itself on drop.

use super::{BreakerState, Machine, Transition, lock};
use crate::resilience::Outcome;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// Leave to send one request to the endpoint, reporting back how it went.
///
/// Report with [`succeeded`](Self::succeeded), [`failed`](Self::failed) or [`report`](Self::report).
/// Dropping a permit unreported (the request was cancelled) counts as nothing; if it was the half-open
/// probe, the probe slot is freed so another request can probe (linkerd's semantics; resilience4j's
/// breakers got stuck half-open when unreported permits leaked, resilience4j#903).
#[must_use = "dropping a permit unreported counts as nothing"]
#[derive(Debug)]
pub struct BreakerPermit {
    machine: Arc<Mutex<Machine>>,
    kind: Kind,
    epoch: u64,
    reported: bool,
}

/// What a permit's report means to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Taken while closed: its outcome is counted.
    Counted,
    /// The half-open probe: its outcome decides.
    Probe,
    /// Taken over an open breaker (ejection cap, panic mode): its outcome is ignored.
    Forced,
}

impl BreakerPermit {
    pub(super) fn new(machine: Arc<Mutex<Machine>>, kind: Kind, epoch: u64) -> Self {
        BreakerPermit { machine, kind, epoch, reported: false }
    }

    /// Whether this permit is the half-open probe, whose outcome closes or re-opens the breaker.
    pub fn is_probe(&self) -> bool {
        self.kind == Kind::Probe
    }

    /// Reports that the request succeeded.
    pub fn succeeded(self, now: Instant) -> Option<Transition> {
        self.finish(false, now)
    }

    /// Reports that the request failed in a way that counts against the endpoint.
    pub fn failed(self, now: Instant) -> Option<Transition> {
        self.finish(true, now)
    }

    /// Reports an [`Outcome`]: an [endpoint failure](Outcome::is_endpoint_failure) fails, `Shed` (which
    /// never reached the endpoint) counts as nothing, like a drop, and anything else succeeds.
    pub fn report(self, outcome: &Outcome, now: Instant) -> Option<Transition> {
        match outcome {
            Outcome::Shed => None,
            outcome => self.finish(outcome.is_endpoint_failure(), now),
        }
    }

    fn finish(mut self, failed: bool, now: Instant) -> Option<Transition> {
        self.reported = true;
        let mut machine = lock(&self.machine);
        if machine.epoch != self.epoch {
            return None;
        }
        match (self.kind, machine.state) {
            (Kind::Counted, BreakerState::Closed) => machine.count(failed, now),
            (Kind::Probe, BreakerState::HalfOpen { since, .. }) if failed => {
                let until = machine.eject(since, now);
                Some(Transition::Reopened { until, ejections: machine.ejections })
            }
            (Kind::Probe, BreakerState::HalfOpen { since, .. }) => Some(machine.close(since, now)),
            _ => None,
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.reported || self.kind != Kind::Probe {
            return;
        }
        let mut machine = lock(&self.machine);
        if let (true, BreakerState::HalfOpen { since, probing: true }) =
            (machine.epoch == self.epoch, machine.state)
        {
            machine.state = BreakerState::HalfOpen { since, probing: false };
        }
    }
}
