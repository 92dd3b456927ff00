//! Delivery from the task that admits a message, for routes that need no worker: no stages and
//! one network destination. Such a message goes straight into the destination's queue, skipping
//! two hand-offs between threads, to a worker and back to the runtime, each a thread to wake
//! (docs/performance.md, session 30).

use super::Pipeline;
use super::dispatch::{Delivery, Job};
use super::item::{Envelope, Item};
use super::topology::{Target, Topology};
use crate::destination::PushError;
use crate::metrics::RouteMetrics;
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

    /// Deliver `envelope` on `direct` as a worker would, waiting while the destination is full.
    pub(crate) async fn deliver_direct(&self, direct: DirectRoute, envelope: Envelope) {
        let (item, _intake_bytes) = direct.item(envelope);
        let route = direct.route();
        let metrics = direct.topology.route_metrics(&route.name);
        metrics.accepted(1);
        self.deliver(route, direct.topology.targets(direct.key), metrics, item).await;
    }

    /// Deliver `envelope` on `direct` as a worker would if the destination has room now; else it
    /// comes back.
    pub(crate) async fn try_deliver_direct(
        &self,
        direct: DirectRoute,
        envelope: Envelope,
    ) -> Option<Envelope> {
        let (item, intake_bytes) = direct.item(envelope);
        let metrics = direct.topology.route_metrics(&direct.route().name);
        let target = direct.topology.direct_target(direct.key).expect("a direct route");
        match self.try_deliver(target, item, metrics).await {
            Ok(()) => {
                metrics.accepted(1);
                None
            }
            Err(item) => Some(Envelope::again(item, intake_bytes)),
        }
    }

    /// Push `item` into the queue of `target` if it has room now; the item comes back if not.
    async fn try_deliver(
        &self,
        target: &Target,
        item: Item,
        metrics: &Arc<RouteMetrics>,
    ) -> Result<(), Item> {
        let queue = target.queue.as_ref().expect("a direct target has a queue");
        let job = Job { delivery: item.into(), route: metrics.clone() };
        match queue.0.try_push(job.delivery.message.priority, job) {
            Ok(()) => Ok(()),
            Err(PushError::Full(job)) => Err(job.delivery.into()),
            // Closed: delivered in place, as a worker does.
            Err(PushError::Closed(job)) => {
                self.deliver_to(target, job.delivery, metrics).await;
                Ok(())
            }
        }
    }
}

impl DirectRoute {
    fn route(&self) -> &Route {
        self.topology.routes.get(self.key)
    }

    /// The message of `envelope` as its route sends it on (with the route's priority), and its
    /// share of the intake budget.
    fn item(&self, envelope: Envelope) -> (Item, OwnedSemaphorePermit) {
        let mut intake_bytes = None;
        let mut item = envelope.into_item(&mut intake_bytes);
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
