//! A transform that stamps every message with the header `x-stamp` and leaves
//! the rest alone. The hot-reload tests swap it with `redact-transform` to
//! tell which version handled a message.
//!
//! Config key: `stamp`, the header's value (default `stamp-transform`).

use std::sync::LazyLock;

use switchyard_plugin::{Error, Message, Output, Transform, config, export_transform};

struct Stamp;

/// Read from the host once per instance.
static STAMP: LazyLock<String> =
    LazyLock::new(|| config("stamp").unwrap_or_else(|| "stamp-transform".into()));

impl Transform for Stamp {
    fn transform(message: &Message<'_>, out: &mut Output) -> Result<(), Error> {
        out.emit(message).with_header("x-stamp", &STAMP).finish();
        Ok(())
    }
}

export_transform!(Stamp);
