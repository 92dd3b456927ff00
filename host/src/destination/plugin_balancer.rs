//! A destination's `plugin:NAME` balancer. The version of plugin NAME
//! serving now picks, so a balancer plugin hot-swaps like any other; while
//! none serves (not loaded yet, removed, not a balancer, cannot start), or
//! when the plugin's pick is unusable, p2c picks and the destination says so
//! with a [`DestinationEvent::BalancerFallback`], at most once a second.
//! A version that could not start for a reason that may pass (its first
//! instance failed: a granted directory missing a while; no thread) is
//! started again at a later pick, at most once a second; one that is not a
//! balancer never is.
//! Picks are awaited, never waited for on the runtime thread: the plugin
//! runs on a thread of its own and answers through a channel.

use super::{DestinationEvent, EventSink, HostServices};
use crate::balance::{
    Balancer, EndpointView, FallbackReason, P2cPeakEwma, PluginBalancer, PluginBalancerError,
};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::plugin::{CompiledPlugin, PluginEngine, PluginRegistry};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fewest time between two fallback events of one destination.
const TELL_EVERY: Duration = Duration::from_secs(1);

/// Fewest time between two starts of a version that could not start.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Picks with the serving version of a balancer plugin.
pub(crate) struct HotPluginBalancer {
    registry: Arc<PluginRegistry>,
    engine: Arc<PluginEngine>,
    /// Where the plugin's faults and unusable answers are counted.
    metrics: Arc<Metrics>,
    addresses: Vec<String>,
    /// The balancer of the version last seen serving; none once no version serves, so that a
    /// removed or refused plugin keeps no thread nor instance.
    current: ArcSwapOption<PluginBalancer>,
    /// The version serving that could not be made a balancer, and whether it may be tried again.
    refused: Mutex<Option<Refusal>>,
    /// Held while a version's balancer starts, so that it starts once.
    starting: tokio::sync::Mutex<()>,
    fallback: P2cPeakEwma,
    teller: Arc<Teller>,
}

/// A version that could not be made a balancer.
struct Refusal {
    plugin: Arc<CompiledPlugin>,
    /// From when a pick may start it again; `None`: never, it is not a balancer. Its other
    /// failures may pass (a granted directory back, a thread free), as they do for the pipeline's
    /// and the transports' instances, which are made again at their next call.
    retry_at: Option<Instant>,
}

impl Refusal {
    /// `plugin`, which failed to start with `error` at `now`.
    fn new(plugin: Arc<CompiledPlugin>, error: &PluginBalancerError, now: Instant) -> Refusal {
        let retry_at = match error {
            PluginBalancerError::NotABalancer { .. } => None,
            PluginBalancerError::Instantiate { .. } | PluginBalancerError::Thread { .. } => {
                Some(now + RETRY_EVERY)
            }
        };
        Refusal { plugin, retry_at }
    }

    /// Whether `plugin` is the version refused.
    fn of(&self, plugin: &Arc<CompiledPlugin>) -> bool {
        Arc::ptr_eq(&self.plugin, plugin)
    }

    /// Whether `plugin` is the version refused and must not be started at `now`.
    fn holds(&self, plugin: &Arc<CompiledPlugin>, now: Instant) -> bool {
        self.of(plugin) && self.retry_at.is_none_or(|retry_at| now < retry_at)
    }
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
        // Another caller that read the clock later may have told first: `last` can be after `now`.
        let due = last == 0 || now.saturating_sub(last) >= TELL_EVERY.as_millis() as u64;
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
    /// plugin `plugin` as found in the host's registry.
    pub(crate) fn new(
        destination: &str,
        plugin: &str,
        addresses: Vec<String>,
        host: &HostServices,
    ) -> HotPluginBalancer {
        let teller = Teller {
            destination: destination.to_owned(),
            plugin: plugin.to_owned(),
            events: host.events.clone(),
            since: Instant::now(),
            last: AtomicU64::new(0),
        };
        HotPluginBalancer {
            registry: host.registry.clone(),
            engine: host.engine.clone(),
            metrics: host.metrics.clone(),
            addresses,
            current: ArcSwapOption::empty(),
            refused: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
            fallback: P2cPeakEwma::new(),
            teller: Arc::new(teller),
        }
    }

    /// The balancer of the serving version, started on first use; `None`
    /// (having told why) when there is none. Concurrent first picks wait for
    /// one start rather than each start a plugin thread.
    async fn serving(&self) -> Option<Arc<PluginBalancer>> {
        let plugins = self.registry.snapshot();
        let Some(plugin) = plugins.get(&self.teller.plugin) else {
            // Unlocked: a balancer a start under way stores meanwhile lives until the next pick.
            self.current.store(None);
            *lock(&self.refused) = None;
            self.teller.tell(self.not_loaded());
            return None;
        };
        if let Some(current) = self.current_for(plugin) {
            return Some(current);
        }
        let _starting = self.starting.lock().await;
        if let Some(current) = self.current_for(plugin) {
            return Some(current); // another pick started it meanwhile
        }
        if lock(&self.refused).as_ref().is_some_and(|refusal| refusal.holds(plugin, Instant::now())) {
            self.teller.tell(self.cannot_balance());
            return None;
        }
        let (teller, metrics) = (self.teller.clone(), self.metrics.clone());
        let on_fallback = Box::new(move |reason: &FallbackReason| {
            count(&metrics, &teller.plugin, reason);
            teller.tell(reason.to_string());
        });
        let (engine, metrics, addresses) =
            (self.engine.clone(), self.metrics.clone(), self.addresses.clone());
        let started = PluginBalancer::start(engine, metrics, plugin.clone(), addresses, on_fallback);
        match started.await {
            Ok(balancer) => {
                let balancer = Arc::new(balancer);
                self.current.store(Some(balancer.clone()));
                *lock(&self.refused) = None;
                Some(balancer)
            }
            Err(error) => {
                self.current.store(None);
                *lock(&self.refused) = Some(Refusal::new(plugin.clone(), &error, Instant::now()));
                self.teller.tell(error.to_string());
                None
            }
        }
    }

    /// Why no version of the plugin picks now, if none can (p2c picks meanwhile): it is not loaded,
    /// not a balancer, or the version serving could not start (when last tried: a later pick may
    /// start it). Called on demand, for `GET /ready`.
    pub(crate) fn unavailable(&self) -> Option<String> {
        let plugins = self.registry.snapshot();
        let Some(plugin) = plugins.get(&self.teller.plugin) else { return Some(self.not_loaded()) };
        if let Err(error) = PluginBalancerError::unless_balancer(plugin) {
            return Some(error.to_string());
        }
        self.refused(plugin).then(|| self.cannot_balance())
    }

    fn not_loaded(&self) -> String {
        format!("plugin \"{}\" is not loaded", self.teller.plugin)
    }

    fn cannot_balance(&self) -> String {
        format!("plugin \"{}\" cannot balance", self.teller.plugin)
    }

    /// Whether `plugin` is the version that could not be made a balancer, when last tried.
    fn refused(&self, plugin: &Arc<CompiledPlugin>) -> bool {
        lock(&self.refused).as_ref().is_some_and(|refusal| refusal.of(plugin))
    }

    /// The balancer last started, if it runs `plugin`.
    fn current_for(&self, plugin: &Arc<CompiledPlugin>) -> Option<Arc<PluginBalancer>> {
        self.current.load_full().filter(|current| Arc::ptr_eq(current.plugin(), plugin))
    }

    /// Picks for one dispatch attempt of `message`, awaiting the plugin's
    /// answer (see [`PluginBalancer::pick_async`]); p2c picks while no
    /// version of the plugin can.
    pub(crate) async fn pick(
        &self,
        endpoints: &[EndpointView],
        key: Option<&str>,
        message: &Message,
    ) -> Option<usize> {
        match self.serving().await {
            Some(balancer) => balancer.pick_async(message, endpoints).await,
            None => self.fallback.pick(endpoints, key),
        }
    }
}

/// Count a pick that `plugin` could not make as a problem of its kind
/// (`invalid`, `overdue`, ...); a fault the plugin's thread has counted already.
fn count(metrics: &Metrics, plugin: &str, reason: &FallbackReason) {
    if !matches!(reason, FallbackReason::Fault(_)) {
        metrics.plugin_problem(plugin, reason.kind());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::{DestinationEvent, PluginBalancerError, RETRY_EVERY, Refusal, Teller};
    use crate::plugin::{PluginEngine, PluginFault, PluginFormat, compile_bytes};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    use std::time::{Duration, Instant};

    #[test]
    fn a_version_that_failed_to_start_may_be_started_again_a_second_later_one_of_another_kind_never() {
        let engine = PluginEngine::new(None).unwrap();
        let bytes = std::fs::read(switchyard_plugin_artifacts::LEAST_LOADED_BALANCER).unwrap();
        let config = crate::config::PluginConfig { name: "lb".into(), ..Default::default() };
        let compile = || compile_bytes(&engine, PluginFormat::Wasm, &bytes, config.clone()).unwrap();
        let (plugin, next_version) = (compile(), compile());
        let failed = PluginBalancerError::Instantiate {
            name: "lb".into(),
            fault: PluginFault::Unusable("no such directory".into()),
        };
        let not_a_balancer = PluginBalancerError::NotABalancer { name: "lb".into(), kind: "filter" };
        let at = Instant::now();
        let refusal = Refusal::new(plugin.clone(), &failed, at);
        assert!(refusal.holds(&plugin, at + RETRY_EVERY - Duration::from_millis(1)), "not within the second");
        assert!(!refusal.holds(&plugin, at + RETRY_EVERY), "tried again once the second is over");
        assert!(!refusal.holds(&next_version, at), "another version is another start");
        let refusal = Refusal::new(plugin.clone(), &not_a_balancer, at);
        assert!(refusal.holds(&plugin, at + Duration::from_secs(3600)), "never tried again");
        assert!(!refusal.holds(&next_version, at));
    }

    #[test]
    fn a_teller_whose_clock_reading_is_older_than_the_last_telling_stays_quiet() {
        let told = Arc::new(AtomicUsize::new(0));
        let counted = told.clone();
        let teller = Teller {
            destination: "d".into(),
            plugin: "p".into(),
            events: Arc::new(move |event| {
                assert!(matches!(event, DestinationEvent::BalancerFallback { .. }));
                counted.fetch_add(1, Relaxed);
            }),
            since: Instant::now(),
            last: AtomicU64::new(0),
        };
        teller.tell("first".into());
        assert_eq!(told.load(Relaxed), 1, "the first fallback is told");
        // As if a caller that read the clock later had told in between.
        teller.last.fetch_add(10_000, Relaxed);
        teller.tell("older reading".into());
        assert_eq!(told.load(Relaxed), 1, "not told again within the second");
    }
}
