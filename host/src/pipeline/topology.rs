//! The topology: routes and the destinations they deliver to, built from a
//! configuration and swapped whole when the configuration is reloaded.

use super::dispatch::{DispatchContext, Job, Retire};
use crate::config::{Config, DestinationConfig};
use crate::destination::{
    DeliveryError, DeliveryQueue, DeliveryResult, Destination, HeldEvents, LogDestination, MemoryDestination,
    Retrying,
};
use crate::message::Message;
use crate::metrics::{DeliveryCounters, Metrics, RouteMetrics};
use crate::plugin::PluginSet;
use crate::router::{Route, RouteKey, RouteTable};
use crate::transport::CheckedTransports;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What messages are routed by and delivered to. Each batch pins one.
pub(crate) struct Topology {
    pub(crate) routes: RouteTable,
    pub(crate) destinations: HashMap<String, Arc<Target>>,
    /// Each route's destinations (by [`RouteKey`]), looked up once per
    /// topology rather than per message.
    route_targets: Vec<Vec<Arc<Target>>>,
    dead_letter: String,
    /// Destinations with a dead-letter destination of their own.
    dead_letter_of: HashMap<String, String>,
    /// Destinations with a fallback.
    fallback_of: HashMap<String, String>,
    /// Metric handles per route and per destination (ok, failed), looked up
    /// once per topology rather than per message.
    route_metrics: HashMap<String, Arc<RouteMetrics>>,
    /// Per route: whether it has a [`direct_target`](Topology::direct_target), found once per
    /// topology (admission asks for every message).
    direct: Vec<bool>,
    /// Whether any route has one.
    direct_routes: bool,
    /// What the destinations it built tell, held until the config it runs is told applied.
    events: Arc<HeldEvents>,
    /// The plugins that served as a config came to replace it, kept before that config's plugins
    /// serve: a batch that pinned it runs its routes with them, not with what the new config
    /// brings (its `transform:x` met the filter `x` of the new routes, and had nothing to run).
    /// Unset while it is current.
    replaced_with: OnceLock<Arc<PluginSet>>,
}

/// A destination as routes see it: delivered to in place (in-process
/// destinations), or through its queue and dispatcher (network ones).
pub(crate) struct Target {
    pub(crate) sink: Arc<Sink>,
    /// The queue of a network destination, shared by the topologies that
    /// keep the destination unchanged.
    pub(crate) queue: Option<Arc<OwnedQueue>>,
    /// What a network destination was built from: a new topology with the
    /// same settings keeps it (its queue, breakers, health and connections).
    built_from: Option<DestinationConfig>,
    /// What its transport read from files its settings name (a CA file's certificates), as a
    /// digest: a new topology with the same settings rebuilds it when the files say otherwise now.
    files_digest: Option<String>,
}

/// A network destination's queue; closed when the last topology using it
/// goes, so its dispatcher drains it and ends: what an endpoint takes is
/// delivered, what waits for one that never comes is dead-lettered
/// `destination-removed` at once. (A destination rebuilt by a reload has
/// handed its queue over already: see [`Topology::build`].)
pub(crate) struct OwnedQueue(pub(crate) Arc<DeliveryQueue<Job>>, Retire);

impl Drop for OwnedQueue {
    fn drop(&mut self) {
        self.0.close();
        self.1.retire();
    }
}

/// A destination with its delivery counters (ok, failed).
pub(crate) struct Sink {
    pub(crate) name: String,
    pub(crate) destination: Arc<dyn Destination>,
    /// Deliveries (ok, failed), holding the destination's series while the sink lives.
    counters: DeliveryCounters,
    /// When a message of this destination last went to its fallback: a first one after a quiet
    /// spell is told as an event.
    pub(crate) last_fallback: std::sync::Mutex<Option<std::time::Instant>>,
    /// A network destination's deadline of one attempt (`timeout_ms`): handing a message to its
    /// fallback is one (see [`Pipeline::fall_back`](super::Pipeline::fall_back)).
    pub(crate) attempt_timeout: Option<Duration>,
}

impl Sink {
    /// Deliver `message`; a panic in the destination is the message's
    /// failure (`host-panic`), not the caller's.
    pub(crate) async fn deliver(&self, message: Message) -> DeliveryResult {
        let delivered = crate::panic::catch_future(|| self.destination.deliver(message)).await;
        delivered.unwrap_or_else(|panic| Err(DeliveryError::Panicked(panic)))
    }

    /// Count one delivery.
    pub(crate) fn count(&self, ok: bool) {
        self.counters.count(ok);
    }
}

/// Whether network destination `config` keeps streams (`affinity:header:KEY`), whose messages
/// go out one at a time, in order.
fn keeps_streams(config: &DestinationConfig) -> bool {
    matches!(
        config.balancer.parse::<crate::balance::BalancerConfig>(),
        Ok(crate::balance::BalancerConfig::Affinity { .. })
    )
}

/// The digest of what network destination `dest`'s settings read from files they name, as the
/// check that gave `transports` read it (see
/// [`CheckedTransport::files_digest`](crate::transport::CheckedTransport::files_digest)).
fn files_digest(dest: &DestinationConfig, transports: &CheckedTransports) -> Option<String> {
    transports.get(&dest.name)?.files_digest().map(str::to_owned)
}

/// `destination`, delivered to in place, its retryable failures retried
/// (as many attempts as a network destination's default), if it may have any.
fn retrying(destination: Arc<dyn Destination>) -> Arc<dyn Destination> {
    if !destination.may_answer_retryable() {
        return destination;
    }
    let attempts = crate::config::RetrySettings::default().attempts;
    Arc::new(Retrying::new(destination, attempts))
}

/// Destinations that outlive any one topology: those registered in code, and
/// memory destinations, whose receivers embedders hold across reloads.
pub(crate) struct LastingDestinations {
    pub(crate) native: HashMap<String, Arc<dyn Destination>>,
    memory: Mutex<HashMap<String, (MemoryDestination, flume::Receiver<Message>)>>,
}

impl LastingDestinations {
    /// Keep the destinations registered in code.
    pub(crate) fn new(native: HashMap<String, Arc<dyn Destination>>) -> LastingDestinations {
        LastingDestinations { native, memory: Mutex::default() }
    }

    /// The memory destination `name`, created on first use holding at most
    /// `capacity` unread messages. Every reload keeps it, and its capacity: one that removes it
    /// too, since an embedder may hold its receiver (see [`memory_capacities`](Self::memory_capacities)).
    fn memory(&self, name: &str, capacity: usize) -> MemoryDestination {
        let mut memory = self.memory.lock().unwrap_or_else(|poison| poison.into_inner());
        let created = || MemoryDestination::with_capacity(capacity);
        memory.entry(name.to_owned()).or_insert_with(created).0.clone()
    }

    /// The capacity of each memory destination's channel made so far, those of destinations a
    /// reload removed included: one configured under that name again gets that channel again.
    pub(crate) fn memory_capacities(&self) -> BTreeMap<String, usize> {
        let memory = self.memory.lock().unwrap_or_else(|poison| poison.into_inner());
        memory.iter().map(|(name, (destination, _))| (name.clone(), destination.capacity())).collect()
    }

    /// The receiver of memory destination `name`, if one was configured.
    pub(crate) fn receiver(&self, name: &str) -> Option<flume::Receiver<Message>> {
        let memory = self.memory.lock().unwrap_or_else(|poison| poison.into_inner());
        memory.get(name).map(|(_, receiver)| receiver.clone())
    }
}

impl Topology {
    /// The topology of a validated `config`, keeping the network
    /// destinations of `previous` whose settings are unchanged; new ones get the transports
    /// `transports` (the registry's check of `config`) builds, their dispatchers started on
    /// `dispatch`'s runtime, and what they tell is held until [`release_events`](Self::release_events).
    pub(crate) fn build(
        config: &Config,
        mut transports: CheckedTransports,
        previous: Option<&Topology>,
        lasting: &LastingDestinations,
        metrics: &Arc<Metrics>,
        dispatch: &DispatchContext,
    ) -> Topology {
        let events = HeldEvents::new(dispatch.events().clone());
        let sink = |name: &str, destination, attempt_timeout| {
            let (counters, last_fallback) = (metrics.deliveries(name), Default::default());
            Arc::new(Sink { name: name.to_owned(), destination, counters, last_fallback, attempt_timeout })
        };
        let mut destinations: HashMap<String, Target> = lasting
            .native
            .iter()
            .map(|(name, destination)| {
                let sink = sink(name, retrying(destination.clone()), None);
                let target = Target { sink, queue: None, built_from: None, files_digest: None };
                (name.clone(), target)
            })
            .collect();
        for dest in &config.destinations {
            let kept = previous.and_then(|previous| previous.destinations.get(&dest.name));
            let files_digest = files_digest(dest, &transports);
            let same = |kept: &&Arc<Target>| {
                kept.built_from.as_ref() == Some(dest) && kept.files_digest == files_digest
            };
            if let Some(kept) = kept.filter(same) {
                let target = Target {
                    sink: kept.sink.clone(),
                    queue: kept.queue.clone(),
                    built_from: Some(dest.clone()),
                    files_digest,
                };
                destinations.insert(dest.name.clone(), target);
                continue;
            }
            // A rebuilt destination goes on from its predecessor, endpoints known by address: an
            // endpoint it keeps is as it was there (down, ejected, refusing, loaded), and its
            // streams stay where they are, and move as they would have there.
            let cluster = (!dest.is_in_process()).then(|| {
                let previous = kept.and_then(|kept| Some((kept.built_from.as_ref()?, kept.queue.as_ref()?)));
                let handed = previous.map(|(built_from, queue)| {
                    let handed = queue.1.hand_over();
                    let same_transport = built_from.transport == dest.transport;
                    if same_transport { handed } else { handed.without_endpoints() }
                });
                let checked = transports.remove(&dest.name).expect("checked with every network destination");
                dispatch.cluster(dest, checked, handed, events.sink())
            });
            let destination: Arc<dyn Destination> = match (&cluster, dest.transport.as_str()) {
                (Some(cluster), _) => cluster.clone(),
                (None, "memory") => Arc::new(lasting.memory(&dest.name, dest.queue.capacity)),
                (None, _) => retrying(Arc::new(LogDestination::new(&dest.name))),
            };
            let attempt_timeout = cluster.is_some().then(|| Duration::from_millis(dest.timeout_ms));
            let sink = sink(&dest.name, destination, attempt_timeout);
            let built_from = cluster.is_some().then(|| dest.clone());
            let queue = cluster.map(|cluster| {
                let slots = kept.and_then(|kept| kept.queue.as_ref()).map(|queue| queue.1.slots());
                let (queue, retire) = dispatch.start(sink.clone(), cluster, dest, slots);
                Arc::new(OwnedQueue(queue, retire))
            });
            destinations.insert(dest.name.clone(), Target { sink, queue, built_from, files_digest });
        }
        if !destinations.contains_key("log") {
            let log = Target {
                sink: sink("log", retrying(Arc::new(LogDestination::new("log"))), None),
                queue: None,
                built_from: None,
                files_digest: None,
            };
            destinations.insert("log".into(), log);
        }
        let destinations: HashMap<String, Arc<Target>> =
            destinations.into_iter().map(|(name, target)| (name, Arc::new(target))).collect();
        // A network destination rebuilt with other settings takes over its predecessor's
        // messages: those waiting, and those that reached no endpoint yet. Those under way finish
        // on the old instance. One removed (or now delivered in place) drains when the last
        // topology using it goes (see [`OwnedQueue`]); its endpoints told down are told removed now.
        for (name, old) in previous.map(|previous| &previous.destinations).into_iter().flatten() {
            let Some(old_queue) = &old.queue else { continue };
            let Some(new_queue) = destinations.get(name).and_then(|target| target.queue.as_ref()) else {
                old_queue.1.remove_endpoints(&|event| events.tell(event));
                continue;
            };
            if !Arc::ptr_eq(old_queue, new_queue) {
                let configs = [&old.built_from, &destinations[name].built_from];
                let keep_order =
                    configs.iter().any(|config| matches!(config, Some(config) if keeps_streams(config)));
                dispatch.hand_over((&old_queue.0, &old_queue.1), (&new_queue.0, &new_queue.1), keep_order);
            }
        }
        let routes: Vec<Route> =
            config.routes.iter().map(|route| Route::from_config(route).expect("validated config")).collect();
        let route_targets = routes
            .iter()
            .map(|route| route.destinations.iter().map(|name| destinations[name].clone()).collect())
            .collect();
        let route_metrics =
            config.routes.iter().map(|route| (route.name.clone(), Arc::new(metrics.route(&route.name))));
        let mut topology = Topology {
            routes: RouteTable::new(routes),
            destinations,
            route_targets,
            dead_letter: config.host.dead_letter.clone(),
            dead_letter_of: config
                .destinations
                .iter()
                .filter_map(|dest| Some((dest.name.clone(), dest.dead_letter.clone()?)))
                .collect(),
            fallback_of: config
                .destinations
                .iter()
                .filter_map(|dest| Some((dest.name.clone(), dest.fallback.clone()?)))
                .collect(),
            route_metrics: route_metrics.collect(),
            direct: Vec::new(),
            direct_routes: false,
            events,
            replaced_with: OnceLock::new(),
        };
        topology.direct = (0..topology.route_targets.len()).map(|key| topology.goes_direct(key)).collect();
        topology.direct_routes = topology.direct.contains(&true);
        topology
    }

    /// A config comes to replace this topology: its routes run with `serving` (the plugins serving
    /// now, before that config's own serve) from now on. Once per topology, as it is replaced once.
    pub(crate) fn keep_plugins(&self, serving: Arc<PluginSet>) {
        let kept = self.replaced_with.set(serving);
        debug_assert!(kept.is_ok(), "a topology is replaced once");
    }

    /// The plugins a batch that pinned this topology, then loaded `serving`, runs its routes with:
    /// `serving`, or those kept as a config came to replace it.
    pub(crate) fn plugins_for_routes(&self, serving: Arc<PluginSet>) -> Arc<PluginSet> {
        self.replaced_with.get().cloned().unwrap_or(serving)
    }

    /// Tell what the destinations this topology built told so far, and from now on what they tell
    /// at once: once the config it runs was told applied (`config-applied`), or as the host starts
    /// with it.
    pub(crate) fn release_events(&self) {
        self.events.release();
    }

    /// Whether a network destination of `config` that this topology runs with the same settings
    /// read other contents from the files they name when `transports` (the registry's check of
    /// `config`) read them (a CA file rotated in place): applied, `config` rebuilds it even when it
    /// equals the running one.
    pub(crate) fn files_changed(&self, config: &Config, transports: &CheckedTransports) -> bool {
        config.destinations.iter().any(|dest| {
            self.destinations.get(&dest.name).is_some_and(|running| {
                running.built_from.as_ref() == Some(dest)
                    && running.files_digest != files_digest(dest, transports)
            })
        })
    }

    /// Where a message of route `key` may go straight from admission: the route's one destination,
    /// when the route has no stages and that destination is a network one, with a queue, that does
    /// not keep streams in order. A destination delivered in place would hold the admitting task up
    /// for the whole delivery; a memory destination is fed faster in a worker's batches
    /// (docs/performance.md, session 30); and an `affinity:` destination keeps a stream in the order
    /// its queue took it, which the direct way breaks when the queue is full (an ingress then queues
    /// the message for the workers, and a later one of its stream can take a slot freed meanwhile).
    pub(crate) fn direct_target(&self, key: RouteKey) -> Option<&Arc<Target>> {
        self.direct.get(key).copied().unwrap_or(false).then(|| &self.targets(key)[0])
    }

    /// Whether route `key` has a [`direct_target`](Topology::direct_target), worked out.
    fn goes_direct(&self, key: RouteKey) -> bool {
        let [target] = self.targets(key) else { return false };
        let keeps_streams = target.built_from.as_ref().is_some_and(|built| {
            matches!(built.balancer.parse(), Ok(crate::balance::BalancerConfig::Affinity { .. }))
        });
        self.routes.get(key).stages.is_empty() && target.queue.is_some() && !keeps_streams
    }

    /// Whether any route has a [`direct_target`](Topology::direct_target).
    pub(crate) fn has_direct_routes(&self) -> bool {
        self.direct_routes
    }

    /// The fallback of destination `name`, if it has one.
    pub(crate) fn fallback_of(&self, name: &str) -> Option<&Arc<Target>> {
        self.fallback_of.get(name).and_then(|fallback| self.destinations.get(fallback))
    }

    /// The destinations of route `key`, in its order.
    pub(crate) fn targets(&self, key: RouteKey) -> &[Arc<Target>] {
        &self.route_targets[key]
    }

    /// Where a message dead-lettered for `reason` goes: the failing
    /// destination's own dead letter, else the host's.
    pub(crate) fn dead_letter_for(&self, reason: &crate::dead_letter::DeadLetterReason) -> &str {
        let own = match reason {
            crate::dead_letter::DeadLetterReason::Delivery { destination, .. } => {
                self.dead_letter_of.get(destination)
            }
            _ => None,
        };
        own.unwrap_or(&self.dead_letter)
    }

    /// The dead-letter destinations a letter meant for `first` tries in
    /// turn: `first`, then the dead letter each names for itself, then the
    /// host's; each once, and only those that exist.
    pub(crate) fn dead_letter_chain<'t>(&'t self, first: &'t str) -> Vec<&'t str> {
        let mut chain = Vec::new();
        let mut next = Some(first);
        while let Some(name) = next.filter(|name| !chain.contains(name)) {
            if self.destinations.contains_key(name) {
                chain.push(name);
            }
            next = self.dead_letter_of.get(name).map(String::as_str);
        }
        if !chain.contains(&self.dead_letter.as_str()) {
            chain.push(&self.dead_letter);
        }
        chain
    }

    /// Close the queues of the network destinations: their dispatchers
    /// deliver what is queued, then end.
    pub(crate) fn close_queues(&self) {
        self.destinations
            .values()
            .filter_map(|target| target.queue.as_ref())
            .for_each(|queue| queue.0.close());
    }

    /// Close the queues of the network destinations and drop what waits in them, for a runtime
    /// that shut down: their dispatchers are gone with it (see [`DispatchContext::runtime_gone`]).
    /// Each message dropped keeps its spool record, and a request's caller is told
    /// [`HostGone`](crate::host::RequestError::HostGone).
    pub(crate) fn empty_queues(&self) {
        let queues = self.destinations.values().filter_map(|target| target.queue.as_ref());
        queues.for_each(|queue| drop(queue.0.close_and_empty()));
    }

    /// The metric handles of route `name`.
    pub(crate) fn route_metrics(&self, name: &str) -> &Arc<RouteMetrics> {
        &self.route_metrics[name]
    }
}
