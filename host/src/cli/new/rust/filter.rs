//! {{name}}: a Switchyard filter plugin.
//!
//! Config key `topic_prefix`: keep only messages whose topic starts with it
//! (unset: keep everything). Counters: `kept`, `dropped`.

use switchyard_plugin::{Error, Filter, Message, Verdict, config, count, export_filter};

struct Plugin;

/// Whether a message on `topic` passes a filter configured with `prefix`.
fn keeps(topic: &str, prefix: Option<&str>) -> bool {
    prefix.is_none_or(|prefix| topic.starts_with(prefix))
}

impl Filter for Plugin {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        if keeps(message.topic, config("topic_prefix").as_deref()) {
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
    use super::keeps;

    #[test]
    fn keeps_topics_under_the_prefix_and_everything_without_one() {
        assert!(keeps("orders.eu", Some("orders.")));
        assert!(!keeps("billing.eu", Some("orders.")));
        assert!(keeps("billing.eu", None));
    }
}
