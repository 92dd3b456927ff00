//! Ingress: network listeners that turn requests into accepted messages.

mod bulk;
mod http;

pub use http::HttpIngress;
