//! Ingress: network listeners that turn requests into accepted messages.

mod http;

pub use http::HttpIngress;
