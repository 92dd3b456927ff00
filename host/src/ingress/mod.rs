//! Ingress: network listeners that turn requests into accepted messages.

mod bulk;
mod http;
mod nats;
mod websocket;

pub use http::HttpIngress;
pub use nats::NatsIngress;
