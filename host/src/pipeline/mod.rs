//! The pipeline: workers take batches of accepted messages, route them, run
//! each route's stages and deliver what comes out.

mod dead_letters;
mod direct;
mod dispatch;
mod fallback;
mod item;
mod stage_budget;
mod stats;
mod topology;
mod worker;

pub(crate) use dead_letters::{DeadLetters, Redelivery};
pub(crate) use direct::DirectRoute;
pub(crate) use dispatch::{DispatchContext, LETTERS_AFTER_GRACE};
pub(crate) use item::{Envelope, ReplySender};
pub(crate) use stage_budget::StageBudget;
pub(crate) use stats::Counters;
pub use stats::Stats;
pub(crate) use topology::{LastingDestinations, Topology};
pub(crate) use worker::{Worker, call_sizes};

use crate::dead_letter::DeadLetterReason;
use crate::destination::{DeliveryError, DeliveryResult, PushError};
use crate::host::RequestError;
use crate::message::{Message, Verdict};
use crate::metrics::{Metrics, RouteMetrics, Settled};
use crate::plugin::{PluginEngine, PluginError, PluginRegistry, PluginSet};
use crate::router::{Route, RouteKey};
use crate::stage::{NativeStages, Stage};
use arc_swap::ArcSwap;
use dispatch::{Delivery, Job};
use fallback::{HandOff, hand_off_ends};
use item::{Accepted, Fate, Item};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;
use tokio::runtime::Handle;
use topology::{Sink, Target};

/// State shared by all workers of a host.
pub(crate) struct Pipeline {
    pub(crate) engine: Arc<PluginEngine>,
    pub(crate) registry: Arc<PluginRegistry>,
    pub(crate) topology: ArcSwap<Topology>,
    pub(crate) natives: NativeStages,
    pub(crate) counters: Counters,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ids: Arc<AtomicU64>,
    pub(crate) batch_size: usize,
    /// The largest message a transform may make.
    pub(crate) max_message_bytes: usize,
    /// What each stage may make of one accepted message, for each worker to start from.
    pub(crate) stage_budget: StageBudget,
    /// Starts and tracks the dispatchers of network destinations.
    pub(crate) dispatch: DispatchContext,
    /// Replies that pass back through middleware, for the reply worker.
    pub(crate) replies: tokio::sync::mpsc::Sender<ReplyBack>,
    /// Where dead letters go when no dead-letter destination takes them.
    pub(crate) dead_letters: Arc<DeadLetters>,
    /// Dead letters of the workers' batches on their way (`host.queue_capacity` at most): each on a
    /// task of its own, so that a slow dead-letter destination holds up no worker until this many wait.
    pub(crate) letters_in_flight: Arc<tokio::sync::Semaphore>,
    /// Told (one waiter, or a permit for the next) each time a worker takes a batch from the
    /// intake queue. A `send` that finds the queue full waits on it rather than in the queue's
    /// own send, which would hold a clone of the intake's sender: one no longer polled would keep
    /// the workers, and a shutdown, waiting for good.
    pub(crate) intake_taken: tokio::sync::Notify,
}

/// An item to deliver on a route, with the route's metrics.
type Routed<'r> = (RouteKey, &'r Arc<RouteMetrics>, Item);

/// Deliveries and dead letters a batch leaves to settle once its stages have run.
#[derive(Default)]
struct Settlements<'r> {
    deliveries: Vec<Routed<'r>>,
    dead_letters: Vec<DeadLetter>,
}

/// A message to dead-letter, why, and the route it was on (if it had one).
type DeadLetter = (Item, DeadLetterReason, Option<Arc<RouteMetrics>>);

/// A reply that passes back through middleware before its caller gets it.
pub(crate) struct ReplyBack {
    sender: ReplySender,
    middlewares: Vec<Arc<crate::plugin::CompiledPlugin>>,
    request: Message,
    reply: Message,
}

/// One worker thread: runs until every sender of `queue` is gone and it is
/// empty. Plugins run here, on a plain thread, never on a runtime thread:
/// their calls are synchronous and may take up to their deadline.
pub(crate) fn run_worker(pipeline: Arc<Pipeline>, queue: flume::Receiver<Envelope>, runtime: Handle) {
    let new_worker = || {
        let (engine, ids, metrics) =
            (pipeline.engine.clone(), pipeline.ids.clone(), pipeline.metrics.clone());
        Worker::new(engine, ids, metrics, pipeline.max_message_bytes, pipeline.stage_budget.clone())
    };
    let mut worker = new_worker();
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(pipeline.batch_size);
        batch.push(first);
        batch.extend(queue.try_iter().take(pipeline.batch_size - 1));
        pipeline.intake_taken.notify_one();
        let size = batch.len();
        // Stages and destinations catch their own panics; this is the net
        // for the host's own code: the worker lives on, with fresh instances.
        if let Err(panic) = crate::panic::catch(|| pipeline.process(&mut worker, &runtime, batch)) {
            tracing::error!(%panic, messages = size, "a pipeline worker panicked; the batch's unsettled messages are lost");
            worker = new_worker();
        }
    }
}

impl Pipeline {
    fn process(self: &Arc<Self>, worker: &mut Worker, runtime: &Handle, batch: Vec<Envelope>) {
        let (topology, plugins) = self.pin();
        worker.forget_stale(&plugins);
        let routes = &topology.routes;
        let mut settlements = Settlements::default();
        let mut by_route: Vec<Vec<Item>> = routes.routes().iter().map(|_| Vec::new()).collect();
        let mut intake_bytes = None;
        for (position, envelope) in batch.into_iter().enumerate() {
            match routes.route(&envelope.message) {
                Some(key) => by_route[key].push(envelope.into_item(position, &mut intake_bytes)),
                None => {
                    let reason = DeadLetterReason::NoRoute { topic: envelope.message.topic.clone() };
                    let item = envelope.into_item(position, &mut intake_bytes);
                    settlements.dead_letters.push((item, reason, None));
                }
            }
        }
        drop(intake_bytes);
        for (key, items) in by_route.into_iter().enumerate() {
            if !items.is_empty() {
                self.run_route(worker, &plugins, &topology, key, items, &mut settlements);
            }
        }
        let Settlements { mut deliveries, dead_letters } = settlements;
        // Each route's deliveries are in the order their messages came, but the routes ran one
        // after another: hand them over in the batch's order, so that a stream's messages on two
        // routes reach their destination's queue in the order sent. A stable sort keeps the outputs
        // of a split in their order; a batch of one route is sorted already, and only looked at.
        let batch_position = |(_, _, item): &Routed| item.accepted.batch_position;
        if !deliveries.is_sorted_by_key(batch_position) {
            deliveries.sort_by_key(batch_position);
        }
        self.dead_letter_apart(&topology, dead_letters, runtime);
        let mut deliveries = deliveries.into_iter();
        // What destinations take at once needs no runtime: a batch they take whole never enters one.
        let Some(not_handed) = self.hand_over_now(&topology, &mut deliveries) else { return };
        self.until_runtime_gone(runtime, self.settle_deliveries(&topology, not_handed, deliveries));
    }

    /// Run `work` on `runtime` from a worker thread until it ends, or the runtime does
    /// ([`DispatchContext::runtime_gone`]): its output, or `None` once the runtime shut down.
    /// Then `work` is dropped, with the messages it held: nothing of the runtime would settle
    /// them, nor make room for them, any more. Each keeps its spool record (with `durability =
    /// "spool"`), and a request's caller is told [`RequestError::HostGone`].
    fn until_runtime_gone<T>(&self, runtime: &Handle, work: impl Future<Output = T>) -> Option<T> {
        let gone = &self.dispatch.runtime_gone;
        runtime.block_on(async {
            tokio::select! {
                biased;
                () = gone.cancelled() => None,
                done = work => Some(done),
            }
        })
    }

    /// One topology and the plugin set its routes run with, for a whole batch. The topology first:
    /// a config makes the plugins its routes use serve before it stores them, so new routes come
    /// with their plugins; and it keeps, before they serve, those the old routes ran with, so a
    /// batch of the old routes runs them with those (one that loads the new plugins finds them
    /// kept): a plugin of another kind now (`transform:x` to `filter:x`) meets no route of its
    /// old kind.
    fn pin(&self) -> (Arc<Topology>, Arc<PluginSet>) {
        let topology = self.topology.load_full();
        let plugins = topology.plugins_for_routes(self.registry.snapshot());
        (topology, plugins)
    }

    /// Dead-letter `letters`, each on a task of its own (tracked: a shutdown waits for them): a
    /// slow dead-letter destination holds up neither the batch's deliveries nor the worker, until
    /// [`letters_in_flight`](Pipeline::letters_in_flight) letters are on their way.
    fn dead_letter_apart(
        self: &Arc<Self>,
        topology: &Arc<Topology>,
        letters: Vec<DeadLetter>,
        runtime: &Handle,
    ) {
        for (item, reason, route) in letters {
            let permit = match self.letters_in_flight.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    let permit =
                        self.until_runtime_gone(runtime, self.letters_in_flight.clone().acquire_owned());
                    // Gone: the letters are dropped, as the runtime dropped those on their way.
                    let Some(permit) = permit else { return };
                    permit.expect("never closed")
                }
            };
            let (pipeline, topology) = (self.clone(), topology.clone());
            let letter = async move {
                pipeline.dead_letter(&topology, item, reason, route.as_deref()).await;
                drop(permit);
            };
            self.dispatch.tracker.spawn_on(letter, runtime);
        }
    }

    fn run_route<'r>(
        &self,
        worker: &mut Worker,
        plugins: &PluginSet,
        topology: &'r Topology,
        key: RouteKey,
        mut items: Vec<Item>,
        settlements: &mut Settlements<'r>,
    ) {
        let route = topology.routes.get(key);
        let metrics = topology.route_metrics(&route.name);
        metrics.accepted(items.len());
        let _route = tracing::debug_span!("route", route = %route.name, messages = items.len()).entered();
        if let Some(priority) = route.priority {
            items.iter_mut().for_each(|item| item.message.priority = priority);
        }
        for stage in self.natives.resolve(&route.stages, plugins) {
            let inputs = items.len();
            // Past the stop's grace period no stage runs: what is left of the batch, queued behind
            // a slow stage or come out of one, is shut down rather than run on past the stop.
            let fates = match self.dispatch.past_grace.is_cancelled() {
                false => {
                    worker.start_stage();
                    run_stage_with_retries(worker, route, &stage, items)
                }
                true => items.into_iter().map(Fate::shut_down).collect(),
            };
            Counters::bump(&self.counters.created, fates.len().saturating_sub(inputs) as u64);
            items = Vec::with_capacity(fates.len());
            for fate in fates {
                match fate {
                    Fate::Keep(item) => items.push(item),
                    Fate::Skipped(item) => {
                        Counters::bump(&self.counters.skipped_stages, 1);
                        items.push(item);
                    }
                    Fate::Dropped(item) => self.dropped(item, route, metrics),
                    Fate::Responded(item, reply) => self.responded(item, *reply, metrics),
                    Fate::DeadLetter(item, reason)
                        if *reason == DeadLetterReason::Shutdown && item.accepted.source_keeps() =>
                    {
                        debug_assert!(item.reply.is_none(), "a message its source keeps has no reply");
                        self.hand_back("its route's stages", metrics, &item.message, item.accepted);
                    }
                    Fate::DeadLetter(item, reason) => {
                        settlements.dead_letters.push((item, *reason, Some(metrics.clone())))
                    }
                    Fate::Retry(..) => unreachable!("run_stage_with_retries settles every retry"),
                }
            }
        }
        settlements.deliveries.extend(items.into_iter().map(|item| (key, metrics, item)));
    }

    fn dropped(&self, item: Item, route: &Route, metrics: &RouteMetrics) {
        Counters::bump(&self.counters.filtered, 1);
        metrics.settled(Settled::Filtered, item.accepted.at, Instant::now());
        item.accepted.settle();
        if let Some(reply) = item.reply {
            let _ = reply.send(Err(RequestError::Filtered { route: route.name.clone() }));
        }
    }

    fn responded(&self, item: Item, reply: Message, metrics: &RouteMetrics) {
        Counters::bump(&self.counters.responded, 1);
        metrics.settled(Settled::Responded, item.accepted.at, Instant::now());
        item.accepted.settle();
        if let Some(sender) = item.reply {
            let _ = sender.send(Ok(Some(reply.without_host_headers())));
        }
    }

    /// Hand the deliveries over: `not_handed` (one that its destination could not take at once)
    /// first, then the rest of `deliveries`.
    async fn settle_deliveries<'r>(
        &self,
        topology: &Topology,
        not_handed: Routed<'r>,
        deliveries: impl Iterator<Item = Routed<'r>>,
    ) {
        for (key, metrics, item) in std::iter::once(not_handed).chain(deliveries) {
            self.deliver(topology.routes.get(key), topology.targets(key), metrics, item).await;
        }
    }

    /// Hand the leading `deliveries` of a batch over while the one destination of each's route
    /// takes it at once: a memory destination while its channel has room, a network destination
    /// while its queue has; the first that cannot be comes back, for [`Pipeline::deliver`] to wait
    /// with. No runtime is needed for these. Put in without a delivery's other work between them,
    /// messages leave a reader that keeps up fewer chances to empty the channel and wait again,
    /// and so fewer wake-ups (docs/performance.md, session 31).
    fn hand_over_now<'r>(
        &self,
        topology: &Topology,
        deliveries: &mut impl Iterator<Item = Routed<'r>>,
    ) -> Option<Routed<'r>> {
        // One clock read for the batch's settle time: its deliveries are put in back to back.
        let now = Instant::now();
        for (key, metrics, item) in deliveries.by_ref() {
            let [target] = topology.targets(key) else { return Some((key, metrics, item)) };
            if let Some(item) = self.hand_over(target, metrics, item, now) {
                return Some((key, metrics, item));
            }
        }
        None
    }

    /// Put `item` into the queue of network destination `target`, or into memory destination
    /// `target` (counted as delivered at `now`), if it has room now; the item comes back if not,
    /// or if `target` is delivered to in place.
    fn hand_over(
        &self,
        target: &Target,
        route: &Arc<RouteMetrics>,
        item: Item,
        now: Instant,
    ) -> Option<Item> {
        if let Some(queue) = &target.queue {
            let job = Job { delivery: item.into(), route: route.clone(), handed_over: None };
            return match queue.0.try_push(job.delivery.message.priority, job) {
                Ok(()) => None,
                Err(PushError::Full(job) | PushError::Closed(job)) => Some(job.delivery.into()),
            };
        }
        let Some(memory) = target.sink.destination.as_memory() else { return Some(item) };
        let Item { message, reply, middlewares, accepted } = item;
        match memory.try_send(message) {
            Ok(()) => {
                self.taken_by_memory(&target.sink, route, accepted, reply, now);
                None
            }
            Err(message) => Some(Item { message, reply, middlewares, accepted }),
        }
    }

    /// Count a delivery to memory destination `sink` and answer its caller: it never replies.
    fn taken_by_memory(
        &self,
        sink: &Sink,
        route: &RouteMetrics,
        accepted: Accepted,
        reply: Option<ReplySender>,
        now: Instant,
    ) {
        self.count_delivered(sink, route, accepted, now);
        if let Some(sender) = reply {
            drop(sender.send(Ok(None)));
        }
    }

    /// Send `item` to each destination of `route`, `targets`: network
    /// destinations through their queue (waiting while it is full), others in
    /// place. The caller's reply comes from the first destination.
    #[tracing::instrument(level = "debug", skip_all, fields(route = %route.name, id = item.message.id))]
    async fn deliver(&self, route: &Route, targets: &[Arc<Target>], metrics: &Arc<RouteMetrics>, item: Item) {
        let Item { message, mut reply, mut middlewares, accepted } = item;
        let copies = targets.len();
        Counters::bump(&self.counters.created, copies.saturating_sub(1) as u64);
        let mut message = Some(message);
        // Each copy a share of the holds, the last one the item's own: none is dropped unsettled.
        let shares = std::iter::repeat_n(accepted, copies);
        for ((index, target), accepted) in targets.iter().enumerate().zip(shares) {
            let message = match index + 1 == copies {
                true => message.take().expect("the last copy"),
                false => message.as_ref().expect("not the last copy").clone(),
            };
            let middlewares = std::mem::take(&mut middlewares);
            let delivery = Delivery { message, reply: reply.take(), middlewares, accepted };
            self.deliver_to(target, delivery, metrics, None).await;
        }
    }

    /// Send `delivery` to `target`: into its queue (waiting while it is full) for a network
    /// destination, in place for another. `handed_over`, given by a destination that hands the
    /// message to `target` as its fallback, bounds its wait for room (in a full queue or memory
    /// destination) and for an in-place destination's answer, and is dropped once the message is
    /// settled.
    async fn deliver_to(
        &self,
        target: &Target,
        delivery: Delivery,
        metrics: &Arc<RouteMetrics>,
        handed_over: Option<HandOff>,
    ) {
        let wait = handed_over.as_ref().and_then(|handed| handed.wait);
        let delivery = match &target.queue {
            Some(queue) => {
                let handed_over = handed_over.map(|handed| handed.settled);
                let job = Job { delivery, route: metrics.clone(), handed_over };
                // Room is waited for until a shutdown's grace period ends, or the wait a fallback's
                // hand-off allows.
                let stop = self.dispatch.past_grace.child_token();
                let pushed = queue.0.push(job.delivery.message.priority, job, &stop);
                tokio::pin!(pushed);
                let (pushed, no_room) = tokio::select! {
                    biased;
                    pushed = &mut pushed => (pushed, None),
                    waited_ms = hand_off_ends(wait) => {
                        stop.cancel();
                        (pushed.await, Some(DeliveryError::NoRoom { waited_ms }))
                    }
                };
                match pushed {
                    Ok(()) => return,
                    // Still full when a shutdown's grace period, or the hand-off's wait, ended.
                    Err(PushError::Full(job)) => {
                        let full = Err(no_room.unwrap_or(DeliveryError::Shutdown));
                        return Box::pin(self.settle(&target.sink, job.delivery, metrics, full)).await;
                    }
                    // Closed: only once the host drains, after the workers stop.
                    Err(PushError::Closed(job)) => job.delivery,
                }
            }
            None => delivery,
        };
        let Delivery { message, reply, middlewares, accepted } = delivery;
        // In place, a delivery waits at most until a shutdown's grace period ends (a reader that
        // stopped reading, a destination that hangs), then is dead-lettered `shutdown`; handed
        // over as a fallback, at most the wait its hand-off allows.
        let past_grace = &self.dispatch.past_grace;
        // A memory destination is handed the message itself and hands it back whole if it cannot
        // take it: no copy is kept for the dead-letter path, unless it is full. It never answers.
        let (message, result) = match target.sink.destination.as_memory() {
            Some(memory) => {
                // Full, it waits for room until the grace period ends, or the wait a fallback's
                // hand-off allows.
                let deadline = async {
                    tokio::select! {
                        biased;
                        () = past_grace.cancelled() => DeliveryError::Shutdown,
                        waited_ms = hand_off_ends(wait) => DeliveryError::NoRoom { waited_ms },
                    }
                };
                match memory.send(message, deadline).await {
                    Ok(()) => {
                        return self.taken_by_memory(&target.sink, metrics, accepted, reply, Instant::now());
                    }
                    Err((error, message)) => (message, Err(error)),
                }
            }
            None => {
                let result = tokio::select! {
                    biased;
                    result = target.sink.deliver(message.clone()) => result,
                    () = past_grace.cancelled() => Err(DeliveryError::ShutdownInFlight),
                    waited_ms = hand_off_ends(wait) => Err(DeliveryError::NotAnswered { waited_ms }),
                };
                (message, result)
            }
        };
        let delivery = Delivery { message, reply, middlewares, accepted };
        Box::pin(self.settle(&target.sink, delivery, metrics, result)).await;
    }

    /// Count and answer a delivery to `sink` (one whose reply was refused is delivered all the
    /// same: its caller is told why it gets none), or hand it to the destination's fallback (never
    /// sent for want of an endpoint), or dead-letter it; one a stop cut short whose source keeps it
    /// (a JetStream stream) is handed back to it instead.
    pub(crate) async fn settle(
        &self,
        sink: &Sink,
        delivery: Delivery,
        route: &Arc<RouteMetrics>,
        result: DeliveryResult,
    ) {
        if let Err(DeliveryError::QueueTimeout { waited_ms, .. }) = &result {
            let fallback = self.topology.load().fallback_of(&sink.name).cloned();
            if let Some(fallback) = fallback {
                return self.fall_back(sink, &fallback, delivery, route, *waited_ms).await;
            }
        }
        let Delivery { message, reply, middlewares, accepted } = delivery;
        let response = match result {
            Ok(response) => Ok(response.map(Message::without_host_headers)),
            // Delivered: only its reply is lost.
            Err(DeliveryError::ReplyRefused(problem)) => {
                let (id, destination) = (message.id, &sink.name);
                tracing::debug!(id, %destination, %problem, "delivered, but its reply was refused");
                Err(problem)
            }
            Err(DeliveryError::Shutdown | DeliveryError::ShutdownInFlight) if accepted.source_keeps() => {
                sink.count(false);
                // Sent, not requested: no caller waits for an answer.
                debug_assert!(reply.is_none(), "a message its source keeps has no reply");
                return self.hand_back(&sink.name, route, &message, accepted);
            }
            Err(error) => {
                sink.count(false);
                let reason = DeadLetterReason::Delivery { destination: sink.name.clone(), error };
                let item = Item { message, reply, middlewares: Vec::new(), accepted };
                return self.dead_letter(&self.topology.load(), item, reason, Some(route.as_ref())).await;
            }
        };
        self.count_delivered(sink, route, accepted, Instant::now());
        let Some(sender) = reply else { return };
        match response {
            Ok(Some(reply)) if !middlewares.is_empty() => {
                // Middleware runs on the reply worker's plugin instances. Room in its queue is
                // waited for until a shutdown's grace period ends, as any delivery's wait: a slow
                // middleware otherwise held the shutdown for all the replies queued before it.
                let room = tokio::select! {
                    biased;
                    room = self.replies.reserve() => room.ok(),
                    () = self.dispatch.past_grace.cancelled() => None,
                };
                match room {
                    Some(room) => room.send(ReplyBack { sender, middlewares, request: message, reply }),
                    None => {
                        let destination = sink.name.clone();
                        let problem = "the host stopped before the reply passed back through the route's \
                                       middleware"
                            .to_owned();
                        drop(sender.send(Err(RequestError::ReplyRefused { destination, problem })));
                    }
                }
            }
            Ok(response) => drop(sender.send(Ok(response))),
            Err(problem) => {
                let destination = sink.name.clone();
                drop(sender.send(Err(RequestError::ReplyRefused { destination, problem })));
            }
        }
    }

    /// Hand `message`, which the host stopped before `before` (the destination it was delivered
    /// to, or its route's stages) was done with it, back to the source that keeps it (see
    /// [`crate::receipt`]): not dead-lettered, it is delivered again from there, by another host.
    fn hand_back(&self, before: &str, route: &RouteMetrics, message: &Message, accepted: Accepted) {
        accepted.hand_back();
        Counters::bump(&self.counters.handed_back, 1);
        route.settled(Settled::HandedBack, accepted.at, Instant::now());
        accepted.settle();
        let (id, topic) = (message.id, &message.topic);
        tracing::debug!(id, topic, before, "not settled before the stop: handed back to its source");
    }

    /// Count a delivery to `sink` of a message `route` accepted: it is settled.
    fn count_delivered(&self, sink: &Sink, route: &RouteMetrics, accepted: Accepted, now: Instant) {
        Counters::bump(&self.counters.delivered, 1);
        sink.count(true);
        route.settled(Settled::Delivered, accepted.at, now);
        accepted.settle();
    }
}

/// The reply worker: passes replies back through the middlewares their
/// requests went through, on plugin instances of its own (from
/// `new_worker`), until the pipeline is gone. As a pipeline worker does with
/// each batch, it drops its instances of versions `registry` no longer serves
/// with each reply: before it, and after it too, since a reply pinned to a
/// version removed meanwhile makes an instance of that version.
pub(crate) fn run_reply_worker(
    new_worker: impl Fn() -> Worker,
    registry: Arc<PluginRegistry>,
    mut replies: tokio::sync::mpsc::Receiver<ReplyBack>,
) {
    let mut worker = new_worker();
    while let Some(ReplyBack { sender, middlewares, request, reply }) = replies.blocking_recv() {
        // Middlewares catch their own panics (a native one at its boundary); this is the net
        // for the host's own code, as a pipeline worker's: the request is told, and the worker
        // lives on, with fresh instances. Dead, it left every later reply refused.
        let answer = crate::panic::catch(|| {
            worker.forget_stale(&registry.snapshot());
            let answer = worker.on_reply(&middlewares, &request, reply);
            worker.forget_stale(&registry.snapshot());
            answer
        });
        let answer = match answer {
            Ok(answer) => answer.map(Some).map_err(RequestError::ReplyFailed),
            Err(panic) => {
                tracing::error!(%panic, id = request.id, "the reply worker panicked; its request gets no reply");
                worker = new_worker();
                Err(RequestError::WorkerFailed)
            }
        };
        let _ = sender.send(answer);
    }
}

/// Calls of a stage per message while it answers "retryable", at most.
const STAGE_ATTEMPTS: usize = 3;

/// Run `stage` over `items`, running it again at once on the items it
/// answered "retryable" for, up to [`STAGE_ATTEMPTS`] calls in all; those
/// still retryable then fail under their policy. The fates keep the order of
/// `items`, retried ones included.
fn run_stage_with_retries(worker: &mut Worker, route: &Route, stage: &Stage, items: Vec<Item>) -> Vec<Fate> {
    let mut fates = run_stage(worker, route, stage, items);
    for _ in 1..STAGE_ATTEMPTS {
        // Most batches have nothing to retry: they go on as they are, not
        // moved fate by fate into a new vector.
        if !fates.iter().any(|fate| matches!(fate, Fate::Retry(..))) {
            return fates;
        }
        fates = retry_in_place(worker, route, stage, fates);
    }
    fates
        .into_iter()
        .map(|fate| match fate {
            Fate::Retry(item, policy, reason) => Fate::given_up(item, policy, *reason),
            fate => fate,
        })
        .collect()
}

/// Run `stage` again on the items of `fates` it answered "retryable" for, and put what it makes
/// of each where that item's fate was: put after the others, a stream's first message went out
/// after its second. Neighbouring retries go in one call (a whole batch's, if the stage answered
/// so for all), whose fates come back in its items' order and so fill their place; one call for
/// retries apart would leave no way to tell whose its fates are (a transform makes 0..n of each).
fn retry_in_place(worker: &mut Worker, route: &Route, stage: &Stage, fates: Vec<Fate>) -> Vec<Fate> {
    let mut again = Vec::with_capacity(fates.len());
    let mut fates = fates.into_iter().peekable();
    while let Some(fate) = fates.next() {
        let Fate::Retry(first, ..) = fate else {
            again.push(fate);
            continue;
        };
        let mut run = vec![first];
        while let Some(Fate::Retry(item, ..)) = fates.next_if(|fate| matches!(fate, Fate::Retry(..))) {
            run.push(item);
        }
        again.extend(run_stage(worker, route, stage, run));
    }
    again
}

fn run_stage(worker: &mut Worker, route: &Route, stage: &Stage, items: Vec<Item>) -> Vec<Fate> {
    let route_policy = route.on_error.unwrap_or_default();
    match stage {
        Stage::Plugin(plugin) => {
            let _stage =
                tracing::debug_span!("stage", plugin = %plugin.name, version = plugin.short_version())
                    .entered();
            let policy = route.on_error.or(plugin.settings.config.on_error).unwrap_or_default();
            worker.run_plugin(plugin, policy, items)
        }
        Stage::NativeFilter(name, filter) => items
            .into_iter()
            .map(|item| match crate::panic::catch(|| filter.filter(&item.message)) {
                Ok(Ok(Verdict::Keep)) => Fate::Keep(item),
                Ok(Ok(Verdict::Drop)) => Fate::Dropped(item),
                Ok(Err(error)) => Fate::failed(item, route_policy, native_reason(name, error)),
                Err(panic) => Fate::failed(item, route_policy, panic_reason("filter", name, panic)),
            })
            .collect(),
        Stage::NativeTransform(name, transform) => {
            let mut fates = Vec::with_capacity(items.len());
            for item in items {
                match crate::panic::catch(|| transform.transform(&item.message)) {
                    Ok(Ok(mut outputs)) => match worker.check_native_outputs(&item, &outputs) {
                        Ok(()) => {
                            if let Some(first) = outputs.first_mut() {
                                first.stand_in_for(&item.message);
                            }
                            worker.split(item, outputs.into_iter(), &mut fates)
                        }
                        Err(fault) => {
                            let reason = DeadLetterReason::PluginFault {
                                plugin: name.clone(),
                                version: "native".into(),
                                fault,
                            };
                            fates.push(Fate::failed(item, route_policy, reason))
                        }
                    },
                    Ok(Err(error)) => {
                        fates.push(Fate::failed(item, route_policy, native_reason(name, error)))
                    }
                    Err(panic) => {
                        fates.push(Fate::failed(item, route_policy, panic_reason("transform", name, panic)))
                    }
                }
            }
            fates
        }
        Stage::Unavailable { stage, problem } => {
            let reason =
                DeadLetterReason::StageUnavailable { stage: stage.clone(), problem: problem.clone() };
            items.into_iter().map(|item| Fate::failed(item, route_policy, reason.clone())).collect()
        }
    }
}

fn panic_reason(kind: &str, name: &str, panic: String) -> DeadLetterReason {
    tracing::error!(stage = %format!("{kind}:{name}"), %panic, "a native stage panicked; its message is dead-lettered");
    DeadLetterReason::StagePanicked { stage: format!("{kind}:{name}"), panic }
}

/// Why a message an embedder's stage `name` answered `error` for is dead-lettered: its text kept
/// as a plugin's is.
fn native_reason(name: &str, error: PluginError) -> DeadLetterReason {
    DeadLetterReason::PluginError {
        plugin: name.to_owned(),
        version: "native".into(),
        error: error.bounded(),
    }
}
