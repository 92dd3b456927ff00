//! The `http` transport: each attempt POSTs the message to an endpoint over
//! an HTTP/1.1 keep-alive connection from that endpoint's [`Pool`](super::Pool).
//!
//! The request carries the payload as its body and the message's headers, plus
//! `x-sy-topic` and `x-sy-id`. A 2xx answer is the reply (its body the payload,
//! its `x-` headers the headers); 5xx, 408, 429 and connection errors are
//! retryable; other statuses are final. A connection goes back to its pool
//! only after a complete response, body read, with the connection still open.

use super::cluster::{AttemptFuture, AttemptResult, Transport};
use super::pool::{PoolConfig, PoolStats, Pools};
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The sending half of one HTTP/1.1 connection; its driver runs as a task.
pub(super) type Sender = SendRequest<Full<Bytes>>;

/// POSTs to `http://ADDRESS{path}`.
pub struct HttpTransport {
    pools: Pools<Sender>,
    path: String,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").field("path", &self.path).finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport posting to `path` on every endpoint, keeping a pool of
    /// connections with `pool` settings per endpoint.
    pub fn new(path: &str, pool: PoolConfig) -> HttpTransport {
        HttpTransport { pools: Pools::new(pool, |sender| !sender.is_closed()), path: path.to_owned() }
    }

    /// One POST; on failure, how to classify it and what went wrong.
    async fn post(&self, address: &str, message: &Message) -> AttemptResult {
        let mut request = hyper::Request::post(&self.path)
            .header(hyper::header::HOST, address)
            .header("x-sy-topic", &message.topic);
        for (name, value) in &message.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(message.payload.clone()))
            .map_err(|err| (Outcome::Fatal(FatalReason::Protocol), format!("invalid request: {err}")))?;
        let pool = self.pools.get(address);
        let mut sender = loop {
            let mut sender =
                pool.acquire(|| connect(address)).await.map_err(|err| err.into_attempt_error(address))?;
            match sender.ready().await {
                Ok(()) => break sender,
                // Closed while idle, before anything was sent: drop it, take the next.
                Err(_) if sender.is_reused() => continue,
                Err(err) => return Err((Outcome::Retryable(RetryReason::Reset), err.to_string())),
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| (Outcome::Retryable(RetryReason::Reset), err.to_string()))?;
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) => return Err((Outcome::Retryable(RetryReason::Reset), err.to_string())),
        };
        if !sender.is_closed() {
            sender.release();
        }
        match Outcome::from_status(status.as_u16()) {
            Outcome::Ok if status == hyper::StatusCode::NO_CONTENT => Ok(None),
            Outcome::Ok => {
                let reply = Message {
                    id: message.id,
                    topic: message.topic.clone(),
                    headers,
                    payload: body,
                    priority: message.priority,
                };
                Ok(Some(reply))
            }
            outcome => Err((outcome, format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))),
        }
    }
}

impl Transport for HttpTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.post(address, message))
    }

    fn close_idle(&self, address: &str) {
        self.pools.close_idle(address);
    }

    fn pool_stats(&self, address: &str) -> Option<PoolStats> {
        self.pools.stats(address)
    }
}

/// A new connection to `address`, its driver spawned as a task that ends
/// when the connection closes or its sender is dropped.
pub(super) async fn connect(address: &str) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    let address = address.to_owned();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(endpoint = %address, %err, "http connection closed");
        }
    });
    Ok(sender)
}
