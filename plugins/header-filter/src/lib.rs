//! A filter that keeps messages by topic prefix and by header.
//!
//! Config keys (all optional; an unset key imposes nothing):
//! - `topic_prefix`: keep only messages whose topic starts with it.
//! - `require_header`: keep only messages carrying this header (name
//!   compared ASCII case-insensitively).
//! - `require_value`: ...and only when that header has exactly this value.
//!   Setting it without `require_header` fails every message.
//!
//! Counters: `kept`, `dropped`.

use std::sync::LazyLock;

use switchyard_plugin::{Error, Filter, Message, Verdict, config, count, export_filter};

struct HeaderFilter;

/// The plugin's configuration, read once per instance.
struct Settings {
    topic_prefix: Option<String>,
    require_header: Option<String>,
    require_value: Option<String>,
}

static SETTINGS: LazyLock<Settings> = LazyLock::new(|| Settings {
    topic_prefix: config("topic_prefix"),
    require_header: config("require_header"),
    require_value: config("require_value"),
});

impl Settings {
    fn keeps(&self, message: &Message<'_>) -> Result<bool, Error> {
        if let Some(prefix) = &self.topic_prefix
            && !message.topic.starts_with(prefix.as_str())
        {
            return Ok(false);
        }
        let value = match (&self.require_header, &self.require_value) {
            (None, None) => return Ok(true),
            (None, Some(_)) => {
                return Err(Error::failed("config key `require_value` needs `require_header`"));
            }
            (Some(name), _) => message.header(name),
        };
        Ok(match (value, &self.require_value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(value), Some(required)) => value == required,
        })
    }
}

impl Filter for HeaderFilter {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if SETTINGS.keeps(message)? {
            count("kept", 1);
            Ok(Verdict::Keep)
        } else {
            count("dropped", 1);
            Ok(Verdict::Drop)
        }
    }
}

export_filter!(HeaderFilter);
