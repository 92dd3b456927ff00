//! The `http` transport: each attempt POSTs the message to an endpoint over
//! hyper's pooled keep-alive connections.
//!
//! The request carries the payload as its body and the message's headers, plus
//! `x-sy-topic` and `x-sy-id`. A 2xx answer is the reply (its body the payload,
//! its `x-` headers the headers); 5xx, 408, 429 and connection errors are
//! retryable; other statuses are final.

use super::cluster::{AttemptFuture, AttemptResult, Transport};
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// POSTs to `http://ADDRESS{path}`.
pub struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    path: String,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").field("path", &self.path).finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport posting to `path` on every endpoint; idle connections are
    /// kept for 30 s.
    pub fn new(path: &str) -> HttpTransport {
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build_http();
        HttpTransport { client, path: path.to_owned() }
    }

    /// One POST; on failure, how to classify it and what went wrong.
    async fn post(&self, address: &str, message: &Message) -> AttemptResult {
        let uri = format!("http://{address}{}", self.path);
        let mut request =
            hyper::Request::post(uri).header("x-sy-topic", &message.topic).header("x-sy-id", message.id);
        for (name, value) in &message.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(message.payload.clone()))
            .map_err(|err| (Outcome::Fatal(FatalReason::Protocol), format!("invalid request: {err}")))?;
        let response = match self.client.request(request).await {
            Err(err) if err.is_connect() => {
                return Err((Outcome::Retryable(RetryReason::Connect), err.to_string()));
            }
            Err(err) => return Err((Outcome::Retryable(RetryReason::Reset), err.to_string())),
            Ok(response) => response,
        };
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
        match Outcome::from_status(status.as_u16()) {
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
}
