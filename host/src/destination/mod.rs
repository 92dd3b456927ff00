//! Destinations: where routed messages are delivered.
//!
//! In-process destinations (memory, log, closures) take each message in
//! place. Network destinations are [`Cluster`]s of endpoints reached through
//! a [`Transport`](crate::transport::Transport) (balancing, breakers,
//! retries, deadlines), fed from a bounded [`DeliveryQueue`] in priority order.

mod cluster;
mod held_events;
mod log;
mod memory;
mod plugin_balancer;
mod queue;
mod retrying;
mod slots;
mod streams;

pub use cluster::Cluster;
pub(crate) use cluster::{HandedOver, QueuedDestination, StreamTurn};
pub(crate) use held_events::HeldEvents;
pub use log::LogDestination;
pub use memory::MemoryDestination;
pub use queue::{DeliveryQueue, PushError, Queued};
pub(crate) use retrying::Retrying;
pub(crate) use slots::{Slot, Slots};
pub use streams::{EndpointStreams, StreamCheck, StreamFinding, StreamStatus, StreamsSummary};

use crate::message::Message;
use std::future::Future;
use std::pin::Pin;

/// What a delivery returns: the destination's reply, if it gives one.
pub type DeliveryResult = Result<Option<Message>, DeliveryError>;

/// The future of one delivery.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = DeliveryResult> + Send + 'a>>;

/// Why a destination could not take a message, or ([`ReplyRefused`](DeliveryError::ReplyRefused))
/// took it and answered with a reply the host refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A transient failure; a retry may succeed.
    #[error("delivery failed, retryable: {0}")]
    Retryable(String),
    /// A permanent failure.
    #[error("delivery failed: {0}")]
    Fatal(String),
    /// A destination tried `attempts` times and gave up: its last attempt
    /// failed for good (`fatal`, not retried), or the retries ran out.
    /// Attempts count only what reached an endpoint: a refused connection or
    /// a wait for a free connection is not one.
    #[error(
        "delivery failed{}: gave up after {attempts} attempt{}{}; last: {last_error}",
        if *fatal { "" } else { ", retryable" },
        if *attempts == 1 { "" } else { "s" },
        if *maybe_delivered { ", and it may have been delivered (sent, no answer)" } else { "" }
    )]
    Attempts {
        /// How many attempts reached an endpoint.
        attempts: u32,
        /// The last failure's error, after its endpoint's address.
        last_error: String,
        /// Whether the last error was final rather than worth a retry: the
        /// endpoint refused the message (`refused`), or it answered a failure
        /// worth a retry that is not safe to make (a 5xx, a 408, no answer: the
        /// destination is not `idempotent`, and the endpoint may have taken it).
        fatal: bool,
        /// Whether the endpoint refused the message for good (a 4xx, a
        /// plugin's `rejected`, a message its protocol cannot carry): sent
        /// again, it would be refused again.
        refused: bool,
        /// Whether an attempt went out and got no answer (a timeout, a
        /// reset), so an endpoint may have taken the message (a destination
        /// that is not `idempotent` does not send it again).
        maybe_delivered: bool,
    },
    /// The host shut down before the delivery started, past its grace period.
    #[error("the host shut down before it was delivered (past host.shutdown_grace_ms)")]
    Shutdown,
    /// The host shut down while the delivery was under way, past its grace
    /// period: an attempt may have reached an endpoint, which may have taken it.
    #[error(
        "the host shut down while its delivery was under way (past host.shutdown_grace_ms): it may have been delivered"
    )]
    ShutdownInFlight,
    /// The destination panicked while taking the message.
    #[error("the destination panicked: {0}")]
    Panicked(String),
    /// The message waited past its queue timeout, in the destination's
    /// queue or for an endpoint able to take it, and was never sent.
    #[error("waited {waited_ms} ms in the queue, past its timeout; not sent{}", last_try(last_error))]
    QueueTimeout {
        /// How long it waited, milliseconds.
        waited_ms: u64,
        /// Why the last try to reach an endpoint failed (a refused connection, a full pool), if
        /// one was made.
        last_error: Option<String>,
    },
    /// The message waited past its queue timeout in the destination's queue for its stream's
    /// turn (`affinity:header:KEY`): a message of its stream was in flight. Never sent, and not
    /// handed to the destination's fallback, which would send it beside that one.
    #[error("waited {waited_ms} ms in the queue for its stream's turn, past its timeout; not sent")]
    TurnTimeout {
        /// How long it waited, milliseconds.
        waited_ms: u64,
    },
    /// A destination handed the message as a fallback had no room for it (a memory destination
    /// not read, a network one's queue full) within the deadline of an attempt of the destination
    /// that handed it over (`timeout_ms`), or a memory dead-letter destination none for a dead
    /// letter within the default `timeout_ms`: never taken.
    #[error("no room for it within {waited_ms} ms (full); not taken")]
    NoRoom {
        /// How long it waited for room, milliseconds.
        waited_ms: u64,
    },
    /// A destination delivered to in place (`log`, one registered in code), handed the message as
    /// a fallback, did not answer within the deadline of an attempt of the destination that handed
    /// it over (`timeout_ms`), or handed a dead letter, within the default `timeout_ms`: it may
    /// have taken it.
    #[error("not answered within {waited_ms} ms; it may have been delivered")]
    NotAnswered {
        /// How long it waited for the answer, milliseconds.
        waited_ms: u64,
    },
    /// A config reload replaced or removed the destination while the message
    /// waited for one of its endpoints, none of which it had reached: a
    /// replaced destination's new instance takes it over; a removed one's is
    /// dead-lettered `destination-removed`.
    #[error("its destination was removed by a config reload before it was sent")]
    Retired,
    /// Delivered: an endpoint took the message, but its reply cannot be used (larger than the host
    /// reads, malformed, cut off, not read within the attempt's deadline or before a shutdown's
    /// grace period ended); why, after the endpoint's address when an attempt refused it. Not a
    /// failure: the message counts as delivered and is neither retried nor dead-lettered; a
    /// requester gets [`RequestError::ReplyRefused`](crate::RequestError::ReplyRefused).
    #[error("delivered, but its reply was refused: {0}")]
    ReplyRefused(String),
}

/// ` (the last try: ERROR)` when a try was made.
fn last_try(last_error: &Option<String>) -> String {
    last_error.as_ref().map(|error| format!(" (the last try: {error})")).unwrap_or_default()
}

/// A place messages are delivered to.
pub trait Destination: Send + Sync + 'static {
    /// Called once per message routed here, after every stage has run. A destination registered
    /// in code is delivered to in place, by the worker that ran the message's stages, and the
    /// worker waits for the future: one that never completes holds that worker (and the messages
    /// behind it) until the host stops. Bound what it waits on (a timeout that answers
    /// [`DeliveryError::Retryable`] or an error) as the host's own transports do.
    fn deliver(&self, message: Message) -> DeliveryFuture<'_>;

    /// The memory destination this is, if it is one: the host hands it each message itself, not
    /// a copy kept for the dead-letter path, and has the message back whole if it cannot be
    /// delivered. Only [`MemoryDestination`] answers; other destinations keep the default.
    #[doc(hidden)]
    fn as_memory(&self) -> Option<&MemoryDestination> {
        None
    }

    /// Whether [`deliver`](Destination::deliver) may answer [`DeliveryError::Retryable`]: a
    /// destination delivered to in place is then wrapped in the host's retries, which keep a copy
    /// of each message for the next attempt. One that never does (the default says it may) is
    /// delivered to without them.
    fn may_answer_retryable(&self) -> bool {
        true
    }

    /// Messages taken from its queue that wait for an endpoint able to take them (all refusing,
    /// ejected or down): for the admin API and the metrics, still queued. Destinations without a
    /// queue have none.
    fn waiting(&self) -> usize {
        0
    }

    /// The state of the destination's endpoints, for the admin API; called
    /// on demand. Destinations without endpoints have none.
    fn endpoints(&self) -> Vec<EndpointStatus> {
        Vec::new()
    }

    /// What keeps it from delivering as configured now, whatever its endpoints' state (a transport
    /// or balancer plugin not loaded, or not of its kind), for `GET /ready`; called on demand. None
    /// by default.
    fn unavailable(&self) -> Vec<String> {
        Vec::new()
    }

    /// The summary of its stream table (`affinity:header:KEY` destinations only), for the admin API
    /// and the metrics; called on demand.
    fn streams(&self) -> Option<StreamsSummary> {
        None
    }

    /// At most `limit` streams of its table, the most recently active first; `None` without one.
    fn stream_table(&self, _limit: usize) -> Option<Vec<StreamStatus>> {
        None
    }

    /// Runs the consistency check of its stream table now; `None` without one.
    fn verify_streams(&self) -> Option<StreamCheck> {
        None
    }
}

/// What the admin API shows of one destination.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct DestinationStatus {
    /// The destination's name.
    pub name: String,
    /// Messages waiting in its queue, or taken from it to wait for an endpoint able to take
    /// them (network destinations only).
    pub queued: Option<usize>,
    /// Its endpoints (network destinations only).
    pub endpoints: Vec<EndpointStatus>,
    /// Its streams (`affinity:header:KEY` destinations only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamsSummary>,
}

impl DestinationStatus {
    /// Whether it can take traffic: it has no endpoints, or at least one
    /// neither down by health checks, nor ejected by its breaker, nor
    /// refusing connections.
    pub fn serving(&self) -> bool {
        self.endpoints.is_empty() || self.endpoints.iter().any(EndpointStatus::serving)
    }
}

impl EndpointStatus {
    /// Whether it takes the next message: neither down by health checks, nor
    /// ejected by its breaker, nor refusing; a half-open breaker lets the
    /// next message through as its probe.
    pub fn serving(&self) -> bool {
        self.health != "down" && self.breaker != "open" && !self.refusing
    }

    /// Whether it is up: serving, and its breaker closed, not half-open
    /// waiting for the probe that brings it back (an ejected endpoint is down
    /// from its `endpoint-down` event to its `endpoint-up`). What
    /// `switchyard_endpoint_serving` shows.
    pub fn up(&self) -> bool {
        self.serving() && self.breaker == "closed"
    }
}

/// What the admin API shows of one endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint's address.
    pub address: String,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// `up` or `down` by health checks, `unchecked` without them.
    pub health: &'static str,
    /// The weight `weighted` and `p2c-ewma` balance by: 100 times
    /// `configured_weight`, less while it slowly starts after coming back.
    pub weight: u32,
    /// Its weight as configured (1 unless given).
    pub configured_weight: u32,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Whether it refused its last connection, within its breaker's first
    /// ejection (`breaker.open_ms`), or its last answer asked for a pause
    /// (`Retry-After`) not over yet: it gets no traffic until then.
    pub refusing: bool,
    /// Its connection pool, once the transport made one.
    pub pool: Option<crate::transport::PoolStats>,
    /// Its peak-EWMA latency estimate, milliseconds.
    pub latency_ms: f64,
}

/// Something that changed in a destination; a [`HostEvent`](crate::HostEvent)
/// of its own, with the same JSON form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DestinationEvent {
    /// An endpoint stopped getting traffic: its health checks found it down or its breaker ejected
    /// it. Told once until it is up again, however many of the two took it out.
    EndpointDown {
        /// The destination.
        destination: String,
        /// The endpoint's address.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// An endpoint that was down gets traffic again: its health checks (if any) find it up and its
    /// breaker is closed, whichever of the two came back last ([`EndpointStatus::up`]).
    EndpointUp {
        /// The destination.
        destination: String,
        /// The endpoint's address.
        endpoint: String,
    },
    /// An endpoint told down that a reload removed, from its destination or with it: it is down
    /// no more, and nothing more is told of it. One removed while up is told nothing.
    EndpointRemoved {
        /// The destination.
        destination: String,
        /// The endpoint's address.
        endpoint: String,
    },
    /// Messages of the destination go to its fallback: none of its endpoints could take them in time.
    /// Told once per spell (again after 10 s without a fallback); each message is counted.
    #[serde(rename = "destination-fallback")]
    Fallback {
        /// The destination.
        destination: String,
        /// Its fallback destination.
        fallback: String,
        /// Why.
        reason: String,
    },
    /// A stream of an `affinity:header:KEY` destination moved to another endpoint.
    StreamMigrated {
        /// The destination.
        destination: String,
        /// The stream's key (the header's value).
        stream: String,
        /// The endpoint it left.
        from: String,
        /// The endpoint it went to.
        to: String,
        /// Why: `endpoint down`, `endpoint removed`, `rebalance` or `consistency check`.
        reason: String,
    },
    /// The destination's balancer plugin could not pick; p2c picked instead.
    BalancerFallback {
        /// The destination.
        destination: String,
        /// The balancer plugin's name.
        plugin: String,
        /// Why.
        reason: String,
    },
}

impl DestinationEvent {
    /// The event's kebab-case name, as in its JSON form.
    pub fn name(&self) -> &'static str {
        match self {
            DestinationEvent::EndpointDown { .. } => "endpoint-down",
            DestinationEvent::EndpointUp { .. } => "endpoint-up",
            DestinationEvent::EndpointRemoved { .. } => "endpoint-removed",
            DestinationEvent::BalancerFallback { .. } => "balancer-fallback",
            DestinationEvent::Fallback { .. } => "destination-fallback",
            DestinationEvent::StreamMigrated { .. } => "stream-migrated",
        }
    }
}

/// What network destinations use of their host.
#[derive(Clone)]
pub(crate) struct HostServices {
    /// Where they tell what changed in them.
    pub(crate) events: EventSink,
    /// Where they count.
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The plugins serving, for `plugin:NAME` balancers.
    pub(crate) registry: std::sync::Arc<crate::plugin::PluginRegistry>,
    /// The engine plugins run in.
    pub(crate) engine: std::sync::Arc<crate::plugin::PluginEngine>,
}

/// Where destinations tell what changed in them.
pub type EventSink = std::sync::Arc<dyn Fn(DestinationEvent) + Send + Sync>;

impl<F, Fut> Destination for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = DeliveryResult> + Send + 'static,
{
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(self(message))
    }
}

#[cfg(test)]
mod tests {
    use super::DestinationEvent;

    #[test]
    fn every_event_is_named_in_its_json_as_in_its_metric() {
        let (destination, text) = (String::from("d"), String::from("x"));
        let events = [
            DestinationEvent::EndpointDown {
                destination: destination.clone(),
                endpoint: text.clone(),
                reason: text.clone(),
            },
            DestinationEvent::EndpointUp { destination: destination.clone(), endpoint: text.clone() },
            DestinationEvent::EndpointRemoved { destination: destination.clone(), endpoint: text.clone() },
            DestinationEvent::Fallback {
                destination: destination.clone(),
                fallback: text.clone(),
                reason: text.clone(),
            },
            DestinationEvent::StreamMigrated {
                destination: destination.clone(),
                stream: text.clone(),
                from: text.clone(),
                to: text.clone(),
                reason: text.clone(),
            },
            DestinationEvent::BalancerFallback { destination, plugin: text.clone(), reason: text },
        ];
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event"], event.name(), "{json}");
        }
    }
}
