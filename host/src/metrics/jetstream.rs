//! What the metrics show of JetStream ingress: messages pulled, by what became of their
//! acknowledgement, and messages the server delivered again.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamResult {
    stream: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamName {
    stream: String,
}

/// What became of a message pulled from a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pulled {
    /// Settled, then acknowledged.
    Acked,
    /// Refused for good (oversized, malformed): terminated, never delivered again.
    Terminated,
    /// Handed back (nak'ed) for another host: not admitted now (the host is stopping, the spool
    /// cannot write), or admitted and not delivered when the host's stop gave up on it.
    Nacked,
    /// Admitted, but not settled while this host served (a lost dead letter, a stop), or its
    /// answer could not be sent: left unacknowledged, so the server delivers it again after
    /// `ack_wait_ms`.
    Unacked,
}

impl Pulled {
    fn label(self) -> &'static str {
        match self {
            Pulled::Acked => "acked",
            Pulled::Terminated => "terminated",
            Pulled::Nacked => "nacked",
            Pulled::Unacked => "unacked",
        }
    }
}

/// JetStream ingress metric families (registered always; empty without a stream).
#[derive(Clone, Debug, Default)]
pub(crate) struct JetStreamMetrics {
    messages: Family<StreamResult, Counter>,
    redelivered: Family<StreamName, Counter>,
}

impl JetStreamMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        let help = "Messages pulled from a JetStream stream, by result (acked, terminated, nacked, unacked)";
        registry.register("jetstream_messages", help, self.messages.clone());
        let help = "Messages a JetStream stream delivered again (an earlier delivery was not acknowledged)";
        registry.register("jetstream_redelivered", help, self.redelivered.clone());
    }

    /// A message pulled from `stream` ended as `result`.
    pub(crate) fn pulled(&self, stream: &str, result: Pulled) {
        let labels = StreamResult { stream: stream.to_owned(), result: result.label().to_owned() };
        self.messages.get_or_create(&labels).inc();
    }

    /// `stream` delivered a message again.
    pub(crate) fn redelivered(&self, stream: &str) {
        self.redelivered.get_or_create(&StreamName { stream: stream.to_owned() }).inc();
    }
}
