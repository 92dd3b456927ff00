//! Functions the host offers every plugin: logging, configuration, clock, counters.

use std::cell::RefCell;

// The host's functions: WIT imports in a component, the host's vtable in a
// native build.
#[cfg(target_family = "wasm")]
use crate::bindings::host;
#[cfg(not(target_family = "wasm"))]
use crate::native::host;

/// Severity of a log line.
pub use crate::bindings::host::Level;

/// Write a log line attributed to this plugin.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Send this plugin's panics to the host log (once per instance): components
/// abort on panic, and the host would otherwise see only the trap. Called
/// by every export before it runs the plugin's code.
pub(crate) fn forward_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = info.to_string().replace('\n', " ");
            host::log(Level::Error, &text);
        }))
    });
}

/// Log at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Log at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

thread_local! {
    /// Answers already fetched from the host. Config never changes during an
    /// instance's life (a reload makes new instances), and a host call costs
    /// about as much as a whole filter call, so each key is asked for once.
    /// A list, not a `HashMap`: plugins read a handful of keys, and the
    /// `HashMap` random seed would add a WASI import to every plugin.
    static CONFIG: RefCell<Vec<(String, Option<String>)>> = const { RefCell::new(Vec::new()) };
}

/// This plugin's configuration value for `key` (`[[plugin]] config = {..}`),
/// asked of the host once per key and instance, then served from a cache.
///
/// For per-message use, parse your settings once into a `static LazyLock`
/// instead of calling this on every message: see the crate example.
pub fn config(key: &str) -> Option<String> {
    CONFIG.with(|cache| {
        if let Some((_, value)) = cache.borrow().iter().find(|(known, _)| known == key) {
            return value.clone();
        }
        let value = host::config(key);
        cache.borrow_mut().push((key.to_owned(), value.clone()));
        value
    })
}

/// Drop the cached answer for `key`, whose value a test changed.
#[cfg(not(target_family = "wasm"))]
pub(crate) fn forget_config(key: &str) {
    CONFIG.with_borrow_mut(|cache| cache.retain(|(known, _)| known != key));
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    host::now_millis()
}

thread_local! {
    /// Counter increments not yet sent to the host. A host call per message
    /// would double a small filter's cost, so [`count`] adds up here and the
    /// export glue hands each total over once per call: in a filter's answer,
    /// through the host's `count` for the other kinds ([`FlushCounts`]).
    static COUNTS: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Add `delta` to this plugin's counter `name`, exported as a host metric.
///
/// Increments are summed inside the plugin (a sum stops at `u64::MAX`, as the
/// host's total does) and reach the host when the current call (one batch)
/// returns.
pub fn count(name: &str, delta: u64) {
    COUNTS.with_borrow_mut(|counts| match counts.iter_mut().find(|(known, _)| known == name) {
        Some((_, total)) => *total = total.saturating_add(delta),
        None => counts.push((name.to_owned(), delta)),
    });
}

/// Sends the summed [`count`] increments to the host when dropped, at the end
/// of every export call.
pub(crate) struct FlushCounts;

impl Drop for FlushCounts {
    fn drop(&mut self) {
        flush_counts();
    }
}

/// Send the summed [`count`] increments to the host.
pub(crate) fn flush_counts() {
    drain_counts(host::count);
}

/// Hand each counter's total since the last drain to `each`, and zero it.
pub(crate) fn drain_counts(mut each: impl FnMut(&str, u64)) {
    COUNTS.with_borrow_mut(|counts| {
        for (name, total) in counts.iter_mut().filter(|(_, total)| *total > 0) {
            each(name, std::mem::take(total));
        }
    });
}
