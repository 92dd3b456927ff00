//! The host: the embedding API around the pipeline.

pub(crate) mod admission;
mod alerting;
mod body_budget;
mod builder;
mod error;
mod spool;
mod stop;

pub use alerting::ALERT_TOPIC_PREFIX;
pub use builder::HostBuilder;
pub use error::{BuildError, RequestError, SendError};

pub(crate) use admission::{MAX_HEADERS, header_count_problem, header_problem, intake_kib, topic_problem};
pub(crate) use body_budget::{BodyHold, GRPC_STREAM_WINDOW, grpc_call_bytes, grpc_decoding_limit};

use crate::config::{Config, ConfigError};
use crate::dead_letter::{DeadLetterFile, FileError, LISTED_BYTES, Listing, Position, SpooledLetters};
use crate::destination::{DestinationStatus, StreamCheck, StreamStatus, StreamsSummary};
use crate::message::{ID_HEADER, Message, MessageId, unique_id};
use crate::metrics::{DestinationGauges, EndpointGauges};
use crate::pipeline::{Counters, DirectRoute, Envelope, Redelivery, ReplySender, Stats};
use crate::plugin::{CompiledPlugin, LoadError};
use crate::receipt::ReceiptHold;
use crate::reload::{ConfigChange, EventCounts, HostEvent, Reloader, Replacement, WatchGuard};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

/// A running Switchyard host. Cloning is cheap; all clones share one host.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    reloader: Arc<Reloader>,
    /// `None` once shutdown began: the workers stop when the last clone of the
    /// sender is gone and the queue is empty, so nothing accepted is dropped. Only a task that
    /// queues holds a clone while it waits (the spool's re-delivery at start): a send that waits
    /// for room holds none, so that one no longer polled cannot keep the workers waiting. Taken
    /// too as the host's runtime ends (see [`stop::watch_runtime`]), which holds it weakly.
    sender: Arc<RwLock<Option<flume::Sender<Envelope>>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Watches the plugin directory and config file while set.
    watcher: Mutex<Option<WatchGuard>>,
    load_errors: Vec<LoadError>,
    /// `host.queue_bytes` in KiB: accepted messages hold their size of it
    /// until a worker takes them, so the intake is bounded in bytes too.
    intake_bytes: Arc<Semaphore>,
    /// What the ingress may hold of request bodies before their messages are admitted, over all
    /// clients: what `intake_bytes` does not count yet.
    bodies: body_budget::BodyBudget,
    /// Re-delivers from the dead-letter file; stopped by shutdown, or
    /// when the last clone of the host is dropped.
    redelivery: tokio::sync::Mutex<Option<Redelivery>>,
    /// With `host.durability = "spool"`: where accepted messages wait for their outcome.
    spool: Option<crate::spool::Spool>,
    /// The `[[alert]]` rules and where each stands.
    alerts: crate::alert::AlertBook,
    /// The state directory, this host's until shutdown ends or it is dropped (the dead-letter file
    /// holds it too).
    state_lock: Arc<crate::state_lock::StateLock>,
    /// Lets the state directory go as the host is dropped, after its spool (see [`Drop`] below).
    _dead_letter_file: DeadLetterFileGuard,
    /// Evaluates the alert rules; aborted when shutdown begins.
    alerting: Mutex<Option<tokio::task::AbortHandle>>,
    /// Turns true once the shutdown, begun by the first call, has ended; `None` before that call.
    stopped: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    /// Cancelled once the host is stopping (`shutdown_after` was called — by `run` once its
    /// shutdown came, by `switchyard run` on a stop signal — or a shutdown began), and once
    /// that stop has ended: a stopping JetStream ingress waits for its end, which resolves every
    /// receipt, rather than give up on them by a timer of its own. Shared with the dispatchers
    /// (`DispatchContext::stopping`), which tell by it a queue the stop closed from one a reload
    /// closed as it removed the destination.
    stopping: CancellationToken,
    stop_ended: CancellationToken,
}

impl Drop for HostInner {
    /// Dropped without a shutdown: the spool closes first, as a crash would leave it, so the
    /// messages dropped unsettled with the queues and tasks after it stay for the next start; then
    /// the dead-letter file (`_dead_letter_file`), so the state directory is free for the
    /// next host as the drop returns, though workers and tasks of this one may run on a while.
    fn drop(&mut self) {
        self.spool.take();
    }
}

/// Closes a host's dead-letter file as it is dropped ([`DeadLetterFile::close`]): the state
/// directory is free for the next host at once, however long the workers and tasks holding the
/// file outlive their host (a worker busy with a message, a task the runtime has yet to poll).
/// Held by the host, and by its builder until the host is built: a failed start lets it go too.
struct DeadLetterFileGuard(Arc<DeadLetterFile>);

impl Drop for DeadLetterFileGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The reply of a request admitted with [`Host::try_request`].
pub type PendingReply = oneshot::Receiver<Result<Option<Message>, RequestError>>;

impl Host {
    /// Start building a host.
    pub fn builder() -> HostBuilder {
        HostBuilder::new()
    }

    /// Accept `message`, waiting while the queue (or the spool) is full. Returns its id once the
    /// message is accepted: queued, and with `durability = "spool"` on disk.
    pub async fn send(&self, message: Message) -> Result<MessageId, SendError> {
        self.send_held(message, None).await
    }

    /// Accept `message` as [`send`](Host::send) does, with a [`Receipt`](crate::Receipt) that
    /// resolves once it and everything made from it reached an outcome (or can no longer): for an
    /// ingress that acknowledges its source only then. Its source keeps it until then, through a
    /// crash too, so with `durability = "spool"` it is not written to the spool: a spooled copy
    /// would only be delivered a second time after a crash. For the same reason a shutdown that
    /// gives up on it does not dead-letter it: it hands it back
    /// ([`Settlement::HandedBack`](crate::Settlement::HandedBack)), for its source to deliver again.
    pub async fn send_with_receipt(
        &self,
        message: Message,
    ) -> Result<(MessageId, crate::Receipt), SendError> {
        let (hold, receipt) = crate::receipt::ReceiptHold::new();
        Ok((self.send_held(message, Some(hold)).await?, receipt))
    }

    /// [`send`](Host::send), the message telling `receipt` (if any) once it is settled.
    async fn send_held(
        &self,
        message: Message,
        receipt: Option<ReceiptHold>,
    ) -> Result<MessageId, SendError> {
        let (message, kib) = self.admit(message)?;
        let id = message.id;
        // Room in the spool first (see `Spool::room`): none with a receipt.
        let room = match receipt {
            Some(_) => None,
            None => self.spool_room(&message, true).await?,
        };
        let bytes = self.intake_bytes(kib).await;
        let envelope = match receipt {
            Some(receipt) => Envelope::new(message, None, bytes, None).with_receipt(receipt),
            None => Envelope::new(message, None, bytes, self.spool_put(room).await?),
        };
        self.queue(envelope).await?;
        Ok(id)
    }

    /// Accept `message` only if the queue (and the spool) has room now; with `durability =
    /// "spool"`, once it is on disk.
    pub async fn try_send(&self, message: Message) -> Result<MessageId, SendError> {
        self.try_accept(message, false).await
    }

    /// [`try_send`](Host::try_send); `message` is an alert transition's when `alert_message`: its
    /// dead letters are not counted where alert rules read `dead_letters`.
    async fn try_accept(&self, message: Message, alert_message: bool) -> Result<MessageId, SendError> {
        let (message, kib) = self.admit(message)?;
        let id = message.id;
        let room = self.spool_room(&message, false).await?;
        let bytes = self.try_intake_bytes(kib)?;
        let spooled = self.spool_put(room).await?;
        let envelope = Envelope::new(message, None, bytes, spooled);
        self.queue_now(if alert_message { envelope.of_alert() } else { envelope }).await?;
        Ok(id)
    }

    /// Accept what of `messages` the queue has room for now, admitted as one batch (one take from the
    /// intake byte budget for all of them while it has room, one spool commit, one count): a result
    /// per message, in order. Each is checked like [`try_send`](Host::try_send); once one is
    /// refused for room (the intake's bytes or the queue full), every later one is refused with
    /// [`SendError::Backpressure`] too, so that what is accepted never overtakes what was refused.
    pub async fn try_send_batch(&self, messages: Vec<Message>) -> Vec<Result<MessageId, SendError>> {
        let admitted: Vec<_> = messages.into_iter().map(|message| self.admit(message)).collect();
        let kib = admitted.iter().flatten().fold(0u32, |total, (_, kib)| total.saturating_add(*kib));
        // The whole batch's share of the budget at once; when it does not fit, message by message
        // until one finds no room.
        let mut batch_bytes = self.try_intake_bytes(kib).ok();
        let mut room = true;
        let with_bytes: Vec<_> = admitted
            .into_iter()
            .map(|admitted| {
                let (message, kib) = admitted?;
                let bytes = match batch_bytes.as_mut().and_then(|bytes| bytes.split(kib as usize)) {
                    Some(bytes) => bytes,
                    None if room => self.try_intake_bytes(kib).inspect_err(|_| room = false)?,
                    None => return Err(SendError::Backpressure),
                };
                Ok((message, bytes))
            })
            .collect();
        // All of them into the spool together: the writer commits them together. Room there follows
        // room in the intake here, as neither is waited for (see `Spool::room`).
        let spooled = self.put_together(with_bytes.iter().map(|admitted| async move {
            match admitted {
                Ok((message, _)) => self.spool_put(self.spool_room(message, false).await?).await,
                Err(_) => Ok(None),
            }
        }));
        let spooled = futures_util::future::join_all(spooled.await).await;
        let sender = self.sender();
        // Once one is refused for room (in the intake, the spool or the queue), the rest are too.
        let (mut full, mut refused) = (false, Vec::new());
        let mut queue = |at: usize,
                         admitted: Result<(Message, OwnedSemaphorePermit), SendError>,
                         spooled: Result<_, SendError>,
                         full: bool| {
            let (message, bytes) = admitted?;
            let envelope = Envelope::new(message, None, bytes, spooled?);
            let (id, spooled) = (envelope.message.id, envelope.accepted.spooled.clone());
            let queued = match full {
                true => Err(SendError::Backpressure),
                false => sender.as_ref().map_err(Clone::clone).and_then(|sender| {
                    sender.try_send(envelope).map_err(|err| match err {
                        flume::TrySendError::Full(_) => SendError::Backpressure,
                        flume::TrySendError::Disconnected(_) => SendError::ShuttingDown,
                    })
                }),
            };
            if let Err(refusal) = queued {
                refused.push((at, id, spooled, refusal.clone()));
                return Err(refusal);
            }
            Ok(id)
        };
        let mut results: Vec<_> = with_bytes
            .into_iter()
            .zip(spooled)
            .enumerate()
            .map(|(at, (admitted, spooled))| {
                let result = queue(at, admitted, spooled, full);
                full |= matches!(result, Err(SendError::Backpressure));
                result
            })
            .collect();
        let accepted = results.iter().filter(|result| result.is_ok()).count() as u64;
        Counters::bump(&self.inner.reloader.pipeline.counters.accepted, accepted);
        // Nothing more is queued: a wait below holds no sender, or one no longer polled would keep
        // the workers, and a shutdown, waiting (see `HostInner::sender`).
        drop(sender);
        // The records of those refused go before the refusals are told, together (one fsync).
        let answers = futures_util::future::join_all(refused.into_iter().map(
            |(at, id, spooled, refusal)| async move {
                (at, self.answer_refusal(spooled, refusal).await.map(|()| id))
            },
        ))
        .await;
        for (at, answer) in answers {
            results[at] = answer;
        }
        results
    }

    /// Send `message` and wait for the destination's reply (`None` when the
    /// destination gives none).
    pub async fn request(&self, message: Message) -> Result<Option<Message>, RequestError> {
        let (_, pending) = self.send_request(message).await?;
        await_reply(pending).await
    }

    /// Admit a request, waiting while the queue is full; await the returned reply.
    pub async fn send_request(&self, message: Message) -> Result<(MessageId, PendingReply), SendError> {
        let (reply, pending) = ReplySender::new();
        let envelope = self.admitted_envelope(message, Some(reply)).await?;
        let id = envelope.message.id;
        self.queue(envelope).await?;
        Ok((id, pending))
    }

    /// Admit a request only if the queue (and the spool) has room now; await the returned reply.
    pub async fn try_request(&self, message: Message) -> Result<(MessageId, PendingReply), SendError> {
        let (reply, pending) = ReplySender::new();
        let (message, kib) = self.admit(message)?;
        let id = message.id;
        let room = self.spool_room(&message, false).await?;
        let bytes = self.try_intake_bytes(kib)?;
        let spooled = self.spool_put(room).await?;
        self.queue_now(Envelope::new(message, Some(reply), bytes, spooled)).await?;
        Ok((id, pending))
    }

    /// What the spool holds now (`None` with `durability = "memory"`).
    pub fn spool(&self) -> Option<crate::spool::SpoolStatus> {
        self.inner.spool.as_ref().map(crate::spool::Spool::status)
    }

    /// Counters of what happened to accepted messages.
    pub fn stats(&self) -> Stats {
        self.inner.reloader.pipeline.counters.snapshot()
    }

    /// What the dead-letter file holds: letters no dead-letter destination
    /// took, waiting to be re-delivered; the `limit` oldest of them, or fewer
    /// where they would pass [`LISTED_BYTES`],
    /// and where the next begin. Reads the file (blocking I/O: from async code,
    /// call it in `spawn_blocking`).
    pub fn dead_letters(&self, limit: usize) -> Result<SpooledLetters, FileError> {
        let listed = self.dead_letters_after(Position::HEAD, limit)?;
        Ok(listed.expect("the head is a place in every file"))
    }

    /// [`dead_letters`](Self::dead_letters) from `from` on (the `next` of an
    /// earlier answer); `None` when the letters moved since that answer (the
    /// file rewritten to cut out those re-delivered, or replaced): look again
    /// from the head.
    pub fn dead_letters_after(
        &self,
        from: Position,
        limit: usize,
    ) -> Result<Option<SpooledLetters>, FileError> {
        let file = &self.inner.reloader.pipeline.dead_letters.file;
        let Some(Listing { letters, held, next }) = file.list(from, limit, LISTED_BYTES)? else {
            return Ok(None);
        };
        Ok(Some(SpooledLetters { file: file.path().to_owned(), count: held, letters, next }))
    }

    /// The plugin versions currently serving, in name order.
    pub fn plugins(&self) -> Vec<Arc<CompiledPlugin>> {
        self.inner.reloader.pipeline.registry.snapshot().values().cloned().collect()
    }

    /// The last rejection reason of each plugin whose latest file was refused.
    pub fn last_rejections(&self) -> std::collections::BTreeMap<String, String> {
        self.inner.reloader.events.rejections()
    }

    /// The version each plugin whose file was removed last served (until
    /// a file of that name loads again; of the last 64 removed).
    pub fn removed_plugins(&self) -> std::collections::BTreeMap<String, String> {
        self.inner.reloader.events.removals()
    }

    /// Route stages that cannot run now (`filter:NAME` of a plugin not
    /// loaded, or of another kind), as written in the routes.
    pub fn unavailable_stages(&self) -> Vec<String> {
        self.unavailable_stages_with_problems().into_iter().map(|(stage, _)| stage).collect()
    }

    /// Each route stage that cannot run now, with why.
    fn unavailable_stages_with_problems(&self) -> Vec<(String, String)> {
        let pipeline = &self.inner.reloader.pipeline;
        // The config first, as a batch pins its routes before its plugins.
        let config = self.config();
        let plugins = pipeline.registry.snapshot();
        let stages = config.routes.iter().flat_map(|route| pipeline.natives.resolve(&route.stages, &plugins));
        stages
            .filter_map(|stage| match stage {
                crate::stage::Stage::Unavailable { stage, problem } => Some((stage, problem)),
                _ => None,
            })
            .collect()
    }

    /// Each destination of the current topology, sorted by name, with its
    /// queue depth and the state of its endpoints.
    pub fn destinations(&self) -> Vec<DestinationStatus> {
        let topology = self.inner.reloader.pipeline.topology.load();
        let mut destinations: Vec<_> = topology
            .destinations
            .iter()
            .map(|(name, target)| DestinationStatus {
                name: name.clone(),
                queued: target.queue.as_ref().map(|queue| queue.0.len() + target.sink.destination.waiting()),
                endpoints: target.sink.destination.endpoints(),
                streams: target.sink.destination.streams(),
            })
            .collect();
        destinations.sort_by(|a, b| a.name.cmp(&b.name));
        destinations
    }

    /// The stream table of destination `name`: its summary and at most `limit` streams, the most
    /// recently active first; `None` when no destination of that name keeps streams. Passes over
    /// the whole table (up to `max_streams_tracked` streams): from async code, call it in
    /// `spawn_blocking`.
    pub fn streams(&self, name: &str, limit: usize) -> Option<(StreamsSummary, Vec<StreamStatus>)> {
        let topology = self.inner.reloader.pipeline.topology.load();
        let destination = &topology.destinations.get(name)?.sink.destination;
        Some((destination.streams()?, destination.stream_table(limit)?))
    }

    /// Runs the consistency check of destination `name`'s stream table now; `None` when no
    /// destination of that name keeps streams. Passes over the whole table (up to
    /// `max_streams_tracked` streams), letting it go for picks between chunks: from async code,
    /// call it in `spawn_blocking`.
    pub fn verify_streams(&self, name: &str) -> Option<StreamCheck> {
        let topology = self.inner.reloader.pipeline.topology.load();
        topology.destinations.get(name)?.sink.destination.verify_streams()
    }

    /// Why the host is not ready to serve, if it is not: route stages that
    /// cannot run (and why), destinations whose transport or balancer plugin
    /// is not loaded or not of its kind, and destinations with no endpoint serving.
    pub fn unready(&self) -> Vec<String> {
        let stages = self
            .unavailable_stages_with_problems()
            .into_iter()
            .map(|(stage, problem)| format!("stage {stage} is unavailable: {problem}"));
        let topology = self.inner.reloader.pipeline.topology.load();
        let mut targets: Vec<_> = topology.destinations.iter().collect();
        targets.sort_by_key(|(name, _)| *name);
        let plugins = targets.into_iter().flat_map(|(name, target)| {
            let problems = target.sink.destination.unavailable().into_iter();
            problems.map(move |problem| format!("destination {name}: {problem}"))
        });
        let destinations = self.destinations().into_iter().filter(|destination| !destination.serving());
        let destinations = destinations
            .map(|destination| format!("destination {} has no endpoint serving", destination.name));
        stages.chain(plugins).chain(destinations).collect()
    }

    /// The host's metrics (Prometheus families).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.reloader.pipeline.metrics
    }

    /// Plugins that failed to load at start, with the reason.
    pub fn load_errors(&self) -> &[LoadError] {
        &self.inner.load_errors
    }

    /// The receiving end of the `memory` destination `name`.
    pub fn memory(&self, name: &str) -> Option<flume::Receiver<Message>> {
        self.inner.reloader.lasting.receiver(name)
    }

    /// The configuration the host runs with now.
    pub fn config(&self) -> Arc<Config> {
        self.inner.reloader.config.load_full()
    }

    /// The host's control side, which the watcher drives: tests drive it as the watcher does.
    #[cfg(test)]
    pub(crate) fn reloader(&self) -> &Arc<Reloader> {
        &self.inner.reloader
    }

    /// Subscribe to [`HostEvent`]s (plugin loaded, replaced, rejected,
    /// removed; config applied or rejected). A subscriber that falls more
    /// than 1024 events behind misses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.inner.reloader.events.subscribe()
    }

    /// How many events of each kind the host has had.
    pub fn event_counts(&self) -> EventCounts {
        self.inner.reloader.events.counts()
    }

    /// Re-read the config file (if the host was built from one) and every
    /// plugin of the plugin directory, applying what changed. An invalid
    /// config is rejected whole; the running one stays, and the plugins are
    /// read all the same (before its error is returned). Says whether the
    /// configuration changed (a file equal to the running one emits no event). Once a shutdown
    /// began, refused ([`ConfigError::ShuttingDown`]).
    pub async fn reload(&self) -> Result<ConfigChange, ConfigError> {
        self.reload_telling_refusals().await.map(|(change, _)| change)
    }

    /// [`Host::reload`], and, when the config was not refused, each plugin whose file the reload
    /// read and refused, with why (as `POST /v1/reload` answers).
    pub(crate) async fn reload_telling_refusals(
        &self,
    ) -> Result<(ConfigChange, std::collections::BTreeMap<String, String>), ConfigError> {
        let reloader = self.inner.reloader.clone();
        tokio::task::spawn_blocking(move || {
            let change = reloader.reload_config(crate::reload::Retry::Refused);
            // An applied config re-read the plugins already, but not those refused before, and a
            // refused one read none: an explicit reload tries them all again either way.
            let refused = reloader.sync_all(crate::reload::Retry::Refused);
            change.map(|change| (change, refused))
        })
        .await
        .expect("reloading does not panic")
    }

    /// Validate `config`, re-read the plugin directory under it, and make it
    /// current (routes, destinations, plugin settings) with the plugins it
    /// brings serving first: its routes never run without them. An invalid config, or
    /// one that changes keys read only at start, changes nothing; so does one given once a
    /// shutdown began ([`ConfigError::ShuttingDown`]).
    pub async fn apply_config(&self, file: &str, config: Config) -> Result<ConfigChange, ConfigError> {
        let (reloader, file) = (self.inner.reloader.clone(), file.to_owned());
        tokio::task::spawn_blocking(move || reloader.apply_config(&file, config))
            .await
            .expect("applying a config does not panic")
    }

    /// What applying the config `text` (TOML) would do, changing nothing: a
    /// dry run of [`Host::replace_config`].
    pub async fn check_config_text(&self, text: &str) -> Result<ConfigChange, ConfigError> {
        let (reloader, text) = (self.inner.reloader.clone(), text.to_owned());
        tokio::task::spawn_blocking(move || {
            let file = reloader.config_name();
            let text = reloader.as_sent_back(&text).unwrap_or(text);
            reloader.check_config(&file, reloader.parse_config(&file, &text)?)
        })
        .await
        .expect("checking a config does not panic")
    }

    /// Apply the config `text` (TOML) as a reload of the config file would,
    /// then write it to that file so a restart keeps it: what changed, the path written (`None`
    /// when the host runs without a config file), and the plugins it refused. A refused config
    /// changes nothing; once a shutdown began, every one is refused. A key set
    /// in code that `text` gives as code set it keeps the file's own value, and a
    /// route added in code that `text` gives as it is is left out (the code adds
    /// it): [`Host::config`] sent back leaves the code's settings where they were.
    pub async fn replace_config(&self, text: &str) -> Result<Replacement, ConfigError> {
        let (reloader, text) = (self.inner.reloader.clone(), text.to_owned());
        tokio::task::spawn_blocking(move || reloader.replace_config(&text))
            .await
            .expect("replacing the config does not panic")
    }
}

/// What `/metrics` shows of `destination` at a scrape.
fn gauges_of(destination: DestinationStatus) -> DestinationGauges {
    let endpoints = destination.endpoints.into_iter().map(|endpoint| EndpointGauges {
        serving: endpoint.up(),
        in_flight: endpoint.in_flight,
        pool: endpoint.pool.map(|pool| (pool.size, pool.idle)),
        endpoint: endpoint.address,
    });
    DestinationGauges {
        destination: destination.name,
        queued: destination.queued,
        endpoints: endpoints.collect(),
        streams: destination.streams,
    }
}

/// Wait for the answer to an admitted request.
pub async fn await_reply(pending: PendingReply) -> Result<Option<Message>, RequestError> {
    // Its sender answers as it is dropped (see `ReplySender`): closed unanswered, it was forgotten.
    pending.await.unwrap_or(Err(RequestError::HostGone))
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("stats", &self.stats()).finish_non_exhaustive()
    }
}
