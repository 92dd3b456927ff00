//! A test transform that floods: a message carrying the header named by
//! config key `trigger` (or every message, when unset) becomes `copies`
//! copies of itself (config key, default 1 000 000), each with `pad` bytes
//! (config key, default 0) added to its payload and `headers` headers
//! (config key, default 0) added; others pass unchanged. With config key
//! `count_topics` set (to anything), each message also counts 1 under a
//! counter named by its topic: a plugin that counts ever new names.

use std::sync::LazyLock;

use switchyard_plugin::{Error, Message, Output, Transform, config, count, export_transform};

struct FaultyFlood;

static COPIES: LazyLock<usize> =
    LazyLock::new(|| config("copies").and_then(|copies| copies.parse().ok()).unwrap_or(1_000_000));

impl Transform for FaultyFlood {
    fn transform(message: &Message<'_>, out: &mut Output) -> Result<(), Error> {
        static COUNT_TOPICS: LazyLock<bool> = LazyLock::new(|| config("count_topics").is_some());
        if *COUNT_TOPICS {
            count(message.topic, 1);
        }
        static TRIGGER: LazyLock<Option<String>> = LazyLock::new(|| config("trigger"));
        let flood = TRIGGER.as_deref().is_none_or(|name| message.header(name).is_some());
        static PAD: LazyLock<usize> =
            LazyLock::new(|| config("pad").and_then(|pad| pad.parse().ok()).unwrap_or(0));
        if !flood {
            out.emit(message).finish();
            return Ok(());
        }
        static HEADERS: LazyLock<usize> =
            LazyLock::new(|| config("headers").and_then(|count| count.parse().ok()).unwrap_or(0));
        let mut payload = message.payload.unwrap_or_default().to_vec();
        payload.resize(payload.len() + *PAD, b'x');
        for _ in 0..*COPIES {
            let copy = out.emit(message).with_payload(&payload);
            (0..*HEADERS).fold(copy, |copy, n| copy.with_header(&format!("x-h{n}"), "v")).finish();
        }
        Ok(())
    }
}

export_transform!(FaultyFlood);
