//! The `redis` transport: each message pushed onto a list (`RPUSH`, `LPUSH`) or added to a stream
//! (`XADD`) on one of the destination's Redis servers, the key templated from the message's topic.
//!
//! A list gets the payload. A stream entry gets the fields `payload`, `topic` and each header (`x-sy-id`
//! included, for consumers to deduplicate); a message with a header named `payload` or `topic` is not
//! written but dead-lettered naming it ([`FatalReason::Protocol`]): the entry would hold that field
//! twice, and a reader taking it as a map would take the header's value for the message's. The reply is
//! the server's answer as text: the list's new length, or the entry's id; an answer past the host's
//! `max_message_bytes` (with the topic) delivered the message all the same: its reply is refused
//! ([`Outcome::ReplyRefused`]). No answer is read past that and 1 KiB for its framing ([`limit`]): the
//! connection is closed, and the answer delivered the message, its reply refused, as a shorter one; an
//! error answer that long dead-letters it with the error's start ([`FatalReason::Rejected`]). One
//! multiplexed connection per endpoint, opened by the first attempt and again by the first attempt after the
//! server closed it (a connection seen closed is never sent on) or after an attempt's deadline cut it
//! waiting for its answer (an answer so slow may be one without end: the connection is closed once
//! no attempt waits on it any more); the health probe `PING`s on a fresh connection. The
//! destination's `timeout_ms` is the only deadline: the redis crate's own connect and answer timeouts
//! are off.
//!
//! An attempt that never got a connection sent nothing: a refused connection, a connect or handshake
//! that failed or that the attempt's deadline cut (a host that takes TCP and never answers) is a
//! connect failure ([`RetryReason::Connect`]; a handshake the server answered with an error or an
//! answer too long, [`RetryReason::Handshake`]). A connection lost with the command out is uncertain; `LOADING`, `BUSY`
//! (a script runs), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `OOM` (`maxmemory` reached
//! with no eviction), `MISCONF` (writes stopped: the server cannot persist) and `NOREPLICAS` (too few
//! replicas for a write) answers are retried (the server did not take it); any other error answer
//! dead-letters the message with it.

mod limit;

use super::tcp::{Unread, unread};
use super::{
    AttemptFuture, AttemptProgress, AttemptResult, ProbeFuture, Step, Transport, TransportContext,
    TransportOptions, reply_within,
};
use crate::config::{DestinationConfig, HealthSettings};
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use limit::{AnswerTooLong, LimitedStream};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use std::collections::HashMap;
use std::sync::Arc;

/// `options = {..}` of a `redis` destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisOptions {
    /// `rpush` (the default), `lpush` or `xadd`.
    #[serde(default)]
    pub command: RedisCommand,
    /// The key; `{topic}` in it is replaced by the message's topic, e.g. `"jobs:{topic}"`.
    pub key: String,
    /// `xadd` only: trim the stream to about this many entries (`MAXLEN ~ N`).
    pub max_len: Option<u64>,
}

/// What a `redis` destination does with each message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisCommand {
    /// Append the payload to a list.
    #[default]
    Rpush,
    /// Prepend the payload to a list.
    Lpush,
    /// Add an entry to a stream.
    Xadd,
}

impl TransportOptions for RedisOptions {}

/// The `redis` transport of `destination`; no connection opens before the first attempt.
pub(super) fn build(
    options: RedisOptions,
    destination: &DestinationConfig,
    context: &TransportContext,
) -> Arc<dyn Transport> {
    let servers = destination.endpoints.iter().map(|endpoint| (endpoint.address.clone(), Server::default()));
    let max_reply_bytes = context.max_message_bytes;
    Arc::new(RedisTransport { options, servers: servers.collect(), max_reply_bytes })
}

/// Redis servers taking messages; see the module docs.
#[derive(Debug)]
pub struct RedisTransport {
    options: RedisOptions,
    servers: HashMap<String, Server>,
    /// Largest reply taken (its topic and the answer's text): `host.max_message_bytes`.
    max_reply_bytes: usize,
}

/// One endpoint's connection: opened by its first attempt, and again by the first attempt after it
/// closed.
#[derive(Default)]
struct Server {
    /// The connection the attempts share; `None` before the first, and once one failed past repair.
    link: std::sync::Mutex<Option<Link>>,
    /// Held by the attempt that connects: the others wait for its connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Server {
    /// The shared connection, if it is open.
    fn open_link(&self) -> Option<Link> {
        let link = self.slot().clone()?;
        link.is_open().then_some(link)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Link>> {
        self.link.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stop sharing `link`, which failed past repair or may be reading an answer without end: the
    /// next attempt connects again, and `link` closes with its last copy.
    fn forget(&self, link: &Link) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|shared| Arc::ptr_eq(&shared.socket, &link.socket)) {
            *slot = None;
        }
    }
}

/// An attempt's command out on a link, its answer awaited: dropped before [`Sent::answered`] (the
/// attempt cut at its deadline), the link is forgotten, so the answer, which may never end, is not
/// read past the attempts that wait on it.
struct Sent<'a> {
    server: &'a Server,
    link: &'a Link,
    answered: bool,
}

impl Sent<'_> {
    /// The answer came: the link stays shared.
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.server.forget(self.link);
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("connected", &self.slot().is_some()).finish()
    }
}

/// One open connection, shared by the attempts that send on it.
#[derive(Clone)]
struct Link {
    connection: MultiplexedConnection,
    socket: Arc<Socket>,
}

/// The socket under a [`Link`]: a second handle on it, to see the server's close in the socket itself
/// before a command goes out (the driver may not have run since the close reached us), and the task
/// that writes the commands and reads the answers, ended with the link's last copy (once it was
/// replaced and no attempt holds it any more).
struct Socket {
    peek: std::net::TcpStream,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Link {
    /// A new connection to `address`, through the redis crate's handshake, with no deadline of its
    /// own: the attempt's (or the health check's) bounds it. Its answers may each be as long as a
    /// reply of `max_reply_bytes` needs.
    async fn open(address: &str, max_reply_bytes: usize) -> Result<Link, RedisError> {
        let client = redis::Client::open(format!("redis://{address}/"))?;
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let stream = stream.into_std()?;
        let peek = stream.try_clone()?;
        let stream = LimitedStream::new(tokio::net::TcpStream::from_std(stream)?, max_reply_bytes);
        let config = AsyncConnectionConfig::new().set_connection_timeout(None).set_response_timeout(None);
        let settings = client.get_connection_info().redis_settings();
        let (connection, driver) = MultiplexedConnection::new_with_config(settings, stream, config).await?;
        Ok(Link { connection, socket: Arc::new(Socket { peek, driver: tokio::spawn(driver) }) })
    }

    /// Whether neither the driver nor the socket saw the connection close. Bytes waiting to be read
    /// are answers to commands in flight: the connection is open.
    fn is_open(&self) -> bool {
        !self.socket.driver.is_finished() && unread(&self.socket.peek) != Unread::Closed
    }
}

impl RedisTransport {
    /// The open connection to `address`, opened now if there is none. Until it is there nothing
    /// was sent: an attempt cut meanwhile is a connect failure.
    async fn link(&self, address: &str) -> Result<Link, (Outcome, String)> {
        let server = self.servers.get(address).expect("an endpoint of this destination");
        AttemptProgress::mark_current(Step::Connecting);
        if let Some(link) = server.open_link() {
            return Ok(link);
        }
        let _connecting = server.connecting.lock().await;
        // Another attempt may have connected while this one waited.
        if let Some(link) = server.open_link() {
            return Ok(link);
        }
        // One seen closed goes now, not once a new one is made: the server may be down a while.
        *server.slot() = None;
        let link = Link::open(address, self.max_reply_bytes).await.map_err(|err| {
            // Refused, reset, cut off: no connection. An answer that is not Redis's handshake (an
            // error, bytes that do not parse, one too long): a server that will not take messages
            // as it is.
            let handshake = !err.is_io_error() || AnswerTooLong::reported_by(&err).is_some();
            let reason = if handshake { RetryReason::Handshake } else { RetryReason::Connect };
            (Outcome::Retryable(reason), format!("connect: {err}"))
        })?;
        *server.slot() = Some(link.clone());
        Ok(link)
    }

    async fn push(&self, address: &str, message: &Message) -> AttemptResult {
        if self.options.command == RedisCommand::Xadd {
            entry_fields_unrepeated(message)
                .map_err(|problem| (Outcome::Fatal(FatalReason::Protocol), problem))?;
        }
        let link = self.link(address).await?;
        let key = self.options.key.replace("{topic}", &message.topic);
        let mut command = match self.options.command {
            RedisCommand::Rpush => redis::cmd("RPUSH"),
            RedisCommand::Lpush => redis::cmd("LPUSH"),
            RedisCommand::Xadd => redis::cmd("XADD"),
        };
        command.arg(&key);
        if self.options.command == RedisCommand::Xadd {
            if let Some(max_len) = self.options.max_len {
                command.arg("MAXLEN").arg("~").arg(max_len);
            }
            command.arg("*").arg("payload").arg(&message.payload[..]).arg("topic").arg(&message.topic);
            for (name, value) in &message.headers {
                command.arg(name).arg(value);
            }
        } else {
            command.arg(&message.payload[..]);
        }
        AttemptProgress::mark_current(Step::MaySend);
        let server = self.servers.get(address).expect("an endpoint of this destination");
        let sent = Sent { server, link: &link, answered: false };
        let answer = command.query_async::<redis::Value>(&mut link.connection.clone()).await;
        sent.answered();
        let answer = answer.map_err(|err| {
            if err.is_unrecoverable_error() {
                server.forget(&link);
            }
            classify(err)
        })?;
        let text = match answer {
            redis::Value::Int(number) => number.to_string(),
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::SimpleString(text) => text,
            other => format!("{other:?}"),
        };
        let reply = Message {
            id: message.id,
            topic: message.topic.clone(),
            headers: Vec::new(),
            payload: text.into(),
            priority: message.priority,
        };
        reply_within(Some(reply), self.max_reply_bytes)
    }
}

/// A stream entry's fields written before the message's headers.
const ENTRY_FIELDS: [&str; 2] = ["payload", "topic"];

/// `message`'s first header named like one of the stream entry's own fields, refused: it would
/// repeat that field, and a reader taking the entry as a map (redis-py, go-redis) would take the
/// header's value for the message's payload or topic.
fn entry_fields_unrepeated(message: &Message) -> Result<(), String> {
    match message.headers.iter().find(|(name, _)| ENTRY_FIELDS.contains(&name.as_str())) {
        Some((name, _)) => Err(format!("header \"{name}\" would repeat the stream entry's own field")),
        None => Ok(()),
    }
}

/// How an attempt whose command met `err` failed.
fn classify(err: RedisError) -> (Outcome, String) {
    if let Some(too_long) = AnswerTooLong::reported_by(&err) {
        return too_long.outcome();
    }
    let declined = matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    ) || matches!(err.code(), Some("BUSY" | "OOM" | "MISCONF" | "NOREPLICAS"));
    let outcome = if declined {
        Outcome::Retryable(RetryReason::Declined)
    } else if err.is_timeout() {
        Outcome::Retryable(RetryReason::Timeout)
    } else if err.is_io_error() || err.is_connection_dropped() {
        Outcome::Retryable(RetryReason::Reset)
    } else {
        Outcome::Fatal(FatalReason::Rejected)
    };
    (outcome, crate::bounded_text::error_text(&err.to_string()))
}

impl Transport for RedisTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.push(address, message))
    }

    /// `PING` on a fresh connection answers `PONG`.
    fn probe<'a>(&'a self, address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(async move {
            let link =
                Link::open(address, self.max_reply_bytes).await.map_err(|err| format!("connect: {err}"))?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut link.connection.clone())
                .await
                .map_err(|err| format!("PING: {err}"))?;
            match pong.as_str() {
                "PONG" => Ok(()),
                other => Err(format!("PING answered {other:?}")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_attempt_cut_while_the_handshake_waits_was_connecting() {
        let address = crate::transport::silent_listener().await;
        let options = RedisOptions { command: RedisCommand::Rpush, key: "jobs".into(), max_len: None };
        let servers = [(address.clone(), Server::default())].into();
        let transport = RedisTransport { options, servers, max_reply_bytes: 1 << 20 };
        let progress = AttemptProgress::default();
        let message = Message::new("jobs", "one");
        let attempt = progress.scope(transport.attempt(&address, &message));
        let cut = tokio::time::timeout(Duration::from_millis(200), attempt).await;
        assert!(cut.is_err(), "the silent host never answers: {cut:?}");
        assert_eq!(progress.abandon(), Step::Connecting, "nothing was sent");
    }
}
