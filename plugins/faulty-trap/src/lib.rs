//! A test filter that panics. Plugins are built with `panic = "abort"`, so
//! the host sees a WebAssembly trap. Config key `trigger`: when set, only
//! messages carrying that header are poison (others are kept); when unset,
//! every message is. Config key `panic_bytes`: when set, the panic's text is
//! padded to that many bytes with lines of `x` (a plugin that panics with a
//! huge, many-line message).
//!
//! A message carrying the header `x-reserve` first has the plugin ask for
//! 1 GiB with `try_reserve`, past any memory cap: the refusal is counted as
//! `refused_reserves` and the plugin goes on (a plugin that handles running
//! out of memory).

use std::hint::black_box;
use std::sync::LazyLock;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, count, export_filter};

struct FaultyTrap;

impl Filter for FaultyTrap {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if message.header("x-reserve").is_some() {
            let mut reserved = Vec::<u8>::new();
            // `black_box` keeps the optimizer from taking the unused allocation for granted.
            if black_box(&mut reserved).try_reserve(1 << 30).is_err() {
                count("refused_reserves", 1);
            }
            black_box(reserved);
        }
        if poisoned(message) {
            panic!("faulty-trap traps on message {}{}", message.id, padding());
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

/// What config `panic_bytes` asks to follow the panic's text: that many bytes of lines of `x`.
fn padding() -> &'static str {
    static PADDING: LazyLock<String> = LazyLock::new(|| {
        let bytes = config("panic_bytes").and_then(|bytes| bytes.parse().ok()).unwrap_or(0);
        (0..bytes).map(|at| if at % 64 == 0 { '\n' } else { 'x' }).collect()
    });
    &PADDING
}

export_filter!(FaultyTrap);
