//! Fallbacks: a network destination that could not send a message within its queue timeout hands it
//! to its `fallback` destination instead of dead-lettering it. Each such message is counted
//! (`switchyard_destination_fallbacks_total`); the first after a quiet spell is told as an event.

use super::Pipeline;
use super::topology::Sink;
use crate::destination::DestinationEvent;
use std::time::{Duration, Instant};

/// A fallback this long after the last one starts a new spell, told as an event.
const QUIET: Duration = Duration::from_secs(10);

impl Pipeline {
    /// Count a message of `sink` going to `fallback` after waiting `waited_ms`, and tell it when it
    /// starts a spell.
    pub(super) fn tell_fallback(&self, sink: &Sink, fallback: &str, waited_ms: u64) {
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
