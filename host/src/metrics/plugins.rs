//! What the metrics know of each plugin: calls, errors and faults by kind,
//! and the last fault with its message, for `/v1/plugins`.

use super::{
    HistogramTotals, LatencyHistogram, Metrics, PluginCounter, PluginName, PluginProblem, ShardedCounter,
};
use crate::plugin::{CompiledPlugin, MAX_COUNTERS, PluginFault};
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The kinds of error answer a plugin gives (it handled the call).
const ERRORS: [&str; 3] = ["rejected", "retryable", "failed"];

/// The kinds of fault (the instance misbehaved and was thrown away).
const FAULTS: [&str; 7] =
    ["trapped", "timed_out", "memory_cap", "malformed", "unusable", "output_limit", "exited"];

/// Why a balancer plugin's pick fell back, besides its faults: an answer
/// that names no endpoint, a pick that waited past its deadline or behind
/// too many others, a stopped plugin thread.
const FALLBACKS: [&str; 4] = ["invalid", "overdue", "overloaded", "stopped"];

/// A plugin's calls and problems so far, every kind listed (zero included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginCounts {
    /// Calls made (one per batch).
    pub calls: u64,
    /// Problems by kind: the error answers (`rejected`, `retryable`,
    /// `failed`), the faults (`trapped`, `timed_out`, `memory_cap`,
    /// `malformed`, `unusable`, `output_limit`, `exited`) and a balancer's other
    /// fallbacks (`invalid`, `overdue`, `overloaded`, `stopped`).
    pub problems: BTreeMap<&'static str, u64>,
}

impl PluginCounts {
    /// Error answers: messages the plugin said it could not handle.
    pub fn errors(&self) -> u64 {
        ERRORS.iter().map(|kind| self.problems[kind]).sum()
    }

    /// Faults: calls that trapped, timed out, hit the memory cap or answered malformed.
    pub fn faults(&self) -> u64 {
        FAULTS.iter().map(|kind| self.problems[kind]).sum()
    }

    /// Calls interrupted at the plugin's deadline.
    pub fn deadline_hits(&self) -> u64 {
        self.problems["timed_out"]
    }
}

/// The last fault of a plugin while serving.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastFault {
    /// Its kind, as in `switchyard_plugin_problems_total` (`trapped`, `timed_out`, ...).
    pub kind: &'static str,
    /// What happened, e.g. `timed out after 50ms`.
    pub message: String,
    /// The plugin version that faulted (short digest).
    pub version: String,
}

impl LastFault {
    /// `fault` of plugin version `version` (short digest).
    pub(crate) fn of(fault: &PluginFault, version: &str) -> LastFault {
        LastFault { kind: fault.kind(), message: fault.to_string(), version: version.to_owned() }
    }
}

/// Removed plugins whose counts the metrics remember; a further removal forgets the one removed
/// longest ago, its last fault too (a deployment that puts versions in file names removes a new
/// name each time).
pub(crate) const MAX_REMOVED_PLUGINS: usize = 64;

/// What a removed plugin had done when its file went: its calls and problems, its instances
/// renewed, its calls' latency and what it counted; its series hold them again once it serves.
#[derive(Debug)]
pub(super) struct RemovedPlugin {
    /// Its place among the removals remembered: the later removed, the higher.
    removal: u64,
    counts: PluginCounts,
    renewals: u64,
    latency: HistogramTotals,
    /// Its `switchyard_plugin_counter_total` series, by name.
    counters: Vec<(String, u64)>,
}

/// The series a plugin's calls add to: its calls and their latency. A
/// version keeps them once looked up, so a call reaches them without making
/// a label or taking a family's lock.
#[derive(Debug, Default)]
pub(crate) struct CallSeries {
    calls: ShardedCounter,
    latency: LatencyHistogram,
}

impl Metrics {
    /// Account for one call of `plugin` that took `took` and ended in
    /// `result`: the call and its time, what the plugin counted in it, and
    /// its fault if it had one (kept as the plugin's last). Whoever makes a
    /// plugin's calls (a pipeline worker, a transport's lane, a balancer's
    /// thread) tells it here.
    pub(crate) fn plugin_called<R>(
        &self,
        plugin: &CompiledPlugin,
        took: Duration,
        result: &Result<R, PluginFault>,
    ) {
        self.plugin_call(plugin, took);
        self.plugin_counted(plugin);
        if let Err(fault) = result {
            self.plugin_fault(&plugin.name, LastFault::of(fault, plugin.short_version()));
        }
    }

    /// Add what `plugin` counted since it was last told here to its counter series: after each
    /// call, and once the answer of a call whose counts were held was taken.
    pub(crate) fn plugin_counted(&self, plugin: &CompiledPlugin) {
        plugin.settings.report_counts(|name| self.plugin_counter(&plugin.name, name));
    }

    fn plugin_call(&self, plugin: &CompiledPlugin, took: Duration) {
        if self.enabled {
            let series = plugin.call_series.get_or_init(|| self.call_series(&plugin.name));
            series.calls.inc();
            series.latency.observe(took);
        }
    }

    /// The series a version of `plugin` counts its calls into: the plugin's, or series no scrape
    /// shows once its file was removed (a version finishing its first call after the removal).
    fn call_series(&self, plugin: &str) -> CallSeries {
        let mut series = CallSeries::default();
        self.unless_removed(plugin, || {
            let labels = PluginName { plugin: plugin.into() };
            series = CallSeries {
                calls: self.plugin_calls.get_or_create(&labels).clone(),
                latency: self.plugin_latency.get_or_create(&labels).clone(),
            };
        });
        series
    }

    /// The series of `switchyard_plugin_counter_total` that `plugin`'s counter
    /// `name` adds to, shared by every version of the plugin: a handle kept
    /// by the plugin's settings, so a call's counts reach it without a lookup.
    /// A plugin has series for the first [`MAX_COUNTERS`] names it counted, over
    /// all its versions (each version counts its own first names, and a swap
    /// would otherwise add as many series again); a further name counts into
    /// a counter no scrape shows, as does any name of a removed plugin (a version finishing a call
    /// after the removal).
    fn plugin_counter(&self, plugin: &str, name: &str) -> Counter {
        let labels = PluginCounter { plugin: plugin.into(), name: name.into() };
        let mut names = self.plugin_counter_names.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(series) = self.plugin_counters.get(&labels) {
            return series.clone();
        }
        if self.removed_plugins.lock().unwrap_or_else(|poison| poison.into_inner()).contains_key(plugin) {
            return Counter::default();
        }
        let named = names.entry(plugin.to_owned()).or_default();
        if named.len() == MAX_COUNTERS {
            return Counter::default();
        }
        named.push(name.to_owned());
        self.plugin_counters.get_or_create_owned(&labels)
    }

    /// Plugin `plugin`'s file is gone: remove its series, keeping what they held for
    /// [`Metrics::plugin_counts`] and for when it serves again, forgetting those of the plugin
    /// removed longest ago beyond [`MAX_REMOVED_PLUGINS`]. A version still finishing a call
    /// may count on; into the series it holds, or into none (see [`Metrics::unless_removed`]): no
    /// scrape shows them.
    pub(crate) fn plugin_removed(&self, plugin: &str) {
        let mut names = self.plugin_counter_names.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut removed_plugins = self.removed_plugins.lock().unwrap_or_else(|poison| poison.into_inner());
        if removed_plugins.contains_key(plugin) {
            return;
        }
        let name = PluginName { plugin: plugin.into() };
        let mut removed = RemovedPlugin {
            removal: removed_plugins.values().map(|removed| removed.removal + 1).max().unwrap_or(0),
            counts: self.serving_counts(plugin),
            renewals: self.serving_renewals(plugin),
            latency: self.plugin_latency.get(&name).map(|latency| latency.totals()).unwrap_or_default(),
            counters: Vec::new(),
        };
        self.plugin_calls.remove(&name);
        self.plugin_latency.remove(&name);
        self.plugin_renewals.remove(&name);
        for problem in ERRORS.into_iter().chain(FAULTS).chain(FALLBACKS) {
            self.plugin_problems.remove(&PluginProblem { plugin: plugin.into(), problem: problem.into() });
        }
        for name in names.remove(plugin).unwrap_or_default() {
            let labels = PluginCounter { plugin: plugin.into(), name };
            let count = self.plugin_counters.get(&labels).map_or(0, |count| count.get());
            self.plugin_counters.remove(&labels);
            removed.counters.push((labels.name, count));
        }
        if removed_plugins.len() == MAX_REMOVED_PLUGINS {
            let oldest = removed_plugins.iter().min_by_key(|(_, removed)| removed.removal);
            let oldest = oldest.map(|(name, _)| name.clone()).unwrap_or_default();
            if let Some(forgotten) = removed_plugins.remove(&oldest) {
                self.forgotten_plugin_faults.fetch_add(forgotten.counts.faults(), Relaxed);
            }
            self.last_faults.lock().unwrap_or_else(|poison| poison.into_inner()).remove(&oldest);
        }
        removed_plugins.insert(plugin.to_owned(), removed);
    }

    /// Plugin `plugin` serves (loaded or replaced). If its file was removed before, its series
    /// come back holding what they held then, and it keeps its last fault: a counter never goes
    /// down (a scrape, and an alert rule's `rate(..)`, would take the fall for a reset).
    pub(crate) fn plugin_serving(&self, plugin: &str) {
        let mut names = self.plugin_counter_names.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut removed_plugins = self.removed_plugins.lock().unwrap_or_else(|poison| poison.into_inner());
        let Some(removed) = removed_plugins.remove(plugin) else { return };
        let name = PluginName { plugin: plugin.into() };
        if removed.counts.calls > 0 {
            self.plugin_calls.get_or_create(&name).add(removed.counts.calls);
            self.plugin_latency.get_or_create(&name).add(&removed.latency);
        }
        for (problem, count) in removed.counts.problems.into_iter().filter(|(_, count)| *count > 0) {
            let labels = PluginProblem { plugin: plugin.into(), problem: problem.into() };
            self.plugin_problems.get_or_create(&labels).inc_by(count);
        }
        if removed.renewals > 0 {
            self.plugin_renewals.get_or_create(&name).inc_by(removed.renewals);
        }
        let named = names.entry(plugin.to_owned()).or_default();
        for (name, count) in removed.counters {
            self.plugin_counters
                .get_or_create(&PluginCounter { plugin: plugin.into(), name: name.clone() })
                .inc_by(count);
            named.push(name);
        }
    }

    /// The counts of `plugin` as they were when its file was removed, if it has been.
    fn removed_plugin<T>(&self, plugin: &str, read: impl FnOnce(&RemovedPlugin) -> T) -> Option<T> {
        self.removed_plugins.lock().unwrap_or_else(|poison| poison.into_inner()).get(plugin).map(read)
    }

    /// Run `count`, which looks a series of `plugin` up (making it if need be), unless `plugin`'s
    /// file was removed and it has not loaded again: a version still finishing a call then counts
    /// into nothing, not into a series its removal took away. The lock, held across `count`, keeps
    /// a removal from passing between the check and the count.
    fn unless_removed(&self, plugin: &str, count: impl FnOnce()) {
        let removed_plugins = self.removed_plugins.lock().unwrap_or_else(|poison| poison.into_inner());
        if !removed_plugins.contains_key(plugin) {
            count();
        }
    }

    /// Count an error answer of `plugin`, of kind `problem`.
    pub(crate) fn plugin_problem(&self, plugin: &str, problem: &str) {
        self.unless_removed(plugin, || self.count_problem(plugin, problem));
    }

    /// Add one to `plugin`'s series of `problem`, making it if need be.
    fn count_problem(&self, plugin: &str, problem: &str) {
        self.plugin_problems
            .get_or_create(&PluginProblem { plugin: plugin.into(), problem: problem.into() })
            .inc();
    }

    /// Count a fault of `plugin` and keep it as its last, unless its file was removed (see
    /// [`Metrics::unless_removed`]): a removed plugin keeps the last fault it had while serving.
    pub(crate) fn plugin_fault(&self, plugin: &str, fault: LastFault) {
        self.unless_removed(plugin, || {
            self.count_problem(plugin, fault.kind);
            self.last_faults
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(plugin.to_owned(), fault);
        });
    }

    /// Count an instance of `plugin` renewed because it outgrew its memory.
    pub(crate) fn plugin_renewed(&self, plugin: &str) {
        self.unless_removed(plugin, || {
            self.plugin_renewals.get_or_create(&PluginName { plugin: plugin.into() }).inc();
        });
    }

    /// Instances of `plugin` renewed so far because they outgrew their memory (until its file was
    /// removed, for a removed plugin).
    pub fn plugin_renewals(&self, plugin: &str) -> u64 {
        if let Some(renewals) = self.removed_plugin(plugin, |removed| removed.renewals) {
            return renewals;
        }
        self.serving_renewals(plugin)
    }

    /// What the series of `plugin_renewals` of `plugin` hold.
    fn serving_renewals(&self, plugin: &str) -> u64 {
        self.plugin_renewals.get(&PluginName { plugin: plugin.into() }).map_or(0, |count| count.get())
    }

    /// The last fault of `plugin` while serving, if it had one.
    pub fn last_fault(&self, plugin: &str) -> Option<LastFault> {
        self.last_faults.lock().unwrap_or_else(|poison| poison.into_inner()).get(plugin).cloned()
    }

    /// Calls and problems of `plugin` so far (until its file was removed, for a removed plugin).
    pub fn plugin_counts(&self, plugin: &str) -> PluginCounts {
        if let Some(counts) = self.removed_plugin(plugin, |removed| removed.counts.clone()) {
            return counts;
        }
        self.serving_counts(plugin)
    }

    /// What the series of `plugin`'s calls and problems hold.
    fn serving_counts(&self, plugin: &str) -> PluginCounts {
        let calls =
            self.plugin_calls.get(&PluginName { plugin: plugin.into() }).map_or(0, |calls| calls.get());
        let problems = ERRORS
            .into_iter()
            .chain(FAULTS)
            .chain(FALLBACKS)
            .map(|kind| {
                let labels = PluginProblem { plugin: plugin.into(), problem: kind.into() };
                (kind, self.plugin_problems.get(&labels).map_or(0, |count| count.get()))
            })
            .collect();
        PluginCounts { calls, problems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_plugin_s_late_calls_problems_renewals_and_counters_make_no_series() {
        let metrics = Metrics::new(true);
        metrics.plugin_problem("mw", "failed");
        metrics.plugin_renewed("mw");
        metrics.plugin_counter("mw", "seen").inc();
        assert!(metrics.encode().contains("plugin=\"mw\""), "{}", metrics.encode());
        metrics.plugin_removed("mw");
        metrics.plugin_problem("mw", "failed");
        metrics.plugin_renewed("mw");
        metrics.plugin_counter("mw", "seen").inc();
        metrics.plugin_counter("mw", "late").inc();
        metrics.call_series("mw").calls.inc();
        assert!(!metrics.encode().contains("plugin=\"mw\""), "{}", metrics.encode());
        assert_eq!(metrics.plugin_counts("mw").problems["failed"], 1);
        assert_eq!(metrics.plugin_renewals("mw"), 1);
        // Back, its series go on from what they held when its file went: the late counts are not
        // in them.
        metrics.plugin_serving("mw");
        metrics.plugin_problem("mw", "failed");
        metrics.plugin_counter("mw", "seen").inc();
        metrics.call_series("mw").calls.inc();
        assert_eq!(metrics.plugin_counts("mw").problems["failed"], 2);
        assert_eq!(metrics.plugin_renewals("mw"), 1);
        let encoded = metrics.encode();
        for series in [
            "plugin_calls_total{plugin=\"mw\"} 1",
            "plugin_problems_total{plugin=\"mw\",problem=\"failed\"} 2",
            "plugin_instances_renewed_total{plugin=\"mw\"} 1",
            "plugin_counter_total{plugin=\"mw\",name=\"seen\"} 2",
        ] {
            assert!(encoded.contains(series), "{series} in {encoded}");
        }
        assert!(!encoded.contains("name=\"late\""), "{encoded}");
    }

    #[test]
    fn only_the_most_recently_removed_plugins_are_remembered() {
        // A deployment putting versions in file names removes a new name at each: each was kept
        // for good, with up to 256 counters.
        let metrics = Metrics::new(true);
        let fault = LastFault { kind: "trapped", message: "trap".into(), version: "v1".into() };
        let removed = |n: usize| format!("mw-{n}");
        for n in 0..=MAX_REMOVED_PLUGINS {
            metrics.plugin_counter(&removed(n), "seen").inc();
            metrics.plugin_fault(&removed(n), fault.clone());
            metrics.plugin_removed(&removed(n));
        }
        let remembered = metrics.removed_plugins.lock().unwrap().len();
        assert_eq!(remembered, MAX_REMOVED_PLUGINS, "the one removed longest ago is forgotten");
        assert_eq!(metrics.last_faults.lock().unwrap().len(), MAX_REMOVED_PLUGINS);
        assert_eq!((metrics.plugin_counts(&removed(0)).faults(), metrics.last_fault(&removed(0))), (0, None));
        assert_eq!(metrics.plugin_counts(&removed(1)).faults(), 1, "the next oldest is remembered");
        // Summed over all plugins, as an alert rule reads it, the faults do not fall: a fall reads as
        // a reset, and `rate(..)` as every fault counted again.
        let all_faults = metrics.read("plugin_faults", &[]);
        assert_eq!(all_faults, Some(MAX_REMOVED_PLUGINS as f64 + 1.0), "the forgotten one's fault counts on");
        let forgotten = [("plugin".to_owned(), removed(0))];
        assert_eq!(metrics.read("plugin_faults", &forgotten), Some(0.0), "but under no plugin's name");
        let latest = removed(MAX_REMOVED_PLUGINS);
        assert_eq!((metrics.plugin_counts(&latest).faults(), metrics.last_fault(&latest)), (1, Some(fault)));
        // The latest is still remembered when it comes back: its series go on from what they held.
        metrics.plugin_serving(&latest);
        let series = format!("plugin_counter_total{{plugin=\"{latest}\",name=\"seen\"}} 1");
        assert!(metrics.encode().contains(&series), "{series} in {}", metrics.encode());
    }

    #[test]
    fn a_plugin_s_calls_and_their_latency_go_on_from_what_they_held_when_its_file_was_removed() {
        let metrics = Metrics::new(true);
        let series = metrics.call_series("mw");
        series.calls.inc();
        series.latency.observe(Duration::from_millis(3));
        metrics.plugin_removed("mw");
        metrics.plugin_serving("mw");
        let series = metrics.call_series("mw");
        series.calls.inc();
        series.latency.observe(Duration::from_millis(5));
        assert_eq!(metrics.plugin_counts("mw").calls, 2);
        let latency = series.latency.totals();
        assert_eq!(latency.buckets.iter().sum::<u64>(), 2);
        assert!((latency.sum_seconds - 0.008).abs() < 1e-9, "{latency:?}");
    }

    #[test]
    fn a_removed_plugin_keeps_its_last_fault_while_serving_and_its_faults_when_it_serves_again() {
        let metrics = Metrics::new(true);
        let fault =
            |message: &str| LastFault { kind: "trapped", message: message.into(), version: "v1".into() };
        metrics.plugin_fault("mw", fault("while serving"));
        metrics.plugin_removed("mw");
        // A version finishing a call after the removal: counted nowhere, not its last fault either.
        metrics.plugin_fault("mw", fault("after the removal"));
        assert_eq!(metrics.last_fault("mw"), Some(fault("while serving")));
        assert_eq!(metrics.plugin_counts("mw").faults(), 1);
        metrics.plugin_serving("mw");
        assert_eq!(
            (metrics.last_fault("mw"), metrics.plugin_counts("mw").faults()),
            (Some(fault("while serving")), 1)
        );
        assert_eq!(metrics.read("plugin_faults", &[("plugin".into(), "mw".into())]), Some(1.0));
        // Replaced while serving, it keeps both.
        metrics.plugin_fault("mw", fault("once back"));
        metrics.plugin_serving("mw");
        assert_eq!(
            (metrics.last_fault("mw"), metrics.plugin_counts("mw").faults()),
            (Some(fault("once back")), 2)
        );
    }
}
