//! A transform for JSON payloads: redacts fields, adds one, splits arrays.
//!
//! Config keys (all optional):
//! - `fields`: comma-separated field names; every field of that name, at any
//!   depth, gets the value `"[redacted]"`.
//! - `add_field`: `name=value`; adds the top-level string field `name` to
//!   every output whose payload is a JSON object.
//! - `split_array`: a top-level field name; when that field holds an array,
//!   the message becomes one output per element, whose payload is the
//!   element (an empty array: no output). Otherwise the message stays whole.
//!
//! Order: redact, then split, then add the field to each output. Every
//! output carries the header `x-transformed-by: redact-transform`. A payload
//! that is not JSON is rejected.

use std::sync::LazyLock;

use serde_json::Value;
use switchyard_plugin::{Error, Message, Output, Transform, config, export_transform};

struct RedactTransform;

/// The plugin's configuration, read once per instance.
struct Settings {
    fields: Vec<String>,
    add_field: Option<Result<(String, String), Error>>,
    split_array: Option<String>,
}

static SETTINGS: LazyLock<Settings> = LazyLock::new(|| Settings {
    fields: config("fields")
        .map(|list| list.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default(),
    add_field: config("add_field").map(|pair| match pair.split_once('=') {
        Some((name, value)) => Ok((name.trim().to_owned(), value.to_owned())),
        None => Err(Error::failed(format!("config key `add_field` must be `name=value`, got {pair:?}"))),
    }),
    split_array: config("split_array"),
});

impl Settings {
    fn redact(&self, value: &mut Value) {
        match value {
            Value::Object(object) => {
                for (name, field) in object.iter_mut() {
                    if self.fields.iter().any(|redacted| redacted == name) {
                        *field = Value::from("[redacted]");
                    } else {
                        self.redact(field);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact(item)),
            _ => {}
        }
    }

    /// The `add_field` pair, or the config error that every message reports.
    fn added_field(&self) -> Result<Option<(&str, &str)>, Error> {
        match &self.add_field {
            None => Ok(None),
            Some(Ok((name, value))) => Ok(Some((name, value))),
            Some(Err(error)) => Err(error.clone()),
        }
    }

    /// The documents to emit: the split array's elements, or the whole one.
    fn split(&self, mut document: Value) -> Vec<Value> {
        let items = self.split_array.as_ref().and_then(|name| document.get_mut(name));
        match items {
            Some(Value::Array(items)) => std::mem::take(items),
            _ => vec![document],
        }
    }
}

impl Transform for RedactTransform {
    fn transform(message: &Message<'_>, out: &mut Output) -> Result<(), Error> {
        let settings = &*SETTINGS;
        let added = settings.added_field()?;
        let parsed = match message.payload_text() {
            Some(text) => serde_json::from_str(text),
            // Not UTF-8 (or no payload): the bytes, for the parser's own error.
            None => serde_json::from_slice(message.payload.unwrap_or_default()),
        };
        let mut document: Value =
            parsed.map_err(|error| Error::rejected(format!("payload is not JSON: {error}")))?;
        settings.redact(&mut document);
        for mut document in settings.split(document) {
            if let (Some((name, value)), Value::Object(object)) = (added, &mut document) {
                object.insert(name.to_owned(), Value::from(value));
            }
            let bytes = serde_json::to_vec(&document).map_err(|error| Error::failed(error.to_string()))?;
            out.emit(message)
                .with_payload(&bytes)
                .with_header("x-transformed-by", "redact-transform")
                .finish();
        }
        Ok(())
    }
}

export_transform!(RedactTransform);
