//! Destinations: where routed messages are delivered.
//!
//! This is the seam the destination core (pools, balancers, breakers, retries
//! over real transports) plugs into; here live the in-process ones.

mod pool;
mod cluster;
mod http;
mod log;
mod memory;
mod tcp;

pub use cluster::{AttemptFuture, AttemptResult, Cluster, Transport};
pub use http::HttpTransport;
pub use log::LogDestination;
pub use memory::MemoryDestination;
pub use pool::{Pool, PoolConfig, PoolError, PoolStats, Pooled, Pools};
pub use tcp::TcpTransport;

use crate::message::Message;
use std::future::Future;
use std::pin::Pin;

/// What a delivery returns: the destination's reply, if it gives one.
pub type DeliveryResult = Result<Option<Message>, DeliveryError>;

/// The future of one delivery.
pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = DeliveryResult> + Send + 'a>>;

/// Why a destination could not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// A transient failure; a retry may succeed.
    #[error("delivery failed, retryable: {0}")]
    Retryable(String),
    /// A permanent failure.
    #[error("delivery failed: {0}")]
    Fatal(String),
}

/// A place messages are delivered to.
pub trait Destination: Send + Sync + 'static {
    /// Called once per message routed here, after every stage has run.
    fn deliver(&self, message: Message) -> DeliveryFuture<'_>;

    /// The state of the destination's endpoints, for the admin API; called
    /// on demand. Destinations without endpoints have none.
    fn endpoints(&self) -> Vec<EndpointStatus> {
        Vec::new()
    }
}

/// What the admin API shows of one endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointStatus {
    /// The endpoint's address.
    pub address: String,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// Requests in flight to it now.
    pub in_flight: u32,
    /// Its peak-EWMA latency estimate, milliseconds.
    pub latency_ms: f64,
}

impl<F, Fut> Destination for F
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = DeliveryResult> + Send + 'static,
{
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(self(message))
    }
}
