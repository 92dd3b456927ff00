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

/// Keys whose config answers an instance keeps, at most: a plugin that asks
/// for keys it makes up (one per tenant, say) would otherwise grow the cache,
/// and the time to search it, for as long as the instance lives.
const MAX_CONFIG_CACHED: usize = 256;

thread_local! {
    /// Answers already fetched from the host. Config never changes during an
    /// instance's life (a reload makes new instances), and a host call costs
    /// about as much as a whole filter call, so each key is asked for once.
    /// A list, not a `HashMap`: plugins read a handful of keys, and the
    /// `HashMap` random seed would add a WASI import to every plugin.
    static CONFIG: RefCell<Vec<(String, Option<String>)>> = const { RefCell::new(Vec::new()) };
}

/// This plugin's configuration value for `key` (`[[plugin]] config = {..}`),
/// asked of the host once per key and instance, then served from a cache (of
/// the first 256 keys asked for: a key past those is asked every time).
///
/// For per-message use, parse your settings once into a `static LazyLock`
/// instead of calling this on every message: see the crate example.
pub fn config(key: &str) -> Option<String> {
    CONFIG.with(|cache| {
        if let Some((_, value)) = cache.borrow().iter().find(|(known, _)| known == key) {
            return value.clone();
        }
        let value = host::config(key);
        let mut cache = cache.borrow_mut();
        if cache.len() < MAX_CONFIG_CACHED {
            cache.push((key.to_owned(), value.clone()));
        }
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

/// Counter names the host keeps for one plugin version, at most: it counts
/// no further name (`MAX_COUNTERS` in the host's `plugin::host_calls`).
pub(crate) const MAX_COUNTERS: usize = 256;

/// Bytes of a counter name the host counts, at most (`MAX_COUNTER_NAME` in
/// the host's `plugin::host_calls`).
pub(crate) const MAX_COUNTER_NAME: usize = 128;

thread_local! {
    /// Counter increments not yet sent to the host. A host call per message
    /// would double a small filter's cost, so [`count`] adds up here and the
    /// export glue hands each total over once per call: in a filter's answer,
    /// through the host's `count` for the other kinds ([`FlushCounts`]).
    ///
    /// A drained counter keeps its entry, zeroed, so that counting it again
    /// makes no `String`, but only the first [`MAX_COUNTERS`] (as many names
    /// as the host keeps): a plugin counting by names it makes up holds that
    /// many between calls, not an entry, searched at every count, for each
    /// name it ever made.
    static COUNTS: RefCell<Vec<(String, u64)>> = const { RefCell::new(Vec::new()) };
}

/// Add `delta` to this plugin's counter `name`, exported as a host metric.
///
/// Increments are summed inside the plugin (a sum stops at `u64::MAX`, as the
/// host's total does) and reach the host when the current call (one batch)
/// returns; they count once the host took the call's answer (one it refuses as
/// a fault counts nothing: its messages run again). The host keeps at most 256 counter names per plugin version, the
/// first it is given, and none longer than 128 bytes: a longer name is not
/// counted at all. Its metrics show the first 256 names of a plugin over all
/// its versions.
pub fn count(name: &str, delta: u64) {
    if name.len() > MAX_COUNTER_NAME {
        return;
    }
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
        // All zeroed: the first names stay, as the host keeps the first it is given.
        counts.truncate(MAX_COUNTERS);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    /// The entries [`count`] keeps on this thread, zeroed or not.
    fn counters_kept() -> usize {
        COUNTS.with_borrow(Vec::len)
    }

    #[test]
    fn a_counter_name_longer_than_the_host_counts_is_neither_counted_nor_kept() {
        let longest = "x".repeat(MAX_COUNTER_NAME);
        let longer = "x".repeat(MAX_COUNTER_NAME + 1);
        count(&longest, 1);
        count(&longer, 1);
        assert_eq!(counters_kept(), 1);
        assert_eq!((testing::counter(&longest), testing::counter(&longer)), (1, 0));
    }

    #[test]
    fn names_made_up_call_after_call_keep_no_more_entries_than_the_host_keeps_names() {
        for call in 0..10 {
            for tenant in 0..100 {
                count(&format!("tenant-{call}-{tenant}"), 1);
            }
            drain_counts(|_, _| {});
            assert!(counters_kept() <= MAX_COUNTERS, "call {call}: {} entries", counters_kept());
        }
        // The first names stay, as the host keeps the first it is given: counting one again adds no entry.
        count("tenant-0-0", 1);
        assert_eq!(counters_kept(), MAX_COUNTERS);
    }

    #[test]
    fn a_call_hands_over_every_name_it_counted_even_past_the_hosts_number() {
        // Which of them the host keeps is the host's to say: it may know the later ones already.
        for name in 0..MAX_COUNTERS + 44 {
            count(&format!("n{name}"), 2);
        }
        let (mut names, mut sum) = (0, 0);
        drain_counts(|_, total| (names, sum) = (names + 1, sum + total));
        assert_eq!((names, sum), (MAX_COUNTERS + 44, 2 * (MAX_COUNTERS as u64 + 44)));
        assert_eq!(counters_kept(), MAX_COUNTERS);
    }

    #[test]
    fn config_answers_are_cached_for_the_first_keys_and_a_later_key_is_asked_each_time() {
        for key in 0..MAX_CONFIG_CACHED + 50 {
            assert_eq!(config(&format!("k{key}")), None);
        }
        assert_eq!(CONFIG.with_borrow(Vec::len), MAX_CONFIG_CACHED);
        testing::set_config("k0", "cached");
        testing::set_config("k300", "asked");
        assert_eq!((config("k0").as_deref(), config("k300").as_deref()), (Some("cached"), Some("asked")));
    }
}
