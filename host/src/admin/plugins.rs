//! `GET /v1/plugins`: every plugin the host knows, in name order, with the
//! state the registry and the event feed give it.
//!
//! A plugin is `serving` while a version of it is in the registry (its
//! `last_rejection` then says whether a newer file was refused),
//! `rejected` when no version serves and its latest file was refused, and
//! `removed` when its file was deleted. Every entry carries its counts
//! (zeros included), how many of its instances were renewed because they
//! outgrew their memory, and its last fault while serving.

use crate::host::Host;
use crate::plugin::CompiledPlugin;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The JSON of every plugin, sorted by name.
pub(super) fn list(host: &Host) -> Value {
    let mut plugins: BTreeMap<String, Value> = BTreeMap::new();
    for (name, version) in host.removed_plugins() {
        plugins.insert(name.clone(), entry(host, &name, "removed", json!({ "version": version })));
    }
    for (name, reason) in host.last_rejections() {
        let mut plugin = entry(host, &name, "rejected", json!({}));
        plugin["last_rejection"] = reason.into();
        plugins.insert(name, plugin);
    }
    let rejections = host.last_rejections();
    for plugin in host.plugins() {
        let mut serving = entry(host, &plugin.name, "serving", serving(&plugin));
        serving["last_rejection"] = rejections.get(&plugin.name).cloned().into();
        plugins.insert(plugin.name.clone(), serving);
    }
    json!({ "plugins": plugins.into_values().collect::<Vec<_>>() })
}

/// What only a serving version has: kind, whether it is a native library,
/// version, compile time, instances, its own counters.
fn serving(plugin: &CompiledPlugin) -> Value {
    let counters = plugin.settings.counters();
    json!({
        "kind": plugin.kind,
        "native": plugin.is_native(),
        "version": plugin.digest,
        "compile_ms": plugin.compile_time.as_secs_f64() * 1e3,
        "instances": plugin.live_instances(),
        "counters": counters,
    })
}

/// An entry in `state`, with `extra` fields and the plugin's counts and last fault.
fn entry(host: &Host, name: &str, state: &str, extra: Value) -> Value {
    let counts = host.metrics().plugin_counts(name);
    let mut entry = json!({
        "name": name,
        "state": state,
        "calls": counts.calls,
        "errors": counts.errors(),
        "faults": counts.faults(),
        "deadline_hits": counts.deadline_hits(),
        "renewals": host.metrics().plugin_renewals(name),
        "problems": counts.problems,
        "last_rejection": null,
        "last_fault": host.metrics().last_fault(name),
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        entry[key] = value.clone();
    }
    entry
}
