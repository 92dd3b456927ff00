//! The native twins of the benchmarked plugins: the same work in plain Rust.

use super::*;

/// The native twin of `header-filter` with `require_header=x-tenant`, `require_value=acme`.
pub(super) fn native_filter(message: &Message) -> Result<Verdict, PluginError> {
    Ok(if message.header("x-tenant") == Some("acme") { Verdict::Keep } else { Verdict::Drop })
}

/// The native twin of `redact-transform` with `fields=card`.
pub(super) fn native_transform(message: &Message) -> Result<Vec<Message>, PluginError> {
    fn redact(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(object) => {
                object.iter_mut().for_each(|(name, field)| match name == "card" {
                    true => *field = serde_json::Value::from("[redacted]"),
                    false => redact(field),
                })
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    // As the plugin parses: the text once checked as UTF-8, then its strings unchecked.
    let parsed = match std::str::from_utf8(&message.payload) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(&message.payload),
    };
    let mut document: serde_json::Value =
        parsed.map_err(|err| PluginError::Rejected(format!("payload is not JSON: {err}")))?;
    redact(&mut document);
    let payload = serde_json::to_vec(&document).map_err(|err| PluginError::Failed(err.to_string()))?;
    let mut output = message.clone();
    output.payload = payload.into();
    output.set_header("x-transformed-by", TRANSFORM);
    Ok(vec![output])
}

/// The native twin of `stamp-transform` with `stamp=stamp-transform`.
pub(super) fn native_stamp(message: &Message) -> Result<Vec<Message>, PluginError> {
    let mut output = message.clone();
    output.set_header("x-stamp", STAMP);
    Ok(vec![output])
}
