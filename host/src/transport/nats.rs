//! The `nats` transport: each message published to a NATS subject templated from its topic, over one
//! client connection per endpoint (a NATS server), kept and reconnected by `async-nats`.
//!
//! The payload is the NATS payload; the message's headers become NATS headers (`x-sy-id` among them),
//! plus `x-sy-topic`. NATS headers are a map: the order of values of one name is kept, the order
//! between names is not.
//!
//! An attempt cannot see whether its caller waits for a reply, so the destination says it:
//! - by default a message is **published**, then flushed (written to the server's connection); it is
//!   delivered once flushed, and gives no reply. Core NATS has no acknowledgement: a subject nobody
//!   subscribes to takes the message and drops it, and a connection lost once the flush is done can
//!   lose what the server had not yet read of it.
//! - with `reply = true` each message is a NATS **request**: the first answer is its reply (its
//!   headers and payload), delivered whether or not the sender waits for it. With no subscriber the
//!   server answers "no responders", and the message is retried (nobody took it). The replies to a
//!   client's requests all come to one subscription of its own, `_INBOX.<client's>.*`, each on the
//!   subject the request named, `_INBOX.<client's>.<id>`; a request is forgotten once its attempt
//!   ends, answered or not, and an answer that comes later is dropped.
//!
//! How an attempt fails: a connection that is not up sends nothing ([`RetryReason::Connect`]: not
//! counted as an attempt; the message waits for the server), and neither does a connect that the
//! attempt's deadline cut (a host that takes TCP and never answers the handshake); a publish whose
//! flush, or a request whose answer, does not come within the destination's per-attempt deadline may
//! have reached the server ([`RetryReason::Timeout`]: retried only when the destination is
//! `idempotent`), and so may a publish during which the client connected again: `async-nats` drops
//! what it had not yet written with the lost connection ([`RetryReason::Reset`], retried likewise);
//! no responders is [`RetryReason::NoResponders`]; a subject, header or payload NATS
//! refuses is [`FatalReason::Protocol`]. An answer larger than the host reads delivered the message
//! all the same: its reply is refused ([`Outcome::ReplyRefused`]). The health probe checks that the
//! endpoint's connection is up and flushes.

use super::SettingError;
use super::pending::Pending;
use super::pool::PoolStats;
use super::{
    AttemptFuture, AttemptProgress, AttemptResult, ProbeFuture, Step, Transport, TransportContext,
    TransportOptions,
};
use crate::config::{DestinationConfig, EndpointConfig, HealthSettings, subject_problem};
use crate::message::{Message, TOPIC_HEADER};
use crate::resilience::{FatalReason, Outcome, RetryReason};
use async_nats::client::PublishErrorKind;
use async_nats::connection::State;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use tokio_util::sync::{CancellationToken, DropGuard};

/// `options = {..}` of a `nats` destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsOptions {
    /// The subject a message is published to; `{topic}` in it is replaced by the message's topic,
    /// e.g. `"orders.{topic}"`.
    pub subject: String,
    /// Whether each message is a request whose first answer is its reply (see the module docs);
    /// by default it is published and gives no reply.
    #[serde(default)]
    pub reply: bool,
}

impl TransportOptions for NatsOptions {
    fn endpoints(&self, listed: &[EndpointConfig]) -> Result<Vec<EndpointConfig>, SettingError> {
        // A topic is a valid subject, so checking the template with one in place checks them all.
        if let Some(problem) = subject_problem(&self.subject.replace("{topic}", "topic"), false) {
            let problem = format!("subject: {problem}");
            return Err(SettingError { field: "options", value: format!("{:?}", self.subject), problem });
        }
        match listed.is_empty() {
            true => Err(SettingError {
                field: "endpoints",
                value: "\"[]\"".into(),
                problem: "a nats destination needs at least one server, \"host:port\"".into(),
            }),
            false => Ok(listed.to_vec()),
        }
    }
}

/// The `nats` transport of `destination`; replies up to the host's largest message.
pub(super) fn build(
    options: NatsOptions,
    _destination: &DestinationConfig,
    context: &TransportContext,
) -> Arc<dyn Transport> {
    Arc::new(NatsTransport::new(options).max_reply_bytes(context.max_message_bytes))
}

/// Publishes (or requests) through one NATS client per endpoint; see the module docs.
pub struct NatsTransport {
    options: NatsOptions,
    /// The client of each endpoint, connected at its first attempt; a failed connect is tried
    /// again at the next one. Once connected, `async-nats` reconnects it for as long as it lives.
    clients: Mutex<HashMap<String, Arc<OnceCell<Connection>>>>,
    /// Largest reply payload taken; a larger one is refused (the message was delivered).
    max_reply_bytes: usize,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport").field("options", &self.options).finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// A transport with `options`, taking replies up to the default `host.max_message_bytes`.
    pub fn new(options: NatsOptions) -> NatsTransport {
        let max_reply_bytes = crate::config::HostSection::default().max_message_bytes;
        NatsTransport { options, clients: Mutex::default(), max_reply_bytes }
    }

    /// Take reply payloads of at most `bytes`; a larger reply is refused (the message was delivered).
    pub fn max_reply_bytes(mut self, bytes: usize) -> NatsTransport {
        self.max_reply_bytes = bytes;
        self
    }

    /// Requests sent to `address` that wait for their replies now: one whose attempt ended,
    /// answered or cut by its deadline, is no longer among them.
    pub fn requests_awaiting_reply(&self, address: &str) -> usize {
        let clients = self.clients.lock().unwrap_or_else(|poison| poison.into_inner());
        let connection = clients.get(address).and_then(|cell| cell.get());
        connection
            .and_then(|connection| connection.replies.as_ref())
            .map_or(0, |replies| replies.pending.count())
    }

    /// The connection of `address`, connected now if it is not yet.
    async fn connection(&self, address: &str) -> Result<Connection, String> {
        let cell = {
            let mut clients = self.clients.lock().unwrap_or_else(|poison| poison.into_inner());
            clients.entry(address.to_owned()).or_default().clone()
        };
        let connection = cell.get_or_try_init(|| connect(address, self.options.reply)).await;
        connection.cloned()
    }

    /// The connection of `address` if it is up now; else why nothing can be sent.
    async fn connected(&self, address: &str) -> Result<Connection, String> {
        let connection = self.connection(address).await?;
        match connection.client.connection_state() {
            State::Connected => Ok(connection),
            state => Err(format!("not connected to the NATS server ({state})")),
        }
    }

    async fn send(&self, address: &str, message: &Message) -> AttemptResult {
        let refused = |problem| (Outcome::Retryable(RetryReason::Connect), problem);
        // Until the client is connected nothing can have been sent: a deadline that cuts the connect
        // (async-nats's own gives up after 5 s) is a connect failure.
        AttemptProgress::mark_current(Step::Connecting);
        let Connection { client, replies } = self.connected(address).await.map_err(refused)?;
        AttemptProgress::mark_current(Step::MaySend);
        let subject = self.options.subject.replace("{topic}", &message.topic);
        let headers =
            headers_of(message).map_err(|problem| (Outcome::Fatal(FatalReason::Protocol), problem))?;
        let payload = message.payload.clone();
        let Some(replies) = replies else {
            // async-nats drops what it has not yet written when it loses a connection, and a flush
            // waiting then completes on the next one, whose count goes up before: a connection made
            // between the publish and the flush's end may have lost the message.
            let statistics = client.statistics();
            let connects = statistics.connects.load(Ordering::Relaxed);
            client.publish_with_headers(subject, headers, payload).await.map_err(publish_failure)?;
            let lost = |err| (Outcome::Retryable(RetryReason::Reset), format!("flush: {err}"));
            client.flush().await.map_err(lost)?;
            if statistics.connects.load(Ordering::Relaxed) != connects {
                let problem = "connection made again while sending: may not have gone out";
                return Err((Outcome::Retryable(RetryReason::Reset), problem.into()));
            }
            return Ok(None);
        };
        // Waiting before the request goes out: its answer may come at once.
        let mut waiting = replies
            .pending
            .wait()
            .ok_or_else(|| refused("the client's replies are no longer read".into()))?;
        let reply_to = format!("{}.{}", replies.inbox, waiting.id);
        let request = client.publish_with_reply_and_headers(subject.clone(), reply_to, headers, payload);
        request.await.map_err(publish_failure)?;
        // The request may have gone out before the client stopped.
        let closed = || (Outcome::Retryable(RetryReason::Reset), "request: the client closed".to_owned());
        let answer = waiting.answer().await.ok_or_else(closed)?;
        if answer.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            let problem = format!("no responders on subject {subject}");
            return Err((Outcome::Retryable(RetryReason::NoResponders), problem));
        }
        if answer.payload.len() > self.max_reply_bytes {
            // A responder answered: it took the message.
            let problem = format!("a reply of more than {} bytes", self.max_reply_bytes);
            return Err((Outcome::ReplyRefused, problem));
        }
        // The host's own headers among them are dropped where the host takes the reply.
        let headers = answer.headers.iter().flat_map(|headers| headers.iter()).flat_map(|(name, values)| {
            values.iter().map(move |value| (name.to_string(), value.as_str().to_owned()))
        });
        Ok(Some(Message {
            id: message.id,
            topic: message.topic.clone(),
            headers: headers.collect(),
            payload: answer.payload,
            priority: message.priority,
        }))
    }
}

impl Transport for NatsTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.send(address, message))
    }

    /// The endpoint's client is connected (connecting it if it is new) and a flush goes through.
    /// Everything to a NATS server shares that one connection, so its state is what an attempt sees.
    fn probe<'a>(&'a self, address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(async move {
            let connection = self.connected(address).await?;
            connection.client.flush().await.map_err(|err| format!("flush: {err}"))
        })
    }

    /// One connection per endpoint, in use by every attempt: `size` 1 while it is up, else 0.
    fn pool_stats(&self, address: &str) -> Option<PoolStats> {
        let clients = self.clients.lock().unwrap_or_else(|poison| poison.into_inner());
        let connection = clients.get(address)?.get()?;
        let size = usize::from(connection.client.connection_state() == State::Connected);
        Some(PoolStats { size, idle: 0, in_use: size, waits: 0 })
    }
}

/// One endpoint's client, with the replies to its requests when it makes them.
#[derive(Clone)]
struct Connection {
    client: async_nats::Client,
    /// With `reply = true`: where the client's replies come to.
    replies: Option<Arc<Replies>>,
}

/// The replies to one client's requests (see the module docs).
struct Replies {
    /// The subject a request's reply subject is made of: `<inbox>.<id>`, its id in `pending`.
    inbox: String,
    /// The requests waiting for their replies, by id: each attempt forgets its own as it ends.
    pending: Arc<Pending<async_nats::Message>>,
    /// Stops the task reading the replies once the transport is gone: its subscription holds the
    /// client's connection open.
    _reading: DropGuard,
}

/// The connection to the NATS server at `address` (`host:port`): a client that never gives up
/// reconnecting, and with `replies`, the subscription its replies come to.
async fn connect(address: &str, replies: bool) -> Result<Connection, String> {
    let client = async_nats::ConnectOptions::new()
        .name("switchyard")
        .max_reconnects(None)
        // The endpoints are the servers the operator listed: a cluster's others are not ours to add.
        .ignore_discovered_servers()
        .connect(address)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    if !replies {
        return Ok(Connection { client, replies: None });
    }
    let inbox = client.new_inbox();
    let subscriber =
        client.subscribe(format!("{inbox}.*")).await.map_err(|err| format!("subscribe: {err}"))?;
    let (pending, stop) = (Arc::new(Pending::default()), CancellationToken::new());
    tokio::spawn(read_replies(subscriber, format!("{inbox}."), pending.clone(), stop.clone()));
    let replies = Replies { inbox, pending, _reading: stop.drop_guard() };
    Ok(Connection { client, replies: Some(Arc::new(replies)) })
}

/// Hand each reply of `subscriber` to the request waiting for it in `pending` (by the id its
/// subject ends with, after `prefix`) until `stop`; one nobody waits for is dropped.
async fn read_replies(
    mut subscriber: async_nats::Subscriber,
    prefix: String,
    pending: Arc<Pending<async_nats::Message>>,
    stop: CancellationToken,
) {
    while let Some(Some(reply)) = stop.run_until_cancelled(subscriber.next()).await {
        if let Some(id) = reply.subject.strip_prefix(&prefix).and_then(|id| id.parse().ok()) {
            pending.answer(id, reply);
        }
    }
    // The client closed for good (or the transport is gone): those waiting learn it.
    pending.close();
}

/// `message`'s headers as NATS headers, with `x-sy-topic` (replacing one the message carried); what
/// NATS refuses of them, if anything.
fn headers_of(message: &Message) -> Result<async_nats::HeaderMap, String> {
    let mut headers = async_nats::HeaderMap::new();
    let theirs = message.headers.iter().filter(|(name, _)| !name.eq_ignore_ascii_case(TOPIC_HEADER));
    let topic = [(TOPIC_HEADER, message.topic.as_str())];
    let all = theirs.map(|(name, value)| (name.as_str(), value.as_str())).chain(topic);
    for (name, value) in all {
        let name = async_nats::HeaderName::try_from(name)
            .map_err(|_| format!("header name {name:?} is not a NATS header name"))?;
        let value = value
            .parse::<async_nats::HeaderValue>()
            .map_err(|_| format!("header {name} holds a line break: not a NATS header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// How a publish the client refused is classified: nothing went out either way.
fn publish_failure(err: async_nats::PublishError) -> (Outcome, String) {
    let outcome = match err.kind() {
        PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject => {
            Outcome::Fatal(FatalReason::Protocol)
        }
        // The client is gone: the message never reached its queue.
        PublishErrorKind::Send => Outcome::Retryable(RetryReason::Connect),
    };
    (outcome, format!("publish: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_attempt_cut_while_the_connect_waits_for_the_servers_info_was_connecting() {
        let address = crate::transport::silent_listener().await;
        let transport = NatsTransport::new(NatsOptions { subject: "jobs".into(), reply: false });
        let progress = AttemptProgress::default();
        let message = Message::new("jobs", "one");
        let attempt = progress.scope(transport.attempt(&address, &message));
        let cut = tokio::time::timeout(Duration::from_millis(200), attempt).await;
        assert!(cut.is_err(), "the silent host never sends INFO: {cut:?}");
        assert_eq!(progress.abandon(), Step::Connecting, "nothing was sent");
    }
}
