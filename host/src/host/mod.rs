//! The host: the embedding API around the pipeline.

mod alerting;
mod builder;
mod error;
mod spool;

pub use alerting::ALERT_TOPIC_PREFIX;
pub use builder::HostBuilder;
pub use error::{BuildError, RequestError, SendError};

use crate::config::{Config, ConfigError};
use crate::dead_letter::{DeadLetterFile, FileError, LISTED_BYTES, Listing, Position, SpooledLetters};
use crate::destination::{DestinationStatus, StreamCheck, StreamStatus, StreamsSummary};
use crate::message::{ID_HEADER, Message, MessageId, unique_id};
use crate::metrics::{DestinationGauges, EndpointGauges};
use crate::pipeline::{Counters, DirectRoute, Envelope, Redelivery, Stats};
use crate::plugin::{CompiledPlugin, LoadError};
use crate::receipt::ReceiptHold;
use crate::reload::{ConfigChange, EventCounts, HostEvent, Reloader, Replacement, WatchGuard};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, oneshot};
use tokio_util::sync::CancellationToken;

/// How long the listeners have, once a shutdown past its grace period settled every message, to
/// send the answers of the requests that waited for them.
const ANSWERS_AFTER_SHUTDOWN: Duration = Duration::from_secs(1);

/// How long a stop waits, at least, for each write to the state directory it ends with (past
/// its grace period too) before it gives up on one a hung disk holds.
const HUNG_DISK_WAIT: Duration = Duration::from_secs(1);

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
    /// for room holds none, so that one no longer polled cannot keep the workers waiting.
    sender: RwLock<Option<flume::Sender<Envelope>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Watches the plugin directory and config file while set.
    watcher: Mutex<Option<WatchGuard>>,
    load_errors: Vec<LoadError>,
    /// `host.queue_bytes` in KiB: accepted messages hold their size of it
    /// until a worker takes them, so the intake is bounded in bytes too.
    intake_bytes: Arc<Semaphore>,
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
        // All of them into the spool at once: the writer commits them together. Room there follows
        // room in the intake here, as neither is waited for (see `Spool::room`).
        let spooled = futures_util::future::join_all(with_bytes.iter().map(|admitted| async move {
            match admitted {
                Ok((message, _)) => self.spool_put(self.spool_room(message, false).await?).await,
                Err(_) => Ok(None),
            }
        }))
        .await;
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
        let (reply, pending) = oneshot::channel();
        let envelope = self.admitted_envelope(message, Some(reply)).await?;
        let id = envelope.message.id;
        self.queue(envelope).await?;
        Ok((id, pending))
    }

    /// Admit a request only if the queue (and the spool) has room now; await the returned reply.
    pub async fn try_request(&self, message: Message) -> Result<(MessageId, PendingReply), SendError> {
        let (reply, pending) = oneshot::channel();
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
    /// destination of that name keeps streams.
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

    /// Serve the configured ingress (HTTP, NATS) until `shutdown` completes, then drain: the
    /// ingress stops first (a NATS subscription admitting what its server had sent), then the host
    /// (a JetStream ingress waits for the host's stop to end to acknowledge, or hand back, what it
    /// pulled).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), BuildError> {
        let config = self.config();
        let http = match &config.ingress.http {
            Some(http) => Some(crate::ingress::HttpIngress::bind(self.clone(), http.listen).await?),
            None => None,
        };
        let grpc = match &config.ingress.grpc {
            Some(grpc) => Some(crate::ingress::GrpcIngress::bind(self.clone(), grpc.listen).await?),
            None => None,
        };
        let mut nats = Vec::new();
        for entry in &config.ingress.nats {
            nats.push(crate::ingress::NatsIngress::connect(self.clone(), entry.clone()).await?);
        }
        let stop = CancellationToken::new();
        let serving = nats.into_iter().map(|nats| tokio::spawn(nats.serve(stop.clone().cancelled_owned())));
        let mut serving: Vec<_> = serving.collect();
        if let Some(http) = http {
            serving.push(tokio::spawn(http.serve(stop.clone().cancelled_owned())));
        }
        if let Some(grpc) = grpc {
            serving.push(tokio::spawn(grpc.serve(stop.clone().cancelled_owned())));
        }
        shutdown.await;
        let ingress_stopped = async {
            for ingress in serving {
                if ingress.await.is_err() {
                    tracing::error!("an ingress panicked");
                }
            }
        };
        let stopped = self.shutdown_after(ingress_stopped);
        stop.cancel();
        stopped.await;
        Ok(())
    }

    /// Shut down once `listeners` (told to stop: finishing the requests in flight) are done, or
    /// when the grace period that began with the stop ends, whichever comes first: a request that
    /// waits for its message's delivery (`?wait=true`) or a client that stalls cannot hold the
    /// stop past it. The host's own grace period is what is left of it. What `listeners` gave, if
    /// they finished in time.
    ///
    /// The host is stopping, and the grace period running, from the call on, before the returned
    /// future is first polled: a JetStream ingress among `listeners` waits for the end of the
    /// host's stop rather than give up at a timer of its own, and the spool's start-up redelivery
    /// admits no more (what it did not admit stays in the spool for the next start).
    ///
    /// A request still waiting at the grace period's end has its answer once the shutdown settled
    /// its message: the listeners get a second more to send it.
    pub fn shutdown_after<T>(&self, listeners: impl Future<Output = T>) -> impl Future<Output = Option<T>> {
        let (host, grace, stopping) = (self.clone(), self.shutdown_grace(), Instant::now());
        self.inner.stopping.cancel();
        async move {
            tokio::pin!(listeners);
            if let Ok(stopped) = tokio::time::timeout(grace, &mut listeners).await {
                host.shutdown_within(grace.saturating_sub(stopping.elapsed())).await;
                return Some(stopped);
            }
            tracing::warn!(
                ?grace,
                "requests still in flight at the end of the shutdown grace period: shutting down without them"
            );
            host.shutdown_within(Duration::ZERO).await;
            tokio::time::timeout(ANSWERS_AFTER_SHUTDOWN, listeners).await.ok()
        }
    }

    /// SIGKILL, at once, the processes this host's `subprocess` destinations started and that still
    /// run (each with the process group it leads: what a wrapper started goes with it), and each
    /// they start from now on; for a process about to exit without a shutdown, as a second Ctrl-C
    /// asks: `std::process::exit` runs no destructor, and the terminal's Ctrl-C reaches the
    /// host's process group only, so they would run on without their host.
    pub fn kill_subprocesses(&self) {
        self.inner.reloader.pipeline.dispatch.process_groups().kill_all();
    }

    fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.config().host.shutdown_grace_ms)
    }

    /// Stop accepting, finish every message already accepted, stop the workers. The first call
    /// begins the shutdown, on a task of its own; it and every later call return once it ended, and
    /// a caller that gives up waiting (a timeout) leaves it running.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.shutdown_grace()).await;
    }

    /// [`shutdown`](Self::shutdown), with a grace period of `grace` if this call begins it. A second
    /// shutdown running beside the first, or after one cancelled half-way, found the workers gone
    /// and went on: it closed the queues and the spool while the first one's workers still
    /// delivered, and returned before they were done.
    async fn shutdown_within(&self, grace: Duration) {
        let mut stopped = {
            let mut stopped = self.inner.stopped.lock().unwrap_or_else(|poison| poison.into_inner());
            stopped
                .get_or_insert_with(|| {
                    let (tell, stopped) = tokio::sync::watch::channel(false);
                    let host = self.clone();
                    host.inner.stopping.cancel();
                    tokio::spawn(async move {
                        host.stop_within(grace).await;
                        host.inner.stop_ended.cancel();
                        let _ = tell.send(true);
                    });
                    stopped
                })
                .clone()
        };
        // An error: the shutdown's task panicked (the runtime logs it); there is nothing to wait for.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Resolves once the host is stopping: [`shutdown_after`](Self::shutdown_after) was called
    /// ([`run`](Self::run)'s shutdown came), or a shutdown began.
    pub(crate) async fn stopping(&self) {
        self.inner.stopping.cancelled().await;
    }

    /// Resolves once the host's stop has ended: every receipt is resolved by then, settled or
    /// handed back.
    pub(crate) async fn stop_ended(&self) {
        self.inner.stop_ended.cancelled().await;
    }

    /// The shutdown itself, run once.
    async fn stop_within(&self, grace: Duration) {
        // A config applied from here on would start tasks (health checks, dispatchers) nothing
        // stops: it is refused.
        self.inner.reloader.close();
        if let Some(alerting) = self.inner.alerting.lock().unwrap_or_else(|poison| poison.into_inner()).take()
        {
            alerting.abort();
        }
        self.inner.watcher.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        self.inner.sender.write().unwrap_or_else(|poison| poison.into_inner()).take();
        // The sends waiting for room in the intake try again, and are refused.
        self.inner.reloader.pipeline.intake_taken.notify_waiters();
        // The grace period runs from here: a delivery waiting for room in a full destination queue
        // holds its worker (or its hand-over) up, and it is the grace's end that lets it go.
        let pipeline = &self.inner.reloader.pipeline;
        let (past_grace, letters_cut) =
            (pipeline.dispatch.past_grace.clone(), pipeline.dispatch.letters_cut.clone());
        let grace_timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            past_grace.cancel();
            // The dead letters it makes get a moment more to reach a dead-letter destination.
            tokio::time::sleep(crate::pipeline::LETTERS_AFTER_GRACE).await;
            letters_cut.cancel();
        });
        // A hung disk holds a write to the state directory for good (a dead letter's append to the
        // file, a re-delivery pass rewriting it, the spool's last removes and fsync, alerts.json):
        // the stop waits for each at most what is left of its grace period (once the grace timer
        // cut what else it waits for), a second at least, then goes on without it. Blocking file
        // I/O cannot be cancelled, only left to go on on its thread: the state directory then
        // stays locked while the process lives.
        let stopping = Instant::now();
        let left = || grace.saturating_sub(stopping.elapsed()).max(HUNG_DISK_WAIT);
        let mut given_up = false;
        let mut give_up = |what: &str| {
            tracing::warn!(
                ?grace,
                "the stop gave up on {what}: not done within the shutdown grace period, or a second past it (a hung disk?)"
            );
            given_up = true;
        };
        let settled = async {
            let workers =
                std::mem::take(&mut *self.inner.workers.lock().unwrap_or_else(|poison| poison.into_inner()));
            let joined = tokio::task::spawn_blocking(move || {
                workers.into_iter().map(|w| w.join()).collect::<Vec<_>>()
            });
            for result in joined.await.expect("joining workers does not panic") {
                if result.is_err() {
                    tracing::error!("a pipeline worker panicked");
                }
            }
            // Every accepted message is now delivered, queued or dead-lettered: drain the queues.
            pipeline.topology.load().close_queues();
            pipeline.dispatch.tracker.close();
            let past_grace = &pipeline.dispatch.past_grace;
            tokio::select! {
                () = pipeline.dispatch.tracker.wait() => {}
                () = past_grace.cancelled() => {
                    tracing::warn!(?grace, "deliveries outlasted the shutdown grace period: dead-lettering the rest");
                    pipeline.dispatch.tracker.wait().await;
                }
            }
        };
        // The dead letters a stop makes try their dead-letter destinations until the letters' cut,
        // then go to the dead-letter file.
        let letters_cut = &pipeline.dispatch.letters_cut;
        if !unless_hung(settled, letters_cut, left).await {
            give_up("the dead letters still being appended to the dead-letter file");
        }
        // Every dead letter is now with a destination or in the file. A re-delivery pass stuck in a
        // dead-letter destination is cut by the grace timer, so it runs until the pass ended: the
        // letter cut stays in the file.
        let redelivery = self.inner.redelivery.lock().await.take();
        if let Some(redelivery) = redelivery
            && !unless_hung(redelivery.stop(), letters_cut, left).await
        {
            give_up("the re-delivery pass over the dead-letter file");
        }
        grace_timer.abort();
        // Every message is settled: its spool record's remove is on disk, and the spool unlocked,
        // before we return.
        if let Some(spool) = &self.inner.spool
            && tokio::time::timeout(left(), spool.close()).await.is_err()
        {
            give_up("the spool's last removes and fsync (settled messages may be delivered again)");
        }
        // The firing alerts' last state is written.
        if tokio::time::timeout(left(), self.inner.alerts.close()).await.is_err() {
            give_up("the firing alerts' last state (alerts.json)");
        }
        if given_up {
            tracing::warn!(
                "the state directory stays locked while this process lives: a write given up on may still land there"
            );
            return;
        }
        // Nothing writes to the state directory any more: another host may have it.
        self.inner.state_lock.release();
    }

    /// Check `message` and give it its ids; with the KiB of `host.queue_bytes`
    /// it holds in the intake (its size as `max_message_bytes` counts it,
    /// rounded up, at least one).
    fn admit(&self, mut message: Message) -> Result<(Message, u32), SendError> {
        let size = check_message(&message, self.inner.reloader.config.load().host.max_message_bytes)?;
        let kib = intake_kib(size);
        message.id = self.inner.reloader.pipeline.ids.fetch_add(1, Ordering::Relaxed);
        // An id the application set, in whatever case, is spelled as the host spells it from here
        // on: the dead-letter file, a transport and a receiver's deduplication look for `x-sy-id`.
        match message.headers.iter_mut().find(|(name, _)| name.eq_ignore_ascii_case(ID_HEADER)) {
            Some((name, _)) if name != ID_HEADER => *name = ID_HEADER.to_owned(),
            Some(_) => {}
            None => message.headers.push((ID_HEADER.to_owned(), unique_id())),
        }
        Ok((message, kib))
    }

    /// `kib` of `host.queue_bytes`, waited for.
    async fn intake_bytes(&self, kib: u32) -> OwnedSemaphorePermit {
        let budget = self.inner.intake_bytes.clone();
        budget.acquire_many_owned(kib).await.expect("the intake budget is never closed")
    }

    /// `kib` of `host.queue_bytes`, if free now.
    fn try_intake_bytes(&self, kib: u32) -> Result<OwnedSemaphorePermit, SendError> {
        let budget = self.inner.intake_bytes.clone();
        budget.try_acquire_many_owned(kib).map_err(|_| SendError::Backpressure)
    }

    fn count_accepted(&self) {
        // Also `switchyard_messages_accepted_total`: one counter for both.
        Counters::bump(&self.inner.reloader.pipeline.counters.accepted, 1);
    }

    fn sender(&self) -> Result<flume::Sender<Envelope>, SendError> {
        let sender = self.inner.sender.read().unwrap_or_else(|poison| poison.into_inner());
        sender.clone().ok_or(SendError::ShuttingDown)
    }

    /// Queue `envelope`, waiting while the queue is full; one that needs no worker goes to its
    /// destination instead, waiting while that is full. A wait holds nothing the workers or a
    /// shutdown wait for, so a send no longer polled holds neither up: it is told when room is
    /// made and tries again under the sender's lock, refused once a shutdown took the sender.
    /// Each try looks for the route in the topology of the time: one a reload changed meanwhile
    /// (to stages, or another destination) goes where it leads now.
    async fn enqueue(&self, mut envelope: Envelope) -> Result<(), SendError> {
        let pipeline = &self.inner.reloader.pipeline;
        while let Some(direct) = pipeline.direct_route(&envelope) {
            match self.deliver_direct_if_room(&direct, envelope)? {
                None => return Ok(()),
                Some(back) => envelope = back,
            }
            direct.room().await;
        }
        let mut woken = false;
        loop {
            let room = pipeline.intake_taken.notified();
            tokio::pin!(room);
            // Most sends find room at the first try, and take no lock of the notifier. A full queue
            // is tried again once this send is told of room (`enable`): room made after that try
            // cannot be missed.
            for try_again in [false, true] {
                if try_again {
                    room.as_mut().enable();
                }
                envelope = match self.enqueue_if_room(envelope)? {
                    Some(back) => back,
                    None if woken => {
                        // The batch that made room for this one may have made room for more: the
                        // next waiter tries too.
                        pipeline.intake_taken.notify_one();
                        return Ok(());
                    }
                    None => return Ok(()),
                };
            }
            room.await;
            woken = true;
        }
    }

    /// Queue `envelope` only if the queue has room now; one that needs no worker goes to its
    /// destination instead if that has room now, else to the queue.
    fn enqueue_now(&self, mut envelope: Envelope) -> Result<(), SendError> {
        let pipeline = &self.inner.reloader.pipeline;
        if let Some(direct) = pipeline.direct_route(&envelope) {
            match self.deliver_direct_if_room(&direct, envelope)? {
                None => {
                    self.count_accepted();
                    return Ok(());
                }
                Some(back) => envelope = back,
            }
        }
        match self.enqueue_if_room(envelope)? {
            None => self.count_accepted(),
            Some(_) => return Err(SendError::Backpressure),
        }
        Ok(())
    }

    /// Push `envelope` into the queue of its route's destination (`direct`) if that has room now,
    /// else hand it back. Under the sender's lock, as [`enqueue_if_room`](Self::enqueue_if_room)
    /// queues: nothing goes in once a shutdown took the sender, which it does before it waits for
    /// the workers and closes the queues.
    fn deliver_direct_if_room(
        &self,
        direct: &DirectRoute,
        envelope: Envelope,
    ) -> Result<Option<Envelope>, SendError> {
        let sender = self.inner.sender.read().unwrap_or_else(|poison| poison.into_inner());
        sender.as_ref().ok_or(SendError::ShuttingDown)?;
        Ok(self.inner.reloader.pipeline.try_deliver_direct(direct, envelope))
    }

    /// Queue `envelope` if the queue has room now, else hand it back. The sender is used under
    /// the lock, not cloned: a clone and its drop would update two counters every sender shares,
    /// twice a message.
    fn enqueue_if_room(&self, envelope: Envelope) -> Result<Option<Envelope>, SendError> {
        let sender = self.inner.sender.read().unwrap_or_else(|poison| poison.into_inner());
        match sender.as_ref().ok_or(SendError::ShuttingDown)?.try_send(envelope) {
            Ok(()) => Ok(None),
            Err(flume::TrySendError::Full(envelope)) => Ok(Some(envelope)),
            Err(flume::TrySendError::Disconnected(_)) => Err(SendError::ShuttingDown),
        }
    }
}

/// Await `work` until `cut` (the grace timer's cut of what it waits for but the disk), then at
/// most `left()` more: whether it ended. Given up on, it is dropped, not joined: what it left on a
/// blocking thread goes on there.
async fn unless_hung(
    work: impl Future<Output = ()>,
    cut: &CancellationToken,
    left: impl Fn() -> Duration,
) -> bool {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => return true,
        () = cut.cancelled() => {}
    }
    tokio::time::timeout(left(), work).await.is_ok()
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
    pending.await.unwrap_or(Err(RequestError::WorkerFailed))
}

/// Headers the sender of a message may give it, at most: besides those the host gives it as it
/// takes it in, its id and stream sequence ([`SendersHeaders`](crate::message::SendersHeaders)).
pub(crate) const MAX_HEADERS: usize = 1024;

/// What is wrong with a message whose sender gave it `count` headers, if anything: more than
/// [`MAX_HEADERS`]. Checked at admission, and by the ingresses that count a client's headers as
/// they read them (and build none past the limit).
pub(crate) fn header_count_problem(count: usize) -> Option<String> {
    (count > MAX_HEADERS).then(|| format!("{count} headers; at most {MAX_HEADERS}"))
}

/// Bytes of a message's topic, at most (a topic names a route's match, a file, a NATS subject:
/// it is a name, not data).
pub(crate) const MAX_TOPIC_BYTES: usize = 1024;

/// The bytes of an HTTP token (RFC 9110 `tchar`), by value.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"!#$%&'*+-.^_`|~";
    let mut at = 0;
    while at < punctuation.len() {
        table[punctuation[at] as usize] = true;
        at += 1;
    }
    table
};

/// What is wrong with a header, if anything: a name that is not an HTTP token (RFC 9110: one or
/// more letters, digits and ``!#$%&'*+-.^_`|~``), or a value holding a control character other than
/// tab. Checked at admission and on what plugins make: a header goes into HTTP requests and NATS
/// frames, where such a name or a line break fails every attempt, or ends the header early.
pub(crate) fn header_problem(name: &str, value: &str) -> Option<String> {
    // Every byte is looked at (no early exit), which the compiler turns into a few wide
    // operations: this runs on every header of every message admitted or made by a plugin.
    let not_token = name.bytes().fold(false, |bad, b| bad | !TOKEN_BYTES[usize::from(b)]);
    if name.is_empty() || not_token {
        let name = crate::bounded_text::one_line(name, 64);
        return Some(format!("header name \"{name}\" is not an HTTP token"));
    }
    let control = value.bytes().fold(false, |bad, b| bad | ((b < b' ') & (b != b'\t')) | (b == 0x7f));
    if control {
        let name = crate::bounded_text::one_line(name, 64);
        return Some(format!("header {name}: its value holds a control character"));
    }
    None
}

/// The KiB of `host.queue_bytes` a message of `size` bytes ([`Message::size`]) holds in the intake:
/// rounded up, at least one. The intake's budget is `queue_bytes` rounded up the same way, so a
/// message within `max_message_bytes` (which is at most `queue_bytes`) always fits in it.
pub(crate) fn intake_kib(size: usize) -> u32 {
    u32::try_from(size.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

/// What is wrong with `topic` as a message's topic, if anything: longer than [`MAX_TOPIC_BYTES`],
/// an empty or wildcard segment, whitespace or a control character. Checked at admission, and on
/// what a transform makes: a topic reaches subjects, keys and paths (`file`'s `{topic}`), where
/// `..` or a control character must not.
pub(crate) fn topic_problem(topic: &str) -> Option<String> {
    if topic.len() > MAX_TOPIC_BYTES {
        return Some(format!("a topic of {} bytes; at most {MAX_TOPIC_BYTES}", topic.len()));
    }
    if let Some(segment) = topic.split('.').find(|s| s.is_empty() || *s == "*" || *s == ">") {
        let problem = if segment.is_empty() {
            "an empty segment".to_owned()
        } else {
            format!("wildcard \"{segment}\"")
        };
        return Some(format!("topic {topic:?} has {problem}"));
    }
    if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("topic {topic:?} contains whitespace or control characters"));
    }
    None
}

/// A message can be admitted: a valid topic, at most [`MAX_HEADERS`] headers the sender gave
/// (an ingress gives it its id before admission), each a valid one ([`header_problem`]), and
/// topic, payload and the sender's headers together ([`Message::size`]) within `limit` bytes.
/// Returns that size.
pub(crate) fn check_message(message: &Message, limit: usize) -> Result<usize, SendError> {
    if let Some(problem) = topic_problem(&message.topic) {
        return Err(SendError::Malformed(problem));
    }
    if let Some(problem) = header_count_problem(message.senders_header_count()) {
        return Err(SendError::Malformed(problem));
    }
    if let Some(problem) = message.headers.iter().find_map(|(name, value)| header_problem(name, value)) {
        return Err(SendError::Malformed(problem));
    }
    let size = message.size();
    if size > limit {
        return Err(SendError::TooLarge { size, limit });
    }
    Ok(size)
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("stats", &self.stats()).finish_non_exhaustive()
    }
}
