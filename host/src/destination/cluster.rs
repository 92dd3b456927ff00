//! A cluster: the endpoints of a network destination and what every transport
//! shares — each message goes to one endpoint chosen by the balancer among
//! those whose circuit breaker admits traffic, under a deadline per attempt,
//! with retries (exponential backoff, full jitter, a retry budget) that go to
//! another endpoint while one is untried, and back to one tried before when
//! none is. A [`Transport`] only knows how to make one attempt.
//!
//! Attempts are spent on endpoints that can answer: a refused connection or
//! a wait for a free connection is not an attempt (the endpoint never saw the
//! message), and an endpoint that refused a connection is left out for its
//! breaker's window. While no endpoint can take traffic, a message waits
//! (until its queue timeout) rather than fail, and the destination's
//! dispatcher stops taking messages from the queue ([`QueuedDestination`]).

use super::plugin_balancer::HotPluginBalancer;
use super::{DeliveryError, DeliveryFuture, Destination, DestinationEvent, EventSink, HostServices};
use crate::balance::{Balancer, BalancerConfig, EndpointView, PeakEwma, endpoint_id};
use crate::config::{DestinationConfig, EndpointConfig, HealthSettings};
use crate::message::Message;
use crate::metrics::EndpointMetrics;
use crate::resilience::{
    Admission, Breaker, BreakerConfig, BreakerPermit, BreakerState, EjectionBackoff, EligibilityPolicy,
    EndpointCondition, FailureRate, Health, HealthConfig, HealthState, HealthTransition, Outcome,
    RetryBudget, RetryPolicy, RetryReason, SlowStart, Transition,
};
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Weight of an endpoint of configured weight 1 at full strength; slow
/// start scales it down, a configured weight scales it up.
const FULL_WEIGHT: f64 = 100.0;

/// One endpoint and what the destination knows of it.
struct Endpoint {
    address: String,
    id: u64,
    /// Its configured weight, 1 to [`MAX_WEIGHT`](crate::config::MAX_WEIGHT).
    configured_weight: u32,
    breaker: Breaker,
    /// Up or down by active checks and passive failures; `None` without
    /// active checks (the breaker alone keeps a failing endpoint out).
    health: Option<Mutex<Health>>,
    in_flight: AtomicU32,
    latency: Mutex<PeakEwma>,
    metrics: EndpointMetrics,
    /// When the endpoint was made, the origin of `recovered_at`.
    born: Instant,
    /// When its breaker last let it back in, in microseconds since `born`
    /// plus one (0: never); it slowly starts from there. Read on every pick,
    /// so an atomic rather than a lock.
    recovered_at: AtomicU64,
    /// When an attempt's connection to it was last refused, as
    /// `recovered_at` (0: its last connection was not refused).
    refused_at: AtomicU64,
}

impl Endpoint {
    /// Endpoint `address` of destination `config`, with a fresh breaker,
    /// health (with active checks) and latency estimate.
    fn new(
        endpoint: &EndpointConfig,
        breaker: BreakerConfig,
        config: &DestinationConfig,
        metrics: EndpointMetrics,
    ) -> Endpoint {
        let health = config.health.as_ref().map(|settings| {
            Mutex::new(Health::new(HealthConfig {
                rise: settings.rise,
                fall: settings.fall,
                ..HealthConfig::default()
            }))
        });
        let latency = PeakEwma::new(
            crate::balance::DEFAULT_RTT,
            crate::balance::DEFAULT_DECAY,
            std::time::Instant::now(),
        );
        Endpoint {
            address: endpoint.address.clone(),
            id: endpoint_id(&endpoint.address),
            configured_weight: endpoint.weight,
            breaker: Breaker::new(breaker),
            health,
            in_flight: AtomicU32::new(0),
            latency: Mutex::new(latency),
            metrics,
            born: Instant::now(),
            recovered_at: AtomicU64::new(0),
            refused_at: AtomicU64::new(0),
        }
    }

    /// `now` as stored in `recovered_at` and `refused_at`.
    fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_micros() as u64 + 1
    }

    /// The instant a `stamp` stands for; `None` for 0 (never).
    fn instant(&self, stamp: u64) -> Option<Instant> {
        stamp.checked_sub(1).map(|micros| self.born + Duration::from_micros(micros))
    }

    /// Until when it is left out because its last connection was refused
    /// (`window` after the refusal), if it was.
    fn refusing_until(&self, window: Duration) -> Option<Instant> {
        self.instant(self.refused_at.load(Relaxed)).map(|refused| refused + window)
    }

    fn health_state(&self) -> Option<HealthState> {
        self.health.as_ref().map(|health| lock(health).state())
    }

    /// The weight balancers see: [`FULL_WEIGHT`] times the configured
    /// weight, or less while slowly starting after its health or its breaker
    /// let it back in.
    fn weight(&self, now: Instant) -> u32 {
        let health = self.health.as_ref().map_or(1.0, |health| lock(health).weight_factor(now));
        let breaker = match self.instant(self.recovered_at.load(Relaxed)) {
            None => 1.0,
            Some(since) => SlowStart::default().factor(now.saturating_duration_since(since)),
        };
        let full = FULL_WEIGHT * f64::from(self.configured_weight);
        (full * health.min(breaker)).round().max(1.0) as u32
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// What one attempt gives: the reply (if any), or how to classify the
/// failure and what went wrong.
pub type AttemptResult = Result<Option<Message>, (Outcome, String)>;

/// The future of one attempt.
pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = AttemptResult> + Send + 'a>>;

/// How messages reach an endpoint: one attempt at a time.
pub trait Transport: Send + Sync + 'static {
    /// Try once to deliver `message` to `address`; called once per attempt,
    /// under the cluster's deadline (the future is dropped when it passes).
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a>;

    /// Close the idle connections kept to `address`, and keep those in use
    /// now from being reused; called when the endpoint turns unhealthy. A
    /// transport without connections does nothing.
    fn close_idle(&self, _address: &str) {}

    /// The state of the connection pool to `address`, for the admin API and
    /// metrics; called on demand. `None` without a pool, or before the first
    /// attempt to `address`.
    fn pool_stats(&self, _address: &str) -> Option<super::PoolStats> {
        None
    }
}

/// A destination of endpoints reached through transport `T`.
pub struct Cluster<T> {
    name: String,
    endpoints: Vec<Endpoint>,
    balancer: Picker,
    hash_header: Option<String>,
    transport: T,
    kind: crate::config::Transport,
    timeout: Duration,
    /// Longest wait of a message for an endpoint able to take it, from when
    /// it entered the queue: the queue's timeout.
    queue_timeout: Duration,
    /// Whether every retryable failure is retried, or only those where the
    /// endpoint certainly did not take the message.
    idempotent: bool,
    /// How long an endpoint that refused a connection is left out: its
    /// breaker's first ejection.
    refusal_window: Duration,
    /// Signalled when an attempt ends or an endpoint's health changes:
    /// whether an endpoint can take traffic may have changed.
    changed: tokio::sync::Notify,
    retry: RetryPolicy,
    budget: RetryBudget,
    policy: EligibilityPolicy,
    /// Whether too few endpoints are healthy and all get traffic.
    panicking: AtomicBool,
    /// Most attempts in flight to one endpoint: its pool's size. An endpoint
    /// at it is passed over while another has room.
    endpoint_limit: u32,
    health_checks: Option<HealthSettings>,
    events: EventSink,
    retries: Counter,
}

impl<T> std::fmt::Debug for Cluster<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T: Transport> Cluster<T> {
    /// A cluster for a validated network `[[destination]]`, reaching its
    /// endpoints through `transport`, telling and counting through `host`.
    /// Active health checks start with [`Cluster::start_health_checks`].
    pub(crate) fn new(config: &DestinationConfig, transport: T, host: &HostServices) -> Cluster<T> {
        let metrics = &host.metrics;
        let balancer: BalancerConfig = config.balancer.parse().expect("validated balancer");
        let breaker = BreakerConfig {
            consecutive_failures: config.breaker.consecutive_failures,
            failure_rate: config.breaker.failure_percent.map(|percent| FailureRate {
                threshold: f64::from(percent) / 100.0,
                window: config.breaker.window,
                min_volume: config.breaker.min_volume,
            }),
            ejection: EjectionBackoff {
                base: Duration::from_millis(config.breaker.open_ms),
                ..EjectionBackoff::default()
            },
        };
        let endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| {
                let metrics = metrics.endpoint(&config.name, &endpoint.address);
                Endpoint::new(endpoint, breaker, config, metrics)
            })
            .collect();
        Cluster {
            name: config.name.clone(),
            endpoints,
            hash_header: balancer.hash_header().map(str::to_owned),
            balancer: match &balancer {
                BalancerConfig::Plugin { name } => Picker::Plugin(HotPluginBalancer::new(
                    &config.name,
                    name,
                    config.endpoints.iter().map(|endpoint| endpoint.address.clone()).collect(),
                    host,
                )),
                built => Picker::Native(built.build().expect("not a plugin balancer")),
            },
            transport,
            kind: config.transport,
            timeout: Duration::from_millis(config.timeout_ms),
            queue_timeout: Duration::from_millis(config.queue.timeout_ms),
            idempotent: config.idempotent,
            refusal_window: Duration::from_millis(config.breaker.open_ms),
            changed: tokio::sync::Notify::new(),
            retry: RetryPolicy {
                attempts: config.retry.attempts,
                base: Duration::from_millis(config.retry.base_ms),
                max: Duration::from_millis(config.retry.max_ms),
                jitter: 1.0,
            },
            budget: RetryBudget::default(),
            policy: EligibilityPolicy::default(),
            panicking: AtomicBool::new(false),
            endpoint_limit: u32::try_from(config.pool.max_size).unwrap_or(u32::MAX),
            health_checks: config.health.clone(),
            events: host.events.clone(),
            retries: metrics.retries(&config.name),
        }
    }

    /// Probe every endpoint each `health.interval_ms` on `runtime` while
    /// the cluster lives; nothing without `health` settings.
    pub fn start_health_checks(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let Some(settings) = self.health_checks.clone() else { return };
        let cluster = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(settings.interval_ms));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(cluster) = cluster.upgrade() else { break };
                cluster.check_all(&settings).await;
            }
        });
    }

    async fn check_all(&self, settings: &HealthSettings) {
        let probes =
            self.endpoints.iter().map(|endpoint| super::probe::probe(self.kind, &endpoint.address, settings));
        let results = futures_util::future::join_all(probes).await;
        let now = Instant::now();
        for (endpoint, result) in self.endpoints.iter().zip(results) {
            let Some(health) = &endpoint.health else { continue };
            let transition = lock(health).record_check(result.is_ok(), now);
            let problem = result.err().map(|err| format!("health check failed: {err}"));
            self.health_changed(endpoint, transition, problem.as_deref());
        }
    }

    /// Act on a change of `endpoint`'s health: tell, and on going down say why.
    fn health_changed(
        &self,
        endpoint: &Endpoint,
        transition: Option<HealthTransition>,
        problem: Option<&str>,
    ) {
        if transition.is_some() {
            self.changed.notify_waiters();
        }
        match transition {
            Some(HealthTransition::WentDown) => {
                self.tell(endpoint, Some(problem.unwrap_or("failed").to_owned()))
            }
            Some(HealthTransition::WentUp) => self.tell(endpoint, None),
            None => {}
        }
    }

    /// Act on a change of `endpoint`'s breaker.
    fn breaker_changed(&self, endpoint: &Endpoint, transition: Transition, problem: &str) {
        match transition {
            Transition::Tripped { reason, .. } => {
                endpoint.metrics.opened.inc();
                let reason = format!("circuit breaker opened ({reason:?}); last: {problem}");
                self.tell(endpoint, Some(reason));
            }
            Transition::Recovered { .. } => {
                endpoint.metrics.closed.inc();
                let micros = endpoint.born.elapsed().as_micros() as u64 + 1;
                endpoint.recovered_at.store(micros, Relaxed);
                self.tell(endpoint, None);
            }
            Transition::Reopened { ejections, .. } => {
                endpoint.metrics.opened.inc();
                tracing::warn!(destination = %self.name, endpoint = %endpoint.address, ejections, "probe failed; ejected again");
            }
        }
    }

    /// Tell that `endpoint` went down (for a reason; its idle connections
    /// are closed) or came back up.
    fn tell(&self, endpoint: &Endpoint, down: Option<String>) {
        if down.is_some() {
            self.transport.close_idle(&endpoint.address);
        }
        let (destination, endpoint) = (self.name.clone(), endpoint.address.clone());
        (self.events)(match down {
            Some(reason) => DestinationEvent::EndpointDown { destination, endpoint, reason },
            None => DestinationEvent::EndpointUp { destination, endpoint },
        });
    }

    /// Deliver `message`, which entered the queue at `enqueued`: attempts
    /// until one succeeds, one fails for good, the attempts run out or the
    /// queue timeout passes while no endpoint can take it.
    async fn send(&self, message: Message, enqueued: Instant) -> Result<Option<Message>, DeliveryError> {
        let _request = self.budget.start_request();
        let deadline = enqueued + self.queue_timeout;
        let key = self.hash_header.as_deref().and_then(|name| message.header(name));
        let mut tried = vec![false; self.endpoints.len()];
        let mut last_error = None;
        let (mut attempts, mut retry_permit) = (0, None);
        loop {
            let Some((index, permit)) = self.choose(&mut tried, &message, key).await else {
                // No endpoint can take it now: wait for one, spending nothing.
                if tokio::time::timeout_at(deadline, self.serving()).await.is_err() {
                    return Err(self.too_late(enqueued, attempts, last_error));
                }
                continue;
            };
            let endpoint = &self.endpoints[index];
            let (outcome, result) = self.attempt(endpoint, permit, &message, attempts + 1).await;
            let error = match result {
                Ok(reply) => return Ok(reply),
                Err(error) => format!("{}: {error}", endpoint.address),
            };
            if matches!(outcome, Outcome::Shed | Outcome::Retryable(RetryReason::Connect)) {
                // The endpoint never saw it: not an attempt. Another
                // endpoint is tried, or this one once it can take it.
                if outcome != Outcome::Shed {
                    self.retries.inc();
                }
                last_error = Some(error);
                if Instant::now() >= deadline {
                    return Err(self.too_late(enqueued, attempts, last_error));
                }
                continue;
            }
            attempts += 1;
            drop(retry_permit.take());
            let safe =
                self.idempotent || matches!(&outcome, Outcome::Retryable(reason) if reason.is_before_send());
            let maybe_delivered = matches!(&outcome, Outcome::Retryable(reason) if reason.is_unanswered());
            if !(outcome.is_retryable() && safe) || attempts >= self.retry.attempts {
                let fatal = !(outcome.is_retryable() && safe);
                return Err(DeliveryError::Attempts { attempts, last_error: error, fatal, maybe_delivered });
            }
            last_error = Some(error);
            // A message's first retry always goes; past the retry budget,
            // later ones wait for another to end. The permit is held through
            // the backoff and the retry.
            retry_permit = Some(match attempts {
                1 => self.budget.first_retry(),
                _ => self.budget.acquire().await,
            });
            self.retries.inc();
            let backoff = self.retry.backoff(attempts, &mut rand::rng());
            tokio::time::sleep(backoff).await;
        }
    }

    /// Why a message that entered the queue at `enqueued` fails when its
    /// queue timeout passed before an endpoint could take it: never sent
    /// (`attempts` 0), or retries cut short.
    fn too_late(&self, enqueued: Instant, attempts: u32, last_error: Option<String>) -> DeliveryError {
        let waited_ms = enqueued.elapsed().as_millis() as u64;
        match (attempts, last_error) {
            (1.., Some(last)) => DeliveryError::Attempts {
                attempts,
                last_error: format!(
                    "{last}; then no endpoint could take it within its queue timeout ({waited_ms} ms)"
                ),
                fatal: false,
                maybe_delivered: false,
            },
            _ => DeliveryError::QueueTimeout { waited_ms },
        }
    }

    /// Resolves once some endpoint can take traffic (see [`Cluster::admissions`]).
    async fn serving(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.next_serving(Instant::now()) {
                None => return,
                Some(Some(at)) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Some(None) => changed.await,
            }
        }
    }

    /// `None` when some endpoint can take traffic `now`; otherwise when one
    /// may next without news from an attempt or a health check (an ejection
    /// or a refusal window ends), if ever.
    fn next_serving(&self, now: Instant) -> Option<Option<Instant>> {
        if self.admissions(now).admissions.iter().any(|admission| admission.is_eligible()) {
            return None;
        }
        let ends = self.endpoints.iter().flat_map(|endpoint| {
            let ejection = match endpoint.breaker.state(now) {
                BreakerState::Open { until, .. } => Some(until),
                _ => None,
            };
            [ejection, endpoint.refusing_until(self.refusal_window)]
        });
        Some(ends.flatten().filter(|end| *end > now).min())
    }

    /// Attempt number `attempt` at `endpoint`, under the deadline; its
    /// outcome feeds the endpoint's latency, breaker, health and metrics.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        permit: BreakerPermit,
        message: &Message,
        attempt: u32,
    ) -> (Outcome, Result<Option<Message>, String>) {
        let in_flight = InFlight::enter(&endpoint.in_flight);
        let started = Instant::now();
        let span =
            tracing::debug_span!("attempt", destination = %self.name, endpoint = %endpoint.address, attempt);
        let answer = self.transport.attempt(&endpoint.address, message);
        let (outcome, result) = match tokio::time::timeout(self.timeout, answer).instrument(span).await {
            Ok(Ok(reply)) => (Outcome::Ok, Ok(reply)),
            Ok(Err((outcome, error))) => (outcome, Err(error)),
            Err(_) => {
                (Outcome::Retryable(RetryReason::Timeout), Err(format!("no answer in {:?}", self.timeout)))
            }
        };
        drop(in_flight);
        let finished = Instant::now();
        let refused = matches!(outcome, Outcome::Retryable(RetryReason::Connect));
        if refused || !matches!(outcome, Outcome::Shed) {
            endpoint.refused_at.store(if refused { endpoint.stamp(finished) } else { 0 }, Relaxed);
        }
        lock(&endpoint.latency).observe(finished - started, finished.into_std());
        endpoint.metrics.attempts[match &outcome {
            Outcome::Ok => 0,
            Outcome::Retryable(_) => 1,
            Outcome::Fatal(_) => 2,
            Outcome::Shed => 3,
        }]
        .inc();
        let problem = result.as_ref().err().map_or("", String::as_str);
        if let Some(transition) = permit.report(&outcome, finished) {
            self.breaker_changed(endpoint, transition, problem);
        }
        if let Some(health) = &endpoint.health {
            let transition = lock(health).record_passive(&outcome, finished);
            self.health_changed(endpoint, transition, Some(problem));
        }
        self.changed.notify_waiters();
        (outcome, result)
    }

    /// The admission of each endpoint `now`, and whether the destination
    /// panics: health, breakers and the eligibility guard rails decide; an
    /// endpoint whose last connection was refused within the refusal window
    /// is left out whatever they say (panic mode and the ejection cap
    /// included): it cannot take the message.
    fn admissions(&self, now: Instant) -> crate::resilience::Eligibility {
        let conditions: Vec<EndpointCondition> = self
            .endpoints
            .iter()
            .map(|endpoint| match self.refusing(endpoint, now) {
                true => EndpointCondition::Refusing,
                false => {
                    let breaker = endpoint.breaker.state(now);
                    EndpointCondition::of(endpoint.health_state().unwrap_or(HealthState::Up), breaker)
                }
            })
            .collect();
        let eligibility = self.policy.admit(&conditions);
        if self.panicking.swap(eligibility.panic, Relaxed) != eligibility.panic {
            tracing::warn!(destination = %self.name, panic = eligibility.panic, "too few healthy endpoints: panic mode");
        }
        eligibility
    }

    /// Whether `endpoint` refused its last connection within the refusal window.
    fn refusing(&self, endpoint: &Endpoint, now: Instant) -> bool {
        endpoint.refusing_until(self.refusal_window).is_some_and(|until| now < until)
    }

    /// Pick an endpoint not tried yet (one tried before when no untried one
    /// is admitted) that is admitted now (see [`Cluster::admissions`]) and
    /// has room under its limit; when every one admitted is at its limit,
    /// one of them (the attempt then waits for a free connection). `None`
    /// when no endpoint is admitted.
    async fn choose(
        &self,
        tried: &mut [bool],
        message: &Message,
        key: Option<&str>,
    ) -> Option<(usize, BreakerPermit)> {
        let now = Instant::now();
        let eligibility = self.admissions(now);
        let admitted = |(admission, tried): (&Admission, &bool)| admission.is_eligible() && !tried;
        if !eligibility.admissions.iter().zip(tried.iter()).any(admitted) {
            tried.fill(false);
        }
        let mut views: Vec<EndpointView> = self
            .endpoints
            .iter()
            .zip(tried.iter().zip(&eligibility.admissions))
            .map(|(endpoint, (tried, admission))| EndpointView {
                id: endpoint.id,
                weight: endpoint.weight(now),
                in_flight: endpoint.in_flight.load(Relaxed),
                latency: lock(&endpoint.latency).estimate(now.into_std()),
                eligible: !tried && admission.is_eligible(),
            })
            .collect();
        let has_room = |view: &EndpointView| view.in_flight < self.endpoint_limit;
        if views.iter().any(|view| view.eligible && has_room(view)) {
            views.iter_mut().for_each(|view| view.eligible &= has_room(view));
        }
        while let Some(index) = self.balancer.pick(&views, key, message).await {
            tried[index] = true;
            views[index].eligible = false;
            let breaker = &self.endpoints[index].breaker;
            let permit = match eligibility.admissions[index] {
                Admission::Forced => Some(breaker.acquire_forced(now)),
                _ => breaker.try_acquire(now),
            };
            if let Some(permit) = permit {
                if permit.is_probe() {
                    self.endpoints[index].metrics.half_opened.inc();
                }
                return Some((index, permit));
            }
        }
        None
    }
}

/// The balancer of a cluster: a built-in one picks in place; a plugin's pick
/// is awaited, so that a slow plugin holds up only the deliveries waiting for
/// it, never the runtime thread they run on.
enum Picker {
    Native(Arc<dyn Balancer>),
    Plugin(HotPluginBalancer),
}

impl Picker {
    /// Picks for one attempt at delivering `message`; see [`Balancer::pick`].
    async fn pick(&self, endpoints: &[EndpointView], key: Option<&str>, message: &Message) -> Option<usize> {
        match self {
            Picker::Native(balancer) => balancer.pick_message(endpoints, key, message),
            Picker::Plugin(balancer) => balancer.pick(endpoints, key, message).await,
        }
    }
}

/// One request in flight to an endpoint, counted until dropped (even when
/// the delivery is cancelled mid-request).
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU32) -> InFlight<'a> {
        count.fetch_add(1, Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What the dispatcher of a network destination needs of its cluster,
/// whatever its transport.
pub(crate) trait QueuedDestination: Destination {
    /// Resolves once some endpoint can take traffic; until then the
    /// dispatcher leaves the queue alone.
    fn serving(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Deliver `message`, which entered the queue at `enqueued`; while no
    /// endpoint can take it, it waits, until its queue timeout.
    fn deliver_queued(&self, message: Message, enqueued: Instant) -> DeliveryFuture<'_>;
}

impl<T: Transport> QueuedDestination for Cluster<T> {
    fn serving(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Cluster::serving(self))
    }

    fn deliver_queued(&self, message: Message, enqueued: Instant) -> DeliveryFuture<'_> {
        Box::pin(self.send(message, enqueued))
    }
}

impl<T: Transport> Destination for Cluster<T> {
    /// Delivers as if `message` entered the queue now.
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(self.send(message, Instant::now()))
    }

    fn endpoints(&self) -> Vec<super::EndpointStatus> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .map(|endpoint| super::EndpointStatus {
                address: endpoint.address.clone(),
                breaker: match endpoint.breaker.state(now) {
                    BreakerState::Closed => "closed",
                    BreakerState::Open { .. } => "open",
                    BreakerState::HalfOpen { .. } => "half-open",
                },
                health: match endpoint.health_state() {
                    None => "unchecked",
                    Some(HealthState::Up) => "up",
                    Some(HealthState::Down) => "down",
                },
                weight: endpoint.weight(now),
                configured_weight: endpoint.configured_weight,
                in_flight: endpoint.in_flight.load(Relaxed),
                refusing: self.refusing(endpoint, now),
                pool: self.transport.pool_stats(&endpoint.address),
                latency_ms: lock(&endpoint.latency).estimate(now.into_std()).as_secs_f64() * 1e3,
            })
            .collect()
    }
}
