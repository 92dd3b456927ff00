//! Held events: what the destinations a reload builds tell before the reload is told applied
//! (`config-applied`) waits until then, so that whoever follows the events hears of a config
//! before anything of the destinations it brings (an endpoint a new instance starts afresh told
//! up as the instance is built, a first health check).

use super::{DestinationEvent, EventSink};
use std::sync::{Arc, Mutex};

/// Events told to a sink once [`release`](HeldEvents::release)d: those told before then in the
/// order they came, later ones at once.
pub(crate) struct HeldEvents {
    sink: EventSink,
    /// What was told while held; `None` once released. A lock, so that an event told while they
    /// are released follows them.
    held: Mutex<Option<Vec<DestinationEvent>>>,
}

impl HeldEvents {
    /// Events for `sink`, held.
    pub(crate) fn new(sink: EventSink) -> Arc<HeldEvents> {
        Arc::new(HeldEvents { sink, held: Mutex::new(Some(Vec::new())) })
    }

    /// Where destinations tell them.
    pub(crate) fn sink(self: &Arc<Self>) -> EventSink {
        let events = self.clone();
        Arc::new(move |event| events.tell(event))
    }

    /// Tell `event`: held, or at once once released.
    pub(crate) fn tell(&self, event: DestinationEvent) {
        match &mut *self.lock() {
            Some(held) => held.push(event),
            None => (self.sink)(event),
        }
    }

    /// Tell what was held, and from now on tell at once.
    pub(crate) fn release(&self) {
        let mut held = self.lock();
        held.take().into_iter().flatten().for_each(|event| (self.sink)(event));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<DestinationEvent>>> {
        self.held.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_told_while_held_are_told_on_release_in_order_and_later_ones_at_once() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let told = told.clone();
            Arc::new(move |event: DestinationEvent| told.lock().unwrap().push(event.name()))
        };
        let events = HeldEvents::new(sink);
        let up = || DestinationEvent::EndpointUp { destination: "d".into(), endpoint: "e".into() };
        let down = || DestinationEvent::EndpointDown {
            destination: "d".into(),
            endpoint: "e".into(),
            reason: "r".into(),
        };
        events.sink()(down());
        events.tell(up());
        assert!(told.lock().unwrap().is_empty());
        events.release();
        assert_eq!(*told.lock().unwrap(), ["endpoint-down", "endpoint-up"]);
        events.tell(down());
        assert_eq!(*told.lock().unwrap(), ["endpoint-down", "endpoint-up", "endpoint-down"]);
    }
}
