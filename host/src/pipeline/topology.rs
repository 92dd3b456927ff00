//! The topology: routes and the destinations they deliver to, built from a
//! configuration and swapped whole when the configuration is reloaded.

use crate::config::{Config, Transport};
use crate::destination::{Destination, LogDestination, MemoryDestination};
use crate::message::Message;
use crate::router::{Route, RouteTable};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What messages are routed by and delivered to. Each batch pins one.
pub(crate) struct Topology {
    pub(crate) routes: RouteTable,
    pub(crate) destinations: HashMap<String, Arc<dyn Destination>>,
    pub(crate) dead_letter: String,
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
    pub(crate) fn build(config: &Config, lasting: &LastingDestinations) -> Topology {
        let mut destinations = lasting.native.clone();
        destinations.entry("log".into()).or_insert_with(|| Arc::new(LogDestination::new("log")));
        for dest in &config.destinations {
            let destination: Arc<dyn Destination> = match dest.transport {
                Transport::Log => Arc::new(LogDestination::new(&dest.name)),
                Transport::Memory => Arc::new(lasting.memory(&dest.name)),
            };
            destinations.insert(dest.name.clone(), destination);
        }
        let routes = config.routes.iter().map(|route| Route::from_config(route).expect("validated config"));
        Topology {
            routes: RouteTable::new(routes.collect()),
            destinations,
            dead_letter: config.host.dead_letter.clone(),
        }
    }
}
