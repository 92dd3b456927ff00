//! Switchyard's `header-filter` (plugins/header-filter/src/lib.rs) as an
//! Extism plugin, for the comparison in issue 16.
//!
//! Input: a batch in Switchyard's wire layout (plugin-sdk/wire), the same
//! bytes the Switchyard host hands its filter: heads only, the payload
//! replaced by its length. Output: one verdict byte per message, 1 keep, 0 drop.
//!
//! - `filter`: exactly one message in, one byte out.
//! - `filter_batch`: any number of messages in (the bench sends 64), one byte each out.
//!
//! Config keys, read once per instance from the manifest's config as the
//! Switchyard plugin reads its own once per instance: `topic_prefix`,
//! `require_header` (ASCII case-insensitive name), `require_value`.
//!
//! Counters: like the Switchyard SDK, `kept`/`dropped` are summed inside the
//! plugin and reach the host in one host call at the end of each export call
//! (`count(kept, dropped)`, two i64s; Switchyard's SDK makes one host call per
//! non-zero counter, passing the counter's name as a string).

use std::sync::OnceLock;

use extism_pdk::{Error, FnResult, WithReturnCode, config, plugin_fn};

#[link(wasm_import_module = "extism:host/user")]
unsafe extern "C" {
    /// The host adds `kept` and `dropped` to its counters.
    fn count(kept: u64, dropped: u64);
}

struct Settings {
    topic_prefix: Option<String>,
    require_header: Option<String>,
    require_value: Option<String>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| {
        let get = |key: &str| config::get(key).ok().flatten();
        Settings {
            topic_prefix: get("topic_prefix"),
            require_header: get("require_header"),
            require_value: get("require_value"),
        }
    })
}

impl Settings {
    /// The same decision, in the same order, as the Switchyard plugin's `keeps`.
    fn keeps(&self, message: &switchyard_wire::MessageRef<'_>) -> Result<bool, Error> {
        if let Some(prefix) = &self.topic_prefix
            && !message.topic.starts_with(prefix.as_str())
        {
            return Ok(false);
        }
        let value = match (&self.require_header, &self.require_value) {
            (None, None) => return Ok(true),
            (None, Some(_)) => return Err(Error::msg("config key `require_value` needs `require_header`")),
            (Some(name), _) => message.header(name),
        };
        Ok(match (value, &self.require_value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(value), Some(required)) => value == required,
        })
    }
}

/// One verdict byte per message of `batch`; the counters reported once.
fn verdicts(batch: &[u8], expected: Option<usize>) -> FnResult<Vec<u8>> {
    let settings = settings();
    let mut out = Vec::with_capacity(expected.unwrap_or(64));
    let (mut kept, mut dropped) = (0u64, 0u64);
    for message in switchyard_wire::decode(batch) {
        let message = message.map_err(|error| Error::msg(error.to_string()))?;
        if settings.keeps(&message)? {
            kept += 1;
            out.push(1);
        } else {
            dropped += 1;
            out.push(0);
        }
    }
    if let Some(expected) = expected
        && out.len() != expected
    {
        return Err(WithReturnCode::new(Error::msg(format!("{} messages, expected {expected}", out.len())), 1));
    }
    if kept + dropped > 0 {
        // SAFETY: a host import taking two integers; the host defines it.
        unsafe { count(kept, dropped) };
    }
    Ok(out)
}

/// One message in, one verdict byte out.
#[plugin_fn]
pub fn filter(input: Vec<u8>) -> FnResult<Vec<u8>> {
    verdicts(&input, Some(1))
}

/// A batch in, one verdict byte per message out.
#[plugin_fn]
pub fn filter_batch(input: Vec<u8>) -> FnResult<Vec<u8>> {
    verdicts(&input, None)
}
