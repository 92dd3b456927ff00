//! The pipeline: workers take batches of accepted messages, route them, run
//! each route's stages and deliver what comes out.

mod item;
mod stats;
mod worker;

pub(crate) use item::{Envelope, ReplySender};
pub(crate) use stats::Counters;
pub use stats::Stats;

use crate::dead_letter::DeadLetterReason;
use crate::destination::Destination;
use crate::host::RequestError;
use crate::message::{Message, Verdict};
use crate::plugin::{PluginEngine, PluginError, PluginRegistry, PluginSet};
use crate::router::{Route, RouteTable};
use crate::stage::{NativeStages, Stage};
use arc_swap::ArcSwap;
use item::{Fate, Item};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use worker::Worker;

/// State shared by all workers of a host.
pub(crate) struct Pipeline {
    pub(crate) engine: Arc<PluginEngine>,
    pub(crate) registry: PluginRegistry,
    pub(crate) routes: ArcSwap<RouteTable>,
    pub(crate) natives: NativeStages,
    pub(crate) destinations: HashMap<String, Arc<dyn Destination>>,
    pub(crate) dead_letter: String,
    pub(crate) counters: Counters,
    pub(crate) ids: Arc<AtomicU64>,
    pub(crate) batch_size: usize,
}

/// One worker: runs until every sender of `queue` is gone and it is empty.
pub(crate) async fn run_worker(pipeline: Arc<Pipeline>, queue: flume::Receiver<Envelope>) {
    let mut worker = Worker::new(pipeline.engine.clone(), pipeline.ids.clone());
    while let Ok(first) = queue.recv_async().await {
        let mut batch = Vec::with_capacity(pipeline.batch_size);
        batch.push(first);
        batch.extend(queue.try_iter().take(pipeline.batch_size - 1));
        pipeline.process(&mut worker, batch).await;
    }
}

impl Pipeline {
    async fn process(&self, worker: &mut Worker, batch: Vec<Envelope>) {
        // Pin one plugin set and one route table for the whole batch.
        let plugins = self.registry.snapshot();
        let routes = self.routes.load_full();
        let mut by_route: Vec<Vec<Item>> = routes.routes().iter().map(|_| Vec::new()).collect();
        for envelope in batch {
            match routes.route(&envelope.message) {
                Some(key) => by_route[key].push(envelope.into()),
                None => {
                    let reason = DeadLetterReason::NoRoute { topic: envelope.message.topic.clone() };
                    self.dead_letter(envelope.into(), reason, None).await;
                }
            }
        }
        for (key, items) in by_route.into_iter().enumerate() {
            if !items.is_empty() {
                self.run_route(worker, &plugins, routes.get(key), items).await;
            }
        }
    }

    async fn run_route(&self, worker: &mut Worker, plugins: &PluginSet, route: &Route, mut items: Vec<Item>) {
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
                    Fate::Dropped(item) => self.dropped(item, route),
                    Fate::Responded(item, reply) => self.responded(item, reply),
                    Fate::DeadLetter(item, reason) => self.dead_letter(item, reason, Some(&route.name)).await,
                }
            }
            if items.is_empty() {
                return;
            }
        }
        for item in items {
            self.deliver(worker, route, item).await;
        }
    }

    fn dropped(&self, item: Item, route: &Route) {
        Counters::bump(&self.counters.filtered, 1);
        if let Some(reply) = item.reply {
            let _ = reply.send(Err(RequestError::Filtered { route: route.name.clone() }));
        }
    }

    fn responded(&self, item: Item, reply: Message) {
        Counters::bump(&self.counters.responded, 1);
        if let Some(sender) = item.reply {
            let _ = sender.send(Ok(Some(reply)));
        }
    }

    async fn deliver(&self, worker: &mut Worker, route: &Route, item: Item) {
        let Item { message, reply, middlewares } = item;
        Counters::bump(&self.counters.created, route.destinations.len().saturating_sub(1) as u64);
        let mut answer: Option<Result<Option<Message>, RequestError>> = None;
        for name in &route.destinations {
            let destination = &self.destinations[name];
            match destination.deliver(message.clone()).await {
                Ok(response) => {
                    Counters::bump(&self.counters.delivered, 1);
                    answer.get_or_insert(Ok(response));
                }
                Err(error) => {
                    let reason = DeadLetterReason::Delivery { destination: name.clone(), error };
                    answer.get_or_insert(Err(RequestError::DeadLettered(reason.clone())));
                    let copy = Item { message: message.clone(), reply: None, middlewares: Vec::new() };
                    self.dead_letter(copy, reason, Some(&route.name)).await;
                }
            }
        }
        let (Some(sender), Some(answer)) = (reply, answer) else { return };
        let answer = match answer {
            Ok(Some(response)) if !middlewares.is_empty() => {
                worker.on_reply(&middlewares, &message, response).map(Some).map_err(RequestError::ReplyFailed)
            }
            other => other,
        };
        let _ = sender.send(answer);
    }

    async fn dead_letter(&self, item: Item, reason: DeadLetterReason, route: Option<&str>) {
        Counters::bump(&self.counters.dead_lettered, 1);
        tracing::warn!(id = item.message.id, topic = %item.message.topic, route, code = reason.code(), %reason, "dead-lettered");
        if let Some(reply) = item.reply {
            let _ = reply.send(Err(RequestError::DeadLettered(reason.clone())));
        }
        let letter = reason.label(item.message, route);
        if let Err(error) = self.destinations[&self.dead_letter].deliver(letter).await {
            Counters::bump(&self.counters.dead_letter_failures, 1);
            tracing::error!(destination = %self.dead_letter, %error, %reason, "dead-letter destination failed");
        }
    }
}

fn run_stage(worker: &mut Worker, route: &Route, stage: &Stage, items: Vec<Item>) -> Vec<Fate> {
    let route_policy = route.on_error.unwrap_or_default();
    match stage {
        Stage::Plugin(plugin) => {
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
