//! Metrics: Prometheus families of one host (no process-global registry),
//! with handles cached where the message path uses them; the series of a
//! part of the configuration go once it has left it (see the `parts` module).

#[cfg(test)]
mod cost;
mod destination;
mod gauges;
mod jetstream;
mod parts;
mod plugins;
mod read;
mod sharded;
mod spool;
mod totals;

use destination::DestinationCounters;
pub use destination::PoolWaits;
pub(crate) use destination::StreamCounters;
use gauges::ScrapeGauges;
pub(crate) use gauges::{DestinationGauges, EndpointGauges, GaugeSource};
pub(crate) use jetstream::{JetStreamMetrics, Pulled};
pub(crate) use parts::HeldSeries;
use parts::Part;
use plugins::RemovedPlugin;
pub(crate) use plugins::{CallSeries, MAX_REMOVED_PLUGINS};
pub use plugins::{LastFault, PluginCounts};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
pub(crate) use read::SpoolSource;
pub use read::{READABLE, Readable};
pub(crate) use sharded::{HistogramTotals, LATENCY_BOUNDS, LatencyHistogram, ShardedCounter};
pub(crate) use spool::SpoolMetrics;
use std::sync::Arc;
use std::time::Instant;
pub(crate) use totals::RouteTotals;

/// How a message of a route was settled, as `switchyard_route_messages_total` labels it, in the
/// order of [`Settled`].
const SETTLED: [&str; 6] = ["delivered", "filtered", "responded", "dead_lettered", "handed_back", "lost"];

/// The outcomes of an attempt, as the attempt counters label them.
const ATTEMPT_OUTCOMES: [&str; 4] = ["ok", "retryable", "fatal", "shed"];

/// The breaker states an endpoint's transitions enter.
const BREAKER_STATES: [&str; 3] = ["open", "half-open", "closed"];

/// The results of a delivery: ok, failed.
const DELIVERY_RESULTS: [&str; 2] = ["ok", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcome {
    route: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RouteReason {
    route: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteName {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginName {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginProblem {
    plugin: String,
    problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCounter {
    plugin: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationResult {
    destination: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationName {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOutcome {
    destination: String,
    endpoint: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointTransition {
    destination: String,
    endpoint: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportOutcome {
    transport: String,
    destination: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportDestination {
    transport: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventKind {
    event: String,
}

/// All metric families of a host.
pub struct Metrics {
    registry: Registry,
    /// Whether the message path counts (off only to measure what counting costs).
    enabled: bool,
    accepted: ShardedCounter,
    route_accepted: Family<RouteName, ShardedCounter>,
    route_messages: Family<RouteOutcome, ShardedCounter>,
    dead_letters: Family<RouteReason, Counter>,
    /// What alert rules read of `dead_letters`, by label set: every letter counted there but those
    /// of alert messages (see [`dead_letter`](Self::dead_letter)); 0 for a label set only they had.
    read_dead_letters: std::sync::Mutex<std::collections::BTreeMap<RouteReason, u64>>,
    /// What the `dead_letters` series of routes a reload removed had counted, by reason: no scrape
    /// shows them, but alert rules reading the sum over routes must not see it fall (a fall reads
    /// as a counter reset).
    retired_dead_letters: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Letters in the dead-letter file now.
    dead_letters_spooled: Gauge,
    /// Letters re-delivered from the dead-letter file.
    dead_letters_redelivered: Counter,
    /// Letters no dead-letter destination took and the dead-letter file could not hold.
    dead_letters_lost: Counter,
    route_latency: Family<RouteName, LatencyHistogram>,
    plugin_calls: Family<PluginName, ShardedCounter>,
    plugin_problems: Family<PluginProblem, Counter>,
    /// Instances renewed between calls because they outgrew their memory.
    plugin_renewals: Family<PluginName, Counter>,
    plugin_latency: Family<PluginName, LatencyHistogram>,
    /// What plugins `count()`ed, by plugin name: every version adds to the same series.
    plugin_counters: Family<PluginCounter, Counter>,
    /// The names of each plugin's series of `plugin_counters` (at most [`crate::plugin::MAX_COUNTERS`]).
    plugin_counter_names: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// The counts of each plugin whose file was removed, as they were then (its series gone), until
    /// it loads again and its series hold them again: `/v1/plugins` still tells what it did. Of
    /// the last [`MAX_REMOVED_PLUGINS`] removed.
    removed_plugins: std::sync::Mutex<std::collections::BTreeMap<String, RemovedPlugin>>,
    /// The last fault of each plugin while serving (a removed plugin's too); written only when a
    /// plugin faults.
    last_faults: std::sync::Mutex<std::collections::BTreeMap<String, LastFault>>,
    /// The faults of the removed plugins forgotten (beyond [`MAX_REMOVED_PLUGINS`]): no scrape
    /// shows them, but alert rules reading `plugin_faults` over all plugins must not see it fall
    /// (a fall reads as a counter reset).
    forgotten_plugin_faults: std::sync::atomic::AtomicU64,
    deliveries: Family<DestinationResult, ShardedCounter>,
    retries: Family<DestinationName, Counter>,
    fallbacks: Family<DestinationName, Counter>,
    transport_attempts: Family<TransportOutcome, Counter>,
    transport_latency: Family<TransportDestination, LatencyHistogram>,
    attempts: Family<EndpointOutcome, Counter>,
    breaker_transitions: Family<EndpointTransition, Counter>,
    /// Pool waits and stream moves, which outlive the pools and stream tables a reload rebuilds.
    destination_counters: DestinationCounters,
    /// The holders of the series of each route, destination, endpoint and transport (see [`parts`]).
    part_holders: parts::Holders,
    events: Family<EventKind, Counter>,
    gauges: std::sync::Arc<ScrapeGauges>,
    /// Reads the spool's depth and oldest age, for alert rules; set once the host is built.
    spool_source: std::sync::OnceLock<SpoolSource>,
    /// Alert messages the host's queue refused.
    alert_messages_refused: Counter,
    /// Bytes of request bodies the ingress holds before their messages are admitted or refused.
    ingress_body_bytes: Gauge,
    /// The durable spool's writes, commit times and recoveries.
    pub(crate) spool: SpoolMetrics,
    /// What JetStream ingress did with the messages it pulled.
    pub(crate) jetstream: JetStreamMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(true)
    }
}

impl Metrics {
    /// The metric families of a host; with `enabled` off, the message path
    /// counts nothing (for measuring what counting costs).
    pub fn new(enabled: bool) -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let metrics = Metrics {
            enabled,
            accepted: ShardedCounter::default(),
            route_accepted: Family::default(),
            route_messages: Family::default(),
            dead_letters: Family::default(),
            read_dead_letters: Default::default(),
            retired_dead_letters: Default::default(),
            dead_letters_spooled: Gauge::default(),
            dead_letters_redelivered: Counter::default(),
            dead_letters_lost: Counter::default(),
            route_latency: Family::default(),
            plugin_calls: Family::default(),
            plugin_problems: Family::default(),
            plugin_renewals: Family::default(),
            plugin_latency: Family::default(),
            plugin_counters: Family::default(),
            plugin_counter_names: Default::default(),
            removed_plugins: Default::default(),
            last_faults: Default::default(),
            forgotten_plugin_faults: Default::default(),
            deliveries: Family::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
            transport_attempts: Family::default(),
            transport_latency: Family::default(),
            attempts: Family::default(),
            breaker_transitions: Family::default(),
            destination_counters: DestinationCounters::default(),
            part_holders: Default::default(),
            events: Family::default(),
            gauges: Default::default(),
            spool_source: Default::default(),
            alert_messages_refused: Counter::default(),
            ingress_body_bytes: Gauge::default(),
            spool: SpoolMetrics::default(),
            jetstream: JetStreamMetrics::default(),
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(metrics.gauges.clone()));
        registry.register("messages_accepted", "Messages admitted", metrics.accepted.clone());
        let help = "Messages matched to a route (admitted ones; not the extra outputs of a transform)";
        registry.register("route_accepted", help, metrics.route_accepted.clone());
        let help = "Messages settled per route, by outcome (delivered, filtered, responded, dead_lettered, handed_back, lost)";
        registry.register("route_messages", help, metrics.route_messages.clone());
        registry.register(
            "dead_letters",
            "Dead letters per route, by reason code",
            metrics.dead_letters.clone(),
        );
        let help = "Dead letters in the dead-letter file, waiting for their destination to come back";
        registry.register("dead_letters_spooled", help, metrics.dead_letters_spooled.clone());
        let help = "Dead letters re-delivered from the dead-letter file";
        registry.register("dead_letters_redelivered", help, metrics.dead_letters_redelivered.clone());
        let help = "Dead letters lost: no dead-letter destination took them and the dead-letter file could not be written";
        registry.register("dead_letters_lost", help, metrics.dead_letters_lost.clone());
        let help = "Seconds from admission until a message of the route is settled";
        registry.register("route_latency_seconds", help, metrics.route_latency.clone());
        registry.register("plugin_calls", "Plugin calls (one per batch)", metrics.plugin_calls.clone());
        let help =
            "Plugin errors and faults, by kind (rejected, failed, trapped, timed_out, memory_cap, ...)";
        registry.register("plugin_problems", help, metrics.plugin_problems.clone());
        let help = "Plugin instances renewed between calls because their memory outgrew three quarters of the room under its cap";
        registry.register("plugin_instances_renewed", help, metrics.plugin_renewals.clone());
        registry.register("plugin_call_seconds", "Seconds per plugin call", metrics.plugin_latency.clone());
        let help =
            "What plugins count() by counter name, summed over the plugin's versions (a swap keeps them)";
        registry.register("plugin_counter", help, metrics.plugin_counters.clone());
        let help = "Deliveries per destination, by result (ok, failed)";
        registry.register("destination_deliveries", help, metrics.deliveries.clone());
        let help = "Retries per destination (attempts after the first)";
        registry.register("destination_retries", help, metrics.retries.clone());
        let help = "Messages a destination handed to its fallback, never sent for want of an endpoint";
        registry.register("destination_fallbacks", help, metrics.fallbacks.clone());
        let help = "Attempts per transport and destination, by outcome (ok, retryable, fatal, shed)";
        registry.register("transport_attempts", help, metrics.transport_attempts.clone());
        let help = "Seconds per attempt, per transport and destination";
        registry.register("transport_attempt_seconds", help, metrics.transport_latency.clone());
        let help = "Attempts per endpoint, by outcome (ok, retryable, fatal, shed)";
        registry.register("endpoint_attempts", help, metrics.attempts.clone());
        let help = "Circuit breaker transitions per endpoint, by the state entered (open, closed)";
        registry.register("endpoint_breaker_transitions", help, metrics.breaker_transitions.clone());
        metrics.destination_counters.register(&mut registry);
        let help = "Host events (plugin loaded, replaced, rejected, removed; config applied, rejected)";
        registry.register("host_events", help, metrics.events.clone());
        let help = "Alert transitions whose message the host's queue refused (full, or shutting down)";
        registry.register("alert_messages_refused", help, metrics.alert_messages_refused.clone());
        let help = "Bytes of request bodies the ingress holds (read or being read) before their messages are \
                    admitted or refused; at most host.queue_bytes (or ingress.http.max_batch_bytes if more)";
        registry.register("ingress_body_bytes", help, metrics.ingress_body_bytes.clone());
        metrics.spool.register(&mut registry);
        metrics.jetstream.register(&mut registry);
        Metrics { registry, ..metrics }
    }
}

/// Handles for one endpoint, cached by its destination.
#[derive(Clone, Debug)]
pub(crate) struct EndpointMetrics {
    /// Attempts by outcome: ok, retryable, fatal, shed.
    pub(crate) attempts: [Counter; 4],
    /// Breaker transitions into open, into half-open (a probe let through),
    /// and into closed.
    pub(crate) opened: Counter,
    pub(crate) half_opened: Counter,
    pub(crate) closed: Counter,
    /// Keeps the endpoint's series while its handles live.
    _held: HeldSeries,
}

/// The handles of one destination's transport: attempts by outcome (ok, retryable, fatal, shed) and
/// their durations.
#[derive(Clone)]
pub(crate) struct TransportMetrics {
    pub(crate) attempts: [Counter; 4],
    pub(crate) latency: LatencyHistogram,
    /// Keeps the transport's series while its handles live.
    _held: HeldSeries,
}

/// Handles for one route, cached in the topology so the message path does
/// no label lookups.
#[derive(Clone, Debug)]
pub(crate) struct RouteMetrics {
    /// The route measured.
    pub(crate) route: std::sync::Arc<str>,
    /// `None` when metrics are off.
    handles: Option<RouteHandles>,
    /// Keeps the route's series while its handles live.
    _held: HeldSeries,
}

/// The counters of a route: matched, settled by how, and its latency.
#[derive(Clone, Debug)]
struct RouteHandles {
    accepted: ShardedCounter,
    settled: SettledCounters,
    latency: LatencyHistogram,
}

/// How a message of a route was settled.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Settled {
    Delivered,
    Filtered,
    Responded,
    DeadLettered,
    /// Handed back to the source that keeps it, at a stop (see [`crate::receipt`]).
    HandedBack,
    /// Dead-lettered, but its letter reached neither a dead-letter destination nor the file.
    Lost,
}

type SettledCounters = [ShardedCounter; 6];

/// The delivery counters of one instance of a destination: ok, failed.
#[derive(Debug)]
pub(crate) struct DeliveryCounters {
    /// `None` when metrics are off.
    counters: Option<[ShardedCounter; 2]>,
    /// Keeps the destination's series while its handles live.
    _held: HeldSeries,
}

impl DeliveryCounters {
    /// Count one delivery.
    pub(crate) fn count(&self, ok: bool) {
        if let Some(counters) = &self.counters {
            counters[usize::from(!ok)].inc();
        }
    }
}

impl RouteMetrics {
    /// Count `messages` matched to the route (once per batch, not per message).
    pub(crate) fn accepted(&self, messages: usize) {
        if let Some(handles) = &self.handles {
            handles.accepted.add(messages as u64);
        }
    }

    /// Count a message admitted at `accepted_at`, settled at `now` (read once for a batch
    /// settled together: a clock read costs as much as the counting).
    pub(crate) fn settled(&self, how: Settled, accepted_at: Instant, now: Instant) {
        if let Some(handles) = &self.handles {
            handles.settled[how as usize].inc();
            handles.latency.observe(now.saturating_duration_since(accepted_at));
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }

    /// Read the destinations' gauges from `source` at each scrape (once).
    pub(crate) fn watch_destinations(&self, source: GaugeSource) {
        let _ = self.gauges.0.set(source);
    }

    /// The counter of admitted messages: the host's own count, which it
    /// keeps whether metrics are on or off.
    pub(crate) fn accepted_counter(&self) -> ShardedCounter {
        self.accepted.clone()
    }

    /// The handles of `route`, holding its series.
    pub(crate) fn route(self: &Arc<Self>, route: &str) -> RouteMetrics {
        let held = self.hold(Part::Route(route.to_owned()));
        let outcome = |outcome: &str| {
            self.route_messages
                .get_or_create_owned(&RouteOutcome { route: route.into(), outcome: outcome.into() })
        };
        let name = RouteName { route: route.into() };
        let handles = self.enabled.then(|| RouteHandles {
            accepted: self.route_accepted.get_or_create_owned(&name),
            settled: SETTLED.map(outcome),
            latency: self.route_latency.get_or_create_owned(&name),
        });
        RouteMetrics { route: route.into(), handles, _held: held }
    }

    /// Count a dead letter of `route` for `reason`. The letter of an alert transition's message
    /// (`alert_message`) counts in the exposition, not in what alert rules read: a rule on dead
    /// letters whose messages are dead-lettered would otherwise be set off again by each of them.
    pub(crate) fn dead_letter(&self, route: Option<&str>, reason: &str, alert_message: bool) {
        let labels = RouteReason { route: route.unwrap_or("").into(), reason: reason.into() };
        self.dead_letters.get_or_create(&labels).inc();
        let mut read = self.read_dead_letters.lock().unwrap_or_else(|poison| poison.into_inner());
        *read.entry(labels).or_default() += u64::from(!alert_message);
    }

    /// Remove the `dead_letters` series of `route`, whose last instance has retired (see
    /// [`parts`]), keeping what they counted for alert rules' sums.
    fn remove_dead_letters(&self, route: &str) {
        let mut read = self.read_dead_letters.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut retired = self.retired_dead_letters.lock().unwrap_or_else(|poison| poison.into_inner());
        read.retain(|labels, count| {
            if labels.route != route {
                return true;
            }
            *retired.entry(labels.reason.clone()).or_default() += *count;
            self.dead_letters.remove(labels);
            false
        });
    }

    /// The gauge of bytes of request bodies held before admission, for the host's body budget to keep.
    pub(crate) fn ingress_body_bytes(&self) -> Gauge {
        self.ingress_body_bytes.clone()
    }

    /// The gauge of letters in the dead-letter file, for the file to keep.
    pub(crate) fn dead_letters_spooled(&self) -> Gauge {
        self.dead_letters_spooled.clone()
    }

    /// Count a dead letter lost: no dead-letter destination took it and the file could not hold it.
    pub(crate) fn dead_letter_lost(&self) {
        self.dead_letters_lost.inc();
    }

    /// Count `letters` re-delivered from the dead-letter file.
    pub(crate) fn dead_letters_redelivered(&self, letters: usize) {
        self.dead_letters_redelivered.inc_by(letters as u64);
    }

    /// The delivery counters of an instance of `destination`, holding the destination's series.
    pub(crate) fn deliveries(self: &Arc<Self>, destination: &str) -> DeliveryCounters {
        let held = self.hold_destination(destination);
        let counters = self.enabled.then(|| {
            DELIVERY_RESULTS.map(|result| {
                self.deliveries.get_or_create_owned(&DestinationResult {
                    destination: destination.into(),
                    result: result.into(),
                })
            })
        });
        DeliveryCounters { counters, _held: held }
    }

    /// The handles of `endpoint` of `destination`, holding its series.
    pub(crate) fn endpoint(self: &Arc<Self>, destination: &str, endpoint: &str) -> EndpointMetrics {
        let held = self.hold(Part::Endpoint { destination: destination.into(), endpoint: endpoint.into() });
        let attempts = ATTEMPT_OUTCOMES.map(|outcome| {
            self.attempts.get_or_create_owned(&EndpointOutcome {
                destination: destination.into(),
                endpoint: endpoint.into(),
                outcome: outcome.into(),
            })
        });
        let transition = |to: &str| {
            self.breaker_transitions.get_or_create_owned(&EndpointTransition {
                destination: destination.into(),
                endpoint: endpoint.into(),
                to: to.into(),
            })
        };
        let [opened, half_opened, closed] = BREAKER_STATES.map(transition);
        EndpointMetrics { attempts, opened, half_opened, closed, _held: held }
    }

    /// The handles of `destination`, reached through `transport` (its name as configured), holding
    /// their series.
    pub(crate) fn transport(self: &Arc<Self>, transport: &str, destination: &str) -> TransportMetrics {
        let held =
            self.hold(Part::Transport { transport: transport.into(), destination: destination.into() });
        let attempts = ATTEMPT_OUTCOMES.map(|outcome| {
            self.transport_attempts.get_or_create_owned(&TransportOutcome {
                transport: transport.into(),
                destination: destination.into(),
                outcome: outcome.into(),
            })
        });
        let labels = TransportDestination { transport: transport.into(), destination: destination.into() };
        let latency = self.transport_latency.get_or_create_owned(&labels);
        TransportMetrics { attempts, latency, _held: held }
    }

    /// The retry counter of `destination`, whose series its instance holds
    /// ([`Metrics::hold_destination`]).
    pub(crate) fn retries(&self, destination: &str) -> Counter {
        self.retries.get_or_create_owned(&DestinationName { destination: destination.into() })
    }

    /// Where the connection pools of `destination` count the acquisitions that waited for a free slot.
    pub fn pool_waits(&self, destination: &str) -> PoolWaits {
        self.destination_counters.pool_waits(destination)
    }

    /// The stream counters of `destination` (an `affinity:header:KEY` one), whose series its
    /// instance holds ([`Metrics::hold_destination`]).
    pub(crate) fn streams(&self, destination: &str) -> StreamCounters {
        self.destination_counters.streams(destination)
    }

    /// Count a message of `destination` handed to its fallback.
    pub(crate) fn fallback(&self, destination: &str) {
        self.fallbacks.get_or_create(&DestinationName { destination: destination.into() }).inc();
    }

    pub(crate) fn event(&self, event: &str) {
        self.events.get_or_create(&EventKind { event: event.into() }).inc();
    }
}
