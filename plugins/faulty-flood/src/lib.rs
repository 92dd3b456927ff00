//! A test transform that floods: a message carrying the header named by
//! config key `trigger` (or every message, when unset) becomes `copies`
//! copies of itself (config key, default 1 000 000); others pass unchanged.

use std::sync::LazyLock;

use switchyard_plugin::{Error, Message, Output, Transform, config, export_transform};

struct FaultyFlood;

static COPIES: LazyLock<usize> =
    LazyLock::new(|| config("copies").and_then(|copies| copies.parse().ok()).unwrap_or(1_000_000));

impl Transform for FaultyFlood {
    fn transform(message: &Message<'_>, out: &mut Output) -> Result<(), Error> {
        static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
        let flood = TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some());
        let copies = if flood { *COPIES } else { 1 };
        for _ in 0..copies {
            out.emit(message).finish();
        }
        Ok(())
    }
}

export_transform!(FaultyFlood);
