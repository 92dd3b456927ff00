//! One message through a cluster: attempts, retries and the waits between
//! them, until it is delivered, fails for good or runs out of time.

use super::Cluster;
use super::affinity::StreamChoice;
use super::choice::Picker;
use super::endpoint::{Counted, Endpoint, lock};
use crate::destination::{DeliveryError, Slot};
use crate::message::Message;
use crate::resilience::{BreakerPermit, BreakerState, Outcome, RetryReason};
use crate::transport::{AttemptProgress, DeliveryProgress, Step, Wait};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

impl Cluster {
    /// Deliver `message`, which entered the queue at `enqueued`: attempts
    /// until one succeeds, one fails for good, the attempts run out or the
    /// queue timeout passes while no endpoint can take it (or, before its
    /// first attempt, while the balancer picks one). A message
    /// delivered in place (`enqueued` is `None`: a dead letter) waits for no
    /// endpoint: it fails as soon as none can take it.
    pub(super) async fn send(
        &self,
        message: Message,
        enqueued: Option<Instant>,
    ) -> Result<Option<Message>, DeliveryError> {
        let _request = self.budget.start_request();
        let deadline = enqueued.map(|enqueued| enqueued + self.queue_timeout);
        let key = self.hash_header.as_deref().and_then(|name| message.header(name));
        let mut tried = vec![false; self.endpoints.len()];
        let mut last_error = None;
        let (mut attempts, mut retry_permit) = (0, None);
        // Whether an attempt went out and got no answer: the message may
        // have been taken, whatever the later attempts say.
        let mut maybe_delivered = false;
        // Retired by a reload: a queued message no endpoint saw yet waits for none here, it goes
        // to the destination's new instance (or, removed, is dead-lettered).
        let retired = |attempts: u32| enqueued.is_some() && attempts == 0 && self.retired.is_cancelled();
        // Its stream does not end for idleness while this message is under way, and counts it once
        // among its messages, however many passes below pick an endpoint for it.
        let mut stream_hold = None;
        loop {
            let chosen = match (&self.balancer, key) {
                (Picker::Affinity(affinity), Some(key)) => {
                    let changed = self.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    let choice = self.choose_stream(affinity, key);
                    if stream_hold.is_none() {
                        stream_hold = affinity.hold(key);
                    }
                    match choice {
                        StreamChoice::Go(index, permit) => Some((index, permit)),
                        StreamChoice::Nowhere => None,
                        StreamChoice::Busy if retired(attempts) => return Err(DeliveryError::Retired),
                        // Wait for the probe's verdict on the stream's endpoint (a retirement
                        // also wakes this: `changed`).
                        StreamChoice::Busy => match deadline {
                            Some(deadline) if self.wait_for_endpoint(deadline, changed).await => continue,
                            _ => {
                                return Err(self.no_endpoint(
                                    enqueued,
                                    attempts,
                                    last_error,
                                    maybe_delivered,
                                ));
                            }
                        },
                    }
                }
                _ => {
                    let choice = self.choose(&mut tried, &message, key);
                    // A balancer plugin's pick may take its patience, twice the plugin's deadline, and
                    // its thread serves picks in turn: a message no endpoint saw yet waits for it no
                    // longer than for an endpoint, to its queue timeout (a retry, whose queue timeout
                    // has often passed, waits up to the patience).
                    match deadline.filter(|_| attempts == 0) {
                        Some(deadline) => match tokio::time::timeout_at(deadline, choice).await {
                            Ok(chosen) => chosen,
                            Err(_) => {
                                let why = Some("the balancer had not picked an endpoint".to_owned());
                                return Err(self.no_endpoint(enqueued, attempts, why, maybe_delivered));
                            }
                        },
                        None => choice.await,
                    }
                }
            };
            let Some((index, permit)) = chosen else {
                if retired(attempts) {
                    return Err(DeliveryError::Retired);
                }
                // No endpoint can take it now: wait for one, spending nothing (or for a
                // retirement, which the next turn of the loop answers).
                let served = match deadline {
                    Some(deadline) => tokio::select! {
                        served = self.wait_for_endpoint(deadline, self.serving()) => served,
                        () = self.retired.cancelled(), if attempts == 0 => true,
                    },
                    None => false,
                };
                match served {
                    true => continue,
                    false => return Err(self.no_endpoint(enqueued, attempts, last_error, maybe_delivered)),
                }
            };
            let endpoint = &self.endpoints[index];
            let (outcome, result) = self.attempt(endpoint, permit, &message, attempts + 1).await;
            let error = match result {
                Ok(reply) => return Ok(reply),
                Err(error) => format!("{}: {error}", endpoint.address),
            };
            if outcome == Outcome::ReplyRefused {
                return Err(DeliveryError::ReplyRefused(error));
            }
            if matches!(outcome, Outcome::Shed | Outcome::Retryable(RetryReason::Connect)) {
                // The endpoint never saw it: not an attempt, nor a retry.
                // Another endpoint is tried, or this one once it can take it.
                last_error = Some(error);
                // Past the deadline, or in place with a full pool: as good
                // as no endpoint.
                let given_up = match deadline {
                    Some(deadline) => Instant::now() >= deadline,
                    None => outcome == Outcome::Shed,
                };
                if given_up {
                    return Err(self.no_endpoint(enqueued, attempts, last_error, maybe_delivered));
                }
                continue;
            }
            attempts += 1;
            drop(retry_permit.take());
            let safe =
                self.idempotent || matches!(&outcome, Outcome::Retryable(reason) if reason.is_not_taken());
            maybe_delivered |= matches!(&outcome, Outcome::Retryable(reason) if reason.is_unanswered());
            if !(outcome.is_retryable() && safe) || attempts >= self.retry.attempts {
                let fatal = !(outcome.is_retryable() && safe);
                let refused = matches!(outcome, Outcome::Fatal(_));
                return Err(DeliveryError::Attempts {
                    attempts,
                    last_error: error,
                    fatal,
                    refused,
                    maybe_delivered,
                });
            }
            last_error = Some(error);
            // A message's first retry always goes; past the retry budget,
            // later ones wait for another to end. The permit is held through
            // the backoff and the retry.
            retry_permit = Some(match attempts {
                1 => self.budget.first_retry(),
                _ => self.budget.acquire().await,
            });
            self.retries.inc();
            let backoff = self.retry.backoff(attempts, &mut rand::rng());
            tokio::time::sleep(backoff).await;
        }
    }

    /// Wait until `ready` (an endpoint may take the message now) or `deadline`; whether it was
    /// ready. Meanwhile the message counts as queued: taken from the queue, it went nowhere.
    async fn wait_for_endpoint(&self, deadline: Instant, ready: impl Future<Output = ()>) -> bool {
        let _waiting = Counted::enter(&self.waiting);
        tokio::time::timeout_at(deadline, ready).await.is_ok()
    }

    /// A place among `endpoint`'s attempts in flight, within its limit over every instance of the
    /// destination (its pool's size: the instances a reload builds have pools of their own). While
    /// it has none free, the attempt waits ([`Wait::Room`]) as for a free pooled connection: nothing
    /// sent, counted among the endpoint's pool waits, shed after the pool's `acquire_timeout_ms`.
    async fn enter<'e>(&self, endpoint: &'e Endpoint) -> Result<(Slot, Counted<'e>), (Outcome, String)> {
        let slots = &endpoint.state.slots;
        let slot = match slots.try_acquire() {
            Some(slot) => slot,
            None => {
                AttemptProgress::mark_current(Step::Waiting(Wait::Room));
                self.pool_waits.endpoint(&endpoint.address).inc();
                let waited = self.room_timeout;
                let slot = tokio::time::timeout(waited, slots.acquire()).await.map_err(|_| {
                    let (room, most) = (Wait::Room.not_come(), self.endpoint_limit);
                    (Outcome::Shed, format!("{room} within {waited:?} (pool.max_size: {most} at once)"))
                })?;
                AttemptProgress::mark_current(Step::MaySend);
                slot
            }
        };
        Ok((slot, Counted::enter(&endpoint.state.in_flight)))
    }

    /// How an attempt cut at its deadline with `progress` ended: one that
    /// never sent is no attempt (it waited for a connection: shed; it could
    /// not connect in time: a connect failure); one that sent got no answer,
    /// unless the endpoint had answered: that it took the message (then only
    /// its reply is lost), or that the attempt failed (then it failed so).
    fn cut_at_deadline(&self, progress: &AttemptProgress) -> (Outcome, Result<Option<Message>, String>) {
        let timeout = self.timeout;
        if let Some((outcome, problem)) = progress.failure() {
            return (outcome, Err(format!("{problem}: the rest of its answer not read within {timeout:?}")));
        }
        match progress.abandon() {
            Step::Waiting(wait) => {
                (Outcome::Shed, Err(format!("{} within the attempt's {timeout:?}", wait.not_come())))
            }
            Step::Connecting => (
                Outcome::Retryable(RetryReason::Connect),
                Err(format!("not connected within the attempt's {timeout:?}")),
            ),
            Step::MaySend | Step::Abandoned => {
                (Outcome::Retryable(RetryReason::Timeout), Err(format!("no answer in {timeout:?}")))
            }
            Step::Answered => {
                (Outcome::ReplyRefused, Err(format!("its reply not read in full within {timeout:?}")))
            }
        }
    }

    /// Why a message fails when no endpoint could take it: before its queue
    /// timeout, counted from `enqueued` (never sent: `queue-timeout`; or
    /// retries cut short), or at once when delivered in place (`None`).
    pub(super) fn no_endpoint(
        &self,
        enqueued: Option<Instant>,
        attempts: u32,
        last_error: Option<String>,
        maybe_delivered: bool,
    ) -> DeliveryError {
        if let Some(enqueued) = enqueued.filter(|_| attempts == 0) {
            let waited_ms = enqueued.elapsed().as_millis() as u64;
            return DeliveryError::QueueTimeout { waited_ms, last_error };
        }
        let last = last_error.map_or_else(String::new, |last| format!("{last}; "));
        let last_error = match enqueued {
            Some(enqueued) => {
                let waited = enqueued.elapsed().as_millis();
                format!("{last}then no endpoint could take it within its queue timeout ({waited} ms)")
            }
            None => format!("{last}no endpoint can take it now"),
        };
        DeliveryError::Attempts { attempts, last_error, fatal: false, refused: false, maybe_delivered }
    }

    /// Resolves once some endpoint can take traffic (see [`Cluster::admissions`]).
    pub(super) async fn serving(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.next_serving(Instant::now()) {
                None => return,
                Some(Some(at)) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Some(None) => changed.await,
            }
        }
    }

    /// `None` when some endpoint can take traffic `now`; otherwise when one
    /// may next without news from an attempt or a health check (an ejection
    /// or a refusal window ends), if ever.
    pub(super) fn next_serving(&self, now: Instant) -> Option<Option<Instant>> {
        if self.admissions(now).admissions.iter().any(|admission| admission.is_eligible()) {
            return None;
        }
        let ends = self.endpoints.iter().flat_map(|endpoint| {
            let ejection = match endpoint.state.breaker.state(now) {
                BreakerState::Open { until, .. } => Some(until),
                _ => None,
            };
            [ejection, endpoint.refusing_until()]
        });
        Some(ends.flatten().filter(|end| *end > now).min())
    }

    /// Attempt number `attempt` at `endpoint`, under the deadline; its
    /// outcome feeds the endpoint's latency, breaker, health and metrics.
    pub(super) async fn attempt(
        &self,
        endpoint: &Endpoint,
        permit: BreakerPermit,
        message: &Message,
        attempt: u32,
    ) -> (Outcome, Result<Option<Message>, String>) {
        let started = Instant::now();
        // Whether it was left out as this attempt began (this attempt's probe claim, say).
        let refusing_before = endpoint.state.refusing_until.load(Relaxed);
        let span =
            tracing::debug_span!("attempt", destination = %self.name, endpoint = %endpoint.address, attempt);
        let progress = AttemptProgress::default();
        DeliveryProgress::note_current(&progress);
        let answer = progress.scope(async {
            let _in_flight = self.enter(endpoint).await?;
            self.transport.attempt(&endpoint.address, message).await
        });
        let (outcome, result) = match tokio::time::timeout(self.timeout, answer).instrument(span).await {
            Ok(Ok(reply)) => (Outcome::Ok, Ok(reply)),
            Ok(Err((outcome, error))) => (outcome, Err(error)),
            Err(_) => self.cut_at_deadline(&progress),
        };
        let finished = Instant::now();
        let refusing = match outcome {
            Outcome::Retryable(RetryReason::Connect) => Some(self.refusal_window),
            // Left out as long as it asked, but no message waits for it longer than its queue timeout.
            Outcome::Retryable(RetryReason::RetryAfter(after)) => Some(after.min(self.queue_timeout)),
            Outcome::Shed => None,
            _ => Some(Duration::ZERO),
        };
        match refusing {
            // In place of what left it out as the attempt began (its probe claim); but when
            // another attempt left it out since, the longer wins: a refusal does not shorten a
            // pause a 429 asked for.
            Some(window) if !window.is_zero() => {
                let until = endpoint.stamp(finished + window);
                let refusing = &endpoint.state.refusing_until;
                if refusing.compare_exchange(refusing_before, until, Relaxed, Relaxed).is_err() {
                    refusing.fetch_max(until, Relaxed);
                }
            }
            // It answered: it is in again, unless another attempt left it out meanwhile (an
            // answer to a request sent before a 429 does not end the pause the 429 asked for).
            Some(_) => {
                let _changed =
                    endpoint.state.refusing_until.compare_exchange(refusing_before, 0, Relaxed, Relaxed);
            }
            None => {}
        }
        lock(&endpoint.state.latency).observe(finished - started, finished.into_std());
        let kind = match &outcome {
            Outcome::Ok | Outcome::ReplyRefused => 0,
            Outcome::Retryable(_) => 1,
            Outcome::Fatal(_) => 2,
            Outcome::Shed => 3,
        };
        endpoint.metrics.attempts[kind].inc();
        self.transport_metrics.attempts[kind].inc();
        self.transport_metrics.latency.observe(finished - started);
        let problem = result.as_ref().err().map_or("", String::as_str);
        if let Some(transition) = permit.report(&outcome, finished) {
            self.breaker_changed(endpoint, transition, problem);
        }
        let transition =
            lock(&endpoint.state.health).as_mut().and_then(|health| health.record_passive(&outcome));
        self.health_changed(endpoint, transition, Some(problem));
        self.changed.notify_waiters();
        (outcome, result)
    }
}
