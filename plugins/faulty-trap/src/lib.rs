//! A test filter that panics. Plugins are built with `panic = "abort"`, so
//! the host sees a WebAssembly trap. Config key `trigger`: when set, only
//! messages carrying that header are poison (others are kept); when unset,
//! every message is.

use std::sync::LazyLock;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, export_filter};

struct FaultyTrap;

impl Filter for FaultyTrap {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if poisoned(message) {
            panic!("faulty-trap traps on message {}", message.id);
        }
        Ok(Verdict::Keep)
    }
}

/// Whether to misbehave on `message`: with config `trigger` set, only on
/// messages carrying that header; otherwise on every message.
fn poisoned(message: &Message<'_>) -> bool {
    static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
    TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some())
}

export_filter!(FaultyTrap);
