//! {{name}}: a Switchyard filter plugin.
//!
//! Config key `topic_prefix`: keep only messages whose topic starts with it
//! (unset: keep everything). Counters: `kept`, `dropped`.

use switchyard_plugin::{Error, Filter, Message, Verdict, config, count, export_filter};

struct Plugin;

impl Filter for Plugin {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        let prefix = config("topic_prefix");
        if prefix.is_none_or(|prefix| message.topic.starts_with(&prefix)) {
            count("kept", 1);
            Ok(Verdict::Keep)
        } else {
            count("dropped", 1);
            Ok(Verdict::Drop)
        }
    }
}

export_filter!(Plugin);

#[cfg(test)]
mod tests {
    use switchyard_plugin::testing::{self, TestMessage};
    use switchyard_plugin::{Filter, OwnedMessage, Verdict};

    use super::Plugin;

    #[test]
    fn keeps_topics_under_the_configured_prefix_and_counts_both_outcomes() {
        testing::set_config("topic_prefix", "orders.");
        let decide = |topic: &str| Plugin::filter(&TestMessage::head(&OwnedMessage::new(topic)).message());
        assert_eq!(decide("orders.eu"), Ok(Verdict::Keep));
        assert_eq!(decide("billing.eu"), Ok(Verdict::Drop));
        assert_eq!((testing::counter("kept"), testing::counter("dropped")), (1, 1));
    }
}
