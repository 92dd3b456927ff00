//! Fallbacks: a network destination that could not send a message within its queue timeout hands it
//! to its `fallback` destination instead of dead-lettering it. Each such message is counted
//! (`switchyard_destination_fallbacks_total`); the first after a quiet spell is told as an event.
//! The hand-off ends once the fallback settled the message: a network fallback's delivery of it
//! included, not only its place in that destination's queue. A fallback keeps the message waiting
//! at most one attempt's deadline of the destination that hands it over — for room, when it is full
//! (its queue, or a memory destination), or for its answer, when it is delivered to in place (`log`,
//! one registered in code) — then it is dead-lettered, and no longer holds up what waits for the
//! hand-off.

use super::Pipeline;
use super::dispatch::Delivery;
use super::topology::{Sink, Target};
use crate::destination::DestinationEvent;
use crate::metrics::RouteMetrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// A fallback this long after the last one starts a new spell, told as an event.
const QUIET: Duration = Duration::from_secs(10);

/// What a destination hands its fallback with a message.
pub(super) struct HandOff {
    /// Dropped once the fallback settled the message: the hand-off waits for that.
    pub(super) settled: DropGuard,
    /// How long the fallback may keep the message waiting for room or for its in-place answer
    /// (`None`: as long as it takes).
    pub(super) wait: Option<Duration>,
}

/// Resolves, with its milliseconds, once a hand-off's `wait` has passed (a fallback's, or a dead
/// letter's to a dead-letter destination delivered to in place); never without one.
pub(super) async fn hand_off_ends(wait: Option<Duration>) -> u64 {
    match wait {
        Some(wait) => {
            tokio::time::sleep(wait).await;
            wait.as_millis() as u64
        }
        None => std::future::pending().await,
    }
}

impl Pipeline {
    /// Hand `delivery`, which `sink` did not send within its queue timeout (it waited
    /// `waited_ms`), to `sink`'s fallback `fallback`; returns once the fallback settled it
    /// (delivered or dead-lettered: by a fallback that had no room for it within `sink`'s attempt
    /// deadline, `queue-timeout`; by one delivered to in place that did not answer within it,
    /// `delivery-uncertain`). Whoever waits for this hand-off waits for that: the
    /// message's stream's turn, which its caller holds until then, so that the stream's next
    /// message does not go out beside it, and an instance of `sink` a reload built, which sends
    /// nothing before this one's hand-offs have ended.
    pub(super) async fn fall_back(
        &self,
        sink: &Sink,
        fallback: &Target,
        delivery: Delivery,
        route: &Arc<RouteMetrics>,
        waited_ms: u64,
    ) {
        self.tell_fallback(sink, &fallback.sink.name, waited_ms);
        sink.count(false);
        let settled = CancellationToken::new();
        let handed_over = HandOff { settled: settled.clone().drop_guard(), wait: sink.attempt_timeout };
        self.deliver_to(fallback, delivery, route, Some(handed_over)).await;
        settled.cancelled().await;
    }

    /// Count a message of `sink` going to `fallback` after waiting `waited_ms`, and tell it when it
    /// starts a spell.
    fn tell_fallback(&self, sink: &Sink, fallback: &str, waited_ms: u64) {
        self.metrics.fallback(&sink.name);
        let now = Instant::now();
        let mut last = sink.last_fallback.lock().unwrap_or_else(|poison| poison.into_inner());
        let starts_spell = last.is_none_or(|last| now.duration_since(last) >= QUIET);
        *last = Some(now);
        drop(last);
        if starts_spell {
            (self.dispatch.events())(DestinationEvent::Fallback {
                destination: sink.name.clone(),
                fallback: fallback.to_owned(),
                reason: format!("no endpoint could take a message within its queue timeout ({waited_ms} ms)"),
            });
        }
    }
}
