//! The `http` transport: each message is POSTed to one endpoint of the
//! destination, chosen by its balancer among the endpoints whose circuit
//! breaker admits traffic, over pooled keep-alive connections, with retries
//! (exponential backoff, full jitter, a retry budget) that prefer another
//! endpoint.
//!
//! The request carries the payload as its body and the message's headers, plus
//! `x-sy-topic` and `x-sy-id`. A 2xx answer is the reply (its body the payload,
//! its `x-` headers the headers); 5xx, 408, 429, timeouts and connection errors
//! are retried; other statuses are final.

use super::{DeliveryError, DeliveryFuture, Destination};
use crate::balance::{Balancer, BalancerConfig, EndpointView, PeakEwma, endpoint_id};
use crate::config::DestinationConfig;
use crate::message::Message;
use crate::resilience::{
    Breaker, BreakerConfig, BreakerState, EjectionBackoff, FatalReason, Outcome, RetryBudget, RetryPolicy,
    RetryReason,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;

/// One endpoint and what the destination knows of it.
struct Endpoint {
    address: String,
    id: u64,
    breaker: Breaker,
    in_flight: AtomicU32,
    latency: Mutex<PeakEwma>,
}

/// A destination reached over HTTP/1.1.
pub struct HttpDestination {
    name: String,
    endpoints: Vec<Endpoint>,
    balancer: std::sync::Arc<dyn Balancer>,
    hash_header: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    path: String,
    timeout: Duration,
    retry: RetryPolicy,
    budget: RetryBudget,
}

impl std::fmt::Debug for HttpDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDestination").field("name", &self.name).finish_non_exhaustive()
    }
}

impl HttpDestination {
    /// A destination for a validated `[[destination]]` with `transport = "http"`.
    pub fn new(config: &DestinationConfig) -> HttpDestination {
        let balancer: BalancerConfig = config.balancer.parse().expect("validated balancer");
        let breaker = BreakerConfig {
            consecutive_failures: config.breaker.consecutive_failures,
            failure_rate: None,
            ejection: EjectionBackoff {
                base: Duration::from_millis(config.breaker.open_ms),
                ..EjectionBackoff::default()
            },
        };
        let now = std::time::Instant::now();
        let endpoints = config
            .endpoints
            .iter()
            .map(|address| Endpoint {
                address: address.clone(),
                id: endpoint_id(address),
                breaker: Breaker::new(breaker),
                in_flight: AtomicU32::new(0),
                latency: Mutex::new(PeakEwma::new(
                    crate::balance::DEFAULT_RTT,
                    crate::balance::DEFAULT_DECAY,
                    now,
                )),
            })
            .collect();
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build_http();
        HttpDestination {
            name: config.name.clone(),
            endpoints,
            hash_header: balancer.hash_header().map(str::to_owned),
            balancer: balancer.build().expect("validated: not a plugin balancer"),
            client,
            path: config.path.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            retry: RetryPolicy {
                attempts: config.retry.attempts,
                base: Duration::from_millis(config.retry.base_ms),
                max: Duration::from_millis(config.retry.max_ms),
                jitter: 1.0,
            },
            budget: RetryBudget::default(),
        }
    }

    async fn send(&self, message: Message) -> Result<Option<Message>, DeliveryError> {
        let _request = self.budget.start_request();
        let key = self.hash_header.as_deref().and_then(|name| message.header(name));
        let mut tried = vec![false; self.endpoints.len()];
        let mut last_error = String::from("no endpoint admitted the message");
        let (mut attempts, mut retry_permit) = (0, None);
        while attempts < self.retry.attempts {
            let now = Instant::now();
            let Some((index, permit)) = self.choose(&mut tried, key, now) else { break };
            attempts += 1;
            let endpoint = &self.endpoints[index];
            let in_flight = InFlight::enter(&endpoint.in_flight);
            let started = Instant::now();
            let result = self.attempt(endpoint, &message).await;
            drop((in_flight, retry_permit.take()));
            let finished = Instant::now();
            endpoint
                .latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(finished - started, finished.into_std());
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err((outcome, _)) => outcome.clone(),
            };
            if let Some(transition) = permit.report(&outcome, finished) {
                tracing::warn!(destination = %self.name, endpoint = %endpoint.address, ?transition, "circuit breaker");
            }
            let error = match result {
                Ok(reply) => return Ok(reply),
                Err((Outcome::Fatal(_), error)) => return Err(DeliveryError::Fatal(error)),
                Err((_, error)) => error,
            };
            last_error = format!("{}: {error}", endpoint.address);
            let retry = self.retry.backoff_after(attempts, &outcome, &mut rand::rng());
            // The budget's permit is held through the backoff and the retry.
            let Some((delay, permit)) = retry.zip(self.budget.try_acquire()) else { break };
            retry_permit = Some(permit);
            tokio::time::sleep(delay).await;
        }
        Err(DeliveryError::Retryable(format!("gave up after {attempts} attempts; last: {last_error}")))
    }

    /// Pick an endpoint not tried yet (all again once every one was) whose
    /// breaker admits a request now.
    fn choose(
        &self,
        tried: &mut [bool],
        key: Option<&str>,
        now: Instant,
    ) -> Option<(usize, crate::resilience::BreakerPermit)> {
        if tried.iter().all(|t| *t) {
            tried.iter_mut().for_each(|t| *t = false);
        }
        let mut views: Vec<EndpointView> = self
            .endpoints
            .iter()
            .zip(tried.iter())
            .map(|(endpoint, tried)| EndpointView {
                id: endpoint.id,
                weight: 1,
                in_flight: endpoint.in_flight.load(Relaxed),
                latency: endpoint.latency.lock().unwrap_or_else(|p| p.into_inner()).estimate(now.into_std()),
                eligible: !tried && admits(&endpoint.breaker, now),
            })
            .collect();
        while let Some(index) = self.balancer.pick(&views, key) {
            tried[index] = true;
            views[index].eligible = false;
            if let Some(permit) = self.endpoints[index].breaker.try_acquire(now) {
                return Some((index, permit));
            }
        }
        None
    }

    /// One POST; on failure, how to classify it and what went wrong.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        message: &Message,
    ) -> Result<Option<Message>, (Outcome, String)> {
        let uri = format!("http://{}{}", endpoint.address, self.path);
        let mut request =
            hyper::Request::post(uri).header("x-sy-topic", &message.topic).header("x-sy-id", message.id);
        for (name, value) in &message.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(message.payload.clone()))
            .map_err(|err| (Outcome::Fatal(FatalReason::Protocol), format!("invalid request: {err}")))?;
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => {
                return Err((
                    Outcome::Retryable(RetryReason::Timeout),
                    format!("no answer in {:?}", self.timeout),
                ));
            }
            Ok(Err(err)) if err.is_connect() => {
                return Err((Outcome::Retryable(RetryReason::Connect), err.to_string()));
            }
            Ok(Err(err)) => return Err((Outcome::Retryable(RetryReason::Reset), err.to_string())),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        let body = match tokio::time::timeout(self.timeout, response.into_body().collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(err)) => return Err((Outcome::Retryable(RetryReason::Reset), err.to_string())),
            Err(_) => return Err((Outcome::Retryable(RetryReason::Timeout), "body timed out".into())),
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

/// One request in flight to an endpoint, counted until dropped (even when
/// the delivery is cancelled mid-request).
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU32) -> InFlight<'a> {
        count.fetch_add(1, Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Whether `breaker` would admit a request now (without taking its permit),
/// so the balancer chooses among admitted endpoints and its turns and scores
/// are not spent on ejected ones.
fn admits(breaker: &Breaker, now: Instant) -> bool {
    match breaker.state(now) {
        BreakerState::Closed => true,
        BreakerState::HalfOpen { probing, .. } => !probing,
        BreakerState::Open { .. } => false,
    }
}

impl Destination for HttpDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(self.send(message))
    }

    fn endpoints(&self) -> Vec<super::EndpointStatus> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .map(|endpoint| super::EndpointStatus {
                address: endpoint.address.clone(),
                breaker: match endpoint.breaker.state(now) {
                    BreakerState::Closed => "closed",
                    BreakerState::Open { .. } => "open",
                    BreakerState::HalfOpen { .. } => "half-open",
                },
                in_flight: endpoint.in_flight.load(Relaxed),
                latency_ms: endpoint
                    .latency
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .estimate(now.into_std())
                    .as_secs_f64()
                    * 1e3,
            })
            .collect()
    }
}
