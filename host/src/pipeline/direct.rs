//! Delivery from the task that admits a message, for routes that need no worker: no stages and
//! one network destination. Such a message goes straight into the destination's queue, skipping
//! two hand-offs between threads, to a worker and back to the runtime, each a thread to wake
//! (docs/performance.md, session 30).

use super::Pipeline;
use super::dispatch::{Delivery, Job};
use super::item::{Envelope, Item};
use super::topology::Topology;
use crate::destination::{DeliveryQueue, PushError};
use crate::router::{Route, RouteKey};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// A message's route that needs no worker, in the topology it was found in.
pub(crate) struct DirectRoute {
    topology: Arc<Topology>,
    key: RouteKey,
}

impl Pipeline {
    /// The route of `envelope` if it needs no worker: it is not a request, and its route has no
    /// stages and one network destination (see [`Topology::direct_target`]).
    pub(crate) fn direct_route(&self, envelope: &Envelope) -> Option<DirectRoute> {
        if envelope.reply.is_some() {
            return None;
        }
        // A guard, not a clone, until a direct route is found: most hosts have none.
        let topology = self.topology.load();
        if !topology.has_direct_routes() {
            return None;
        }
        let key = topology.routes.route(&envelope.message)?;
        topology.direct_target(key)?;
        Some(DirectRoute { topology: arc_swap::Guard::into_inner(topology), key })
    }

    /// Push `envelope` on `direct` into its destination's queue, as a worker would, if that has
    /// room now, counting it on the route once it is in; else it comes back. Its caller checks that
    /// the host still accepts, under the lock a shutdown takes before it closes the queues: a
    /// closed queue sends it back as a full one does, and then has room at once (see
    /// [`DirectRoute::room`]), so that the caller looks for the route again. (A reload removed the
    /// destination since `direct` was found, after another rebuilt it: `direct`'s queue was handed
    /// over to one that is closed now.)
    pub(crate) fn try_deliver_direct(&self, direct: &DirectRoute, envelope: Envelope) -> Option<Envelope> {
        let (item, intake_bytes) = direct.item(envelope);
        let metrics = direct.topology.route_metrics(&direct.route().name);
        let job = Job { delivery: item.into(), route: metrics.clone(), handed_over: None };
        match direct.queue().try_push(job.delivery.message.priority, job) {
            Ok(()) => {
                metrics.accepted(1);
                None
            }
            Err(PushError::Full(job) | PushError::Closed(job)) => {
                Some(Envelope::again(job.delivery.into(), intake_bytes))
            }
        }
    }
}

impl DirectRoute {
    fn route(&self) -> &Route {
        self.topology.routes.get(self.key)
    }

    /// The queue of the route's destination.
    fn queue(&self) -> &Arc<DeliveryQueue<Job>> {
        let target = self.topology.direct_target(self.key).expect("a direct route");
        &target.queue.as_ref().expect("a direct target has a queue").0
    }

    /// Resolves once the route's destination took a message from its queue, or closed it: a
    /// [`try_deliver_direct`](Pipeline::try_deliver_direct) that found it full may look for the
    /// route again, and try again. The wait holds the queue, not the topology: a reload that
    /// removes the destination meanwhile closes its queue (which ends the wait) when the topology
    /// it replaced goes, and a shutdown does not wait for a destination only this wait knew.
    pub(crate) fn room(self) -> impl Future<Output = ()> + Send + use<> {
        let queue = self.queue().clone();
        async move { queue.room().await }
    }

    /// The message of `envelope` as its route sends it on (with the route's priority), and its
    /// share of the intake budget.
    fn item(&self, envelope: Envelope) -> (Item, OwnedSemaphorePermit) {
        let mut intake_bytes = None;
        // Alone, not in a batch.
        let mut item = envelope.into_item(0, &mut intake_bytes);
        if let Some(priority) = self.route().priority {
            item.message.priority = priority;
        }
        (item, intake_bytes.expect("the envelope's share"))
    }
}

impl From<Delivery> for Item {
    fn from(delivery: Delivery) -> Item {
        let Delivery { message, reply, middlewares, accepted } = delivery;
        Item { message, reply, middlewares, accepted }
    }
}

impl From<Item> for Delivery {
    fn from(item: Item) -> Delivery {
        let Item { message, reply, middlewares, accepted } = item;
        Delivery { message, reply, middlewares, accepted }
    }
}
