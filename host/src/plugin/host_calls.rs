//! The `host` interface every plugin may call (log, config, clock, counters),
//! implemented once for WASM instances and native libraries alike.

use super::bindings::Level;
use super::sandbox::PluginSettings;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Characters of a logged error kept to explain a trap.
const MAX_ERROR_KEPT: usize = 512;

/// Bytes of one plugin log line, at most; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// Counters one plugin may have: each version keeps at most this many names, and the host's
/// metrics the series of at most this many over all the plugin's versions; further names are not
/// counted.
pub(crate) const MAX_COUNTERS: usize = 256;

/// Bytes of one counter name, at most; a longer name is not counted.
const MAX_COUNTER_NAME: usize = 128;

/// Lines one plugin version may log a second, over all its instances; more are
/// dropped (said at the first), and how many is said with its next line after
/// the second.
const LOG_LINES_PER_SECOND: u32 = 100;

/// What answers one plugin's host calls: a WASM instance has one, a native
/// library one for all its callers.
#[derive(Debug)]
pub(crate) struct HostCalls {
    settings: Arc<PluginSettings>,
    /// The last error the plugin logged in the current call: the SDK logs a
    /// panic's message just before the panic traps, so a trap can say why.
    pub(crate) last_error_logged: Option<String>,
}

impl HostCalls {
    /// Host calls of the plugin with `settings`.
    pub(crate) fn new(settings: Arc<PluginSettings>) -> HostCalls {
        HostCalls { settings, last_error_logged: None }
    }

    /// Write one log line attributed to the plugin, within its rate.
    pub(crate) fn log(&mut self, level: Level, message: &str) {
        if let Some(error) = self.log_line(level).and_then(|line| line.write(message)) {
            self.last_error_logged = Some(error);
        }
    }

    /// Take one line at `level` from the plugin's rate, before its text is read: `None` when the
    /// line is dropped and its text is not needed (an error's is, to explain a trap).
    pub(crate) fn log_line(&self, level: Level) -> Option<LogLine<'_>> {
        let plugin = self.settings.config.name.as_str();
        // One budget for every instance of the plugin (each worker's, each one renewed after a trap).
        let mut budget = self.settings.log_budget.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(dropped) = budget.roll(std::time::Instant::now()) {
            tracing::warn!(
                plugin,
                dropped,
                "log lines over the rate of {LOG_LINES_PER_SECOND} a second were dropped"
            );
        }
        let logged = match budget.spend() {
            Spent::Logged => true,
            // Said as the dropping starts: a plugin that then stops logging never has its count
            // told (that waits for its next line after the second).
            Spent::FirstDropped => {
                tracing::warn!(
                    plugin,
                    "log lines over the rate of {LOG_LINES_PER_SECOND} a second are dropped until the second is over"
                );
                false
            }
            Spent::Dropped => false,
        };
        (logged || level == Level::Error).then_some(LogLine { plugin, level, logged })
    }

    /// The plugin's config value for `key`.
    pub(crate) fn config(&self, key: &str) -> Option<String> {
        self.settings.config.config.get(key).cloned()
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub(crate) fn now_millis() -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |elapsed| elapsed.as_millis() as u64)
    }

    /// Add `delta` to the plugin's counter `name` at once, within the bounds, and keep it for the
    /// metrics ([`PluginSettings::report_counts`]): a count a native library makes outside any
    /// call (on a thread of its own). A call's counts wait for its answer ([`CallCounts`]).
    pub(crate) fn count(&self, name: &str, delta: u64) {
        count_in(&self.settings, name, delta);
    }
}

/// Add `delta` to counter `name` of `settings`, within the bounds.
fn count_in(settings: &PluginSettings, name: &str, delta: u64) {
    settings.count(name, delta, |names| names < MAX_COUNTERS && name.len() <= MAX_COUNTER_NAME);
}

/// What one plugin call counted, held until its caller took the answer: an answer found faulty
/// after the call (too many outputs, a malformed batch) is refused, and its batch's messages run
/// again one by one, so what the refused call counted must not count.
///
/// A counter committed keeps its entry, zeroed, so that counting it on the next call makes no
/// `String`; an instance holds at most [`MAX_COUNTERS`] names.
#[derive(Debug, Default)]
pub(crate) struct CallCounts(BTreeMap<String, u64>);

impl CallCounts {
    /// Hold `delta` more of counter `name`, saturating; a name the host would not count (too
    /// long, or new past [`MAX_COUNTERS`] names) is not held.
    pub(crate) fn add(&mut self, name: &str, delta: u64) {
        if let Some(total) = self.0.get_mut(name) {
            *total = total.saturating_add(delta);
        } else if self.0.len() < MAX_COUNTERS && name.len() <= MAX_COUNTER_NAME {
            self.0.insert(name.to_owned(), delta);
        }
    }

    /// Count what is held in the counters of `settings` and hold nothing more; whether anything
    /// was counted.
    pub(crate) fn commit(&mut self, settings: &PluginSettings) -> bool {
        let mut counted = false;
        for (name, total) in self.0.iter_mut().filter(|(_, total)| **total > 0) {
            count_in(settings, name, std::mem::take(total));
            counted = true;
        }
        counted
    }

    /// Drop what is held: the answer of the call that counted it was never taken. Its names go
    /// too, so that the names kept are those the plugin's counters were given.
    pub(crate) fn forget(&mut self) {
        self.0.retain(|_, total| *total == 0);
    }
}

/// One line a plugin logs, taken from its rate ([`HostCalls::log_line`]) before its text is read:
/// a line over the rate is dropped unread, unless it is an error, whose text is still kept.
pub(crate) struct LogLine<'a> {
    plugin: &'a str,
    level: Level,
    /// Whether the line is within the rate.
    logged: bool,
}

impl LogLine<'_> {
    /// Log `message` if the line is within the rate (one line of bounded length: the plugin cannot
    /// forge others); an error's text as kept to explain a trap.
    pub(crate) fn write(self, message: &str) -> Option<String> {
        let plugin = self.plugin;
        let message = crate::bounded_text::one_line(message, MAX_LOG_LINE);
        if self.logged {
            match self.level {
                Level::Trace => tracing::trace!(plugin, "{message}"),
                Level::Debug => tracing::debug!(plugin, "{message}"),
                Level::Info => tracing::info!(plugin, "{message}"),
                Level::Warn => tracing::warn!(plugin, "{message}"),
                Level::Error => tracing::error!(plugin, "{message}"),
            }
        }
        (self.level == Level::Error).then(|| crate::bounded_text::one_line(&message, MAX_ERROR_KEPT))
    }
}

/// A plugin's log lines in the current one-second window.
#[derive(Debug)]
pub(crate) struct LogBudget {
    window: std::time::Instant,
    lines: u32,
    /// Lines dropped in this window.
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget { window: std::time::Instant::now(), lines: 0, dropped: 0 }
    }
}

impl LogBudget {
    /// Start a new window once a second has passed since this one began;
    /// how many lines the ended window dropped, if any.
    fn roll(&mut self, now: std::time::Instant) -> Option<u64> {
        if now.duration_since(self.window) < std::time::Duration::from_secs(1) {
            return None;
        }
        let dropped = std::mem::replace(self, LogBudget { window: now, lines: 0, dropped: 0 }).dropped;
        (dropped > 0).then_some(dropped)
    }

    /// Whether one more line may be logged in this window (else it counts
    /// as dropped).
    fn spend(&mut self) -> Spent {
        if self.lines < LOG_LINES_PER_SECOND {
            self.lines += 1;
            return Spent::Logged;
        }
        self.dropped += 1;
        match self.dropped {
            1 => Spent::FirstDropped,
            _ => Spent::Dropped,
        }
    }
}

/// What became of one line under the budget.
#[derive(Debug, PartialEq)]
enum Spent {
    Logged,
    /// Dropped, the first of its window.
    FirstDropped,
    Dropped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginConfig;
    use std::sync::Mutex;

    #[test]
    fn log_lines_past_the_rate_are_dropped_and_counted_until_the_next_second() {
        let start = std::time::Instant::now();
        let mut budget = LogBudget { window: start, lines: 0, dropped: 0 };
        assert!((0..LOG_LINES_PER_SECOND).all(|_| budget.spend() == Spent::Logged));
        // The first dropped is told at once: a plugin that stopped logging then was never told of.
        assert_eq!((budget.spend(), budget.spend()), (Spent::FirstDropped, Spent::Dropped));
        assert_eq!(budget.roll(start + std::time::Duration::from_millis(999)), None, "still the same second");
        assert_eq!(
            budget.roll(start + std::time::Duration::from_secs(1)),
            Some(2),
            "said when the second ends"
        );
        assert_eq!(budget.spend(), Spent::Logged);
        assert_eq!((budget.lines, budget.dropped), (1, 0));
    }

    #[test]
    fn counts_reach_their_series_once_each_and_the_series_is_looked_up_once_per_name() {
        let settings = Arc::new(PluginSettings::new(PluginConfig::default()).unwrap());
        let calls = HostCalls::new(settings.clone());
        let (kept, lookups) = (prometheus_client::metrics::counter::Counter::<u64>::default(), Mutex::new(0));
        let series = |name: &str| {
            assert_eq!(name, "kept");
            *lookups.lock().unwrap() += 1;
            kept.clone()
        };
        calls.count("kept", 2);
        calls.count("kept", 1);
        settings.report_counts(series);
        assert_eq!(kept.get(), 3);
        settings.report_counts(series);
        assert_eq!(kept.get(), 3, "nothing new, nothing added");
        calls.count("kept", 4);
        settings.report_counts(series);
        assert_eq!((kept.get(), *lookups.lock().unwrap()), (7, 1));
        settings.forget_counts();
        calls.count("kept", 1);
        settings.report_counts(series);
        assert_eq!((kept.get(), *lookups.lock().unwrap()), (8, 2), "forgotten names are looked up again");
        assert_eq!(settings.counters()["kept"], 1, "the totals were forgotten too");
    }

    #[test]
    fn a_calls_counts_count_once_committed_and_never_once_forgotten() {
        let settings = PluginSettings::new(PluginConfig::default()).unwrap();
        let mut held = CallCounts::default();
        held.add("refused", 2);
        held.forget();
        held.add("taken", 1);
        held.add("taken", u64::MAX);
        held.add(&"x".repeat(MAX_COUNTER_NAME + 1), 1);
        assert!(settings.counters().is_empty(), "nothing counts before the commit");
        assert!(held.commit(&settings));
        assert_eq!(settings.counters(), [("taken".to_owned(), u64::MAX)].into());
        assert!(!held.commit(&settings), "a commit counts what was held once");
        assert_eq!(
            held.0.keys().collect::<Vec<_>>(),
            ["taken"],
            "a committed name is kept, a forgotten one not"
        );
        (0..MAX_COUNTERS * 2).for_each(|n| held.add(&format!("c{n}"), 1));
        assert_eq!(held.0.len(), MAX_COUNTERS);
    }

    #[test]
    fn the_instances_of_a_plugin_share_one_log_budget() {
        // Each worker's instance, and one renewed after a trap, had a budget of its own.
        let settings = Arc::new(PluginSettings::new(PluginConfig::default()).unwrap());
        let (mut first, mut renewed) = (HostCalls::new(settings.clone()), HostCalls::new(settings.clone()));
        (0..LOG_LINES_PER_SECOND).for_each(|n| first.log(Level::Info, &n.to_string()));
        renewed.log(Level::Info, "one too many");
        let budget = settings.log_budget.lock().unwrap();
        assert_eq!((budget.lines, budget.dropped), (LOG_LINES_PER_SECOND, 1));
    }

    #[test]
    fn a_line_over_the_rate_is_dropped_before_its_text_is_read_unless_it_is_an_error() {
        // Its text was copied whole (up to the memory cap) and escaped before the rate was looked at.
        let settings = Arc::new(PluginSettings::new(PluginConfig::default()).unwrap());
        let calls = HostCalls::new(settings.clone());
        assert!((0..LOG_LINES_PER_SECOND).all(|_| calls.log_line(Level::Info).is_some()));
        assert!(calls.log_line(Level::Info).is_none(), "dropped, its text never read");
        let error = calls.log_line(Level::Error).expect("an error's text is still kept");
        assert_eq!(error.write("panicked\nat"), Some("panicked\\nat".to_owned()), "kept, not logged");
        let budget = settings.log_budget.lock().unwrap();
        assert_eq!((budget.lines, budget.dropped), (LOG_LINES_PER_SECOND, 2));
    }

    #[test]
    fn counters_are_bounded_in_number_and_name_length_and_saturate() {
        let settings = Arc::new(PluginSettings::new(PluginConfig::default()).unwrap());
        let calls = HostCalls::new(settings.clone());
        for n in 0..300 {
            calls.count(&format!("c{n}"), 1);
        }
        calls.count(&"x".repeat(MAX_COUNTER_NAME + 1), 1);
        calls.count("c0", u64::MAX);
        let counters = settings.counters();
        assert_eq!(counters.len(), MAX_COUNTERS);
        assert!(counters.keys().all(|name| name.len() <= MAX_COUNTER_NAME));
        assert_eq!(counters["c0"], u64::MAX, "saturates, never wraps");
    }
}
