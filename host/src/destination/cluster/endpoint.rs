//! One endpoint of a cluster and what the cluster knows of it: breaker,
//! health, load, latency, when it last came back and until when it refuses.
//! What it knows outlives the cluster: a reload that rebuilds the destination
//! hands it to the new instance for each endpoint it keeps ([`EndpointState`]).

use crate::balance::{PeakEwma, endpoint_id};
use crate::config::{DestinationConfig, EndpointConfig};
use crate::destination::{EventSink, Slots};
use crate::metrics::EndpointMetrics;
use crate::resilience::{Breaker, BreakerConfig, BreakerState, Health, HealthConfig, HealthState, SlowStart};
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Weight of an endpoint of configured weight 1 at full strength; slow
/// start scales it down, a configured weight scales it up.
const FULL_WEIGHT: f64 = 100.0;

/// One endpoint and what the destination knows of it.
pub(super) struct Endpoint {
    pub(super) address: String,
    pub(super) id: u64,
    /// Its configured weight, 1 to [`MAX_WEIGHT`](crate::config::MAX_WEIGHT).
    pub(super) configured_weight: u32,
    pub(super) metrics: EndpointMetrics,
    /// What is known of it, shared with the instances of the destination before and after a
    /// reload that keep it.
    pub(super) state: Arc<EndpointState>,
}

/// What a destination knows of one endpoint: facts about the endpoint, not about one instance
/// of the destination. A reload that rebuilds the destination (any change of its settings)
/// hands it, by address, to the new instance, which shares it with the one it replaces: the
/// deliveries still under way there report into it, and neither instance's checks find an
/// endpoint known down up again, nor an ejected one back. The new settings apply from then on
/// ([`EndpointState::reconfigure`]). An endpoint the reload adds starts afresh.
pub(super) struct EndpointState {
    pub(super) breaker: Breaker,
    /// Up or down by active checks and passive failures; `None` without
    /// active checks (the breaker alone keeps a failing endpoint out).
    pub(super) health: Mutex<Option<Health>>,
    /// Attempts in flight to it, from every instance of the destination.
    pub(super) in_flight: AtomicU32,
    /// What those attempts hold, at most its pool's size (the newest instance's) over all the
    /// instances together: each has a pool of its own.
    pub(super) slots: Arc<Slots>,
    pub(super) latency: Mutex<PeakEwma>,
    /// When the state was made, the origin of `recovered_at`.
    born: Instant,
    /// When its breaker last let it back in, in microseconds since `born`
    /// plus one (0: never); it slowly starts from there. Read on every pick,
    /// so an atomic rather than a lock.
    pub(super) recovered_at: AtomicU64,
    /// Until when it is left out, as `recovered_at` (0: it is not): its
    /// last attempt's connection was refused (for the refusal window), or
    /// its answer asked for a pause (`Retry-After`).
    pub(super) refusing_until: AtomicU64,
    /// What its events last told of it, and where they go. A lock, for the event is told under
    /// it, in order with the state it read.
    pub(super) told: Mutex<Told>,
}

/// What the events of an endpoint last told of it, and whether they still tell.
pub(super) struct Told {
    /// Whether they last told it up (as it starts): up is its health (with active checks) up and
    /// its breaker closed, and an event tells when that changes.
    pub(super) up: bool,
    /// Whether the instance of a reload that reaches it over another transport tells of it now,
    /// going on from what was last told here, or a reload removed it: this state tells nothing
    /// more (a check or a delivery still under way on the instance it replaced would tell over it,
    /// or of an endpoint no longer there).
    pub(super) superseded: bool,
    /// Where they go: the sink of the newest instance of the destination sharing this state. The
    /// instance a reload replaced tells through it too, so that what either finds is told in the
    /// order it was found, held with what the new one tells until the reload is told applied (a
    /// change told at once by the old instance would come before one the new one told earlier).
    pub(super) events: EventSink,
}

impl EndpointState {
    /// A fresh state: breaker closed, health (with active checks) up, the
    /// default latency estimate, `limit` attempts in flight at most; its events told to `events`.
    fn new(
        breaker: BreakerConfig,
        health: Option<HealthConfig>,
        limit: usize,
        events: EventSink,
    ) -> EndpointState {
        let latency = PeakEwma::new(
            crate::balance::DEFAULT_RTT,
            crate::balance::DEFAULT_DECAY,
            std::time::Instant::now(),
        );
        EndpointState {
            breaker: Breaker::new(breaker),
            health: Mutex::new(health.map(Health::new)),
            in_flight: AtomicU32::new(0),
            slots: Slots::new(limit),
            latency: Mutex::new(latency),
            born: Instant::now(),
            recovered_at: AtomicU64::new(0),
            refusing_until: AtomicU64::new(0),
            told: Mutex::new(Told { up: true, superseded: false, events }),
        }
    }

    /// Tell nothing more of it from this state ([`Told::superseded`]); whether its events last
    /// told it down.
    pub(super) fn supersede(&self) -> bool {
        let mut told = lock(&self.told);
        told.superseded = true;
        !told.up
    }

    /// Go on under a rebuilt destination's settings: the breaker keeps its state and counts by
    /// `breaker` from now on; health keeps its state, streaks and slow start under `health`'s
    /// thresholds, starts up when checks are new, and is forgotten without them (nothing would
    /// bring it back up); at most `limit` attempts are in flight to it, those under way counted;
    /// its events are told to `events` (the rebuilt destination's).
    fn reconfigure(
        &self,
        breaker: BreakerConfig,
        health: Option<HealthConfig>,
        limit: usize,
        events: EventSink,
    ) {
        lock(&self.told).events = events;
        self.slots.resize(limit);
        self.breaker.reconfigure(breaker);
        let mut known = lock(&self.health);
        *known = match (known.take(), health) {
            (Some(mut kept), Some(config)) => {
                kept.reconfigure(config);
                Some(kept)
            }
            (None, config) => config.map(Health::new),
            (Some(_), None) => None,
        };
    }
}

impl Endpoint {
    /// Endpoint `address` of destination `config`, going on from `known`,
    /// what the instance a reload replaced knew of it, if anything; else
    /// with a fresh breaker, health (with active checks) and latency estimate.
    /// Its events are told to `events` from now on, whichever instance finds them.
    pub(super) fn new(
        endpoint: &EndpointConfig,
        breaker: BreakerConfig,
        config: &DestinationConfig,
        metrics: EndpointMetrics,
        known: Option<Arc<EndpointState>>,
        events: &EventSink,
    ) -> Endpoint {
        let health = config.health.as_ref().map(|settings| HealthConfig {
            rise: settings.rise,
            fall: settings.fall,
            ..HealthConfig::default()
        });
        let limit = config.pool.max_size;
        let state = match known {
            Some(known) => {
                known.reconfigure(breaker, health, limit, events.clone());
                known
            }
            None => Arc::new(EndpointState::new(breaker, health, limit, events.clone())),
        };
        Endpoint {
            address: endpoint.address.clone(),
            id: endpoint_id(&endpoint.address),
            configured_weight: endpoint.weight,
            metrics,
            state,
        }
    }

    /// `now` as stored in `recovered_at` and `refusing_until`.
    pub(super) fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.state.born).as_micros() as u64 + 1
    }

    /// The instant a `stamp` stands for; `None` for 0 (never).
    pub(super) fn instant(&self, stamp: u64) -> Option<Instant> {
        stamp.checked_sub(1).map(|micros| self.state.born + Duration::from_micros(micros))
    }

    /// Until when it is left out, if it was left out at all: see `refusing_until`.
    pub(super) fn refusing_until(&self) -> Option<Instant> {
        self.instant(self.state.refusing_until.load(Relaxed))
    }

    /// Whether an attempt picking it at `now` may go: it is not left out, or it was and that
    /// ended, and this call claims the one attempt that finds out whether it takes traffic again
    /// (it stays left out for the others until that attempt's outcome, `deadline` at most, says).
    /// Without the claim, every message waiting for it went at once when its window ended, each
    /// to be refused again.
    pub(super) fn claim(&self, now: Instant, deadline: Duration) -> bool {
        let refusing_until = &self.state.refusing_until;
        let until = refusing_until.load(Relaxed);
        match self.instant(until) {
            None => true,
            Some(end) if end > now => false,
            Some(_) => {
                let probing = self.stamp(now + deadline);
                refusing_until.compare_exchange(until, probing, Relaxed, Relaxed).is_ok()
            }
        }
    }

    /// Count a transition of its breaker in the counter `to` picks of its metrics, unless its state
    /// is [superseded](Told::superseded): the endpoint's series count the breaker of the instance
    /// that tells of it, not one a reload left behind (reaching it over another transport now, or
    /// removing it).
    pub(super) fn count_breaker(&self, to: impl FnOnce(&EndpointMetrics) -> &Counter) {
        if !lock(&self.state.told).superseded {
            to(&self.metrics).inc();
        }
    }

    pub(super) fn health_state(&self) -> Option<HealthState> {
        lock(&self.state.health).as_ref().map(Health::state)
    }

    /// Whether it is up at `now`, as its events tell: not down by health checks, and its breaker
    /// closed (not ejecting it, nor half-open waiting for the probe that brings it back).
    pub(super) fn up(&self, now: Instant) -> bool {
        self.health_state() != Some(HealthState::Down)
            && self.state.breaker.state(now) == BreakerState::Closed
    }

    /// The weight the balancers that weigh shares or load see
    /// ([`EndpointView::weight`](crate::balance::EndpointView::weight)):
    /// [`FULL_WEIGHT`] times the configured weight, or less while slowly
    /// starting after its health or its breaker let it back in.
    pub(super) fn weight(&self, now: Instant) -> u32 {
        let health = lock(&self.state.health).as_ref().map_or(1.0, |health| health.weight_factor(now));
        let breaker = match self.instant(self.state.recovered_at.load(Relaxed)) {
            None => 1.0,
            Some(since) => SlowStart::default().factor(now.saturating_duration_since(since)),
        };
        let full = FULL_WEIGHT * f64::from(self.configured_weight);
        (full * health.min(breaker)).round().max(1.0) as u32
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// One of a count (a request in flight to an endpoint, a message waiting for
/// one), counted until dropped, even when the delivery is cancelled meanwhile.
pub(super) struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    pub(super) fn enter(count: &'a AtomicU32) -> Counted<'a> {
        count.fetch_add(1, Relaxed);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
