//! WASM transport plugins as the way a destination reaches its endpoints.
//!
//! ```text
//! attempt(address, message) ── on a tokio task ──────────────────────────────────────────┐
//!   the serving version of plugin NAME (registry) ─► its lanes (started on first use)    │
//!     (each endpoint has its own: a stuck endpoint holds up no other's calls)             │
//!   pool of `address` ─► idle connection of that version, or open: a lane's plugin connects
//!   send on the connection's lane, awaited (flume) ─► reply / error / fault ─► Outcome   │
//! lane = one thread + one instance (WASI network grant: the endpoints, connect only) ◄───┘
//! ```
//!
//! The plugin is given each endpoint as configured (`host:port`). The host
//! resolves it, before each connection is opened and each probe, within the
//! attempt's deadline: the plugin may connect to the addresses it resolved
//! to and look the name up (answered from that resolution), never other
//! names or addresses (see [`NetGrant`]).
//!
//! A plugin call never runs on a runtime thread: it runs on a lane, and the
//! attempt awaits its answer. Every call is bounded by the attempt's
//! deadline (the destination's `timeout_ms`), in wasm (epoch interruption)
//! and while the plugin waits in WASI (a socket read, a sleep), so a stuck
//! plugin frees its lane at the deadline and the cluster retries elsewhere.
//! A new connection (or probe) goes to the endpoint's lane whose instance
//! holds the fewest sockets, ties in turn: a lane fills only once every other
//! is as full, so connections remade after a fault go to the emptied lane and
//! a pool within 127 connections a lane finds room.
//!
//! A faulted instance is replaced and the connections it held are gone; so
//! is one that outgrew its memory, between calls, its connections closed
//! first (see [`PluginInstance::outgrown`](crate::plugin::PluginInstance::outgrown)); a
//! new version of the plugin serves new connections while attempts in
//! flight finish on the old one, whose pooled connections are not reused;
//! so do a removed plugin's, and nothing more is sent until a version serves.

mod connection;
mod factory;
mod lane;

pub use factory::{DEFAULT_LANES, PluginOptions, PluginTransportFactory};

use super::{
    AttemptFuture, AttemptResult, PoolConfig, PoolStats, Pools, ProbeFuture, Transport, check_reply_size,
};
use crate::config::HealthSettings;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::plugin::{
    CompiledPlugin, NetGrant, PluginEngine, PluginError, PluginKind, PluginRegistry, PluginSet, read_one,
};
use crate::resilience::{FatalReason, Outcome, RetryReason};
use arc_swap::ArcSwapOption;
use connection::PluginConnection;
use lane::{Lane, LaneError, SocketClaim};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a [`PluginTransport`] is made for.
#[derive(Debug, Clone)]
pub struct PluginTransportConfig {
    /// The destination's name (it names the lane threads).
    pub destination: String,
    /// The transport plugin's name (its file stem).
    pub plugin: String,
    /// The destination's endpoint addresses: all the plugin may connect to.
    pub endpoints: Vec<String>,
    /// Deadline of one attempt (open and send), the destination's `timeout_ms`.
    pub timeout: Duration,
    /// The connection pool of each endpoint.
    pub pool: PoolConfig,
    /// Lanes per endpoint and plugin version: how many plugin calls to one
    /// endpoint run at once.
    pub lanes: usize,
    /// The largest reply taken (`host.max_message_bytes`): the endpoint took
    /// a message whose reply is larger, and only its reply is refused.
    pub max_reply_bytes: usize,
}

/// Delivers through the serving version of a `transport` plugin.
pub struct PluginTransport {
    config: PluginTransportConfig,
    registry: Arc<PluginRegistry>,
    engine: Arc<PluginEngine>,
    metrics: Arc<Metrics>,
    /// The endpoints, as last resolved: the plugin's whole network grant.
    grants: Arc<NetGrant>,
    pools: Pools<PluginConnection>,
    /// The lanes of the version last seen serving.
    current: ArcSwapOption<Lanes>,
    /// Held while a new version's lanes start, so that they start once.
    starting: Mutex<()>,
}

/// The lanes of one plugin version: each endpoint has its own, so that an
/// endpoint whose calls are stuck until their deadline holds up no other's.
struct Lanes {
    plugin: Arc<CompiledPlugin>,
    by_endpoint: HashMap<String, EndpointLanes>,
}

/// The lanes of one endpoint: a new connection or probe takes the one
/// holding the fewest sockets, those tied for fewest in turn.
struct EndpointLanes {
    lanes: Vec<Arc<Lane>>,
    /// The lane the next tie goes to first (the one after the lane last
    /// chosen). Locked while a lane is chosen and its socket claimed, so
    /// that connections chosen at once each see the others' claims.
    turn: Mutex<usize>,
}

impl Lanes {
    /// A lane of `address` for a new connection or a probe, with a socket
    /// claimed on it: the one holding the fewest sockets (claims counted),
    /// so that a lane fills only once every other is as full; why none when
    /// `address` is not one of the destination's endpoints.
    fn next(&self, address: &str) -> Result<(Arc<Lane>, SocketClaim), String> {
        let endpoint = self.by_endpoint.get(address);
        let endpoint =
            endpoint.ok_or_else(|| format!("{address} is not one of the destination's endpoints"))?;
        let mut turn = endpoint.turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = endpoint.lanes.len();
        // The first of those tied for fewest, counting from the lane whose turn it is.
        let chosen = (*turn..*turn + count)
            .map(|index| index % count)
            .min_by_key(|&index| endpoint.lanes[index].sockets())
            .expect("an endpoint has a lane at least");
        *turn = (chosen + 1) % count;
        let lane = endpoint.lanes[chosen].clone();
        let claim = lane.claim_socket();
        Ok((lane, claim))
    }

    /// Keep every connection of this version from being reused: a newer one serves.
    fn retire(&self) {
        self.by_endpoint.values().flat_map(|endpoint| &endpoint.lanes).for_each(|lane| lane.retire());
    }
}

impl PluginTransport {
    /// A transport for `config`, running the versions of `config.plugin`
    /// that `registry` serves, compiled by `engine`, their calls counted in
    /// `metrics` as a pipeline's stages are (its pools' waits too, as its destination's). Lanes start on first use.
    /// Nothing is resolved yet: each endpoint is, before each connection to it and each probe.
    pub fn new(
        config: PluginTransportConfig,
        registry: Arc<PluginRegistry>,
        engine: Arc<PluginEngine>,
        metrics: Arc<Metrics>,
    ) -> PluginTransport {
        let grants = Arc::new(NetGrant::new(config.endpoints.iter().cloned()));
        let pools = Pools::new(config.pool, PluginConnection::is_open)
            .count_waits(metrics.pool_waits(&config.destination));
        let (current, starting) = (ArcSwapOption::empty(), Mutex::default());
        PluginTransport { config, registry, engine, metrics, grants, pools, current, starting }
    }

    /// One attempt: a pooled connection (or a new one), one send, its reply.
    async fn exchange(&self, address: &str, message: &Message) -> AttemptResult {
        let deadline = Instant::now() + self.config.timeout;
        let not_sent = |reason| (Outcome::Retryable(RetryReason::Connect), reason);
        let lanes = self.lanes().map_err(not_sent)?;
        let pool = self.pools.get(address);
        let mut batch = Vec::new();
        message.encode(&mut batch, 0, true);
        let batch = Arc::new(batch);
        let (connection, reply) = loop {
            let connection = pool
                .acquire(|| async {
                    let (lane, claim) = lanes.next(address).map_err(std::io::Error::other)?;
                    self.grants.refresh(address, deadline).await.map_err(std::io::Error::other)?;
                    PluginConnection::open(lane, claim, address, deadline).await
                })
                .await
                .map_err(|err| err.into_attempt_error(address))?;
            match connection.send(batch.clone(), deadline).await {
                Ok(Ok(reply)) => break (connection, reply),
                Ok(Err(error)) => return Err(refused(error)),
                // Gone with a faulted instance before anything was sent on it: take another.
                Err(LaneError::Lost) => continue,
                Err(error) => return Err(faulted(error, self.config.timeout)),
            }
        };
        drop(lanes);
        // A refused reply leaves the connection out of the pool: the exchange was not a good one.
        let reply =
            reply.map(|batch| read_transport_reply(&batch, self.config.max_reply_bytes)).transpose()?;
        connection.release();
        Ok(reply)
    }

    /// The plugin's own probe of `address`, on a lane, within `health.timeout_ms`.
    async fn check(&self, address: &str, health: &HealthSettings) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(health.timeout_ms);
        let (lane, claim) = self.lanes()?.next(address)?;
        self.grants.refresh(address, deadline).await?;
        match lane.probe(claim, address, deadline).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("the plugin's probe {error}")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// The lanes of the version serving now, started if it is new (the
    /// previous version's are retired); or why none serves (the previous
    /// version's lanes are retired too: a removed plugin keeps no instance
    /// or connection).
    fn lanes(&self) -> Result<Arc<Lanes>, String> {
        let snapshot = self.registry.snapshot();
        let plugin = match self.serving_version(&snapshot) {
            Ok(plugin) => plugin,
            Err(none) => {
                // Unlocked: lanes a version loaded meanwhile started are retired at worst, and
                // the next call starts them again.
                if let Some(old) = self.current.swap(None) {
                    self.retire(&old);
                }
                return Err(none);
            }
        };
        let serving = |current: &Option<Arc<Lanes>>| {
            current.as_ref().filter(|lanes| Arc::ptr_eq(&lanes.plugin, plugin)).cloned()
        };
        if let Some(lanes) = serving(&self.current.load_full()) {
            return Ok(lanes);
        }
        let _starting = self.starting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current.load_full();
        if let Some(lanes) = serving(&current) {
            return Ok(lanes);
        }
        let lanes = Arc::new(self.start(plugin.clone())?);
        self.current.store(Some(lanes.clone()));
        if let Some(old) = current {
            self.retire(&old);
        }
        Ok(lanes)
    }

    /// The version of the plugin serving in `snapshot`; why none when it is
    /// not loaded (never was, or its file was removed) or not a transport.
    fn serving_version<'s>(&self, snapshot: &'s PluginSet) -> Result<&'s Arc<CompiledPlugin>, String> {
        let name = &self.config.plugin;
        let plugin =
            snapshot.get(name).ok_or_else(|| format!("transport plugin \"{name}\" is not loaded"))?;
        if plugin.kind != PluginKind::Transport {
            return Err(format!("plugin \"{name}\" is a {}, not a transport", plugin.kind.as_str()));
        }
        Ok(plugin)
    }

    /// Stop using `old`'s lanes: their idle connections close now, those in
    /// use when their attempts end, and each lane with its last connection.
    fn retire(&self, old: &Lanes) {
        old.retire();
        self.config.endpoints.iter().for_each(|address| self.pools.close_idle(address));
    }

    /// Start `plugin`'s lanes: [`PluginTransportConfig::lanes`] per endpoint.
    fn start(&self, plugin: Arc<CompiledPlugin>) -> Result<Lanes, String> {
        let mut by_endpoint = HashMap::new();
        for (index, address) in self.config.endpoints.iter().enumerate() {
            let lanes = (0..self.config.lanes.max(1))
                .map(|n| {
                    let name = format!("switchyard-transport-{}-{index}-{n}", self.config.destination);
                    let (engine, metrics) = (self.engine.clone(), self.metrics.clone());
                    Lane::start(name, engine, metrics, plugin.clone(), self.grants.clone()).map(Arc::new)
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|err| {
                    format!("cannot start a thread for transport plugin \"{}\": {err}", plugin.name)
                })?;
            by_endpoint.insert(address.clone(), EndpointLanes { lanes, turn: Mutex::new(0) });
        }
        Ok(Lanes { plugin, by_endpoint })
    }
}

/// Read a transport plugin's reply (`batch`) as the host takes it: exactly one whole message (the
/// WIT's one-message batch) of at most `max_reply_bytes`, as every transport's reply; else the
/// attempt's error. The endpoint took the message either way: only the reply is refused, and the
/// message is not sent again (it could be done twice). `switchyard plugin call` reads a reply with
/// it too.
pub fn read_transport_reply(batch: &[u8], max_reply_bytes: usize) -> Result<Message, (Outcome, String)> {
    let malformed = |problem| (Outcome::ReplyRefused, format!("the plugin's reply is malformed: {problem}"));
    let reply = read_one(batch).map_err(malformed)?;
    check_reply_size(&reply, max_reply_bytes)?;
    Ok(reply)
}

/// How an attempt fails on the plugin's own error: `retryable` is retried,
/// `rejected` dead-lettered with the plugin's text, `failed` is a failed
/// exchange (the message may have gone out).
fn refused(error: PluginError) -> (Outcome, String) {
    let outcome = match &error {
        PluginError::Retryable(_) => Outcome::Retryable(RetryReason::Plugin),
        PluginError::Rejected(_) => Outcome::Fatal(FatalReason::Rejected),
        PluginError::Failed(_) => Outcome::Retryable(RetryReason::Reset),
    };
    (outcome, format!("the plugin {error}"))
}

/// How an attempt fails when the plugin gave no answer: never made (it
/// waited for the lane past its deadline), shed, as an attempt that waited
/// for a connection is; cut at the deadline, a timeout; otherwise a failed
/// exchange.
fn faulted(error: LaneError, timeout: Duration) -> (Outcome, String) {
    match error {
        LaneError::Overdue => (Outcome::Shed, error.to_string()),
        LaneError::Fault(crate::plugin::PluginFault::TimedOut(_)) => {
            (Outcome::Retryable(RetryReason::Timeout), format!("the plugin gave no answer in {timeout:?}"))
        }
        error => (Outcome::Retryable(RetryReason::Reset), error.to_string()),
    }
}

impl Transport for PluginTransport {
    /// A pooled connection to `address` of the serving version (or a new
    /// one), one send, its reply; cut at the destination's per-attempt
    /// timeout, including while the plugin waits in WASI.
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.exchange(address, message))
    }

    /// The plugin's `probe` of `address`, on a lane.
    fn probe<'a>(&'a self, address: &'a str, health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(self.check(address, health))
    }

    fn close_idle(&self, address: &str) {
        self.pools.close_idle(address);
    }

    fn pool_stats(&self, address: &str) -> Option<PoolStats> {
        self.pools.stats(address)
    }

    /// Why no version of the plugin serves: it is not loaded, or not a transport.
    fn unavailable(&self) -> Option<String> {
        self.serving_version(&self.registry.snapshot()).err()
    }
}

impl std::fmt::Debug for PluginTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginTransport").field("config", &self.config).finish_non_exhaustive()
    }
}
