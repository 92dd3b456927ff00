//! Retries for destinations delivered to in place (the `log` destination,
//! destinations registered in code): a [`DeliveryError::Retryable`] answer is
//! tried again, with the default retry policy's backoff, until its attempts
//! run out. Network destinations retry in their [`Cluster`](super::Cluster).

use super::{DeliveryError, DeliveryFuture, DeliveryResult, Destination, EndpointStatus};
use crate::message::Message;
use crate::resilience::RetryPolicy;
use std::sync::Arc;

/// `destination`, its retryable failures retried.
pub(crate) struct Retrying {
    destination: Arc<dyn Destination>,
    policy: RetryPolicy,
}

impl Retrying {
    /// `destination` with `attempts` attempts in all (the config's default).
    pub(crate) fn new(destination: Arc<dyn Destination>, attempts: u32) -> Retrying {
        Retrying { destination, policy: RetryPolicy { attempts, ..RetryPolicy::default() } }
    }

    async fn deliver_retrying(&self, message: Message) -> DeliveryResult {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last_error = match self.destination.deliver(message.clone()).await {
                Err(DeliveryError::Retryable(error)) => error,
                answer => return answer,
            };
            if attempts >= self.policy.attempts {
                return Err(DeliveryError::Attempts {
                    attempts,
                    last_error,
                    fatal: false,
                    refused: false,
                    maybe_delivered: false,
                });
            }
            let backoff = self.policy.backoff(attempts, &mut rand::rng());
            tokio::time::sleep(backoff).await;
        }
    }
}

impl Destination for Retrying {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(self.deliver_retrying(message))
    }

    fn endpoints(&self) -> Vec<EndpointStatus> {
        self.destination.endpoints()
    }

    fn unavailable(&self) -> Vec<String> {
        self.destination.unavailable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    /// A destination failing retryably `failures` times, then taking messages; counts calls.
    fn flaky(failures: u32) -> (Arc<AtomicU32>, Arc<dyn Destination>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let destination = move |_message: Message| {
            let call = counted.fetch_add(1, SeqCst) + 1;
            async move {
                match call <= failures {
                    true => Err(DeliveryError::Retryable(format!("busy ({call})"))),
                    false => Ok(None),
                }
            }
        };
        (calls, Arc::new(destination))
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_is_retried_until_it_succeeds() {
        let (calls, destination) = flaky(2);
        let retrying = Retrying::new(destination, 3);
        assert_eq!(retrying.deliver(Message::new("t", "x")).await, Ok(None));
        assert_eq!(calls.load(SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_attempts_and_say_how_many() {
        let (calls, destination) = flaky(u32::MAX);
        let retrying = Retrying::new(destination, 3);
        let answer = retrying.deliver(Message::new("t", "x")).await;
        let expected = DeliveryError::Attempts {
            attempts: 3,
            last_error: "busy (3)".into(),
            fatal: false,
            refused: false,
            maybe_delivered: false,
        };
        assert_eq!(answer, Err(expected));
        assert_eq!(calls.load(SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_failure_is_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let destination = move |_message: Message| {
            counted.fetch_add(1, SeqCst);
            async { Err(DeliveryError::Fatal("no".into())) }
        };
        let retrying = Retrying::new(Arc::new(destination), 3);
        assert_eq!(retrying.deliver(Message::new("t", "x")).await, Err(DeliveryError::Fatal("no".into())));
        assert_eq!(calls.load(SeqCst), 1);
    }
}
