//! Functions the host offers every plugin: logging, configuration, clock, counters.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::bindings::host;

/// Severity of a log line.
pub use crate::bindings::host::Level;

/// Write a log line attributed to this plugin.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
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
    static CONFIG: RefCell<HashMap<String, Option<String>>> = RefCell::new(HashMap::new());
}

/// This plugin's configuration value for `key` (`[[plugin]] config = {..}`),
/// asked of the host once per key and instance, then served from a cache.
///
/// For per-message use, parse your settings once into a `static LazyLock`
/// instead of calling this on every message: see the crate example.
pub fn config(key: &str) -> Option<String> {
    CONFIG.with(|cache| {
        if let Some(value) = cache.borrow().get(key) {
            return value.clone();
        }
        let value = host::config(key);
        cache.borrow_mut().insert(key.to_owned(), value.clone());
        value
    })
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    host::now_millis()
}

/// Add `delta` to this plugin's counter `name`, exported as a host metric.
pub fn count(name: &str, delta: u64) {
    host::count(name, delta);
}
