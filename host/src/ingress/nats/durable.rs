//! The durable consumer a JetStream ingress pulls through: joined when it exists with this host's
//! settings, made when it does not, refused when it exists with other settings.
//!
//! Hosts naming one durable share it, so its settings are theirs together: were a host to put its
//! own `ack_wait_ms` on it, hosts reporting progress at the old one would have their messages
//! delivered again meanwhile (a storm of copies); its own `max_ack_pending` would change the flow
//! of all; its own filter subject would have them all take other subjects. A host never changes
//! them: one whose config differs refuses to start, naming the settings that differ.

use crate::config::JetStreamConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer::AckPolicy, consumer::PullConsumer};
use std::time::Duration;

/// Find `wanted`'s stream through `context` and join its durable consumer, made with `wanted`'s
/// settings if it does not exist; one that exists with other settings is an error naming them.
pub(super) async fn join(
    context: &jetstream::Context,
    wanted: &JetStreamConsumer<'_>,
) -> Result<PullConsumer, String> {
    let stream = context.get_stream(wanted.stream).await.map_err(|err| err.to_string())?;
    match stream.consumer_info(wanted.durable).await {
        Ok(info) => {
            let differences = differences(wanted, &info.config);
            if !differences.is_empty() {
                return Err(format!(
                    "the durable consumer {:?} exists with other settings than this host's: {}; hosts on \
                     one durable share its settings, so this host does not change them (make its config \
                     agree, or stop the hosts on it and delete it: nats consumer rm {} {})",
                    wanted.durable,
                    differences.join(", "),
                    wanted.stream,
                    wanted.durable,
                ));
            }
            // Joined as it is: the server's copy, with what an operator set beyond these settings.
            stream.get_consumer(wanted.durable).await.map_err(|err| err.to_string())
        }
        // A host making it at the same moment with other settings would have them overwritten by
        // this create-or-update: a create that refuses an existing consumer needs servers from 2.10
        // (async-nats' `create_consumer_strict`, feature `server_2_10`; the tests' server is 2.9).
        Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => {
            stream.create_consumer(pull_config(wanted)).await.map_err(|err| err.to_string())
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The consumer `wanted` describes: durable, explicitly acknowledged, pulled.
fn pull_config(wanted: &JetStreamConsumer<'_>) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(wanted.durable.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_millis(wanted.ack_wait_ms),
        max_ack_pending: i64::from(wanted.max_ack_pending),
        filter_subject: wanted.filter_subject.unwrap_or_default().to_owned(),
        ..Default::default()
    }
}

/// The settings of the existing consumer `existing` that differ from `wanted`'s, each as
/// `ack_wait_ms 2000 (this host: 5000)`, in the config's words.
fn differences(wanted: &JetStreamConsumer<'_>, existing: &jetstream::consumer::Config) -> Vec<String> {
    let mut differences = Vec::new();
    if let Some(subject) = &existing.deliver_subject {
        differences.push(format!("deliver_subject {subject:?} (a push consumer; this host pulls)"));
    }
    if existing.ack_policy != AckPolicy::Explicit {
        differences.push(format!("ack_policy {:?} (this host: Explicit)", existing.ack_policy));
    }
    if existing.ack_wait != Duration::from_millis(wanted.ack_wait_ms) {
        let ack_wait_ms = existing.ack_wait.as_secs_f64() * 1000.0;
        differences.push(format!("ack_wait_ms {ack_wait_ms} (this host: {})", wanted.ack_wait_ms));
    }
    if existing.max_ack_pending != i64::from(wanted.max_ack_pending) {
        let existing = existing.max_ack_pending;
        differences.push(format!("max_ack_pending {existing} (this host: {})", wanted.max_ack_pending));
    }
    // Several filters (servers from 2.10) are not read by this client (no `server_2_10` feature).
    let filter = Some(existing.filter_subject.as_str()).filter(|subject| !subject.is_empty());
    if filter != wanted.filter_subject {
        let [filter, wanted] = [filter, wanted.filter_subject].map(Vec::from_iter);
        differences.push(format!("subjects {filter:?} (this host: {wanted:?})"));
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::consumer::IntoConsumerConfig;

    fn wanted() -> JetStreamConsumer<'static> {
        JetStreamConsumer {
            stream: "ORDERS",
            durable: "switchyard",
            filter_subject: Some("orders.eu.>"),
            ack_wait_ms: 2000,
            max_ack_pending: 100,
        }
    }

    #[test]
    fn a_consumer_made_with_a_hosts_settings_differs_in_none_of_them() {
        let made = pull_config(&wanted()).into_consumer_config();
        assert_eq!(differences(&wanted(), &made), Vec::<String>::new());
    }

    #[test]
    fn each_setting_that_differs_is_named_with_both_values() {
        let other =
            JetStreamConsumer { filter_subject: None, ack_wait_ms: 5000, max_ack_pending: 7, ..wanted() };
        let existing = pull_config(&other).into_consumer_config();
        assert_eq!(
            differences(&wanted(), &existing),
            [
                "ack_wait_ms 5000 (this host: 2000)",
                "max_ack_pending 7 (this host: 100)",
                "subjects [] (this host: [\"orders.eu.>\"])",
            ]
        );
    }
}
