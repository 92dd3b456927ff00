//! The pipeline: workers take batches of accepted messages, route them, run
//! each route's stages and deliver what comes out.

mod item;
mod stats;
mod topology;
mod worker;

pub(crate) use item::{Envelope, ReplySender};
pub(crate) use stats::Counters;
pub use stats::Stats;
pub(crate) use topology::{LastingDestinations, Topology};

use crate::dead_letter::DeadLetterReason;
use crate::host::RequestError;
use crate::message::{Message, Verdict};
use crate::metrics::{Metrics, RouteMetrics};
use crate::plugin::{PluginEngine, PluginError, PluginRegistry, PluginSet};
use crate::router::Route;
use crate::stage::{NativeStages, Stage};
use arc_swap::ArcSwap;
use item::{Fate, Item};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::runtime::Handle;
use worker::Worker;

/// State shared by all workers of a host.
pub(crate) struct Pipeline {
    pub(crate) engine: Arc<PluginEngine>,
    pub(crate) registry: PluginRegistry,
    pub(crate) topology: ArcSwap<Topology>,
    pub(crate) natives: NativeStages,
    pub(crate) counters: Counters,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ids: Arc<AtomicU64>,
    pub(crate) batch_size: usize,
}

/// Deliveries and dead letters a batch leaves for the async side.
#[derive(Default)]
struct Settlements<'r> {
    deliveries: Vec<(&'r Route, &'r RouteMetrics, Item)>,
    dead_letters: Vec<(Item, DeadLetterReason, Option<&'r str>)>,
}

/// A reply that passes back through middleware before its caller gets it.
struct ReplyBack {
    sender: ReplySender,
    middlewares: Vec<Arc<crate::plugin::CompiledPlugin>>,
    request: Message,
    reply: Message,
}

/// One worker thread: runs until every sender of `queue` is gone and it is
/// empty. Plugins run here, on a plain thread, never on a runtime thread:
/// their calls are synchronous and may take up to their deadline.
pub(crate) fn run_worker(pipeline: Arc<Pipeline>, queue: flume::Receiver<Envelope>, runtime: Handle) {
    let mut worker = Worker::new(pipeline.engine.clone(), pipeline.ids.clone(), pipeline.metrics.clone());
    while let Ok(first) = queue.recv() {
        let mut batch = Vec::with_capacity(pipeline.batch_size);
        batch.push(first);
        batch.extend(queue.try_iter().take(pipeline.batch_size - 1));
        pipeline.process(&mut worker, &runtime, batch);
    }
}

impl Pipeline {
    fn process(&self, worker: &mut Worker, runtime: &Handle, batch: Vec<Envelope>) {
        // Pin one plugin set and one topology for the whole batch.
        let plugins = self.registry.snapshot();
        worker.forget_stale(&plugins);
        let topology = self.topology.load_full();
        let routes = &topology.routes;
        let mut settlements = Settlements::default();
        let mut by_route: Vec<Vec<Item>> = routes.routes().iter().map(|_| Vec::new()).collect();
        for envelope in batch {
            match routes.route(&envelope.message) {
                Some(key) => by_route[key].push(envelope.into()),
                None => {
                    let reason = DeadLetterReason::NoRoute { topic: envelope.message.topic.clone() };
                    settlements.dead_letters.push((envelope.into(), reason, None));
                }
            }
        }
        for (key, items) in by_route.into_iter().enumerate() {
            if !items.is_empty() {
                self.run_route(worker, &plugins, &topology, routes.get(key), items, &mut settlements);
            }
        }
        for back in runtime.block_on(self.settle(&topology, settlements)) {
            let answer = worker.on_reply(&back.middlewares, &back.request, back.reply);
            let _ = back.sender.send(answer.map(Some).map_err(RequestError::ReplyFailed));
        }
    }

    fn run_route<'r>(
        &self,
        worker: &mut Worker,
        plugins: &PluginSet,
        topology: &'r Topology,
        route: &'r Route,
        mut items: Vec<Item>,
        settlements: &mut Settlements<'r>,
    ) {
        let metrics = topology.route_metrics(&route.name);
        let _route = tracing::debug_span!("route", route = %route.name, messages = items.len()).entered();
        if let Some(priority) = route.priority {
            items.iter_mut().for_each(|item| item.message.priority = priority);
        }
        for stage in self.natives.resolve(&route.stages, plugins) {
            let inputs = items.len();
            let fates = run_stage(worker, route, &stage, items);
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
                    Fate::Responded(item, reply) => self.responded(item, reply, metrics),
                    Fate::DeadLetter(item, reason) => {
                        settlements.dead_letters.push((item, reason, Some(&route.name)))
                    }
                }
            }
        }
        settlements.deliveries.extend(items.into_iter().map(|item| (route, metrics, item)));
    }

    fn dropped(&self, item: Item, route: &Route, metrics: &RouteMetrics) {
        Counters::bump(&self.counters.filtered, 1);
        metrics.filtered.inc();
        metrics.latency.observe(item.accepted_at.elapsed().as_secs_f64());
        if let Some(reply) = item.reply {
            let _ = reply.send(Err(RequestError::Filtered { route: route.name.clone() }));
        }
    }

    fn responded(&self, item: Item, reply: Message, metrics: &RouteMetrics) {
        Counters::bump(&self.counters.responded, 1);
        metrics.responded.inc();
        metrics.latency.observe(item.accepted_at.elapsed().as_secs_f64());
        if let Some(sender) = item.reply {
            let _ = sender.send(Ok(Some(reply)));
        }
    }

    /// Deliver and dead-letter; returns the replies middleware must see.
    async fn settle(&self, topology: &Topology, settlements: Settlements<'_>) -> Vec<ReplyBack> {
        for (item, reason, route) in settlements.dead_letters {
            self.dead_letter(topology, item, reason, route).await;
        }
        let mut replies = Vec::new();
        for (route, metrics, item) in settlements.deliveries {
            replies.extend(self.deliver(topology, route, metrics, item).await);
        }
        replies
    }

    #[tracing::instrument(level = "debug", skip_all, fields(route = %route.name, id = item.message.id))]
    async fn deliver(
        &self,
        topology: &Topology,
        route: &Route,
        metrics: &RouteMetrics,
        item: Item,
    ) -> Option<ReplyBack> {
        let Item { message, reply, middlewares, accepted_at } = item;
        Counters::bump(&self.counters.created, route.destinations.len().saturating_sub(1) as u64);
        let mut answer: Option<Result<Option<Message>, RequestError>> = None;
        for name in &route.destinations {
            let target = &topology.destinations[name];
            match target.destination.deliver(message.clone()).await {
                Ok(response) => {
                    Counters::bump(&self.counters.delivered, 1);
                    target.count(true);
                    metrics.delivered.inc();
                    metrics.latency.observe(accepted_at.elapsed().as_secs_f64());
                    answer.get_or_insert(Ok(response));
                }
                Err(error) => {
                    target.count(false);
                    let reason = DeadLetterReason::Delivery { destination: name.clone(), error };
                    answer.get_or_insert(Err(RequestError::DeadLettered(reason.clone())));
                    let copy =
                        Item { message: message.clone(), reply: None, middlewares: Vec::new(), accepted_at };
                    self.dead_letter(topology, copy, reason, Some(&route.name)).await;
                }
            }
        }
        let (sender, answer) = (reply?, answer?);
        match answer {
            Ok(Some(reply)) if !middlewares.is_empty() => {
                return Some(ReplyBack { sender, middlewares, request: message, reply });
            }
            answer => {
                let _ = sender.send(answer);
            }
        }
        None
    }

    async fn dead_letter(
        &self,
        topology: &Topology,
        item: Item,
        reason: DeadLetterReason,
        route: Option<&str>,
    ) {
        Counters::bump(&self.counters.dead_lettered, 1);
        self.metrics.dead_letter(route, reason.code());
        if let Some(route) = route {
            let metrics = topology.route_metrics(route);
            metrics.dead_lettered.inc();
            metrics.latency.observe(item.accepted_at.elapsed().as_secs_f64());
        }
        tracing::warn!(id = item.message.id, topic = %item.message.topic, route, code = reason.code(), %reason, "dead-lettered");
        if let Some(reply) = item.reply {
            let _ = reply.send(Err(RequestError::DeadLettered(reason.clone())));
        }
        let letter = reason.label(item.message, route);
        let target = topology.dead_letter_for(&reason);
        if let Err(error) = topology.destinations[target].destination.deliver(letter).await {
            Counters::bump(&self.counters.dead_letter_failures, 1);
            tracing::error!(destination = %target, %error, %reason, "dead-letter destination failed");
        }
    }
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
            .map(|item| match filter.filter(&item.message) {
                Ok(Verdict::Keep) => Fate::Keep(item),
                Ok(Verdict::Drop) => Fate::Dropped(item),
                Err(error) => Fate::failed(item, route_policy, native_reason(name, error)),
            })
            .collect(),
        Stage::NativeTransform(name, transform) => items
            .into_iter()
            .flat_map(|item| match transform.transform(&item.message) {
                Ok(outputs) => worker.split(item, outputs),
                Err(error) => vec![Fate::failed(item, route_policy, native_reason(name, error))],
            })
            .collect(),
        Stage::Unavailable { stage, problem } => {
            let reason =
                DeadLetterReason::StageUnavailable { stage: stage.clone(), problem: problem.clone() };
            items.into_iter().map(|item| Fate::failed(item, route_policy, reason.clone())).collect()
        }
    }
}

fn native_reason(name: &str, error: PluginError) -> DeadLetterReason {
    DeadLetterReason::PluginError { plugin: name.to_owned(), version: "native".into(), error }
}
