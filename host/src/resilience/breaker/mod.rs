//! Circuit breaker: stops sending to an endpoint that keeps failing, then probes it back one request
//! at a time (linkerd's failure accrual, with resilience4j's count-window failure rate).

mod config;
mod permit;

pub use config::{BreakerConfig, EjectionBackoff, FailureRate};
pub use permit::BreakerPermit;

use super::window::OutcomeWindow;
use permit::Kind;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Where a breaker stands, as seen at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows; outcomes are counted.
    Closed,
    /// The endpoint is ejected, since `since`, until `until`.
    Open {
        /// When the breaker last left `Closed`.
        since: Instant,
        /// When the next probe may go.
        until: Instant,
    },
    /// The ejection is over: one probe request may go, and decides. `probing` while it is in flight.
    HalfOpen {
        /// When the breaker last left `Closed`.
        since: Instant,
        /// Whether the probe is in flight (no other request is admitted meanwhile).
        probing: bool,
    },
}

/// A change of a breaker's state, returned by the report that caused it, for the caller to log, count
/// or emit as an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `Closed → Open`: the endpoint is ejected until `until`.
    Tripped {
        /// What tripped it.
        reason: TripReason,
        /// End of the ejection.
        until: Instant,
    },
    /// `HalfOpen → Open`: the probe failed; the endpoint is ejected again, for longer.
    Reopened {
        /// End of the new ejection.
        until: Instant,
        /// Ejections in a row so far, this one included.
        ejections: u32,
    },
    /// `HalfOpen → Closed`: the probe succeeded; traffic flows again.
    Recovered {
        /// How long the endpoint was out, from the trip to this report.
        ejected_for: Duration,
    },
}

/// Why a breaker tripped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TripReason {
    /// This many failures in a row.
    #[error("{0} failure{s} in a row", s = if *.0 == 1 { "" } else { "s" })]
    ConsecutiveFailures(u32),
    /// `failures` of the last `outcomes` outcomes failed.
    #[error("{failures} of the last {outcomes} attempts failed")]
    FailureRate {
        /// Failures in the window.
        failures: usize,
        /// Outcomes in the window.
        outcomes: usize,
    },
}

/// The circuit breaker of one endpoint.
///
/// Time is an argument (`now`) rather than read inside, so the machine is a pure function of the
/// events it is given: unit tests step it with instants they build, and the destination core passes
/// `tokio::time::Instant::now()` (tokio's rather than std's `Instant` because that one follows
/// `tokio::time::pause` in integration tests, and `until` feeds straight into `sleep_until`).
///
/// Cloning is cheap and shares the state. The state sits behind a mutex: it is taken twice per request
/// (acquire and report), for a few instructions, next to a network send.
#[derive(Clone, Debug)]
pub struct Breaker {
    machine: Arc<Mutex<Machine>>,
}

#[derive(Debug)]
struct Machine {
    config: BreakerConfig,
    state: BreakerState,
    /// Bumped on every state change; a permit taken under an older epoch reports into the void, so
    /// requests sent before a trip cannot extend an ejection or close a breaker they never probed.
    epoch: u64,
    consecutive: u32,
    window: Option<OutcomeWindow>,
    /// Ejections in a row; reset when a probe succeeds.
    ejections: u32,
    rng: SmallRng,
}

impl Breaker {
    /// A closed breaker whose ejection jitter is seeded from the thread's random generator.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker::with_rng(config, rand::make_rng())
    }

    /// A closed breaker whose ejection jitter comes from a generator seeded with `seed`: the same seed
    /// and events give the same ejections.
    pub fn with_seed(config: BreakerConfig, seed: u64) -> Self {
        Breaker::with_rng(config, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(config: BreakerConfig, rng: SmallRng) -> Self {
        let window = config.failure_rate.map(|rate| OutcomeWindow::new(rate.window));
        let state = BreakerState::Closed;
        let machine = Machine { config, state, epoch: 0, consecutive: 0, window, ejections: 0, rng };
        Breaker { machine: Arc::new(Mutex::new(machine)) }
    }

    /// Leave to send one request now, or `None` while the endpoint is ejected or its probe is in
    /// flight. Once an ejection is over, the first call moves the breaker to half-open and returns the
    /// probe ([`BreakerPermit::is_probe`]); later calls get `None` until the probe is reported or dropped.
    pub fn try_acquire(&self, now: Instant) -> Option<BreakerPermit> {
        let mut machine = lock(&self.machine);
        let kind = machine.admit(now)?;
        Some(BreakerPermit::new(self.machine.clone(), kind, machine.epoch))
    }

    /// Leave to send whatever the state: for an endpoint the destination routes to although it is
    /// ejected (over the ejection cap, or in panic mode; see [`Admission::Forced`](super::Admission)).
    /// Returns [`try_acquire`](Self::try_acquire)'s permit when there is one; otherwise a permit whose
    /// report changes nothing, so only the breaker's own probe decides when the endpoint is back.
    pub fn acquire_forced(&self, now: Instant) -> BreakerPermit {
        let mut machine = lock(&self.machine);
        let kind = machine.admit(now).unwrap_or(Kind::Forced);
        BreakerPermit::new(self.machine.clone(), kind, machine.epoch)
    }

    /// The state as of `now`: an `Open` breaker whose ejection is over reads as `HalfOpen` with no
    /// probe in flight, although it only moves there on the next [`try_acquire`](Self::try_acquire).
    pub fn state(&self, now: Instant) -> BreakerState {
        match lock(&self.machine).state {
            BreakerState::Open { since, until } if now >= until => {
                BreakerState::HalfOpen { since, probing: false }
            }
            state => state,
        }
    }

    /// Ejections in a row so far (0 while closed).
    pub fn ejections(&self) -> u32 {
        lock(&self.machine).ejections
    }

    /// Count by `config` from now on (a reload changed the thresholds): the state, the ejection
    /// under way and the failures counted so far stay; the next outcomes trip by `config`'s
    /// triggers and the next ejections last `config`'s time. The failure-rate window keeps its
    /// outcomes while its size stays, and starts empty at another size.
    pub fn reconfigure(&self, config: BreakerConfig) {
        let mut machine = lock(&self.machine);
        let window = |config: &BreakerConfig| config.failure_rate.map(|rate| rate.window);
        if window(&machine.config) != window(&config) {
            machine.window = window(&config).map(OutcomeWindow::new);
        }
        machine.config = config;
    }
}

impl Machine {
    /// What a permit taken now would be, moving to half-open (probe in flight) when it is the probe;
    /// `None` while the endpoint is ejected or its probe is out.
    fn admit(&mut self, now: Instant) -> Option<Kind> {
        match self.state {
            BreakerState::Closed => Some(Kind::Counted),
            BreakerState::Open { since, until } if now >= until => {
                self.state = BreakerState::HalfOpen { since, probing: true };
                Some(Kind::Probe)
            }
            BreakerState::HalfOpen { since, probing: false } => {
                self.state = BreakerState::HalfOpen { since, probing: true };
                Some(Kind::Probe)
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { probing: true, .. } => None,
        }
    }

    /// Counts one outcome of a closed breaker, tripping it when a trigger fires.
    fn count(&mut self, failed: bool, now: Instant) -> Option<Transition> {
        self.consecutive = if failed { self.consecutive.saturating_add(1) } else { 0 };
        if let Some(window) = &mut self.window {
            window.record(failed);
        }
        if !failed {
            return None;
        }
        let limit = self.config.consecutive_failures;
        let reason = if limit > 0 && self.consecutive >= limit {
            TripReason::ConsecutiveFailures(self.consecutive)
        } else {
            let (rate, window) = self.config.failure_rate.zip(self.window.as_ref())?;
            let (failures, outcomes) = (window.failures(), window.len());
            let enough = outcomes >= rate.min_volume.min(rate.window).max(1);
            if !(enough && failures as f64 >= rate.threshold * outcomes as f64) {
                return None;
            }
            TripReason::FailureRate { failures, outcomes }
        };
        Some(Transition::Tripped { reason, until: self.eject(now, now) })
    }

    /// Opens the breaker for the next ejection in a row, returning its end; `since` is when it left
    /// `Closed`.
    fn eject(&mut self, since: Instant, now: Instant) -> Instant {
        self.ejections = self.ejections.saturating_add(1);
        let duration = self.config.ejection.duration(self.ejections, &mut self.rng);
        // Far enough to never come, near enough not to overflow (tokio's own "far future").
        let until = now.checked_add(duration).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30));
        self.enter(BreakerState::Open { since, until });
        until
    }

    /// Closes the breaker after a successful probe, forgetting all history.
    fn close(&mut self, since: Instant, now: Instant) -> Transition {
        self.ejections = 0;
        self.enter(BreakerState::Closed);
        Transition::Recovered { ejected_for: now.saturating_duration_since(since) }
    }

    fn enter(&mut self, state: BreakerState) {
        self.state = state;
        self.epoch += 1;
        self.consecutive = 0;
        if let Some(window) = &mut self.window {
            window.clear();
        }
    }
}

/// Locks the machine, even if a holder panicked: every update leaves it consistent.
fn lock(machine: &Mutex<Machine>) -> MutexGuard<'_, Machine> {
    machine.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
