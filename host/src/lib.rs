//! Switchyard: a message-orchestration host extended by hot-swappable
//! WebAssembly components.

pub mod config;
pub mod message;
pub mod plugin;
pub mod router;

pub use config::Config;
pub use message::{Message, MessageId};
