//! Errors of the embedding API.

use crate::config::ConfigError;
use crate::dead_letter::DeadLetterReason;

/// A message that was not accepted. Nothing was enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Topic, payload and headers together are larger than `host.max_message_bytes`.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Topic, payload and header bytes (names and values), the host's own id and stream
        /// sequence number aside.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message is malformed (e.g. an invalid topic).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The queue is full (only from the `try_` variants, which never wait).
    #[error("the host is at capacity; retry later")]
    Backpressure,
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// With `durability = "spool"`: the spool could not write the message (the error, quoted).
    #[error("the spool could not record the message: {0}")]
    Unrecorded(String),
}

/// A request that got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// It was never accepted.
    #[error(transparent)]
    NotAccepted(#[from] SendError),
    /// A filter or transform dropped it.
    #[error("dropped by a stage of route \"{route}\"")]
    Filtered {
        /// The route it was on.
        route: String,
    },
    /// It was dead-lettered.
    #[error("dead-lettered: {0}")]
    DeadLettered(DeadLetterReason),
    /// It was to be dead-lettered, for this reason, and could not be: no
    /// dead-letter destination took it and the dead-letter file could not
    /// be written (with the spool, the next start delivers it again).
    #[error("not dead-lettered either, no dead-letter destination or file took it: {0}")]
    Lost(DeadLetterReason),
    /// It was delivered, but a middleware failed on the reply.
    #[error("delivered, but the reply failed: {0}")]
    ReplyFailed(DeadLetterReason),
    /// It was delivered (the endpoint took it, and it is not dead-lettered), but the endpoint's
    /// reply was refused: larger than the host reads, malformed, cut off or not read within the
    /// attempt's deadline. Sending it again would deliver it twice.
    #[error("delivered to \"{destination}\", but its reply was refused: {problem}")]
    ReplyRefused {
        /// The destination that took it.
        destination: String,
        /// Why the reply was refused (after the endpoint's address when its attempt refused it).
        problem: String,
    },
    /// The worker handling it panicked (a host bug; see the logs): a pipeline worker, or the
    /// reply worker passing its reply back through the route's middleware.
    #[error("the pipeline worker handling the request failed")]
    WorkerFailed,
    /// The host went away with the request in flight: its tokio runtime shut down (or the host
    /// was dropped) before anything answered it, and nothing will. With `durability = "spool"`
    /// the message stays in the spool, and the next start delivers it.
    #[error("the host's runtime shut down, or the host was dropped, before the request was answered")]
    HostGone,
}

/// A host that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Two registrations on the builder share a name: the second would have replaced the first.
    #[error("{kind} \"{name}\" is registered twice on the builder")]
    RegisteredTwice {
        /// `destination`, `transport`, `filter` or `transform`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The plugin directory cannot be read.
    #[error("plugin directory {dir}: {error}")]
    PluginDir {
        /// The directory.
        dir: String,
        /// Why.
        error: std::io::Error,
    },
    /// The state directory cannot be created or locked, or another host uses it.
    #[error("state directory {dir}: {problem}")]
    StateDir {
        /// The directory.
        dir: String,
        /// Why.
        problem: String,
    },
    /// The dead-letter file in the state directory cannot be read.
    #[error(transparent)]
    DeadLetterFile(#[from] crate::dead_letter::FileError),
    /// The spool in the state directory cannot be read or its writer started.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    /// The WebAssembly engine could not start.
    #[error(transparent)]
    Engine(#[from] crate::plugin::EngineError),
    /// The plugin directory cannot be watched.
    #[error("cannot watch the plugin directory: {0}")]
    Watch(String),
    /// A worker thread could not be started.
    #[error("cannot start a pipeline worker thread: {error}")]
    Thread {
        /// Why.
        error: std::io::Error,
    },
    /// The admin API would listen beyond loopback without a token.
    #[error(
        "refusing to serve the admin API on {addr} without a token: set [admin] token or SWITCHYARD_ADMIN_TOKEN, or listen on a loopback address"
    )]
    AdminUnprotected {
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// The admin token in the environment is one no client could present.
    #[error(
        "{variable} must be visible ASCII characters, no spaces: no client could present it (its value is not shown)"
    )]
    AdminTokenEnv {
        /// The variable.
        variable: &'static str,
    },
    /// A NATS ingress could not connect to its server, or subscribe.
    #[error("cannot subscribe at the NATS server {url}: {error}")]
    Nats {
        /// The server, `host:port`.
        url: String,
        /// Why.
        error: std::io::Error,
    },
    /// A JetStream ingress could not connect, find its stream or create its consumer.
    #[error("cannot consume the JetStream stream {stream} at the NATS server {url}: {error}")]
    JetStream {
        /// The server, `host:port`.
        url: String,
        /// The stream.
        stream: String,
        /// Why (the client's or the server's words).
        error: String,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}
