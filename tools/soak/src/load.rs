//! The senders: `POST /v1/messages/{topic}` at a steady rate over a few
//! keep-alive connections, keeping the id of every message accepted.

use crate::client::Connection;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The topic every message is sent on.
pub const TOPIC: &str = "soak.orders";

/// What the senders were answered.
#[derive(Debug, Default)]
pub struct Load {
    accepted: Mutex<Vec<String>>,
    accepted_count: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
}

impl Load {
    /// How many messages were accepted (202) so far.
    pub fn accepted_count(&self) -> u64 {
        self.accepted_count.load(Relaxed)
    }

    /// The ids of the accepted messages.
    pub fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    /// Answers other than 202, by status (or `error` when none came).
    pub fn refused(&self) -> BTreeMap<String, u64> {
        self.refused.lock().unwrap().clone()
    }

    fn refuse(&self, why: String) {
        *self.refused.lock().unwrap().entry(why).or_default() += 1;
    }
}

/// Sends `rate` messages a second to `ingress` from `start` until `end`,
/// over `connections` connections: message `n` is due `n / rate` seconds
/// after `start`, and whichever connection is free sends it.
pub async fn send(
    ingress: SocketAddr,
    rate: u32,
    (start, end): (Instant, Instant),
    connections: usize,
    load: Arc<Load>,
) {
    let next = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (next, load) = (next.clone(), load.clone());
        senders.spawn(async move {
            let mut connection = Connection::new(ingress);
            let path = format!("/v1/messages/{TOPIC}");
            loop {
                let n = next.fetch_add(1, Relaxed);
                let due = start + period.mul_f64(n as f64);
                if due >= end {
                    return;
                }
                tokio::time::sleep_until(due).await;
                let body =
                    Bytes::from(format!(r#"{{"seq":{n},"card":"4111-1111-1111-1111","note":"soak"}}"#));
                match connection.request(Method::POST, &path, body).await {
                    Ok((StatusCode::ACCEPTED, body)) => match accepted_id(&body) {
                        Some(id) => {
                            load.accepted.lock().unwrap().push(id);
                            load.accepted_count.fetch_add(1, Relaxed);
                        }
                        None => load.refuse(format!("202 without an id: {}", String::from_utf8_lossy(&body))),
                    },
                    Ok((status, _)) => load.refuse(status.as_u16().to_string()),
                    Err(err) => load.refuse(format!("error: {err:#}")),
                }
            }
        });
    }
    senders.join_all().await;
}

/// The id of a `202 {"id":…}` answer, as the text an `x-sy-id` header carries.
fn accepted_id(body: &[u8]) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    match answer.get("id")? {
        serde_json::Value::String(id) => Some(id.clone()),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::accepted_id;

    #[test]
    fn an_accepted_id_is_read_as_text_whether_a_string_or_a_number() {
        assert_eq!(accepted_id(br#"{"id":"0190-ab"}"#).as_deref(), Some("0190-ab"));
        assert_eq!(accepted_id(br#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(accepted_id(br#"{"error":"x"}"#), None);
    }
}
