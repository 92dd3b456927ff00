//! A cluster: the endpoints of a network destination and what every transport
//! shares — each message goes to one endpoint chosen by the balancer among
//! those whose circuit breaker admits traffic, under a deadline per attempt,
//! with retries (exponential backoff, full jitter, a retry budget) that prefer
//! another endpoint. A [`Transport`] only knows how to make one attempt.

use super::{DeliveryError, DeliveryFuture, Destination};
use crate::balance::{Balancer, BalancerConfig, EndpointView, PeakEwma, endpoint_id};
use crate::config::DestinationConfig;
use crate::message::Message;
use crate::resilience::{
    Breaker, BreakerConfig, BreakerState, EjectionBackoff, Outcome, RetryBudget, RetryPolicy, RetryReason,
};
use std::future::Future;
use std::pin::Pin;
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

/// What one attempt gives: the reply (if any), or how to classify the
/// failure and what went wrong.
pub type AttemptResult = Result<Option<Message>, (Outcome, String)>;

/// The future of one attempt.
pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = AttemptResult> + Send + 'a>>;

/// How messages reach an endpoint: one attempt at a time.
pub trait Transport: Send + Sync + 'static {
    /// Try once to deliver `message` to `address`; called once per attempt,
    /// under the cluster's deadline (the future is dropped when it passes).
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a>;

    /// Close the idle connections kept to `address`, and keep those in use
    /// now from being reused; called when the endpoint turns unhealthy. A
    /// transport without connections does nothing.
    fn close_idle(&self, _address: &str) {}

    /// The state of the connection pool to `address`, for the admin API and
    /// metrics; called on demand. `None` without a pool, or before the first
    /// attempt to `address`.
    fn pool_stats(&self, _address: &str) -> Option<super::PoolStats> {
        None
    }
}

/// A destination of endpoints reached through transport `T`.
pub struct Cluster<T> {
    name: String,
    endpoints: Vec<Endpoint>,
    balancer: std::sync::Arc<dyn Balancer>,
    hash_header: Option<String>,
    transport: T,
    timeout: Duration,
    retry: RetryPolicy,
    budget: RetryBudget,
}

impl<T> std::fmt::Debug for Cluster<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<T: Transport> Cluster<T> {
    /// A cluster for a validated network `[[destination]]`, reaching its endpoints through `transport`.
    pub fn new(config: &DestinationConfig, transport: T) -> Cluster<T> {
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
        Cluster {
            name: config.name.clone(),
            endpoints,
            hash_header: balancer.hash_header().map(str::to_owned),
            balancer: balancer.build().expect("validated: not a plugin balancer"),
            transport,
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
            let result =
                match tokio::time::timeout(self.timeout, self.transport.attempt(&endpoint.address, &message))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err((
                        Outcome::Retryable(RetryReason::Timeout),
                        format!("no answer in {:?}", self.timeout),
                    )),
                };
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

impl<T: Transport> Destination for Cluster<T> {
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
