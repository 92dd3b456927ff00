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
//!   server answers "no responders", and the message is retried (nobody took it).
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
use super::pool::PoolStats;
use super::{
    AttemptFuture, AttemptProgress, AttemptResult, ProbeFuture, Step, Transport, TransportContext,
    TransportOptions,
};
use crate::config::{DestinationConfig, EndpointConfig, HealthSettings, subject_problem};
use crate::message::{Message, TOPIC_HEADER};
use crate::resilience::{FatalReason, Outcome, RetryReason};
use async_nats::client::{PublishErrorKind, RequestErrorKind};
use async_nats::connection::State;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

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
    clients: Mutex<HashMap<String, Arc<OnceCell<async_nats::Client>>>>,
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

    /// The client of `address`, connected now if it is not yet.
    async fn client(&self, address: &str) -> Result<async_nats::Client, String> {
        let cell = {
            let mut clients = self.clients.lock().unwrap_or_else(|poison| poison.into_inner());
            clients.entry(address.to_owned()).or_default().clone()
        };
        let client = cell.get_or_try_init(|| connect(address)).await;
        client.cloned().map_err(|err| format!("connect: {err}"))
    }

    /// The client of `address` if it is connected now; else why nothing can be sent.
    async fn connected(&self, address: &str) -> Result<async_nats::Client, String> {
        let client = self.client(address).await?;
        match client.connection_state() {
            State::Connected => Ok(client),
            state => Err(format!("not connected to the NATS server ({state})")),
        }
    }

    async fn send(&self, address: &str, message: &Message) -> AttemptResult {
        let refused = |problem| (Outcome::Retryable(RetryReason::Connect), problem);
        // Until the client is connected nothing can have been sent: a deadline that cuts the connect
        // (async-nats's own gives up after 5 s) is a connect failure.
        AttemptProgress::mark_current(Step::Connecting);
        let client = self.connected(address).await.map_err(refused)?;
        AttemptProgress::mark_current(Step::MaySend);
        let subject = self.options.subject.replace("{topic}", &message.topic);
        let headers =
            headers_of(message).map_err(|problem| (Outcome::Fatal(FatalReason::Protocol), problem))?;
        let payload = message.payload.clone();
        if !self.options.reply {
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
        }
        let answer = client.request_with_headers(subject.clone(), headers, payload).await;
        let answer = answer.map_err(|err| match err.kind() {
            RequestErrorKind::NoResponders => {
                (Outcome::Retryable(RetryReason::NoResponders), format!("no responders on subject {subject}"))
            }
            RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                (Outcome::Fatal(FatalReason::Protocol), format!("request: {err}"))
            }
            RequestErrorKind::TimedOut => {
                (Outcome::Retryable(RetryReason::Timeout), format!("request: {err}"))
            }
            // The request may have gone out before the connection failed.
            RequestErrorKind::Other => (Outcome::Retryable(RetryReason::Reset), format!("request: {err}")),
        })?;
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
            let client = self.connected(address).await?;
            client.flush().await.map_err(|err| format!("flush: {err}"))
        })
    }

    /// One connection per endpoint, in use by every attempt: `size` 1 while it is up, else 0.
    fn pool_stats(&self, address: &str) -> Option<PoolStats> {
        let clients = self.clients.lock().unwrap_or_else(|poison| poison.into_inner());
        let client = clients.get(address)?.get()?;
        let size = usize::from(client.connection_state() == State::Connected);
        Some(PoolStats { size, idle: 0, in_use: size, waits: 0 })
    }
}

/// A client of the NATS server at `address` (`host:port`) that never gives up reconnecting and
/// leaves request deadlines to the destination.
async fn connect(address: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("switchyard")
        .request_timeout(None)
        .max_reconnects(None)
        // The endpoints are the servers the operator listed: a cluster's others are not ours to add.
        .ignore_discovered_servers()
        .connect(address)
        .await
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
