//! Active health checks: one probe of one endpoint, on a fresh connection
//! (a check must see what a new connection would see, not a pooled one).
//!
//! `tcp`: the connect is the check. `http`: `GET {path}` must answer 2xx.

use crate::config::{HealthSettings, Transport};
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use tokio::net::TcpStream;

/// Probe `address` of a destination reached by `transport`: `Ok` when it
/// passes, else what went wrong.
pub async fn probe(transport: Transport, address: &str, settings: &HealthSettings) -> Result<(), String> {
    let deadline = Duration::from_millis(settings.timeout_ms);
    let check = async {
        match transport {
            Transport::Http => get(address, &settings.path).await,
            _ => TcpStream::connect(address).await.map(drop).map_err(|err| format!("connect: {err}")),
        }
    };
    tokio::time::timeout(deadline, check).await.unwrap_or_else(|_| Err(format!("no answer in {deadline:?}")))
}

/// `GET path` on a new connection to `address`; 2xx passes.
async fn get(address: &str, path: &str) -> Result<(), String> {
    let mut sender = super::http::connect(address).await.map_err(|err| format!("connect: {err}"))?.sender;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(Full::new(Bytes::new()))
        .map_err(|err| format!("invalid request: {err}"))?;
    let status = sender.send_request(request).await.map_err(|err| format!("GET {path}: {err}"))?.status();
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("GET {path}: HTTP {status}")),
    }
}
