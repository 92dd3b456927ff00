//! The topology: routes and the destinations they deliver to, built from a
//! configuration and swapped whole when the configuration is reloaded.

use crate::config::{Config, Transport};
use crate::destination::{
    Cluster, Destination, HttpTransport, LogDestination, MemoryDestination, PoolConfig, TcpTransport,
};
use crate::message::Message;
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::{Route, RouteTable};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What messages are routed by and delivered to. Each batch pins one.
pub(crate) struct Topology {
    pub(crate) routes: RouteTable,
    pub(crate) destinations: HashMap<String, Target>,
    dead_letter: String,
    /// Destinations with a dead-letter destination of their own.
    dead_letter_of: HashMap<String, String>,
    /// Metric handles per route and per destination (ok, failed), looked up
    /// once per topology rather than per message.
    route_metrics: HashMap<String, RouteMetrics>,
}

/// A destination with its delivery counters (ok, failed), found in one lookup.
pub(crate) struct Target {
    pub(crate) destination: Arc<dyn Destination>,
    counters: [Counter; 2],
}

impl Target {
    /// Count one delivery.
    pub(crate) fn count(&self, ok: bool) {
        self.counters[usize::from(!ok)].inc();
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
    /// The topology of a validated `config`.
    pub(crate) fn build(config: &Config, lasting: &LastingDestinations, metrics: &Metrics) -> Topology {
        let mut destinations = lasting.native.clone();
        destinations.entry("log".into()).or_insert_with(|| Arc::new(LogDestination::new("log")));
        for dest in &config.destinations {
            let destination: Arc<dyn Destination> = match dest.transport {
                Transport::Log => Arc::new(LogDestination::new(&dest.name)),
                Transport::Memory => Arc::new(lasting.memory(&dest.name)),
                Transport::Http => {
                    Arc::new(Cluster::new(dest, HttpTransport::new(&dest.path, PoolConfig::default())))
                }
                Transport::Tcp => Arc::new(Cluster::new(dest, TcpTransport::new(PoolConfig::default()))),
            };
            destinations.insert(dest.name.clone(), destination);
        }
        let routes = config.routes.iter().map(|route| Route::from_config(route).expect("validated config"));
        let route_metrics =
            config.routes.iter().map(|route| (route.name.clone(), metrics.route(&route.name)));
        let destinations = destinations
            .into_iter()
            .map(|(name, destination)| {
                let counters = [metrics.delivery(&name, true), metrics.delivery(&name, false)];
                (name, Target { destination, counters })
            })
            .collect();
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

    /// The metric handles of route `name`.
    pub(crate) fn route_metrics(&self, name: &str) -> &RouteMetrics {
        &self.route_metrics[name]
    }
}
