//! A test filter that never returns: it spins until the host's deadline
//! interrupts it. Config key `trigger`: when set, only messages carrying that
//! header are poison (others are kept); when unset, every message is.

use std::hint::black_box;
use std::sync::LazyLock;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, export_filter};

struct FaultySpin;

impl Filter for FaultySpin {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if !poisoned(message) {
            return Ok(Verdict::Keep);
        }
        let mut turns = 0_u64;
        // `black_box` keeps the optimizer from proving the loop useless.
        loop {
            turns = black_box(turns.wrapping_add(1));
        }
    }
}

/// Whether to misbehave on `message`: with config `trigger` set, only on
/// messages carrying that header; otherwise on every message.
fn poisoned(message: &Message<'_>) -> bool {
    static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
    TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some())
}

export_filter!(FaultySpin);
