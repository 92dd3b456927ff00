//! Events of a running host: plugins loaded, replaced, rejected or removed,
//! configurations applied or refused. Logged, counted and broadcast.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::broadcast;

/// Something that changed in a running host.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
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
}

/// How many events of each kind a host has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
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
}

/// The event feed of one host.
pub(crate) struct Events {
    sender: broadcast::Sender<HostEvent>,
    counts: [AtomicU64; 6],
}

impl Events {
    pub(crate) fn new() -> Events {
        Events { sender: broadcast::channel(1024).0, counts: Default::default() }
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
        };
        self.counts[slot].fetch_add(1, Relaxed);
        let json = serde_json::to_string(&event).unwrap_or_default();
        match slot {
            2 | 5 => tracing::error!(event = %json, "host event"),
            _ => tracing::info!(event = %json, "host event"),
        }
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.sender.subscribe()
    }

    pub(crate) fn counts(&self) -> EventCounts {
        let [loaded, replaced, rejected, removed, configs_applied, configs_rejected] =
            self.counts.each_ref().map(|count| count.load(Relaxed));
        EventCounts { loaded, replaced, rejected, removed, configs_applied, configs_rejected }
    }
}
