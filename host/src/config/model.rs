//! The shape of the configuration file (`deny_unknown_fields` throughout).

use super::nats::NatsIngressConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Host-wide settings.
    #[serde(default)]
    pub host: HostSection,
    /// Where messages come in.
    #[serde(default)]
    pub ingress: IngressSection,
    /// `[admin]`: the admin API, if any.
    pub admin: Option<AdminConfig>,
    /// Per-plugin settings, by plugin name (file stem).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Named destinations.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// Routes, evaluated in order.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[[alert]]`: alert rules, evaluated every second.
    #[serde(default, rename = "alert", skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<super::AlertConfig>,
}

/// `host.durability`: where an accepted message is kept until its outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// In this process's memory: fastest; a crash loses what is queued.
    #[default]
    Memory,
    /// On disk (fsync'd, group-committed) before it is acknowledged; survives a crash.
    Spool,
}

/// `[host]`: host-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostSection {
    /// Directory plugins are loaded from.
    pub plugin_dir: PathBuf,
    /// Pipeline workers; 0 means one per core.
    pub workers: usize,
    /// Threads of the runtime that `switchyard run` serves ingresses, deliveries and the admin
    /// API on; 0 means one per core (or `TOKIO_WORKER_THREADS`). A host embedded in an
    /// application runs on the application's runtime, and this key does nothing there.
    pub io_threads: usize,
    /// Messages accepted but not yet processed before senders feel backpressure.
    pub queue_capacity: usize,
    /// Largest payload accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most messages handed to a plugin in one call.
    pub batch_size: usize,
    /// Destination that receives dead letters.
    pub dead_letter: String,
    /// Watch the plugin directory (and the config file) and apply changes live.
    pub watch: bool,
    /// Directory of the on-disk compile cache (native code, so never inside
    /// `plugin_dir`); relative paths are under the working directory; an
    /// empty string turns the cache off. Default: `switchyard` in the
    /// user's cache directory (`$XDG_CACHE_HOME`, else `~/.cache`). Used
    /// only if it and its key are this user's alone (see
    /// [`CacheOutcome::Refused`](crate::plugin::CacheOutcome::Refused)).
    pub cache_dir: PathBuf,
    /// Directory of the host's own state: `dead-letters.jsonl`, the dead
    /// letters no dead-letter destination took, `spool/` with
    /// `durability = "spool"`, and `alerts.json`, the firing alerts a
    /// restart takes up. Relative paths are under the working
    /// directory; created when first written. Read at start.
    pub state_dir: PathBuf,
    /// What an acknowledgement (202, `send` returning, a gRPC or NATS ack)
    /// promises: `memory` (held by this process: a crash loses what is
    /// queued) or `spool` (on disk in `state_dir/spool` until its outcome is
    /// recorded; a restart delivers it). A JetStream ingress acknowledges a
    /// message only once it is settled, and its messages are not spooled:
    /// the stream keeps each until then.
    pub durability: Durability,
    /// Bytes the spool may hold for messages not yet settled; beyond it
    /// senders wait (or get backpressure), never lose a message.
    pub spool_max_bytes: u64,
    /// Deliveries in flight to network destinations at once, over all of
    /// them; beyond it their queues wait.
    pub max_in_flight: usize,
    /// Count messages per route, destination and plugin for `/metrics`;
    /// off only to measure what counting costs (the host's own counts,
    /// `Host::stats` and `messages_accepted`, stay).
    pub metrics: bool,
    /// Largest plugin file loaded, in bytes; a larger one is refused.
    pub max_plugin_bytes: u64,
    /// Bytes (payloads and headers) accepted messages may hold while they
    /// wait for a worker; beyond it senders wait (or get backpressure).
    pub queue_bytes: usize,
    /// Milliseconds a shutdown waits, from its start, for deliveries in progress, queued or
    /// waiting for room in a destination's queue; then the rest are dead-lettered (`shutdown`),
    /// not waited on — but for those whose source keeps them (a JetStream stream), handed back to
    /// it (see [`Settlement::HandedBack`](crate::Settlement::HandedBack)).
    pub shutdown_grace_ms: u64,
    /// Let a plugin's sidecar grant more than this config's `[[plugin]]`
    /// entry (or the defaults) does: more memory or time, more addresses,
    /// environment variables or directories. Off: sidecars may only narrow.
    pub sidecar_grants: bool,
    /// Load native libraries (`.so`, `.dylib`, `.dll`) from `plugin_dir`.
    /// They are trusted code: no sandbox, no memory cap, no deadline, in
    /// the host's own process. Off: such a file is never opened, only
    /// reported as rejected.
    pub native_plugins: bool,
}

impl Default for HostSection {
    fn default() -> Self {
        HostSection {
            plugin_dir: PathBuf::from("plugins.d"),
            workers: 0,
            io_threads: 0,
            queue_capacity: 10_000,
            max_message_bytes: 1 << 20,
            batch_size: 64,
            dead_letter: "log".into(),
            watch: true,
            cache_dir: user_cache_dir(),
            state_dir: PathBuf::from(".switchyard"),
            durability: Durability::Memory,
            spool_max_bytes: 1 << 30,
            max_in_flight: 1024,
            metrics: true,
            max_plugin_bytes: 64 << 20,
            sidecar_grants: false,
            native_plugins: false,
            shutdown_grace_ms: 30_000,
            queue_bytes: 256 << 20,
        }
    }
}

impl HostSection {
    /// The compile cache directory as the host uses it: absolute (relative
    /// to the working directory), `None` when `cache_dir` is empty (off).
    pub fn compile_cache_dir(&self) -> Option<PathBuf> {
        let dir = &self.cache_dir;
        (!dir.as_os_str().is_empty()).then(|| std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
    }
}

/// `switchyard` in the user's cache directory: `$XDG_CACHE_HOME`, else
/// `$HOME/.cache`, else `.switchyard-cache` in the working directory.
fn user_cache_dir() -> PathBuf {
    let home_cache = || std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache"));
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).filter(|dir| dir.is_absolute());
    match base.or_else(home_cache) {
        Some(base) => base.join("switchyard"),
        None => PathBuf::from(".switchyard-cache"),
    }
}

/// `[ingress]`: network listeners that accept messages.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSection {
    /// `[ingress.http]`: the HTTP ingress, if any.
    pub http: Option<HttpIngressConfig>,
    /// `[[ingress.nats]]`: NATS subscriptions, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats: Vec<NatsIngressConfig>,
    /// `[ingress.grpc]`: the gRPC ingress, if any.
    pub grpc: Option<GrpcIngressConfig>,
}

impl IngressSection {
    /// The largest body of a bulk `POST /v1/messages`: `[ingress.http]`'s `max_batch_bytes`, or its
    /// default when there is none (an embedder may serve the HTTP ingress anyway).
    pub(crate) fn max_batch_bytes(&self) -> usize {
        self.http.as_ref().map_or(HttpIngressConfig::default_max_batch_bytes(), |http| http.max_batch_bytes)
    }
}

/// `[ingress.grpc]`: the gRPC ingress (`switchyard.v1.Ingress`, over HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcIngressConfig {
    /// Address to listen on, e.g. `127.0.0.1:7072`.
    pub listen: SocketAddr,
    /// Bearer token every call must carry in its `authorization` metadata, if set (changes live on
    /// reload).
    pub token: Option<String>,
    /// Connections open at once, at most (more wait to be accepted).
    #[serde(default = "HttpIngressConfig::default_max_connections")]
    pub max_connections: usize,
    /// Milliseconds a new connection has to send its HTTP/2 preface, a connection may stay with no
    /// call open, a request may pause, and a client has to answer a ping.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

impl GrpcIngressConfig {
    /// The ingress on `listen`, with no token and the default limits.
    pub fn new(listen: SocketAddr) -> GrpcIngressConfig {
        GrpcIngressConfig {
            listen,
            token: None,
            max_connections: HttpIngressConfig::default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
        }
    }
}

/// `[ingress.http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpIngressConfig {
    /// Address to listen on, e.g. `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Connections open at once, at most (more wait to be accepted).
    #[serde(default = "HttpIngressConfig::default_max_connections")]
    pub max_connections: usize,
    /// Milliseconds a client has to send a request's headers.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Bearer token every request must carry, if set (changes live on reload).
    pub token: Option<String>,
    /// Largest body of a bulk `POST /v1/messages`, in bytes.
    #[serde(default = "HttpIngressConfig::default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Milliseconds a WebSocket may be silent while the host waits for its next frame before it is
    /// pinged; silent (no frame, no pong) for twice as long, it is closed.
    #[serde(default = "default_ping_ms")]
    pub ping_ms: u64,
}

impl HttpIngressConfig {
    /// The ingress on `listen`, with the default limits.
    pub fn new(listen: SocketAddr) -> HttpIngressConfig {
        HttpIngressConfig {
            listen,
            max_connections: HttpIngressConfig::default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            token: None,
            max_batch_bytes: HttpIngressConfig::default_max_batch_bytes(),
            ping_ms: default_ping_ms(),
        }
    }

    /// The token a request must carry, if any: an empty one is none, as the admin API's (every
    /// client would present it).
    pub(crate) fn required_token(&self) -> Option<&str> {
        self.token.as_deref().filter(|token| !token.is_empty())
    }

    fn default_max_connections() -> usize {
        1024
    }

    fn default_max_batch_bytes() -> usize {
        16 << 20
    }
}

fn default_header_timeout_ms() -> u64 {
    10_000
}

fn default_ping_ms() -> u64 {
    30_000
}

/// Environment variable holding the admin token when the config has none. Only the admin API reads
/// it: no `subprocess` worker inherits it unless its `env` sets it.
pub const ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on, e.g. `127.0.0.1:7071`.
    pub listen: SocketAddr,
    /// Bearer token the admin API requires (else `SWITCHYARD_ADMIN_TOKEN`;
    /// with neither, only a loopback address is allowed).
    pub token: Option<String>,
    /// Connections open at once, at most (more wait to be accepted).
    #[serde(default = "AdminConfig::default_max_connections")]
    pub max_connections: usize,
    /// Milliseconds a client has to send a request's headers.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Milliseconds an event stream may be silent before it is pinged; silent (no pong, no frame)
    /// for twice as long, it is closed.
    #[serde(default = "default_ping_ms")]
    pub ping_ms: u64,
}

impl AdminConfig {
    /// The admin API on `listen`, with no token and the default limits.
    pub fn new(listen: SocketAddr) -> AdminConfig {
        AdminConfig {
            listen,
            token: None,
            max_connections: AdminConfig::default_max_connections(),
            header_timeout_ms: default_header_timeout_ms(),
            ping_ms: default_ping_ms(),
        }
    }

    fn default_max_connections() -> usize {
        64
    }
}

/// What a route does with a message whose plugin stage failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Dead-letter the message with the failure as reason.
    #[default]
    FailClosed,
    /// Skip the stage and carry on with the message unchanged.
    FailOpen,
}

/// `[[plugin]]`: settings for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Plugin name: the `.wasm` file's stem.
    pub name: String,
    /// String settings the plugin reads through `host.config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: PluginLimits,
    /// `host:port` addresses the plugin may connect to.
    #[serde(default)]
    pub allow_net: Vec<String>,
    /// Names of host environment variables the plugin may read.
    #[serde(default)]
    pub env: Vec<String>,
    /// Guest path → host directory (suffix `:ro` for read-only).
    #[serde(default)]
    pub dirs: BTreeMap<String, String>,
    /// Default failure policy of routes using this plugin.
    pub on_error: Option<FailurePolicy>,
}

/// `limits = {..}` of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear-memory cap per instance, MiB.
    pub memory_mb: u64,
    /// Deadline per call, milliseconds.
    pub timeout_ms: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { memory_mb: 64, timeout_ms: 100 }
    }
}

/// `[[destination]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Destination name, referenced by routes.
    pub name: String,
    /// How messages get there: `memory` (an in-process queue the embedder reads,
    /// [`Host::memory`](crate::Host::memory)), `log` (one JSON line per message on standard output), or a
    /// network transport of the host's [`TransportRegistry`](crate::transport::TransportRegistry): `http`
    /// (HTTP/1.1 POST, pooled keep-alive connections), `tcp` (length-delimited frames of the wire layout,
    /// each answered by one frame), `plugin:NAME` (a WASM transport plugin), or one an embedder registered.
    pub transport: String,
    /// The transport's own settings, e.g. `options = { path = "/in" }` for `http`; a key the transport
    /// does not know is refused.
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub options: toml::Table,
    /// Each endpoint (network transports only): `"host:port"`, or
    /// `{ address = "host:port", weight = 3 }`.
    #[serde(default)]
    pub endpoints: Vec<super::EndpointConfig>,
    /// How an endpoint is chosen: `round-robin`, `weighted`, `least-inflight`,
    /// `p2c-ewma`, `hash:header:KEY`, `affinity:header:KEY` or `plugin:NAME`.
    #[serde(default = "default_balancer")]
    pub balancer: String,
    /// The settings of the `affinity:header:KEY` balancer (its defaults when unset); refused with
    /// any other balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<super::AffinitySettings>,
    /// Whether the endpoints can take the same message twice (they
    /// deduplicate on `x-sy-id`, or doing it twice is harmless). When true,
    /// every retryable failure is retried, timeouts and resets included.
    /// When false (the default), only failures where the endpoint certainly
    /// did not take the message are retried (a refused connection, no free
    /// connection, no endpoint available); a message sent that got no
    /// answer is dead-lettered `delivery-uncertain`, and an error answer
    /// (5xx, 408, 429) `delivery-failed`, without a retry.
    #[serde(default)]
    pub idempotent: bool,
    /// Deadline of one attempt, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries with exponential backoff and full jitter.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Circuit breaker of each endpoint.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// Where messages this destination fails to take are dead-lettered
    /// (`host.dead_letter` when unset).
    pub dead_letter: Option<String>,
    /// A network destination's stand-in: a message it never sent because none of its endpoints could
    /// take it within its queue timeout (all ejected, down, refusing or at their limit) goes here
    /// instead of to a dead letter. The fallback may not have a fallback of its own.
    pub fallback: Option<String>,
    /// The queue in front of a network destination and its concurrency limit.
    #[serde(default)]
    pub queue: QueueSettings,
    /// Active health checks of each endpoint (none when unset: the breakers
    /// alone keep failing endpoints out).
    pub health: Option<HealthSettings>,
    /// The connection pool of each endpoint.
    #[serde(default)]
    pub pool: PoolSettings,
}

pub(super) fn default_balancer() -> String {
    "round-robin".into()
}

/// A destination's `timeout_ms` unless set: also how long a dead-letter destination delivered to in
/// place may keep a letter's attempt waiting.
pub const fn default_timeout_ms() -> u64 {
    5_000
}

/// `retry = {..}` of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Backoff before the first retry, milliseconds (doubling after).
    pub base_ms: u64,
    /// Longest backoff, milliseconds.
    pub max_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { attempts: 3, base_ms: 25, max_ms: 250 }
    }
}

/// `breaker = {..}` of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection, milliseconds (doubling on each re-ejection, up to 60 s, or up to `open_ms`
    /// when that is longer).
    pub open_ms: u64,
    /// Also trip when at least this percentage of the last `window`
    /// outcomes failed (once `min_volume` are in); off when unset.
    pub failure_percent: Option<u32>,
    /// Outcomes the failure percentage is over.
    pub window: usize,
    /// Outcomes needed before the failure percentage counts.
    pub min_volume: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            open_ms: 1_000,
            failure_percent: None,
            window: 100,
            min_volume: 20,
        }
    }
}

/// `queue = {..}` of a network destination: messages wait here, most urgent
/// priority class first and oldest first within a class, until one of the
/// destination's `max_in_flight` delivery slots is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Messages waiting at most; when full, the pipeline waits, and so in
    /// turn do senders (backpressure).
    pub capacity: usize,
    /// A message that waited longer is dead-lettered (`queue-timeout`),
    /// milliseconds.
    pub timeout_ms: u64,
    /// Deliveries in flight to this destination at once.
    pub max_in_flight: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings { capacity: 1024, timeout_ms: 30_000, max_in_flight: 256 }
    }
}

/// `pool = {..}` of a network destination: the connections kept to each
/// endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// Most connections to one endpoint, in use and idle: also the most
    /// requests in flight to it.
    pub max_size: usize,
    /// Most idle connections kept.
    pub max_idle: usize,
    /// An idle connection unused this long is closed, milliseconds (keep it
    /// below the peers' keep-alive).
    pub idle_timeout_ms: u64,
    /// A connection this old is closed once released, milliseconds.
    pub max_lifetime_ms: u64,
    /// Longest wait for a connection when all are in use, milliseconds;
    /// then the attempt is shed.
    pub acquire_timeout_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 64,
            max_idle: 64,
            idle_timeout_ms: 30_000,
            max_lifetime_ms: 600_000,
            acquire_timeout_ms: 1_000,
        }
    }
}

/// `health = {..}` of a network destination: each endpoint is checked every
/// `interval_ms`; `fall` failed checks in a row (or failed deliveries) take
/// it out, `rise` passed checks in a row bring it back, its weight ramping up (slow start: the
/// balancers that weigh endpoints, `weighted` and `p2c-ewma`, give it a growing share; `round-robin`
/// and `least-inflight` give it its full share at once).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// `http`: the path a `GET` must answer 2xx on; `tcp`: unused (a check
    /// is a connect).
    pub path: String,
    /// Time between checks of one endpoint, milliseconds.
    pub interval_ms: u64,
    /// Deadline of one check, milliseconds.
    pub timeout_ms: u64,
    /// Passed checks in a row that bring an endpoint back.
    pub rise: u32,
    /// Failures in a row that take an endpoint out.
    pub fall: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings { path: "/health".into(), interval_ms: 1_000, timeout_ms: 1_000, rise: 2, fall: 3 }
    }
}

/// `match = {..}` of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Topic pattern: segments split by `.`, `*` matches one segment, a final
    /// `>` matches one or more; no pattern matches everything.
    pub topic: Option<String>,
    /// Header name → required value (`*` requires only presence).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `[[route]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name, used in errors, dead letters and metrics.
    pub name: String,
    /// Which messages the route takes.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Stages in order: `filter:NAME`, `transform:NAME`, `middleware:NAME`, or
    /// `*` for every plugin in the plugin directory, in name order.
    #[serde(default)]
    pub stages: Vec<StageRef>,
    /// Destination of the route's messages.
    pub to: Option<String>,
    /// Several destinations, each receiving a copy.
    #[serde(default)]
    pub fan_out: Vec<String>,
    /// Priority class given to the route's messages (their own otherwise).
    pub priority: Option<u8>,
    /// Overrides the plugins' failure policy for this route.
    pub on_error: Option<FailurePolicy>,
}

impl RouteConfig {
    /// A route named `name` taking topics matching `topic` to destination `to`,
    /// with no stages yet.
    pub fn new(name: &str, topic: &str, to: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            matches: RouteMatch { topic: Some(topic.into()), headers: BTreeMap::new() },
            stages: Vec::new(),
            to: Some(to.into()),
            fan_out: Vec::new(),
            priority: None,
            on_error: None,
        }
    }

    /// Append a stage such as `filter:NAME`.
    ///
    /// # Panics
    /// If `stage` is not a valid stage reference (a programming error).
    pub fn stage(mut self, stage: &str) -> RouteConfig {
        let stage = StageRef::try_from(stage.to_owned()).unwrap_or_else(|problem| panic!("{problem}"));
        self.stages.push(stage);
        self
    }

    /// Set the failure policy of the route's stages.
    pub fn on_error(mut self, policy: FailurePolicy) -> RouteConfig {
        self.on_error = Some(policy);
        self
    }
}

/// Plugin kinds that can run as route stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Keep or drop.
    Filter,
    /// Rewrite, split or drop.
    Transform,
    /// Sees the request and the reply.
    Middleware,
}

/// One entry of a route's `stages`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum StageRef {
    /// A named plugin or native stage of a given kind.
    Named {
        /// Expected kind.
        kind: StageKind,
        /// Plugin or native stage name.
        name: String,
    },
    /// Every filter, transform and middleware plugin loaded, in name order.
    AllPlugins,
}

impl StageKind {
    /// The prefix used in configuration: `filter`, `transform`, `middleware`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Filter => "filter",
            StageKind::Transform => "transform",
            StageKind::Middleware => "middleware",
        }
    }
}

/// Why `name` cannot name a plugin, if it cannot: a plugin's name is its file's stem in the plugin
/// directory, so a path (`/`, `..`) would name a file elsewhere (`switchyard check` loaded one, and a
/// native library's private copy was written outside its directory).
pub(crate) fn plugin_name_problem(name: &str) -> Option<&'static str> {
    match name {
        "" => Some("names no plugin"),
        "." | ".." => Some("is not a file name"),
        _ if name.contains(['/', '\\', '\0']) => Some("is a path, not a file name in the plugin directory"),
        _ => None,
    }
}

impl TryFrom<String> for StageRef {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "*" {
            return Ok(StageRef::AllPlugins);
        }
        let (kind, name) = text.split_once(':').unwrap_or(("", &text));
        let kind = match kind {
            "filter" => StageKind::Filter,
            "transform" => StageKind::Transform,
            "middleware" => StageKind::Middleware,
            _ => {
                return Err(format!(
                    "stage \"{text}\" must be filter:NAME, transform:NAME, middleware:NAME or *"
                ));
            }
        };
        if let Some(problem) = plugin_name_problem(name) {
            return Err(format!("stage \"{text}\" {problem}"));
        }
        Ok(StageRef::Named { kind, name: name.to_owned() })
    }
}

impl From<StageRef> for String {
    fn from(stage: StageRef) -> String {
        stage.to_string()
    }
}

impl std::fmt::Display for StageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageRef::Named { kind, name } => write!(f, "{}:{name}", kind.as_str()),
            StageRef::AllPlugins => f.write_str("*"),
        }
    }
}
