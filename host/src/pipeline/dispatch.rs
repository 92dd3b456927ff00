//! Dispatchers: one runtime task per network destination takes its queued
//! messages, most urgent first, whenever one of the destination's delivery
//! slots and one of the host's are free and one of its endpoints can take
//! traffic, and delivers each in a task of its own. While none can, the queue
//! holds: no attempt is spent on refused connections. A message whose stream
//! (`affinity:header:KEY`) has a delivery under way is passed over and waits
//! in the queue for its turn, holding no slot; a stream's messages go in the
//! order they came, the urgency of a later one taking the oldest out first.
//! The instances a reload builds of a destination share its delivery slots:
//! deliveries under way on the old one hold theirs until they end.
//! A second task per destination dead-letters each message whose queue
//! timeout passes, on time, whether or not the dispatcher is waiting. Workers only hand messages over,
//! so a slow destination holds up its own queue, not the pipeline, until that
//! queue is full.

use super::Pipeline;
use super::item::ReplySender;
use super::topology::Sink;
use crate::config::DestinationConfig;
use crate::destination::{
    Cluster, DeliveryError, DeliveryQueue, DestinationEvent, EventSink, HandedOver, HostServices, PushError,
    Queued, QueuedDestination, Slot, Slots, StreamTurn,
};
use crate::message::Message;
use crate::metrics::RouteMetrics;
use crate::plugin::CompiledPlugin;
use crate::transport::{
    CheckedTransport, DeliveryProgress, ProcessGroups, TransportContext, TransportRegistry,
};
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// One message on its way to one destination.
pub(crate) struct Delivery {
    pub(crate) message: Message,
    pub(crate) reply: Option<ReplySender>,
    /// Middleware versions the request passed, to run `on_reply` in reverse.
    pub(crate) middlewares: Vec<Arc<CompiledPlugin>>,
    pub(crate) accepted: super::item::Accepted,
}

/// A delivery waiting in a destination's queue, with the route it came by.
pub(crate) struct Job {
    pub(crate) delivery: Delivery,
    pub(crate) route: Arc<RouteMetrics>,
    /// Dropped once the message is settled, when a destination handed it to this one as its
    /// fallback: that hand-off waits for it (see [`Pipeline::fall_back`]).
    pub(crate) handed_over: Option<DropGuard>,
}

/// What every dispatcher of a host shares.
#[derive(Clone)]
pub(crate) struct DispatchContext {
    runtime: Handle,
    /// Dispatchers and deliveries, waited for on shutdown.
    pub(crate) tracker: TaskTracker,
    /// Deliveries in flight over all network destinations.
    in_flight: Arc<Semaphore>,
    /// Cancelled once the host is stopping, before a shutdown closes the queues: a queue found
    /// closed before then was closed by a reload that removed its destination.
    pub(crate) stopping: CancellationToken,
    /// Cancelled when a shutdown's grace period is over: what is still in
    /// flight or queued is dead-lettered (`shutdown`) at once.
    pub(crate) past_grace: CancellationToken,
    /// Cancelled [`LETTERS_AFTER_GRACE`] after `past_grace`: the dead letters a shutdown makes
    /// try their dead-letter destinations until then, and go to the dead-letter file after.
    pub(crate) letters_cut: CancellationToken,
    /// Cancelled once the runtime shut down (its tasks dropped: the dispatchers, the deliveries),
    /// by a task of its own dropped with the others (see `host::stop::watch_runtime`): nothing
    /// on it answers or settles a message any more. A worker waiting on it gives up, and a
    /// dispatcher dropped with it empties its queue.
    pub(crate) runtime_gone: CancellationToken,
    pipeline: Weak<Pipeline>,
    /// What network destinations use of their host.
    services: HostServices,
    /// The transports destinations may name.
    transports: Arc<TransportRegistry>,
    /// What transports use of their host.
    transport_context: TransportContext,
}

/// How long after a shutdown's grace period its dead letters may take to reach a dead-letter
/// destination (a network one takes a round trip) before they go to the dead-letter file.
pub(crate) const LETTERS_AFTER_GRACE: Duration = Duration::from_secs(1);

impl DispatchContext {
    /// Dispatch on `runtime`, with at most `max_in_flight` deliveries at once
    /// over all destinations, settling through `pipeline`, building the
    /// transports of network destinations from `transports`.
    pub(crate) fn new(
        runtime: Handle,
        max_in_flight: usize,
        pipeline: Weak<Pipeline>,
        services: HostServices,
        transports: Arc<TransportRegistry>,
        max_message_bytes: usize,
    ) -> DispatchContext {
        let transport_context = TransportContext {
            max_message_bytes,
            plugins: services.registry.clone(),
            engine: services.engine.clone(),
            metrics: services.metrics.clone(),
            process_groups: Arc::default(),
        };
        DispatchContext {
            runtime,
            tracker: TaskTracker::new(),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            stopping: CancellationToken::new(),
            past_grace: CancellationToken::new(),
            letters_cut: CancellationToken::new(),
            runtime_gone: CancellationToken::new(),
            pipeline,
            services,
            transports,
            transport_context,
        }
    }

    /// Where destinations tell what changed in them.
    pub(crate) fn events(&self) -> &crate::destination::EventSink {
        &self.services.events
    }

    /// The transports destinations may name.
    pub(crate) fn transports(&self) -> &TransportRegistry {
        &self.transports
    }

    /// The process groups the transports started and that still run.
    pub(crate) fn process_groups(&self) -> &ProcessGroups {
        &self.transport_context.process_groups
    }

    /// The cluster of network destination `config` over the transport `checked` (what the
    /// registry's check of `config` read) builds, its health checks running, going on from
    /// what the instance it replaces `handed` over, if given, telling its events to `events`.
    pub(crate) fn cluster(
        &self,
        config: &DestinationConfig,
        checked: CheckedTransport,
        handed: Option<HandedOver>,
        events: EventSink,
    ) -> Arc<dyn QueuedDestination> {
        let endpoints = checked.endpoints().to_vec();
        let transport = checked.build(&self.transport_context);
        let services = HostServices { events, ..self.services.clone() };
        let cluster = Arc::new(Cluster::new(config, &endpoints, transport, &services, handed));
        cluster.start_health_checks(&self.runtime);
        cluster.start_stream_keeping(&self.runtime);
        cluster
    }

    /// Start the dispatcher of destination `sink` (whose cluster is
    /// `cluster`) configured by `config`, and the expirer of its queue;
    /// returns the queue and what retires them. Both end once the queue is
    /// closed (or handed over) and drained. Its delivery slots are `slots`, those of the instance
    /// it replaces (see [`Retire::slots`]), resized to `config`'s `max_in_flight`, or new ones.
    pub(crate) fn start(
        &self,
        sink: Arc<Sink>,
        cluster: Arc<dyn QueuedDestination>,
        config: &DestinationConfig,
        slots: Option<Arc<Slots>>,
    ) -> (Arc<DeliveryQueue<Job>>, Retire) {
        let limit = config.queue.max_in_flight;
        let slots = match slots {
            Some(slots) => {
                slots.resize(limit);
                slots
            }
            None => Slots::new(limit),
        };
        let queue = Arc::new(DeliveryQueue::new(config.queue.capacity));
        let retire = Retire { cluster: cluster.clone(), tasks: TaskTracker::new(), slots: slots.clone() };
        let dispatcher = Dispatcher {
            sink,
            cluster,
            queue: queue.clone(),
            slots,
            timeout: Duration::from_millis(config.queue.timeout_ms),
            context: self.clone(),
            tasks: retire.tasks.clone(),
        };
        self.tracker.spawn_on(retire.tasks.track_future(dispatcher.clone().expire()), &self.runtime);
        // Outside the task's body, so that it is dropped with the task even if never polled (a
        // runtime shut down before it ran, or as a reload started it).
        let guard = DispatcherGuard { queue: queue.clone(), runtime_gone: self.runtime_gone.clone() };
        let run = async move {
            let _guard = guard;
            dispatcher.run().await;
        };
        self.tracker.spawn_on(retire.tasks.track_future(run), &self.runtime);
        (queue, retire)
    }

    /// Hand network destination `from`'s queue over to `to`'s, a new instance of it built by a
    /// reload: what waits moves there keeping its class and enqueue time, later pushes follow it,
    /// and `from`'s deliveries that reached no endpoint come back to it (see
    /// [`QueuedDestination::retire`]); those under way finish on `from`. With `keep_order` (a
    /// destination keeping streams), `to` sends nothing before every delivery of `from` has ended or
    /// come back, and every message that timed out there is settled (by the fallback, or
    /// dead-lettered): a stream's messages go out one at a time, in their order, across the reload.
    /// That wait counts among `to`'s tasks: a reload that replaces `to` before they end holds its
    /// own new instance until they have (`to`, held, sent nothing: its dispatcher and expirer end
    /// at once).
    pub(crate) fn hand_over(
        &self,
        from: (&Arc<DeliveryQueue<Job>>, &Retire),
        to: (&Arc<DeliveryQueue<Job>>, &Retire),
        keep_order: bool,
    ) {
        let ((queue, retire), (to, to_retire)) = (from, to);
        if keep_order {
            to.hold();
        }
        queue.hand_over(to);
        retire.retire();
        if keep_order {
            let (tasks, to) = (retire.tasks.clone(), to.clone());
            tasks.close();
            let release = async move {
                tasks.wait().await;
                to.release();
            };
            self.tracker.spawn_on(to_retire.tasks.track_future(release), &self.runtime);
        }
    }
}

/// What a reload needs of a network destination's dispatcher to retire it.
pub(crate) struct Retire {
    cluster: Arc<dyn QueuedDestination>,
    /// The dispatcher, its expirer and its deliveries (the settling of those that timed out in
    /// its queue included), and the wait for its predecessors' to end
    /// before it sends (see [`DispatchContext::hand_over`]).
    tasks: TaskTracker,
    /// The destination's delivery slots.
    slots: Arc<Slots>,
}

impl Retire {
    /// The destination left the topology (replaced or removed): deliveries waiting for an
    /// endpoint they never reached stop waiting ([`QueuedDestination::retire`]).
    pub(crate) fn retire(&self) {
        self.cluster.retire();
    }

    /// What the destination knows of its endpoints and its stream table, for the instance a
    /// reload builds to replace it.
    pub(crate) fn hand_over(&self) -> HandedOver {
        self.cluster.hand_over()
    }

    /// The destination's delivery slots, for the instance a reload builds to replace it: its
    /// deliveries under way here keep theirs, so that the two together keep to `max_in_flight`.
    pub(crate) fn slots(&self) -> Arc<Slots> {
        self.slots.clone()
    }

    /// A reload removed the destination: see [`QueuedDestination::remove_endpoints`].
    pub(crate) fn remove_endpoints(&self, events: &dyn Fn(DestinationEvent)) {
        self.cluster.remove_endpoints(events);
    }
}

/// Empties a dispatcher's queue as the dispatcher is dropped with its runtime: nothing would ever
/// take what waits there, nor what a worker pushes there later (the queue is closed). A
/// dispatcher dropped before the runtime's end was told (as tasks are dropped, in no set order)
/// leaves that to the end's own emptying of the queues (see `host::stop::watch_runtime`); one
/// that ended (its queue closed and drained, or handed over) leaves nothing to empty.
struct DispatcherGuard {
    queue: Arc<DeliveryQueue<Job>>,
    runtime_gone: CancellationToken,
}

impl Drop for DispatcherGuard {
    fn drop(&mut self) {
        if self.runtime_gone.is_cancelled() {
            drop(self.queue.close_and_empty());
        }
    }
}

/// The dispatcher of one destination.
#[derive(Clone)]
struct Dispatcher {
    sink: Arc<Sink>,
    cluster: Arc<dyn QueuedDestination>,
    queue: Arc<DeliveryQueue<Job>>,
    /// The destination's delivery slots, shared with the instances a reload builds to replace
    /// it and the one it replaced.
    slots: Arc<Slots>,
    /// Longest wait in the queue.
    timeout: Duration,
    context: DispatchContext,
    /// Its own tasks and deliveries (timed-out ones' settling included), which a hand-over may
    /// wait for.
    tasks: TaskTracker,
}

impl Dispatcher {
    async fn run(self) {
        let context = &self.context;
        loop {
            // An idle dispatcher holds one slot of its own, never one of the
            // host's: those go only to messages ready to be sent.
            let Some(slot) = self.slot().await else { break };
            // Take nothing while no endpoint can take traffic (the expirer
            // dead-letters what waits too long), unless the queue is closed
            // and draining.
            tokio::select! {
                () = self.cluster.serving() => {}
                () = self.queue.closed() => {}
            }
            // The most urgent message whose stream (if it keeps one) has no delivery under way, or
            // the stream's oldest in its place, with the stream's turn: one waiting for its turn
            // stays in the queue, holding no slot.
            let popped =
                self.queue.pop_first(|| self.look(), |job| self.stream(job), self.cluster.turn_ended());
            let popped = popped.await;
            let Some((Queued { item: job, enqueued, seq }, turn)) = popped else { break };
            // A slot of the host's, within the message's queue timeout.
            let host_slot = tokio::select! {
                slot = context.in_flight.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = tokio::time::sleep_until(enqueued + self.timeout) => {
                    self.time_out(job, enqueued, false, turn);
                    continue;
                }
            };
            let Some(pipeline) = context.pipeline.upgrade() else { break };
            let (sink, cluster, waited) = (self.sink.clone(), self.cluster.clone(), enqueued.elapsed());
            let id = job.delivery.message.id;
            let span =
                tracing::debug_span!("deliver", destination = %sink.name, route = %job.route.route, id);
            let (timeout, past_grace, stopping) =
                (self.timeout, context.past_grace.clone(), context.stopping.clone());
            let queue = self.queue.clone();
            let delivery = async move {
                let result = if waited > timeout {
                    let waited_ms = enqueued.elapsed().as_millis() as u64;
                    Err(DeliveryError::QueueTimeout { waited_ms, last_error: None })
                } else if past_grace.is_cancelled() {
                    // Not started: nothing of it may go out now.
                    Err(DeliveryError::Shutdown)
                } else {
                    let (message, progress) = (job.delivery.message.clone(), DeliveryProgress::default());
                    let delivered = progress
                        .scope(crate::panic::catch_future(|| cluster.deliver_queued(message, enqueued)));
                    // What finished first counts: a delivery done as the grace period ends is done.
                    tokio::select! {
                        biased;
                        delivered = delivered => delivered.unwrap_or_else(|panic| Err(DeliveryError::Panicked(panic))),
                        () = past_grace.cancelled() => Err(cut_at_grace(&progress)),
                    }
                };
                // A delivered message's stream goes on at once (its next message goes before another
                // stream's less urgent one); one that failed keeps its turn until it is settled.
                let turn = result.is_err().then_some(turn);
                drop((slot, host_slot));
                let (job, result) = match result {
                    // The destination was replaced by a reload before an endpoint saw it: back in
                    // line, by its enqueue time, on the new instance's queue.
                    Err(DeliveryError::Retired) if queue.successor().is_some() => {
                        let priority = job.delivery.message.priority;
                        match queue.adopt(priority, Queued { item: job, enqueued, seq }) {
                            Ok(()) => return,
                            // That one is closed too: the host is shutting down, or a later
                            // reload removed the destination.
                            Err(PushError::Closed(job) | PushError::Full(job)) => {
                                let error = match stopping.is_cancelled() {
                                    true => DeliveryError::Shutdown,
                                    false => DeliveryError::Retired,
                                };
                                (job, Err(error))
                            }
                        }
                    }
                    result => (job, result),
                };
                pipeline.settle_job(&sink, job, result).await;
                // Its stream's next message goes once this one is settled: not while this one is
                // handed to the fallback, which would send it beside the next.
                drop(turn);
            };
            // Boxed: a delivery's future is several KiB, and a task moves its future whole as it
            // is spawned and as it ends (tokio boxes only those over 16 KiB), five copies a message.
            let delivery = self.tasks.track_future(Box::pin(delivery.instrument(span)));
            context.tracker.spawn_on(delivery, &context.runtime);
        }
    }

    /// One of the destination's delivery slots, once one is free; `None` once its queue is handed
    /// over to the instance a reload built, which takes the slots from then on.
    async fn slot(&self) -> Option<Slot> {
        let handed_over = async {
            self.queue.closed().await;
            if self.queue.successor().is_none() {
                // Closed by a shutdown, or a reload that removed the destination: what is left drains.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            slot = self.slots.acquire() => Some(slot),
            () = handed_over => None,
        }
    }

    /// The stream `job`'s message belongs to, if its destination keeps streams.
    fn stream<'j>(&self, job: &'j Job) -> Option<&'j str> {
        self.cluster.stream(&job.delivery.message)
    }

    /// What judges the queued messages in one look through the queue: one goes with its stream's
    /// turn (`None` for a message of no stream), unless a delivery of its stream holds the turn.
    /// A stream passed over once in the look is passed over to its end, even if its turn ends
    /// meanwhile: a later message of it must not overtake the one passed over.
    fn look(&self) -> impl FnMut(&Job) -> Option<Option<StreamTurn>> + '_ {
        let mut passed_over = HashSet::new();
        move |job: &Job| {
            let Some(key) = self.stream(job) else { return Some(None) };
            if passed_over.contains(key) {
                return None;
            }
            let turn = self.cluster.try_turn(key);
            if turn.is_none() {
                passed_over.insert(key.to_owned());
            }
            turn.map(Some)
        }
    }

    /// Dead-letter each queued message once it has waited past the queue
    /// timeout, whatever the dispatcher is waiting for (a slot, an endpoint). A stream's message
    /// whose turn is free takes it, as the dispatcher would have: its stream's next message waits
    /// until it is settled (by the fallback, say).
    async fn expire(self) {
        while let Some(Queued { item: job, enqueued, .. }) = self.queue.expired(self.timeout).await {
            let stream = self.stream(&job);
            // A held queue (its instance rebuilt while the one it replaced still delivers) waits
            // for turns that instance holds, which this one's turns do not show.
            let turn = stream.filter(|_| !self.queue.is_held()).and_then(|key| self.cluster.try_turn(key));
            let for_its_turn = stream.is_some() && turn.is_none();
            self.time_out(job, enqueued, for_its_turn, turn);
        }
    }

    /// Dead-letter `job`, which entered the queue at `enqueued`: it waited past its queue timeout,
    /// `for_its_turn` while a message of its stream was in flight (then the destination's
    /// fallback does not get it: it would send it beside that one), else for an endpoint or a slot.
    /// Its stream's `turn`, if it took it, is held until it is settled.
    fn time_out(&self, job: Job, enqueued: Instant, for_its_turn: bool, turn: Option<StreamTurn>) {
        let context = &self.context;
        let Some(pipeline) = context.pipeline.upgrade() else { return };
        let waited_ms = enqueued.elapsed().as_millis() as u64;
        let error = match for_its_turn {
            true => DeliveryError::TurnTimeout { waited_ms },
            false => DeliveryError::QueueTimeout { waited_ms, last_error: None },
        };
        let sink = self.sink.clone();
        let settle = async move {
            pipeline.settle_job(&sink, job, Err(error)).await;
            drop(turn);
        };
        // Among the destination's own tasks: a hand-over keeping order waits for it, as for a
        // delivery, while it holds the turn.
        context.tracker.spawn_on(self.tasks.track_future(settle), &context.runtime);
    }
}

impl Pipeline {
    /// Settle `job`, a delivery of `sink`'s, as `result` says (see [`Pipeline::settle`]); a
    /// destination that handed it over as its fallback is told once it is.
    async fn settle_job(&self, sink: &Sink, job: Job, result: crate::destination::DeliveryResult) {
        let Job { delivery, route, handed_over } = job;
        self.settle(sink, delivery, &route, result).await;
        drop(handed_over);
    }
}

/// How a delivery the end of a shutdown's grace period cut short ended, by its attempts: delivered
/// when an endpoint answered that it took the message (only its reply is lost), "may have been
/// delivered" when an attempt may have sent it, else never sent.
fn cut_at_grace(progress: &DeliveryProgress) -> DeliveryError {
    match (progress.answered(), progress.may_have_sent()) {
        (true, _) => DeliveryError::ReplyRefused("the host shut down while its reply was read".into()),
        (false, true) => DeliveryError::ShutdownInFlight,
        (false, false) => DeliveryError::Shutdown,
    }
}
