//! Unit-test plugins natively, without a host: `cargo test` in a plugin crate.
//!
//! Outside WebAssembly, and with no host having loaded the library, the host
//! functions answer from a test double kept per thread (each `#[test]` runs
//! on its own thread, so tests do not see each other's): [`config`](crate::config)
//! reads what [`set_config`] set, [`count`](crate::count) adds to what
//! [`counter`] reads (within the host's bounds: 256 names of up to 128
//! bytes, totals that stop at `u64::MAX`), [`log`](crate::log) records what
//! [`logs`] returns, and [`now_millis`](crate::now_millis) answers
//! [`set_now_millis`]'s time (0 until set). A native library a host loaded
//! reaches that host instead, as ever.
//!
//! [`TestMessage`] builds the [`Message`] a trait method takes, with its
//! payload (as transforms get it) or heads only (as filters get it).
//!
//! ```
//! use switchyard_plugin::testing::{self, TestMessage};
//! use switchyard_plugin::{Error, Filter, Message, OwnedMessage, Verdict, config, count};
//!
//! struct TenantFilter;
//!
//! impl Filter for TenantFilter {
//!     fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
//!         let tenant = config("tenant").ok_or_else(|| Error::failed("`tenant` is unset"))?;
//!         let keep = message.header("x-tenant") == Some(tenant.as_str());
//!         count(if keep { "kept" } else { "dropped" }, 1);
//!         Ok(if keep { Verdict::Keep } else { Verdict::Drop })
//!     }
//! }
//!
//! testing::set_config("tenant", "acme");
//! let acme = TestMessage::head(&OwnedMessage::new("orders").with_header("x-tenant", "acme"));
//! assert_eq!(TenantFilter::filter(&acme.message()), Ok(Verdict::Keep));
//! assert_eq!(testing::counter("kept"), 1);
//! ```
//!
//! Settings a plugin keeps in a process-wide `static` (a `LazyLock`) are read
//! once per test process, by whichever test calls first: set such config in
//! the one test that uses it, or keep settings per thread (`thread_local!`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use switchyard_wire::{Head, Payload, decode, write_message};

use crate::{Level, Message, OwnedMessage};

/// What the test double holds for the current thread.
#[derive(Default)]
struct Double {
    config: BTreeMap<String, String>,
    counters: BTreeMap<String, u64>,
    logs: Vec<(Level, String)>,
    now_millis: u64,
}

thread_local! {
    static DOUBLE: RefCell<Double> = RefCell::default();
}

/// Set this plugin's config key `key` to `value` for the current thread.
pub fn set_config(key: &str, value: &str) {
    crate::host::forget_config(key);
    DOUBLE.with_borrow_mut(|double| double.config.insert(key.to_owned(), value.to_owned()));
}

/// Unset config key `key` for the current thread.
pub fn unset_config(key: &str) {
    crate::host::forget_config(key);
    DOUBLE.with_borrow_mut(|double| double.config.remove(key));
}

/// The total the plugin has [`count`](crate::count)ed under `name` on this thread.
pub fn counter(name: &str) -> u64 {
    crate::host::flush_counts();
    DOUBLE.with_borrow(|double| double.counters.get(name).copied().unwrap_or(0))
}

/// The lines the plugin has logged on this thread, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    DOUBLE.with_borrow(|double| double.logs.clone())
}

/// Make [`now_millis`](crate::now_millis) answer `millis` on this thread.
pub fn set_now_millis(millis: u64) {
    DOUBLE.with_borrow_mut(|double| double.now_millis = millis);
}

/// Forget everything set and recorded on this thread: config, counters, logs, clock.
pub fn reset() {
    crate::host::flush_counts();
    DOUBLE.with_borrow_mut(|double| {
        for key in double.config.keys() {
            crate::host::forget_config(key);
        }
        *double = Double::default();
    });
}

/// One message encoded as the host would pass it, to hand a trait method a [`Message`].
#[derive(Debug, Clone)]
pub struct TestMessage {
    batch: Vec<u8>,
}

impl TestMessage {
    /// `message` with its payload, as transforms, middleware and transports get it.
    pub fn full(message: &OwnedMessage) -> TestMessage {
        TestMessage::encode(message, Payload::Bytes(message.payload()))
    }

    /// `message` heads only (payload size, no bytes), as filters and balancers get it.
    pub fn head(message: &OwnedMessage) -> TestMessage {
        TestMessage::encode(message, Payload::Omitted(message.payload().len()))
    }

    fn encode(message: &OwnedMessage, payload: Payload<'_>) -> TestMessage {
        let mut batch = Vec::new();
        let head = Head { id: message.id(), source: 0, priority: message.priority(), topic: message.topic() };
        write_message(&mut batch, &head, message.headers(), payload);
        TestMessage { batch }
    }

    /// The message, borrowed from this encoding.
    pub fn message(&self) -> Message<'_> {
        let decoded = decode(&self.batch).next().expect("a TestMessage holds one message");
        decoded.expect("a TestMessage is well formed")
    }
}

/// The test double's side of the host functions, called by the native
/// backend when no host has loaded the library.
pub(crate) mod host {
    use super::DOUBLE;
    use crate::Level;
    use crate::host::MAX_COUNTERS;

    pub(crate) fn log(level: Level, message: &str) {
        DOUBLE.with_borrow_mut(|double| double.logs.push((level, message.to_owned())));
    }

    pub(crate) fn config(key: &str) -> Option<String> {
        DOUBLE.with_borrow(|double| double.config.get(key).cloned())
    }

    pub(crate) fn now_millis() -> u64 {
        DOUBLE.with_borrow(|double| double.now_millis)
    }

    /// Counted as the host counts: a total saturates at `u64::MAX`, and a
    /// name past the host's first [`MAX_COUNTERS`] is not counted.
    pub(crate) fn count(name: &str, delta: u64) {
        DOUBLE.with_borrow_mut(|double| {
            let counters = &mut double.counters;
            if let Some(total) = counters.get_mut(name) {
                *total = total.saturating_add(delta);
            } else if counters.len() < MAX_COUNTERS {
                counters.insert(name.to_owned(), delta);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_set_in_a_test_reaches_the_plugin_and_can_be_changed_or_unset() {
        set_config("tenant", "acme");
        assert_eq!(crate::config("tenant").as_deref(), Some("acme"));
        set_config("tenant", "other");
        assert_eq!(crate::config("tenant").as_deref(), Some("other"));
        unset_config("tenant");
        assert_eq!(crate::config("tenant"), None);
    }

    #[test]
    fn counters_logs_and_the_clock_are_read_back_and_reset() {
        crate::count("kept", 2);
        crate::count("kept", 3);
        crate::warn("careful");
        set_now_millis(1_700_000_000_000);
        assert_eq!((counter("kept"), counter("dropped")), (5, 0));
        assert_eq!(logs(), [(Level::Warn, "careful".to_owned())]);
        assert_eq!(crate::now_millis(), 1_700_000_000_000);
        reset();
        assert_eq!((counter("kept"), logs().len(), crate::now_millis()), (0, 0, 0));
    }

    #[test]
    fn counters_saturate_and_stop_at_the_hosts_number_of_names_as_the_hosts_do() {
        crate::count("huge", u64::MAX);
        assert_eq!(counter("huge"), u64::MAX);
        crate::count("huge", 5);
        assert_eq!(counter("huge"), u64::MAX);
        // "huge" and 255 more names, as the host keeps; the next is not counted.
        for name in 0..crate::host::MAX_COUNTERS {
            crate::count(&format!("n{name}"), 1);
        }
        assert_eq!((counter("n254"), counter("n255")), (1, 0));
    }

    #[test]
    fn a_test_message_is_full_or_heads_only_as_the_host_would_pass_it() {
        let owned = OwnedMessage::new("orders").with_header("x-tenant", "acme").with_payload(b"{}".to_vec());
        let full = TestMessage::full(&owned);
        let head = TestMessage::head(&owned);
        assert_eq!(
            (full.message().payload, full.message().header("X-Tenant")),
            (Some(&b"{}"[..]), Some("acme"))
        );
        assert_eq!((head.message().payload, head.message().payload_len), (None, 2));
    }
}
