//! The transport layer: how a network destination's message reaches one of its endpoints.
//!
//! A [`Transport`] makes one attempt at a time, probes an endpoint's health, and keeps (and reports on)
//! its connections. Everything around the attempt — balancing, breakers, retries, deadlines, queues,
//! health state — is the destination core's ([`Cluster`](crate::destination::Cluster)), which knows no
//! transport by name. A destination's `transport` string picks a [`TransportFactory`] from the
//! [`TransportRegistry`], which checks the destination's `options = {..}` (reading the files they name
//! once per configuration checked or applied) and builds its transport from what the check read:
//!
//! ```text
//! [[destination]] transport = "http", options = { path = "/in" }
//!   ─► TransportRegistry: "http" ─► TransportFactory::check(options) ─► CheckedTransport
//!   ─► (config applied) CheckedTransport::build ─► Arc<dyn Transport> ─► Cluster: attempt / probe / close_idle / pool_stats per endpoint
//! ```
//!
//! Adding a transport is one module (its options, its `Transport`) and one line in
//! [`TransportRegistry::builtin`]; an embedder registers its own with
//! [`HostBuilder::transport`](crate::HostBuilder::transport).

mod answers;
mod file;
mod http;
mod lines;
mod nats;
mod pending;
pub mod plugin;
mod pool;
mod process_group;
mod progress;
mod redis;
mod registry;
mod restart;
mod subprocess;
mod tcp;
mod tls;
mod websocket;

pub use self::redis::{RedisCommand, RedisOptions, RedisTransport};
pub use file::{FileOptions, FileTransport, Fsync, FsyncPolicy};
pub use http::{HttpOptions, HttpTransport};
pub use nats::{NatsOptions, NatsTransport};
pub use pool::{Pool, PoolConfig, PoolError, PoolStats, Pooled, Pools};
pub use process_group::ProcessGroups;
pub(crate) use progress::{AttemptProgress, DeliveryProgress, Step, Wait};
pub use registry::{
    CheckedTransport, CheckedTransports, SettingError, SoleUse, TransportContext, TransportFactory,
    TransportOptions, TransportRegistry, Typed, typed,
};
pub use subprocess::{SubprocessOptions, SubprocessTransport};
pub use tcp::TcpTransport;
pub use tls::{TlsClient, TlsError};
pub use websocket::{Framing, WebSocketOptions, WebSocketTransport};

use crate::config::HealthSettings;
use crate::message::Message;
use crate::resilience::Outcome;
use std::future::Future;
use std::pin::Pin;

/// What one attempt gives: the reply (if any), or how to classify the failure and what went wrong.
pub type AttemptResult = Result<Option<Message>, (Outcome, String)>;

/// The future of one attempt.
pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = AttemptResult> + Send + 'a>>;

/// The future of one health probe: `Ok` when the endpoint passes, else what went wrong.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The attempt's `reply`, unless it is past `max_reply_bytes` (its topic, headers and payload, as
/// `host.max_message_bytes` counts them): then the endpoint took the message, and only its reply is
/// refused.
fn reply_within(reply: Option<Message>, max_reply_bytes: usize) -> AttemptResult {
    reply.iter().try_for_each(|reply| check_reply_size(reply, max_reply_bytes))?;
    Ok(reply)
}

/// Refuse `reply` if it is past `max_reply_bytes`, as [`reply_within`] does.
fn check_reply_size(reply: &Message, max_reply_bytes: usize) -> Result<(), (Outcome, String)> {
    match reply.size() {
        size if size > max_reply_bytes => Err((
            Outcome::ReplyRefused,
            format!("a reply of {size} bytes: more than {max_reply_bytes} bytes"),
        )),
        _ => Ok(()),
    }
}

/// How messages reach an endpoint: one attempt at a time.
pub trait Transport: Send + Sync + 'static {
    /// Try once to deliver `message` to `address`; called once per attempt, under the destination's
    /// per-attempt deadline (the future is dropped when it passes).
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a>;

    /// Check whether `address` is healthy, on a fresh connection (a check must see what a new connection
    /// would see, not a pooled one); called every `health.interval_ms` per endpoint when the destination
    /// has `health` settings, under `health.timeout_ms`. By default a TCP connect is the check.
    fn probe<'a>(&'a self, address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(async move {
            let connected = tokio::net::TcpStream::connect(address).await;
            connected.map(drop).map_err(|err| format!("connect: {err}"))
        })
    }

    /// Close the idle connections kept to `address`, and keep those in use now from being reused; called
    /// when the endpoint turns unhealthy. A transport without connections does nothing.
    fn close_idle(&self, _address: &str) {}

    /// The state of the connection pool to `address`, for the admin API and metrics; called on demand.
    /// `None` without a pool, or before the first attempt to `address`.
    fn pool_stats(&self, _address: &str) -> Option<PoolStats> {
        None
    }

    /// Why no attempt can reach any endpoint now, whatever their state (a transport plugin not
    /// loaded), for `GET /ready`; called on demand. `None`, the default, when attempts can be made.
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// A listener on 127.0.0.1 that accepts every connection and never answers on it (a host that
/// takes TCP and never answers a protocol's handshake), for the transports' tests; its address.
#[cfg(test)]
pub(crate) async fn silent_listener() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    address
}
