//! A test filter that allocates 1 MiB chunks, touching and keeping every
//! one, until allocation fails (which aborts: a trap) or the host's memory
//! cap stops it. Config key `trigger`: when set, only messages carrying that
//! header are poison (others are kept); when unset, every message is.
//! Config key `leak_kib`: when set, every message that is not poison makes
//! the plugin keep that many KiB for good before it is kept (a slow leak).

use std::hint::black_box;
use std::sync::LazyLock;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, export_filter};

struct FaultyMemoryHog;

const CHUNK: usize = 1 << 20;

impl Filter for FaultyMemoryHog {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if !poisoned(message) {
            static LEAK: LazyLock<usize> =
                LazyLock::new(|| config("leak_kib").and_then(|kib| kib.parse().ok()).unwrap_or(0));
            std::mem::forget(black_box(vec![1u8; *LEAK << 10]));
            return Ok(Verdict::Keep);
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(black_box(vec![1; CHUNK]));
            black_box(&hoard);
        }
    }
}

/// Whether to misbehave on `message`: with config `trigger` set, only on
/// messages carrying that header; otherwise on every message.
fn poisoned(message: &Message<'_>) -> bool {
    static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
    TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some())
}

export_filter!(FaultyMemoryHog);
