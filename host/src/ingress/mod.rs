//! Ingress: network listeners that turn requests into accepted messages.

mod bulk;
mod http;
mod websocket;

pub use http::HttpIngress;
