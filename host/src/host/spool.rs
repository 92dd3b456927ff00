//! The host's side of the durable spool: an admission waits for its message to be on disk before it
//! is answered, and a host started on a spool that holds messages delivers them again.

use super::{Host, SendError};
use crate::message::Message;
use crate::message::MessageId;
use crate::pipeline::{Counters, Envelope, Pipeline, ReplySender};
use crate::spool::{Spool, SpoolError, SpoolHold, SpoolRoom};
use futures_util::future::maybe_done;
use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

impl Host {
    /// Accept `messages` (each with the sender of its reply, for a request) as [`send`](Host::send)
    /// and [`send_request`](Host::send_request) accept one, waiting while the queue (or the spool)
    /// is full: a result per message, in order, each once its message is queued (or refused). Their
    /// spool records are written together (one fsync for all, where one send after another waits
    /// for one each), and each is queued, and counted accepted, once it is on disk and those
    /// before it are queued.
    pub(crate) fn send_batch(
        &self,
        messages: Vec<(Message, Option<ReplySender>)>,
    ) -> impl Stream<Item = Result<MessageId, SendError>> + '_ {
        // One waiting for room (in the intake, in the spool) holds up none before it: room is
        // granted in the order it was asked for, and those before it are queued meanwhile.
        let admissions = messages.into_iter().map(|(message, reply)| self.admitted_envelope(message, reply));
        let admitted = futures_util::stream::once(self.put_together(admissions));
        let admitted = admitted.flat_map(|admitted| admitted.into_iter().collect::<FuturesOrdered<_>>());
        admitted.then(move |envelope| async move {
            let envelope = envelope?;
            let id = envelope.message.id;
            self.queue(envelope).await.map(|()| id)
        })
    }

    /// `admissions`, each polled once, all in one go (not constrained by the task's budget) while
    /// the spool's writer waits (see [`Spool::gather`]): every admission that has room runs up to
    /// its put, so their records make one commit, however long this task then waits to run again.
    /// Each future returned ends with its admission's output.
    pub(super) async fn put_together<Admission: Future>(
        &self,
        admissions: impl IntoIterator<Item = Admission>,
    ) -> Vec<impl Future<Output = Admission::Output>> {
        let mut admissions: Vec<_> =
            admissions.into_iter().map(|admission| Box::pin(maybe_done(admission))).collect();
        let first_polls = std::future::poll_fn(|cx| {
            let _together = self.inner.spool.as_ref().map(Spool::gather);
            for admission in &mut admissions {
                let _ = admission.as_mut().poll(cx);
            }
            Poll::Ready(())
        });
        tokio::task::unconstrained(first_polls).await;
        let outputs = admissions.into_iter().map(|mut admission| async move {
            admission.as_mut().await;
            admission.as_mut().take_output().expect("an admission's output is taken once")
        });
        outputs.collect()
    }

    /// `message` checked and given its ids, its room in the spool (with one) then in the intake
    /// (see [`Spool::room`]), each waited for, and put in the spool: ready to queue.
    pub(super) async fn admitted_envelope(
        &self,
        message: Message,
        reply: Option<ReplySender>,
    ) -> Result<Envelope, SendError> {
        let (message, kib) = self.admit(message)?;
        let room = self.spool_room(&message, true).await?;
        let bytes = self.intake_bytes(kib).await;
        let spooled = self.spool_put(room).await?;
        Ok(Envelope::new(message, reply, bytes, spooled))
    }

    /// Room for `message`'s record in the spool when the host has one, taken before its room in
    /// the intake (see [`Spool::room`]); `wait` for it, else refuse as backpressure. `None` in
    /// memory durability.
    pub(super) async fn spool_room(
        &self,
        message: &Message,
        wait: bool,
    ) -> Result<Option<SpoolRoom>, SendError> {
        let Some(spool) = &self.inner.spool else { return Ok(None) };
        spool.room(message, wait).await.map(Some).map_err(refusal)
    }

    /// Put the message `room` was taken for in the spool (written and fsync'd, with whatever else
    /// is being admitted). `None` in memory durability.
    pub(super) async fn spool_put(&self, room: Option<SpoolRoom>) -> Result<Option<SpoolHold>, SendError> {
        let (Some(spool), Some(room)) = (&self.inner.spool, room) else { return Ok(None) };
        spool.put(room).await.map(Some).map_err(refusal)
    }
}

/// What a client is told of a message the spool could not take.
fn refusal(error: SpoolError) -> SendError {
    match error {
        SpoolError::Full { .. } => SendError::Backpressure,
        SpoolError::TooLarge { bytes, max_bytes } => {
            SendError::TooLarge { size: bytes, limit: usize::try_from(max_bytes).unwrap_or(usize::MAX) }
        }
        SpoolError::Closed => SendError::ShuttingDown,
        // Told to clients: the error, not the state directory it happened in (logged).
        SpoolError::Io { dir, error } => {
            tracing::error!(dir = %dir.display(), %error, "the spool could not record a message");
            SendError::Unrecorded(error.to_string())
        }
    }
}

impl Host {
    /// Queue `envelope`, waiting while the queue is full, and count it accepted; refused, its spool
    /// record goes first (see [`answer_refusal`](Self::answer_refusal)).
    pub(super) async fn queue(&self, envelope: Envelope) -> Result<(), SendError> {
        let spooled = envelope.accepted.spooled.clone();
        match self.enqueue(envelope).await {
            Ok(()) => {
                self.count_accepted();
                Ok(())
            }
            Err(refusal) => self.answer_refusal(spooled, refusal).await,
        }
    }

    /// Queue `envelope` only if the queue has room now (counted accepted then); refused, its spool
    /// record goes first (see [`answer_refusal`](Self::answer_refusal)).
    pub(super) async fn queue_now(&self, envelope: Envelope) -> Result<(), SendError> {
        let spooled = envelope.accepted.spooled.clone();
        match self.enqueue_now(envelope) {
            Ok(()) => Ok(()),
            Err(refusal) => self.answer_refusal(spooled, refusal).await,
        }
    }

    /// The answer to an admission whose message, put in the spool (`spooled`), the queue refused
    /// (`refusal`; its envelope dropped): the record is withdrawn, its remove fsync'd, before the
    /// refusal is told, so the next start does not deliver a message its sender will send again.
    /// When the spool closed first (a stop that ended while the admission waited between its put
    /// and the queue), the record cannot be taken back and the next start delivers the message:
    /// the answer is then that it was accepted (on disk, as `durability = "spool"` promises),
    /// counted as accepted by that start.
    pub(super) async fn answer_refusal(
        &self,
        spooled: Option<Arc<SpoolHold>>,
        refusal: SendError,
    ) -> Result<(), SendError> {
        // The refused envelope held the other share, and is gone.
        let Some(hold) = spooled.and_then(Arc::into_inner) else { return Err(refusal) };
        match hold.withdraw().await {
            true => Err(refusal),
            false => Ok(()),
        }
    }
}

/// Send the messages recovered from `spool` into the intake (oldest first, waiting for room in
/// `intake`, the intake's budget and its whole size in KiB, each counted as accepted again), from a
/// task of their own so the host serves meanwhile. A message larger than the whole budget (the
/// limits shrank since it was spooled) takes all of it rather than waiting for good. Once
/// `stopping` is cancelled (a stop began) no more are sent: those left stay in the spool for the
/// next start, rather than hold the stop up and be dead-lettered by it.
pub(super) fn redeliver(
    pipeline: &Arc<Pipeline>,
    sender: flume::Sender<Envelope>,
    (intake_bytes, intake_kib): (Arc<Semaphore>, u32),
    messages: Vec<(Message, SpoolHold)>,
    stopping: CancellationToken,
) {
    if messages.is_empty() {
        return;
    }
    tracing::info!(messages = messages.len(), "delivering the messages the spool held at start");
    let pipeline = pipeline.clone();
    tokio::spawn(async move {
        let mut messages = messages.into_iter();
        while let Some((mut message, hold)) = messages.next() {
            message.id = pipeline.ids.fetch_add(1, Ordering::Relaxed);
            let kib = super::intake_kib(message.size()).min(intake_kib);
            let bytes = tokio::select! {
                biased;
                () = stopping.cancelled() => {
                    // Dropped unsettled, their holds leave their records.
                    let left = 1 + messages.len();
                    tracing::info!(messages = left, "stopping: the spool keeps the messages not yet delivered again");
                    return;
                }
                bytes = intake_bytes.clone().acquire_many_owned(kib) => {
                    bytes.expect("the intake budget is never closed")
                }
            };
            // Not raced with the stop: the workers take from the queue until its last sender is
            // gone, so this one is admitted by the grace period's end at the latest, and an
            // envelope given up on here would be lost with its record.
            if sender.send_async(Envelope::recovered(message, bytes, hold)).await.is_err() {
                // The workers are gone: dropped unsettled, the records stay for the next start.
                return;
            }
            Counters::bump(&pipeline.counters.accepted, 1);
        }
    });
}

/// Open the spool of `state_dir`, which the host holds with `state_lock`, when `host.durability`
/// asks for one.
pub(super) fn open(
    host: &crate::config::HostSection,
    state_dir: &std::path::Path,
    metrics: &crate::metrics::Metrics,
    state_lock: &std::sync::Arc<crate::state_lock::StateLock>,
) -> Result<Option<(Spool, crate::spool::Recovery)>, SpoolError> {
    let (dir, spool_metrics) = (state_dir.join(crate::spool::DIR_NAME), metrics.spool.clone());
    if host.durability != crate::config::Durability::Spool {
        warn_of_a_spool_left(&dir);
        return Ok(None);
    }
    let observe = move |messages, took| spool_metrics.committed(messages, took);
    let (spool, recovery) = Spool::open(&dir, host.spool_max_bytes, observe, Some(state_lock.clone()))?;
    metrics.spool.recovered(recovery.messages.len());
    Ok(Some((spool, recovery)))
}

/// Say so when the spool in `dir` holds messages an earlier run accepted, which a host without a
/// spool does not deliver.
fn warn_of_a_spool_left(dir: &std::path::Path) {
    if !dir.is_dir() {
        return;
    }
    match crate::spool::inspect(dir) {
        Ok(report) if report.depth > 0 => tracing::warn!(
            dir = %dir.display(),
            messages = report.depth,
            "the spool holds messages an earlier run accepted, which this host (durability = \"memory\") does not deliver: start it with durability = \"spool\" to deliver them, or take them out with `switchyard spool drain`"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the spool an earlier run left"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Durability;
    use crate::{Config, Host, MemoryDestination, Message, RouteConfig};
    use futures_util::StreamExt;
    use std::time::Duration;

    /// The spool's commits so far (`switchyard_spool_commit_seconds_count`).
    fn commits(host: &Host) -> u64 {
        let metrics = host.metrics().encode();
        let count =
            metrics.lines().find_map(|line| line.strip_prefix("switchyard_spool_commit_seconds_count "));
        count.expect("the spool's commits are counted").parse::<f64>().unwrap() as u64
    }

    /// A batch's records make one commit even when its task is not polled again before the writer
    /// has committed what it was given by then, as a busy runtime may leave it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_s_records_make_one_commit_whenever_its_task_runs_again() {
        const COUNT: usize = 64;
        let (plugins, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut config = Config::default();
        config.host.durability = Durability::Spool;
        config.host.watch = false;
        let (out, _delivered) = MemoryDestination::new();
        let host =
            Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
        let host =
            host.destination("out", out).route(RouteConfig::new("all", "t.*", "out")).build().await.unwrap();
        let messages = (0..COUNT).map(|n| (Message::new("t.x", n.to_string()), None)).collect();
        let mut batch = std::pin::pin!(host.send_batch(messages));
        assert!(futures_util::poll!(batch.next()).is_pending(), "no message is on disk before a commit");
        // The writer commits what it has; only then is the batch polled again.
        let patience = tokio::time::Instant::now() + Duration::from_secs(60);
        while commits(&host) == 0 {
            assert!(tokio::time::Instant::now() < patience, "no commit (safety net)");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let admitted: Vec<_> = tokio::time::timeout(Duration::from_secs(60), batch.collect()).await.unwrap();
        assert!(admitted.iter().all(Result::is_ok), "{admitted:?}");
        assert_eq!(commits(&host), 1, "one commit (one fsync) for the {COUNT} records of a batch");
    }
}
