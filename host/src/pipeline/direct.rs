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
use crate::router::RouteKey;
use std::sync::Arc;

/// Whether handing a message over may wait for room at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    /// Wait while the destination is full.
    Wait,
    /// Only if it has room now.
    Now,
}

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

    /// Deliver `envelope` on `direct` as a worker would; with [`Room::Now`], it comes back if its
    /// destination has no room now.
    pub(crate) async fn deliver_direct(
        &self,
        direct: DirectRoute,
        envelope: Envelope,
        room: Room,
    ) -> Option<Envelope> {
        let DirectRoute { topology, key } = direct;
        let route = topology.routes.get(key);
        let metrics = topology.route_metrics(&route.name);
        let mut intake_bytes = None;
        let mut item = envelope.into_item(&mut intake_bytes);
        if let Some(priority) = route.priority {
            item.message.priority = priority;
        }
        match room {
            Room::Wait => {
                metrics.accepted(1);
                self.deliver(route, topology.targets(key), metrics, item).await;
            }
            Room::Now => {
                let target = topology.direct_target(key).expect("a direct route");
                match self.try_deliver(target, item, metrics).await {
                    Ok(()) => metrics.accepted(1),
                    Err(item) => return Some(Envelope::again(item, intake_bytes.expect("taken above"))),
                }
            }
        }
        None
    }

    /// Push `item` into the queue of `target` if it has room now; the item comes back if not.
    async fn try_deliver(
        &self,
        target: &Target,
        item: Item,
        metrics: &Arc<RouteMetrics>,
    ) -> Result<(), Item> {
        let Item { message, reply, middlewares, accepted } = item;
        let job =
            Job { delivery: Delivery { message, reply, middlewares, accepted }, route: metrics.clone() };
        let queue = target.queue.as_ref().expect("a direct target has a queue");
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

impl From<Delivery> for Item {
    fn from(delivery: Delivery) -> Item {
        let Delivery { message, reply, middlewares, accepted } = delivery;
        Item { message, reply, middlewares, accepted }
    }
}
