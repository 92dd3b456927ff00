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

#[cfg(test)]
mod tests {
    use switchyard_plugin::OwnedMessage;
    use switchyard_plugin::testing::{self, TestMessage};

    use super::*;

    fn decide(message: OwnedMessage) -> Result<Verdict, Error> {
        HeaderFilter::filter(&TestMessage::head(&message).message())
    }

    // One test: the settings are a process-wide static, read on the first call.
    #[test]
    fn keeps_messages_with_the_prefix_and_the_required_header_value_and_counts_both_outcomes() {
        testing::set_config("topic_prefix", "orders.");
        testing::set_config("require_header", "x-tenant");
        testing::set_config("require_value", "acme");
        let acme =
            OwnedMessage::new("orders.eu").with_header("X-Tenant", "acme").with_payload(b"{}".to_vec());
        assert_eq!(decide(acme.clone()), Ok(Verdict::Keep));
        assert_eq!(decide(acme.clone().with_topic("audit")), Ok(Verdict::Drop));
        assert_eq!(decide(acme.with_header("x-tenant", "other")), Ok(Verdict::Drop));
        assert_eq!(decide(OwnedMessage::new("orders.us")), Ok(Verdict::Drop));
        assert_eq!((testing::counter("kept"), testing::counter("dropped")), (1, 3));
    }
}
