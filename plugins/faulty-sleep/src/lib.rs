//! A test filter that sleeps: on a message carrying the header named by
//! config key `trigger` (or every message, when unset) it sleeps `sleep_ms`
//! milliseconds (config key, default 10 000) — waiting inside WASI, where
//! epoch interruption cannot reach — then keeps it.

use std::sync::LazyLock;
use std::time::Duration;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, export_filter};

struct FaultySleep;

impl Filter for FaultySleep {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
        static SLEEP: LazyLock<u64> =
            LazyLock::new(|| config("sleep_ms").and_then(|ms| ms.parse().ok()).unwrap_or(10_000));
        if TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some()) {
            std::thread::sleep(Duration::from_millis(*SLEEP));
        }
        Ok(Verdict::Keep)
    }
}

export_filter!(FaultySleep);
