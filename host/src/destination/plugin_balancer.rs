//! A destination's `plugin:NAME` balancer. The version of plugin NAME
//! serving now picks, so a balancer plugin hot-swaps like any other; while
//! none serves (not loaded yet, removed, not a balancer, cannot start), or
//! when the plugin's pick is unusable, p2c picks and the destination says so
//! with a [`DestinationEvent::BalancerFallback`], at most once a second.

use super::{DestinationEvent, EventSink};
use crate::balance::{Balancer, EndpointView, P2cPeakEwma, PluginBalancer};
use crate::message::Message;
use crate::plugin::{CompiledPlugin, PluginEngine, PluginRegistry};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fewest time between two fallback events of one destination.
const TELL_EVERY: Duration = Duration::from_secs(1);

/// Picks with the serving version of a balancer plugin.
pub(crate) struct HotPluginBalancer {
    registry: Arc<PluginRegistry>,
    engine: Arc<PluginEngine>,
    addresses: Vec<String>,
    /// The balancer of the version last seen serving.
    current: ArcSwapOption<PluginBalancer>,
    /// The version that could not be made a balancer, not to be tried again.
    refused: Mutex<Option<Arc<CompiledPlugin>>>,
    fallback: P2cPeakEwma,
    teller: Arc<Teller>,
}

/// Tells of fallbacks, at most once every [`TELL_EVERY`].
struct Teller {
    destination: String,
    plugin: String,
    events: EventSink,
    since: Instant,
    /// When it last told, in milliseconds since `since` (+1; 0 = never).
    last: AtomicU64,
}

impl Teller {
    fn tell(&self, reason: String) {
        let now = self.since.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Relaxed);
        let due = last == 0 || now - last >= TELL_EVERY.as_millis() as u64;
        if due && self.last.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
            (self.events)(DestinationEvent::BalancerFallback {
                destination: self.destination.clone(),
                plugin: self.plugin.clone(),
                reason,
            });
        }
    }
}

impl HotPluginBalancer {
    /// The balancer of destination `destination` over `addresses`, asking
    /// plugin `plugin` as found in `registry`.
    pub(crate) fn new(
        destination: &str,
        plugin: &str,
        addresses: Vec<String>,
        (registry, engine): (Arc<PluginRegistry>, Arc<PluginEngine>),
        events: EventSink,
    ) -> HotPluginBalancer {
        let teller = Teller {
            destination: destination.to_owned(),
            plugin: plugin.to_owned(),
            events,
            since: Instant::now(),
            last: AtomicU64::new(0),
        };
        HotPluginBalancer {
            registry,
            engine,
            addresses,
            current: ArcSwapOption::empty(),
            refused: Mutex::new(None),
            fallback: P2cPeakEwma::new(),
            teller: Arc::new(teller),
        }
    }

    /// The balancer of the serving version, made on first use; `None`
    /// (having told why) when there is none.
    fn serving(&self) -> Option<Arc<PluginBalancer>> {
        let plugins = self.registry.snapshot();
        let Some(plugin) = plugins.get(&self.teller.plugin) else {
            self.teller.tell(format!("plugin \"{}\" is not loaded", self.teller.plugin));
            return None;
        };
        if let Some(current) =
            self.current.load_full().filter(|current| Arc::ptr_eq(current.plugin(), plugin))
        {
            return Some(current);
        }
        let mut refused = self.refused.lock().unwrap_or_else(|poison| poison.into_inner());
        if refused.as_ref().is_some_and(|refused| Arc::ptr_eq(refused, plugin)) {
            self.teller.tell(format!("plugin \"{}\" cannot balance", self.teller.plugin));
            return None;
        }
        let teller = self.teller.clone();
        let on_fallback =
            Box::new(move |reason: &crate::balance::FallbackReason| teller.tell(reason.to_string()));
        match PluginBalancer::new(self.engine.clone(), plugin.clone(), self.addresses.clone(), on_fallback) {
            Ok(balancer) => {
                let balancer = Arc::new(balancer);
                self.current.store(Some(balancer.clone()));
                Some(balancer)
            }
            Err(error) => {
                *refused = Some(plugin.clone());
                self.teller.tell(error.to_string());
                None
            }
        }
    }
}

impl Balancer for HotPluginBalancer {
    fn pick(&self, endpoints: &[EndpointView], key: Option<&str>) -> Option<usize> {
        match self.serving() {
            Some(balancer) => balancer.pick(endpoints, key),
            None => self.fallback.pick(endpoints, key),
        }
    }

    fn pick_message(
        &self,
        endpoints: &[EndpointView],
        key: Option<&str>,
        message: &Message,
    ) -> Option<usize> {
        match self.serving() {
            Some(balancer) => balancer.pick_for(message, endpoints),
            None => self.fallback.pick(endpoints, key),
        }
    }
}
