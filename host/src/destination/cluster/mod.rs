//! A cluster: the endpoints of a network destination and what every transport
//! shares — each message goes to one endpoint chosen by the balancer among
//! those whose circuit breaker admits traffic, under a deadline per attempt,
//! with retries (exponential backoff, full jitter, a retry budget) that go to
//! another endpoint while one is untried, and back to one tried before when
//! none is. A [`Transport`] only knows how to make one attempt (and a probe).
//!
//! Attempts are spent on endpoints that can answer: a refused connection or
//! a wait for a free connection is not an attempt (the endpoint never saw the
//! message), and an endpoint that refused a connection is left out for its
//! breaker's window. While no endpoint can take traffic, a message waits
//! (until its queue timeout) rather than fail, and the destination's
//! dispatcher stops taking messages from the queue ([`QueuedDestination`]).

use super::plugin_balancer::HotPluginBalancer;
use super::{DeliveryFuture, Destination, DestinationEvent, EventSink, HostServices};
use crate::balance::BalancerConfig;
use crate::config::{BreakerSettings, DestinationConfig, EndpointConfig, HealthSettings};
use crate::message::Message;
use crate::resilience::{
    BreakerConfig, BreakerState, EjectionBackoff, EligibilityPolicy, FailureRate, HealthState,
    HealthTransition, RetryBudget, RetryPolicy, Transition,
};
use crate::transport::Transport;
use affinity::StreamAffinity;
use choice::Picker;
use endpoint::{Endpoint, EndpointState, lock};
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

mod affinity;
mod choice;
mod delivery;
mod endpoint;
mod turns;

use affinity::HandedStreams;
pub(crate) use turns::StreamTurn;

/// What an instance of a cluster hands the one a reload builds to replace it: what it knows of
/// each endpoint, by address ([`EndpointState`]), the signal that it changed, and its stream table.
pub(crate) struct HandedOver {
    endpoints: HashMap<String, Arc<EndpointState>>,
    /// The addresses of the endpoints whose events last told them down, when what was known of
    /// them is not handed over: the fresh state of one kept is up, and is told so.
    told_down: HashSet<String>,
    changed: Arc<tokio::sync::Notify>,
    streams: Option<HandedStreams>,
}

impl HandedOver {
    /// The same without what was known of the endpoints but what their events last told: for an
    /// instance that reaches them over another transport, whose checks and failures tell other
    /// things of them. The instance handing them over tells nothing more of them from now on
    /// ([`Told::superseded`](endpoint::Told::superseded)): what its checks and deliveries still under way find is no longer
    /// what the events tell.
    pub(crate) fn without_endpoints(self) -> HandedOver {
        let told_down = self.endpoints.iter().filter(|(_, state)| state.supersede());
        let told_down = told_down.map(|(address, _)| address.clone()).collect();
        HandedOver { endpoints: HashMap::new(), told_down, ..self }
    }
}

/// A destination of endpoints reached through a [`Transport`].
pub struct Cluster {
    name: String,
    endpoints: Vec<Endpoint>,
    balancer: Picker,
    hash_header: Option<String>,
    transport: Arc<dyn Transport>,
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
    /// whether an endpoint can take traffic may have changed. Shared with
    /// the instances before and after a reload, as what they know of the
    /// endpoints is: an attempt ending on one may let the other's messages go.
    changed: Arc<tokio::sync::Notify>,
    retry: RetryPolicy,
    budget: RetryBudget,
    policy: EligibilityPolicy,
    /// Whether too few endpoints are healthy and all get traffic.
    panicking: AtomicBool,
    /// When entering panic mode was last logged: a destination that goes in
    /// and out of it with every retry is told of once a minute at most.
    panic_told: std::sync::Mutex<Option<Instant>>,
    /// Most attempts in flight to one endpoint: its pool's size. An endpoint
    /// at it is passed over while another has room.
    endpoint_limit: u32,
    /// Longest wait of an attempt for its endpoint to have room: the pool's `acquire_timeout_ms`.
    room_timeout: Duration,
    /// Where those waits count: among the endpoints' pool waits.
    pool_waits: crate::metrics::PoolWaits,
    health_checks: Option<HealthSettings>,
    events: EventSink,
    /// Keeps the destination's series (its retries, its stream moves) while the cluster lives.
    _held: crate::metrics::HeldSeries,
    retries: Counter,
    /// Attempts and their durations, by transport.
    transport_metrics: crate::metrics::TransportMetrics,
    /// Cancelled when a reload replaces or removes the destination: a queued
    /// message that reached no endpoint stops waiting for one ([`DeliveryError::Retired`]).
    ///
    /// [`DeliveryError::Retired`]: crate::destination::DeliveryError::Retired
    retired: tokio_util::sync::CancellationToken,
    /// Messages taken from the queue that wait for an endpoint able to take them.
    waiting: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster for a validated network `[[destination]]`, reaching its
    /// endpoints through `transport`, telling and counting through `host`,
    /// going on from what the instance it replaces `handed` over, if given:
    /// what it knew of the endpoints kept (by address) and, for an
    /// `affinity:header:KEY` one, its stream table.
    /// Active health checks start with [`Cluster::start_health_checks`].
    pub(crate) fn new(
        config: &DestinationConfig,
        endpoints: &[EndpointConfig],
        transport: Arc<dyn Transport>,
        host: &HostServices,
        handed: Option<HandedOver>,
    ) -> Cluster {
        let metrics = &host.metrics;
        let held = metrics.hold_destination(&config.name);
        let balancer: BalancerConfig = config.balancer.parse().expect("validated balancer");
        let breaker = breaker_of(&config.breaker);
        let addresses = endpoints.iter().map(|endpoint| endpoint.address.clone()).collect();
        let (mut known, mut told_down, changed, streams) = match handed {
            Some(HandedOver { endpoints, told_down, changed, streams }) => {
                (endpoints, told_down, changed, streams)
            }
            None => Default::default(),
        };
        let endpoints = endpoints
            .iter()
            .map(|endpoint| {
                let metrics = metrics.endpoint(&config.name, &endpoint.address);
                let known = known.remove(&endpoint.address);
                let endpoint = Endpoint::new(endpoint, breaker, config, metrics, known, &host.events);
                if told_down.remove(&endpoint.address) {
                    lock(&endpoint.state.told).up = false;
                }
                endpoint
            })
            .collect();
        let cluster = Cluster {
            name: config.name.clone(),
            endpoints,
            hash_header: balancer.hash_header().map(str::to_owned),
            balancer: match &balancer {
                BalancerConfig::Plugin { name } => {
                    Picker::Plugin(HotPluginBalancer::new(&config.name, name, addresses, host))
                }
                BalancerConfig::Affinity { .. } => {
                    let settings = config.affinity.unwrap_or_default();
                    let verify_every = Duration::from_millis(settings.verify_interval_ms);
                    let counters = metrics.streams(&config.name);
                    let affinity = StreamAffinity::new(settings.policy(), verify_every, counters, streams);
                    Picker::Affinity(Box::new(affinity))
                }
                built => Picker::Native(built.build().expect("not a plugin balancer")),
            },
            transport,
            timeout: Duration::from_millis(config.timeout_ms),
            queue_timeout: Duration::from_millis(config.queue.timeout_ms),
            idempotent: config.idempotent,
            refusal_window: Duration::from_millis(config.breaker.open_ms),
            changed,
            retry: RetryPolicy {
                attempts: config.retry.attempts,
                base: Duration::from_millis(config.retry.base_ms),
                max: Duration::from_millis(config.retry.max_ms),
                jitter: 1.0,
            },
            budget: RetryBudget::default(),
            policy: EligibilityPolicy::default(),
            panicking: AtomicBool::new(false),
            panic_told: std::sync::Mutex::new(None),
            endpoint_limit: u32::try_from(config.pool.max_size).unwrap_or(u32::MAX),
            room_timeout: Duration::from_millis(config.pool.acquire_timeout_ms),
            pool_waits: metrics.pool_waits(&config.name),
            health_checks: config.health.clone(),
            events: host.events.clone(),
            _held: held,
            retries: metrics.retries(&config.name),
            transport_metrics: metrics.transport(&config.transport, &config.name),
            retired: tokio_util::sync::CancellationToken::new(),
            waiting: std::sync::atomic::AtomicU32::new(0),
        };
        // An endpoint that health checks this reload removes held down is up again (nothing
        // brings back a health it keeps no more, so it is forgotten), as is one told down that
        // starts afresh over another transport: told here (after `config-applied`, as everything
        // an instance a reload builds tells).
        for endpoint in &cluster.endpoints {
            cluster.tell(endpoint, None);
        }
        // What is left of what was handed over is of the endpoints the reload removed: nothing more
        // is told of them, but that one told down is no more.
        let removed = known.into_iter().filter(|(_, state)| state.supersede()).map(|(address, _)| address);
        cluster.tell_removed(removed.chain(told_down), &*cluster.events);
        cluster
    }

    /// Tell `events` that the endpoints at `removed`, last told down, are no more: a reload removed
    /// them.
    fn tell_removed(&self, removed: impl IntoIterator<Item = String>, events: &dyn Fn(DestinationEvent)) {
        for endpoint in removed {
            events(DestinationEvent::EndpointRemoved { destination: self.name.clone(), endpoint });
        }
    }

    /// Probe every endpoint each `health.interval_ms` on `runtime` while
    /// the cluster lives, until a reload retires it (the instance that
    /// replaces it checks them then); nothing without `health` settings.
    pub fn start_health_checks(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let Some(settings) = self.health_checks.clone() else { return };
        let cluster = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(settings.interval_ms));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(cluster) = cluster.upgrade() else { break };
                if cluster.retired.is_cancelled() {
                    break;
                }
                cluster.check_all(&settings).await;
            }
        });
    }

    async fn check_all(&self, settings: &HealthSettings) {
        let deadline = Duration::from_millis(settings.timeout_ms);
        let probes = self.endpoints.iter().map(|endpoint| async move {
            let probe = self.transport.probe(&endpoint.address, settings);
            let timed_out = || Err(format!("no answer in {deadline:?}"));
            tokio::time::timeout(deadline, probe).await.unwrap_or_else(|_| timed_out())
        });
        let results = futures_util::future::join_all(probes).await;
        let now = Instant::now();
        for (endpoint, result) in self.endpoints.iter().zip(results) {
            let passed = result.is_ok();
            let transition =
                lock(&endpoint.state.health).as_mut().and_then(|health| health.record_check(passed, now));
            let problem = result.err().map(|err| format!("health check failed: {err}"));
            self.health_changed(endpoint, transition, problem.as_deref());
        }
    }

    /// Act on a change of `endpoint`'s health: tell, on going down say why, and on coming back
    /// up start its latency estimate again ([`PeakEwma::restart`](crate::balance::PeakEwma::restart)).
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
            Some(HealthTransition::WentUp) => {
                // Down, it took no traffic: its latency estimate decayed toward zero meanwhile.
                let now = Instant::now().into_std();
                lock(&endpoint.state.latency).restart(crate::balance::DEFAULT_RTT, now);
                self.tell(endpoint, None)
            }
            None => {}
        }
    }

    /// Act on a change of `endpoint`'s breaker.
    fn breaker_changed(&self, endpoint: &Endpoint, transition: Transition, problem: &str) {
        match transition {
            Transition::Tripped { reason, .. } => {
                endpoint.count_breaker(|metrics| &metrics.opened);
                let reason = format!("circuit breaker opened ({reason}); last: {problem}");
                self.tell(endpoint, Some(reason));
            }
            Transition::Recovered { .. } => {
                endpoint.count_breaker(|metrics| &metrics.closed);
                let micros = endpoint.stamp(Instant::now());
                endpoint.state.recovered_at.store(micros, Relaxed);
                self.tell(endpoint, None);
            }
            Transition::Reopened { ejections, .. } => {
                endpoint.count_breaker(|metrics| &metrics.opened);
                tracing::warn!(destination = %self.name, endpoint = %endpoint.address, ejections, "probe failed; ejected again");
            }
        }
    }

    /// Act on `endpoint`'s health or breaker going down (for a reason: its idle connections are
    /// closed) or coming back up, and tell when that took the endpoint [`up`](Endpoint::up) or
    /// down: health coming back while the breaker still ejects it (or the breaker closing while
    /// health finds it down) tells nothing yet, nor does the second of two ways to go down, nor
    /// anything once a reload to another transport took over telling of it. A change the other
    /// half made meanwhile is left to that half's call, which follows. Told where the newest
    /// instance sharing the endpoint's state tells ([`Told::events`](endpoint::Told::events)).
    fn tell(&self, endpoint: &Endpoint, down: Option<String>) {
        if down.is_some() {
            self.transport.close_idle(&endpoint.address);
        }
        let went_up = down.is_none();
        let mut told = lock(&endpoint.state.told);
        if told.superseded || told.up == went_up || endpoint.up(Instant::now()) != went_up {
            return;
        }
        told.up = went_up;
        let (destination, endpoint) = (self.name.clone(), endpoint.address.clone());
        (told.events)(match down {
            Some(reason) => DestinationEvent::EndpointDown { destination, endpoint, reason },
            None => DestinationEvent::EndpointUp { destination, endpoint },
        });
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

    /// The stream `message` belongs to: its key header's value; `None` when the destination keeps
    /// no streams (its balancer is not `affinity:header:KEY`, or the message lacks the header).
    fn stream<'m>(&self, message: &'m Message) -> Option<&'m str>;

    /// The turn of stream `key`, taken as the dispatcher pops a message of it from the queue (or
    /// the expirer, one that timed out there): its delivery (or settling) holds it until done.
    /// `None` while a delivery of the stream holds it: the message stays in the queue (or, timed
    /// out, is dead-lettered for want of its turn).
    fn try_turn(&self, key: &str) -> Option<StreamTurn>;

    /// Signalled (to every waiter) when a stream's turn ends, so that a message skipped for its
    /// stream is looked at again; `None` when the destination keeps no streams.
    fn turn_ended(&self) -> Option<&tokio::sync::Notify>;

    /// What it knows of its endpoints and its stream table, for the instance a reload builds to
    /// replace it.
    fn hand_over(&self) -> HandedOver;

    /// A reload removed the destination (or delivers it in place now): nothing more is told of its
    /// endpoints, and each last told down is told removed, to `events`.
    fn remove_endpoints(&self, events: &dyn Fn(DestinationEvent));

    /// A reload replaced or removed the destination: a queued delivery that has reached no
    /// endpoint no longer waits for one, it ends [`Retired`](super::DeliveryError::Retired)
    /// (now, if it is waiting). Deliveries an endpoint took part in finish here.
    fn retire(&self);
}

impl QueuedDestination for Cluster {
    fn serving(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Cluster::serving(self))
    }

    fn deliver_queued(&self, message: Message, enqueued: Instant) -> DeliveryFuture<'_> {
        Box::pin(self.send(message, Some(enqueued)))
    }

    fn stream<'m>(&self, message: &'m Message) -> Option<&'m str> {
        let Picker::Affinity(_) = &self.balancer else { return None };
        self.hash_header.as_deref().and_then(|name| message.header(name))
    }

    fn try_turn(&self, key: &str) -> Option<StreamTurn> {
        let Picker::Affinity(affinity) = &self.balancer else { return None };
        affinity.try_turn(key)
    }

    fn turn_ended(&self) -> Option<&tokio::sync::Notify> {
        let Picker::Affinity(affinity) = &self.balancer else { return None };
        Some(affinity.turn_ended())
    }

    fn hand_over(&self) -> HandedOver {
        let endpoints =
            self.endpoints.iter().map(|endpoint| (endpoint.address.clone(), endpoint.state.clone()));
        HandedOver {
            endpoints: endpoints.collect(),
            told_down: HashSet::new(),
            changed: self.changed.clone(),
            streams: self.hand_over_streams(),
        }
    }

    fn remove_endpoints(&self, events: &dyn Fn(DestinationEvent)) {
        let told_down = self.endpoints.iter().filter(|endpoint| endpoint.state.supersede());
        self.tell_removed(told_down.map(|endpoint| endpoint.address.clone()), events);
    }

    fn retire(&self) {
        self.retired.cancel();
        self.changed.notify_waiters();
    }
}

impl Destination for Cluster {
    /// Delivers in place (a dead letter), waiting for no endpoint: when none
    /// can take it, it fails at once.
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(self.send(message, None))
    }

    fn streams(&self) -> Option<super::StreamsSummary> {
        self.stream_summary()
    }

    fn stream_table(&self, limit: usize) -> Option<Vec<super::StreamStatus>> {
        self.stream_rows(limit)
    }

    fn verify_streams(&self) -> Option<super::StreamCheck> {
        Cluster::verify_streams(self)
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Relaxed) as usize
    }

    fn unavailable(&self) -> Vec<String> {
        let balancer = match &self.balancer {
            Picker::Plugin(balancer) => balancer.unavailable(),
            Picker::Native(_) | Picker::Affinity(_) => None,
        };
        let balancer = balancer.map(|problem| format!("balancer {problem} (p2c picks meanwhile)"));
        self.transport.unavailable().into_iter().chain(balancer).collect()
    }

    fn endpoints(&self) -> Vec<super::EndpointStatus> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .map(|endpoint| super::EndpointStatus {
                address: endpoint.address.clone(),
                breaker: match endpoint.state.breaker.state(now) {
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
                in_flight: endpoint.state.in_flight.load(Relaxed),
                refusing: self.refusing(endpoint, now),
                pool: self.transport.pool_stats(&endpoint.address),
                latency_ms: lock(&endpoint.state.latency).estimate(now.into_std()).as_secs_f64() * 1e3,
            })
            .collect()
    }
}

/// The breaker `settings` (a destination's `breaker = {..}`) describe. Ejections double from
/// `open_ms` up to a minute, or up to `open_ms` when that is longer: the minute's cap cut a first
/// ejection of two minutes to one.
fn breaker_of(settings: &BreakerSettings) -> BreakerConfig {
    let first = Duration::from_millis(settings.open_ms);
    let default = EjectionBackoff::default();
    BreakerConfig {
        consecutive_failures: settings.consecutive_failures,
        failure_rate: settings.failure_percent.map(|percent| FailureRate {
            threshold: f64::from(percent) / 100.0,
            window: settings.window,
            min_volume: settings.min_volume,
        }),
        ejection: EjectionBackoff { base: first, max: default.max.max(first), ..default },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::{Outcome, RetryReason};
    use rand::SeedableRng;

    /// A transport the tests never send through.
    struct NoAttempts;

    impl Transport for NoAttempts {
        fn attempt<'a>(
            &'a self,
            _address: &'a str,
            _message: &'a Message,
        ) -> crate::transport::AttemptFuture<'a> {
            unreachable!("the test makes no attempt")
        }
    }

    /// A transport whose endpoints fail every attempt (no answer in time) and every health check.
    struct Failing;

    impl Transport for Failing {
        fn attempt<'a>(
            &'a self,
            _address: &'a str,
            _message: &'a Message,
        ) -> crate::transport::AttemptFuture<'a> {
            Box::pin(async { Err((Outcome::Retryable(RetryReason::Timeout), "no answer".to_owned())) })
        }

        fn probe<'a>(
            &'a self,
            _address: &'a str,
            _health: &'a HealthSettings,
        ) -> crate::transport::ProbeFuture<'a> {
            Box::pin(async { Err("refused".to_owned()) })
        }
    }

    /// A transport whose endpoints pass their health checks while `passing` says so; it makes no
    /// attempt.
    struct Checked(Arc<AtomicBool>);

    impl Transport for Checked {
        fn attempt<'a>(
            &'a self,
            _address: &'a str,
            _message: &'a Message,
        ) -> crate::transport::AttemptFuture<'a> {
            unreachable!("the test makes no attempt")
        }

        fn probe<'a>(
            &'a self,
            _address: &'a str,
            _health: &'a HealthSettings,
        ) -> crate::transport::ProbeFuture<'a> {
            let passed = self.0.load(Relaxed);
            Box::pin(async move { if passed { Ok(()) } else { Err("refused".to_owned()) } })
        }
    }

    /// The http destination `workers` with `[[destination]]` lines `settings` besides, telling
    /// `events`, through a transport no attempt may use.
    pub(super) fn cluster_of(settings: &str, events: EventSink) -> Cluster {
        cluster_over(settings, Arc::new(NoAttempts), events, None)
    }

    /// The same through `transport`, going on from what `handed` over, if given.
    fn cluster_over(
        settings: &str,
        transport: Arc<dyn Transport>,
        events: EventSink,
        handed: Option<HandedOver>,
    ) -> Cluster {
        let text = format!("[[destination]]\nname = \"workers\"\ntransport = \"http\"\n{settings}");
        let config = crate::config::Config::from_toml("test.toml", &text).unwrap();
        let destination = &config.destinations[0];
        let services = HostServices {
            events,
            metrics: Arc::new(crate::metrics::Metrics::new(true)),
            registry: Arc::default(),
            engine: Arc::new(crate::plugin::PluginEngine::new(None).unwrap()),
        };
        Cluster::new(destination, &destination.endpoints, transport, &services, handed)
    }

    /// An endpoint down by health checks, which a reload over the same transport drops: the new
    /// instance tells it up, held until the reload is told applied; meanwhile a delivery of the
    /// instance it replaced trips its breaker. Whoever follows the events ends where the endpoint
    /// is, down, hearing each change once.
    #[tokio::test]
    async fn an_endpoint_the_replaced_instance_takes_down_while_a_reload_holds_events_ends_told_down() {
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink: EventSink = {
            let told = told.clone();
            Arc::new(move |event: DestinationEvent| told.lock().unwrap().push(event.name()))
        };
        let endpoints = concat!(
            "endpoints = [\"127.0.0.1:1\"]\n",
            "breaker = { consecutive_failures = 1 }\nretry = { attempts = 1 }\n",
        );
        let health = HealthSettings { fall: 1, ..HealthSettings::default() };
        let checked = format!("{endpoints}health = {{ fall = 1 }}\n");
        let old = cluster_over(&checked, Arc::new(Failing), sink.clone(), None);
        old.check_all(&health).await;
        assert_eq!(*told.lock().unwrap(), ["endpoint-down"]);

        let held = crate::destination::HeldEvents::new(sink);
        let new = cluster_over(endpoints, Arc::new(Failing), held.sink(), Some(old.hand_over()));
        let delivered = old.deliver(Message::new("t", "")).await;
        assert!(delivered.is_err(), "{delivered:?}");
        held.release();

        let endpoint = &new.endpoints[0];
        assert!(!endpoint.up(Instant::now()), "the breaker ejects it");
        assert_eq!(*told.lock().unwrap(), ["endpoint-down", "endpoint-up", "endpoint-down"]);
    }

    /// An endpoint down by health checks for a minute took no traffic, so its latency estimate
    /// decayed to almost nothing (30 ms to 74 µs): back up, it starts at the default estimate, as a
    /// new endpoint does, so that p2c gives it no more than its slow-start share. The previous main
    /// kept the decayed estimate, 400 times cheaper than a peer's at 30 ms: 40 times at the 10 %
    /// weight slow start begins with.
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_back_up_after_a_minute_down_is_estimated_at_the_default_latency() {
        let passing = Arc::new(AtomicBool::new(false));
        let settings = "endpoints = [\"127.0.0.1:1\"]\nhealth = { rise = 1, fall = 1 }\n";
        let cluster = cluster_over(settings, Arc::new(Checked(passing.clone())), Arc::new(|_| {}), None);
        let health = HealthSettings { rise: 1, fall: 1, ..HealthSettings::default() };
        let endpoint = &cluster.endpoints[0];
        cluster.check_all(&health).await;
        assert_eq!(endpoint.health_state(), Some(HealthState::Down));
        tokio::time::advance(Duration::from_secs(60)).await;
        let decayed = lock(&endpoint.state.latency).estimate(Instant::now().into_std());
        assert!(decayed < Duration::from_micros(100), "{decayed:?}");
        passing.store(true, Relaxed);
        cluster.check_all(&health).await;
        assert_eq!(endpoint.health_state(), Some(HealthState::Up));
        let estimate = lock(&endpoint.state.latency).estimate(Instant::now().into_std());
        assert_eq!(estimate, crate::balance::DEFAULT_RTT);
    }

    #[test]
    fn an_open_ms_past_a_minute_is_the_first_ejection_not_cut_to_a_minute() {
        let settings = BreakerSettings { open_ms: 120_000, ..BreakerSettings::default() };
        let ejection = breaker_of(&settings).ejection;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let longest = (0..100).map(|_| ejection.duration(1, &mut rng)).max().unwrap();
        assert!(longest > Duration::from_secs(100), "{longest:?}");
        assert!(ejection.duration(5, &mut rng) <= Duration::from_secs(120));
        let default = breaker_of(&BreakerSettings::default()).ejection;
        assert_eq!((default.base, default.max), (Duration::from_secs(1), Duration::from_secs(60)));
    }
}
