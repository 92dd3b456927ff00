//! Events of a running host: plugins loaded, replaced, rejected or removed,
//! configurations applied or refused, endpoints down, up or removed, alerts changing
//! state. Logged, counted and broadcast.

use crate::destination::DestinationEvent;
use crate::metrics::{MAX_REMOVED_PLUGINS, Metrics};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Something that changed in a running host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HostEvent {
    /// A plugin that was not serving now serves.
    PluginLoaded {
        /// Plugin name.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// Its version (content digest, hex).
        version: String,
        /// Compile and link time, milliseconds.
        compile_ms: f64,
    },
    /// A new version of a serving plugin (or new settings) took over.
    PluginReplaced {
        /// Plugin name.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// The version that served before.
        old_version: String,
        /// The version serving now.
        version: String,
        /// Compile and link time, milliseconds.
        compile_ms: f64,
    },
    /// A plugin file could not be loaded; the previous version (if any) keeps serving.
    PluginRejected {
        /// Plugin name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A plugin's file was removed; it no longer serves.
    PluginRemoved {
        /// Plugin name.
        name: String,
        /// The version that served.
        version: String,
    },
    /// A compile-cache entry failed its check and was deleted; the plugin
    /// was compiled afresh.
    CacheEntryDiscarded {
        /// Plugin name.
        name: String,
        /// The entry and what was wrong with it.
        reason: String,
    },
    /// A new configuration was applied.
    ConfigApplied {
        /// Where it came from.
        file: String,
    },
    /// A configuration was refused whole; the running one stays.
    ConfigRejected {
        /// Where it came from.
        file: String,
        /// Why.
        reason: String,
    },
    /// A configuration applied, or found unchanged, sets a key to a value that the host's builder
    /// overrides (`switchyard run --plugins DIR`, `--listen ADDR`, `--admin ADDR`;
    /// [`HostBuilder::plugin_dir`](crate::HostBuilder::plugin_dir) and the like): that value is
    /// not used. Told once per value: when a file's edit brings it.
    ConfigOverridden {
        /// Where it came from.
        file: String,
        /// The key, e.g. `host.plugin_dir`.
        key: String,
        /// What the configuration says.
        value: String,
        /// What the host uses instead.
        used: String,
    },
    /// At start, the spool had a segment with corrupt bytes (bit rot, a bad sector) followed by
    /// intact records or by later segments: they were skipped, the records after them recovered,
    /// and the bytes moved aside to `SEGMENT.damaged`. One event per stretch of corrupt bytes. A
    /// torn tail of the last segment (what a crash mid-write leaves) is cut off with no event.
    SpoolDamaged {
        /// The segment file.
        segment: String,
        /// Where the corrupt bytes started in it.
        offset: u64,
        /// How many bytes were skipped.
        lost: u64,
        /// Why (e.g. "checksum mismatch", "impossible record length").
        problem: String,
    },
    /// An alert rule changed state (pending, firing, resolved, or back to inactive).
    Alert(crate::alert::Transition),
    /// An endpoint went down, came back or was removed while down, or a
    /// balancer plugin could not pick (told at most once a second per destination).
    #[serde(untagged)]
    Destination(DestinationEvent),
}

impl From<DestinationEvent> for HostEvent {
    fn from(event: DestinationEvent) -> HostEvent {
        HostEvent::Destination(event)
    }
}

impl HostEvent {
    /// The event's kebab-case name, as in its JSON form.
    pub fn name(&self) -> &'static str {
        match self {
            HostEvent::PluginLoaded { .. } => "plugin-loaded",
            HostEvent::PluginReplaced { .. } => "plugin-replaced",
            HostEvent::PluginRejected { .. } => "plugin-rejected",
            HostEvent::PluginRemoved { .. } => "plugin-removed",
            HostEvent::CacheEntryDiscarded { .. } => "cache-entry-discarded",
            HostEvent::ConfigApplied { .. } => "config-applied",
            HostEvent::ConfigRejected { .. } => "config-rejected",
            HostEvent::ConfigOverridden { .. } => "config-overridden",
            HostEvent::SpoolDamaged { .. } => "spool-damaged",
            HostEvent::Alert(_) => "alert",
            HostEvent::Destination(event) => event.name(),
        }
    }
}

/// How many events of each kind a host has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EventCounts {
    /// [`HostEvent::PluginLoaded`].
    pub loaded: u64,
    /// [`HostEvent::PluginReplaced`].
    pub replaced: u64,
    /// [`HostEvent::PluginRejected`].
    pub rejected: u64,
    /// [`HostEvent::PluginRemoved`].
    pub removed: u64,
    /// [`HostEvent::ConfigApplied`].
    pub configs_applied: u64,
    /// [`HostEvent::ConfigRejected`].
    pub configs_rejected: u64,
    /// [`HostEvent::ConfigOverridden`].
    pub configs_overridden: u64,
    /// [`DestinationEvent::EndpointDown`].
    pub endpoints_down: u64,
    /// [`DestinationEvent::EndpointUp`].
    pub endpoints_up: u64,
    /// [`DestinationEvent::EndpointRemoved`].
    pub endpoints_removed: u64,
    /// [`DestinationEvent::BalancerFallback`].
    pub balancer_fallbacks: u64,
    /// [`DestinationEvent::Fallback`].
    pub destination_fallbacks: u64,
    /// [`HostEvent::CacheEntryDiscarded`].
    pub cache_entries_discarded: u64,
    /// [`DestinationEvent::StreamMigrated`].
    pub streams_migrated: u64,
    /// [`HostEvent::SpoolDamaged`].
    pub spool_damaged: u64,
    /// [`HostEvent::Alert`]: alert transitions, every state.
    pub alerts: u64,
}

/// The event feed of one host.
pub(crate) struct Events {
    sender: broadcast::Sender<HostEvent>,
    counts: [AtomicU64; 16],
    metrics: Arc<Metrics>,
    /// What became of plugins that no longer serve their latest file.
    notes: Mutex<PluginNotes>,
}

/// The last rejection reason per plugin (cleared when it loads again or its
/// file goes), and the version each removed plugin served (cleared when it
/// loads again; of the last [`MAX_REMOVED_PLUGINS`] removed only, as the
/// metrics remember their counts).
#[derive(Default)]
struct PluginNotes {
    rejections: BTreeMap<String, String>,
    /// Name and version, the plugin removed longest ago first.
    removals: VecDeque<(String, String)>,
}

impl Events {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Events {
        Events {
            sender: broadcast::channel(1024).0,
            counts: Default::default(),
            metrics,
            notes: Mutex::default(),
        }
    }

    /// Log, count and broadcast `event`.
    pub(crate) fn emit(&self, event: HostEvent) {
        let slot = match &event {
            HostEvent::PluginLoaded { .. } => 0,
            HostEvent::PluginReplaced { .. } => 1,
            HostEvent::PluginRejected { .. } => 2,
            HostEvent::PluginRemoved { .. } => 3,
            HostEvent::ConfigApplied { .. } => 4,
            HostEvent::ConfigRejected { .. } => 5,
            HostEvent::Destination(DestinationEvent::EndpointDown { .. }) => 6,
            HostEvent::Destination(DestinationEvent::EndpointUp { .. }) => 7,
            HostEvent::Destination(DestinationEvent::BalancerFallback { .. }) => 8,
            HostEvent::CacheEntryDiscarded { .. } => 9,
            HostEvent::Destination(DestinationEvent::Fallback { .. }) => 10,
            HostEvent::Destination(DestinationEvent::StreamMigrated { .. }) => 11,
            HostEvent::SpoolDamaged { .. } => 12,
            HostEvent::Alert(_) => 13,
            HostEvent::ConfigOverridden { .. } => 14,
            HostEvent::Destination(DestinationEvent::EndpointRemoved { .. }) => 15,
        };
        self.counts[slot].fetch_add(1, Relaxed);
        self.metrics.event(event.name());
        self.remember(&event);
        let json = serde_json::to_string(&event).unwrap_or_default();
        match &event {
            HostEvent::PluginRejected { .. }
            | HostEvent::ConfigRejected { .. }
            | HostEvent::SpoolDamaged { .. } => {
                tracing::error!(event = %json, "host event")
            }
            HostEvent::Alert(alert) if alert.state == crate::alert::AlertState::Firing => {
                tracing::warn!(event = %json, "host event")
            }
            HostEvent::Destination(
                DestinationEvent::EndpointDown { .. }
                | DestinationEvent::BalancerFallback { .. }
                | DestinationEvent::Fallback { .. },
            )
            | HostEvent::CacheEntryDiscarded { .. }
            | HostEvent::ConfigOverridden { .. } => tracing::warn!(event = %json, "host event"),
            _ => tracing::info!(event = %json, "host event"),
        }
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    fn remember(&self, event: &HostEvent) {
        let mut notes = self.notes.lock().unwrap_or_else(|poison| poison.into_inner());
        match event {
            HostEvent::PluginRejected { name, reason } => {
                drop(notes.rejections.insert(name.clone(), reason.clone()))
            }
            HostEvent::PluginLoaded { name, .. } | HostEvent::PluginReplaced { name, .. } => {
                notes.rejections.remove(name);
                notes.removals.retain(|(removed, _)| removed != name);
            }
            HostEvent::PluginRemoved { name, version } => {
                notes.rejections.remove(name);
                notes.removals.retain(|(removed, _)| removed != name);
                if notes.removals.len() == MAX_REMOVED_PLUGINS {
                    notes.removals.pop_front();
                }
                notes.removals.push_back((name.clone(), version.clone()));
            }
            _ => {}
        }
    }

    /// Plugin `name`'s refused file is gone, or it serves its file again.
    pub(crate) fn forget_rejection(&self, name: &str) {
        self.notes.lock().unwrap_or_else(|poison| poison.into_inner()).rejections.remove(name);
    }

    /// The last rejection reason of each plugin whose latest file was refused.
    pub(crate) fn rejections(&self) -> BTreeMap<String, String> {
        self.notes.lock().unwrap_or_else(|poison| poison.into_inner()).rejections.clone()
    }

    /// The version each removed plugin served, until it loads again (of the last
    /// [`MAX_REMOVED_PLUGINS`] removed).
    pub(crate) fn removals(&self) -> BTreeMap<String, String> {
        self.notes.lock().unwrap_or_else(|poison| poison.into_inner()).removals.iter().cloned().collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.sender.subscribe()
    }

    pub(crate) fn counts(&self) -> EventCounts {
        let count = |slot: usize| self.counts[slot].load(Relaxed);
        EventCounts {
            loaded: count(0),
            replaced: count(1),
            rejected: count(2),
            removed: count(3),
            configs_applied: count(4),
            configs_rejected: count(5),
            configs_overridden: count(14),
            endpoints_down: count(6),
            endpoints_up: count(7),
            endpoints_removed: count(15),
            balancer_fallbacks: count(8),
            destination_fallbacks: count(10),
            cache_entries_discarded: count(9),
            streams_migrated: count(11),
            spool_damaged: count(12),
            alerts: count(13),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_most_recently_removed_plugins_are_listed_removed() {
        let events = Events::new(Arc::new(Metrics::new(true)));
        for n in 0..=MAX_REMOVED_PLUGINS {
            events.emit(HostEvent::PluginRemoved { name: format!("mw-{n}"), version: "v1".into() });
        }
        let removals = events.removals();
        assert_eq!(removals.len(), MAX_REMOVED_PLUGINS);
        assert!(!removals.contains_key("mw-0"), "the one removed longest ago is forgotten");
        assert!(removals.contains_key(&format!("mw-{MAX_REMOVED_PLUGINS}")));
    }
}
