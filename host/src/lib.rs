//! Switchyard: a message-orchestration host extended by hot-swappable
//! WebAssembly components.
//!
//! ```text
//! send / request / HTTP ingress ─► admission (size, topic, bounded queue: backpressure)
//!   ─► worker batch ─► router (first matching route) ─► stages (filters, transforms,
//!      middleware: WASM plugins or native Rust, each batch pinning its plugin versions)
//!   ─► destination (memory, log, your own) ─► reply back to the requester
//!   anything that cannot go on ─► dead-letter destination, with a reason (the
//!      dead-letter file in `host.state_dir` while none takes it; re-delivered later)
//! ```
//!
//! ```
//! use switchyard::{Host, Message, MemoryDestination, RouteConfig, Verdict};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (out, delivered) = MemoryDestination::new();
//! let host = Host::builder()
//!     .plugin_dir(std::env::temp_dir().join("switchyard-doc-no-plugins"))
//!     .destination("out", out)
//!     .filter("vip-only", |m: &Message| Ok(if m.header("tier") == Some("gold") { Verdict::Keep } else { Verdict::Drop }))
//!     .route(RouteConfig::new("orders", "orders.*", "out").stage("filter:vip-only"))
//!     .build()
//!     .await
//!     .unwrap();
//! host.send(Message::new("orders.eu", "{}").with_header("tier", "gold")).await.unwrap();
//! host.send(Message::new("orders.us", "{}")).await.unwrap();
//! host.shutdown().await;
//! assert_eq!(delivered.try_iter().count(), 1);
//! assert_eq!(host.stats().filtered, 1);
//! # }
//! ```

pub mod message;
pub mod receipt;
mod authority;
mod bearer;
mod bounded_text;
mod panic;
mod regular_file;
mod owner_only;
mod state_lock;
pub mod metrics;
pub mod config;
pub mod router;
pub mod plugin;
pub mod dead_letter;
pub mod spool;
pub mod transport;
pub mod destination;
pub mod balance;
pub mod resilience;
pub mod stage;
pub mod alert;
pub mod pipeline;
pub mod reload;
pub mod host;
mod json_errors;
mod listener;
pub mod ingress;
pub mod admin;
pub mod bench;

pub use config::{Config, ConfigError, FailurePolicy, RouteConfig};
pub use dead_letter::DeadLetterReason;
pub use destination::{
    DeliveryError, Destination, DestinationEvent, DestinationStatus, EndpointStatus, LogDestination,
    MemoryDestination,
};
pub use host::{BuildError, Host, HostBuilder, PendingReply, RequestError, SendError};
pub use ingress::{GrpcIngress, HttpIngress, NatsIngress};
pub use message::{Message, MessageId, Verdict};
pub use pipeline::Stats;
pub use plugin::{CompiledPlugin, LoadError, PluginError, PluginFault, PluginKind};
pub use receipt::{Receipt, Settlement};
pub use reload::{ConfigChange, EventCounts, HostEvent, Replacement};
pub use spool::{Damage, DamageKind, SpoolError, SpoolStatus};
pub use stage::{NativeFilter, NativeTransform};
