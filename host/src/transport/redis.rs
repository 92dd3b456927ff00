//! The `redis` transport: each message pushed onto a list (`RPUSH`, `LPUSH`) or added to a stream
//! (`XADD`) on one of the destination's Redis servers, the key templated from the message's topic.
//!
//! A list gets the payload. A stream entry gets the fields `payload`, `topic` and each header (`x-sy-id`
//! included, for consumers to deduplicate). The reply is the server's answer as text: the list's new
//! length, or the entry's id. One multiplexed connection per endpoint, opened at the first attempt and
//! kept (and reconnected) by the redis crate's connection manager; the health probe `PING`s on a fresh
//! connection. A refused connection is one (nothing sent); a connection lost with the command out is
//! uncertain; `LOADING`, `BUSY` (a script runs), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` and `READONLY`
//! answers are retried (the server did not take it); any other error answer dead-letters the message
//! with it.

use super::{AttemptFuture, AttemptResult, ProbeFuture, Transport, TransportContext, TransportOptions};
use crate::config::{DestinationConfig, HealthSettings};
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};
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
    _context: &TransportContext,
) -> Arc<dyn Transport> {
    let servers = destination.endpoints.iter().map(|endpoint| (endpoint.address.clone(), Server::default()));
    Arc::new(RedisTransport { options, servers: servers.collect() })
}

/// Redis servers taking messages; see the module docs.
#[derive(Debug)]
pub struct RedisTransport {
    options: RedisOptions,
    servers: HashMap<String, Server>,
}

/// One endpoint's connection, made at the first attempt.
#[derive(Default)]
struct Server(tokio::sync::OnceCell<ConnectionManager>);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("connected", &self.0.initialized()).finish()
    }
}

impl RedisTransport {
    async fn connection(&self, address: &str) -> Result<ConnectionManager, RedisError> {
        let server = self.servers.get(address).expect("an endpoint of this destination");
        let connect = || async {
            let client = redis::Client::open(format!("redis://{address}/"))?;
            // Reconnects are the manager's, attempts the destination core's: no retries in here.
            let config = ConnectionManagerConfig::new().set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config).await
        };
        server.0.get_or_try_init(connect).await.cloned()
    }

    async fn push(&self, address: &str, message: &Message) -> AttemptResult {
        let mut connection = self.connection(address).await.map_err(classify)?;
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
        let answer: redis::Value = command.query_async(&mut connection).await.map_err(classify)?;
        let text = match answer {
            redis::Value::Int(number) => number.to_string(),
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::SimpleString(text) => text,
            other => format!("{other:?}"),
        };
        Ok(Some(Message {
            id: message.id,
            topic: message.topic.clone(),
            headers: Vec::new(),
            payload: text.into(),
            priority: message.priority,
        }))
    }
}

/// How an attempt that met `err` failed.
fn classify(err: RedisError) -> (Outcome, String) {
    let declined = matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    ) || err.code() == Some("BUSY");
    let outcome = if err.is_connection_refusal() {
        Outcome::Retryable(RetryReason::Connect)
    } else if declined {
        Outcome::Retryable(RetryReason::Declined)
    } else if err.is_timeout() {
        Outcome::Retryable(RetryReason::Timeout)
    } else if err.is_io_error() || err.is_connection_dropped() {
        Outcome::Retryable(RetryReason::Reset)
    } else {
        Outcome::Fatal(FatalReason::Rejected)
    };
    (outcome, err.to_string())
}

impl Transport for RedisTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.push(address, message))
    }

    /// `PING` on a fresh connection answers `PONG`.
    fn probe<'a>(&'a self, address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(async move {
            let client = redis::Client::open(format!("redis://{address}/")).map_err(|err| err.to_string())?;
            let mut connection =
                client.get_multiplexed_async_connection().await.map_err(|err| format!("connect: {err}"))?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .map_err(|err| format!("PING: {err}"))?;
            match pong.as_str() {
                "PONG" => Ok(()),
                other => Err(format!("PING answered {other:?}")),
            }
        })
    }
}
