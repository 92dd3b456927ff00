//! The topology: routes and the destinations they deliver to, built from a
//! configuration and swapped whole when the configuration is reloaded.

use super::dispatch::{DispatchContext, Job};
use crate::config::{Config, Transport};
use crate::destination::{
    DeliveryQueue, Destination, HttpTransport, LogDestination, MemoryDestination, TcpTransport,
};
use crate::message::Message;
use crate::metrics::{Metrics, RouteMetrics, ShardedCounter};
use crate::router::{Route, RouteTable};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Idle connections kept per endpoint of a `tcp` destination.
const IDLE_CONNECTIONS: usize = 16;

/// What messages are routed by and delivered to. Each batch pins one.
pub(crate) struct Topology {
    pub(crate) routes: RouteTable,
    pub(crate) destinations: HashMap<String, Target>,
    dead_letter: String,
    /// Destinations with a dead-letter destination of their own.
    dead_letter_of: HashMap<String, String>,
    /// Metric handles per route and per destination (ok, failed), looked up
    /// once per topology rather than per message.
    route_metrics: HashMap<String, Arc<RouteMetrics>>,
}

/// A destination as routes see it: delivered to in place (in-process
/// destinations), or through its queue and dispatcher (network ones).
pub(crate) struct Target {
    pub(crate) sink: Arc<Sink>,
    /// The queue of a network destination; closed when the topology goes,
    /// so its dispatcher drains it and ends.
    pub(crate) queue: Option<Arc<DeliveryQueue<Job>>>,
}

/// A destination with its delivery counters (ok, failed).
pub(crate) struct Sink {
    pub(crate) name: String,
    pub(crate) destination: Arc<dyn Destination>,
    /// Deliveries (ok, failed); `None` when metrics are off.
    counters: Option<[ShardedCounter; 2]>,
}

impl Sink {
    /// Count one delivery.
    pub(crate) fn count(&self, ok: bool) {
        if let Some(counters) = &self.counters {
            counters[usize::from(!ok)].inc();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(queue) = &self.queue {
            queue.close();
        }
    }
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

    /// The memory destination `name`, created on first use.
    fn memory(&self, name: &str) -> MemoryDestination {
        let mut memory = self.memory.lock().unwrap_or_else(|poison| poison.into_inner());
        memory.entry(name.to_owned()).or_insert_with(MemoryDestination::new).0.clone()
    }

    /// The receiver of memory destination `name`, if one was configured.
    pub(crate) fn receiver(&self, name: &str) -> Option<flume::Receiver<Message>> {
        let memory = self.memory.lock().unwrap_or_else(|poison| poison.into_inner());
        memory.get(name).map(|(_, receiver)| receiver.clone())
    }
}

impl Topology {
    /// The topology of a validated `config`; the dispatchers of its network
    /// destinations start on `dispatch`'s runtime.
    pub(crate) fn build(
        config: &Config,
        lasting: &LastingDestinations,
        metrics: &Metrics,
        dispatch: &DispatchContext,
    ) -> Topology {
        let sink = |name: &str, destination| {
            Arc::new(Sink { name: name.to_owned(), destination, counters: metrics.deliveries(name) })
        };
        let mut destinations: HashMap<String, Target> = lasting
            .native
            .iter()
            .map(|(name, destination)| {
                (name.clone(), Target { sink: sink(name, destination.clone()), queue: None })
            })
            .collect();
        for dest in &config.destinations {
            let (destination, queued): (Arc<dyn Destination>, _) = match dest.transport {
                Transport::Log => (Arc::new(LogDestination::new(&dest.name)), false),
                Transport::Memory => (Arc::new(lasting.memory(&dest.name)), false),
                Transport::Http => (dispatch.cluster(dest, HttpTransport::new(&dest.path)), true),
                Transport::Tcp => (dispatch.cluster(dest, TcpTransport::new(IDLE_CONNECTIONS)), true),
            };
            let sink = sink(&dest.name, destination);
            let queue = queued.then(|| dispatch.start(sink.clone(), dest));
            destinations.insert(dest.name.clone(), Target { sink, queue });
        }
        if !destinations.contains_key("log") {
            let log = Target { sink: sink("log", Arc::new(LogDestination::new("log"))), queue: None };
            destinations.insert("log".into(), log);
        }
        let routes = config.routes.iter().map(|route| Route::from_config(route).expect("validated config"));
        let route_metrics =
            config.routes.iter().map(|route| (route.name.clone(), Arc::new(metrics.route(&route.name))));
        Topology {
            routes: RouteTable::new(routes.collect()),
            destinations,
            dead_letter: config.host.dead_letter.clone(),
            dead_letter_of: config
                .destinations
                .iter()
                .filter_map(|dest| Some((dest.name.clone(), dest.dead_letter.clone()?)))
                .collect(),
            route_metrics: route_metrics.collect(),
        }
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

    /// Close the queues of the network destinations: their dispatchers
    /// deliver what is queued, then end.
    pub(crate) fn close_queues(&self) {
        self.destinations.values().filter_map(|target| target.queue.as_ref()).for_each(|queue| queue.close());
    }

    /// The metric handles of route `name`.
    pub(crate) fn route_metrics(&self, name: &str) -> &Arc<RouteMetrics> {
        &self.route_metrics[name]
    }
}
