//! The durable spool: with `host.durability = "spool"`, every accepted message is on disk before it
//! is acknowledged, and stays there until its outcome (delivered, filtered, responded,
//! dead-lettered) is recorded; a host started on the same state directory delivers what it holds.
//!
//! Data path: admission encodes the message and takes room for its record in `spool_max_bytes`
//! (before its room in the intake: see `Spool::room`), then queues a put for the writer thread,
//! which writes every put queued meanwhile with one write and one fsync (group commit; a batch of
//! admissions queues its puts while the writer waits, so they make one: see `Spool::gather`) and
//! answers each with its sequence number; the admission then holds a `SpoolHold` that travels with
//! the message and every message made from it, each settled where it reaches its outcome; the last
//! of them to be dropped queues the remove if all were. One dropped unsettled (with the runtime its
//! task ran on, by a thread that panics, its dead letter lost) leaves the record for the next
//! start, as a crash does. An admission given up on while its put is written (a timeout, a client
//! that hung up) has its record removed again; one refused after its put (the host stopping, the
//! queue full) has its record's remove fsync'd before the refusal is answered (see
//! `SpoolHold::withdraw`).
//!
//! The store is an append-only segment log of CRC-checked records (see `record` and `log`), chosen
//! over redb and fjall by measurement on this machine (2 cores, shared; 300 group-committed batches
//! of 64 × 256-byte records, each batch fsync'd, removing the previous batch; two runs, load 2.9):
//!
//! | store                      | records/s     | batch commit p50 | p99      | CPU µs/record | crates |
//! |----------------------------|---------------|------------------|----------|---------------|--------|
//! | redb 2.6 (one txn a batch) | 19 300–20 900 | 4 ms             | 6–7 ms   | 5.7–6.1       | 2      |
//! | fjall 2 (batch + SyncAll)  | 21 200–27 300 | 2–4 ms           | 6–9 ms   | 3.8–4.2       | 49     |
//! | segment log (crc32fast)    | 31 600–32 400 | 0.24–0.39 ms     | 8–13 ms  | 2.1–2.5       | 1      |
//!
//! A spool is written once, read only at start and emptied in order: an append-only log fits it
//! and costs one `fdatasync` per batch, where the B-tree (redb) and LSM (fjall) stores pay for
//! random access we never use; the log also adds one small crate (`crc32fast`, already in the
//! lock file) where fjall brings 49. Damage is found by the length and checksum of each record:
//! a torn tail of the last segment (what a crash mid-write leaves) is cut off quietly; any other
//! unreadable bytes (followed by intact records, or by later segments, which a segment is fsync'd
//! whole before) are skipped and reported loudly, and reading resumes at the next record that
//! verifies, so what follows them is recovered (see `record::scan`). Either way the unreadable
//! bytes are moved aside to `NAME.seg.damaged`.

mod log;
mod offline;
mod record;
mod writer;

pub use log::{Damage, DamageKind};
pub use offline::{Drained, SpoolReport, drain, inspect};

use crate::message::Message;
use crate::state_lock::StateLock;
use log::SegmentLog;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use writer::{Figures, Request};

/// The spool's directory inside the state directory.
pub const DIR_NAME: &str = "spool";

/// How long a spool's drop waits for its writer to close the log, unless a close was given up on
/// already ([`Spool::close_within`]): a hung disk holds the writer in a write for good.
const CLOSE_ON_DROP_WAIT: Duration = Duration::from_secs(10);

/// The spool could not take a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// `host.spool_max_bytes` is taken by messages not yet settled.
    #[error("the spool is full ({max_bytes} bytes held by messages not yet settled)")]
    Full {
        /// The limit.
        max_bytes: u64,
    },
    /// The message's record alone is larger than `host.spool_max_bytes`.
    #[error("a record of {bytes} bytes cannot fit in a spool of {max_bytes} bytes")]
    TooLarge {
        /// The record's size.
        bytes: usize,
        /// The limit.
        max_bytes: u64,
    },
    /// Reading or writing the spool failed.
    #[error("spool {}: {error}", dir.display())]
    Io {
        /// The spool directory.
        dir: PathBuf,
        /// What failed: quoted in the message, so not its source too (a report of the error and
        /// its sources, as `{:#}` of anyhow gives, said it twice).
        error: std::io::Error,
    },
    /// The spool's writer has stopped.
    #[error("the spool is closed")]
    Closed,
}

/// What the spool holds now: `GET /v1/spool` and [`Host::spool`](crate::Host::spool).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SpoolStatus {
    /// The spool directory.
    pub dir: PathBuf,
    /// Messages held: accepted, outcome not yet recorded.
    pub depth: u64,
    /// Bytes of their records.
    pub bytes: u64,
    /// Bytes of the segment files (settled records wait there until their whole segment is settled).
    pub disk_bytes: u64,
    /// `host.spool_max_bytes`.
    pub max_bytes: u64,
    /// Milliseconds since the oldest message held was accepted.
    pub oldest_age_ms: Option<u64>,
    /// Messages recovered from the spool when the host started.
    pub recovered: u64,
}

/// The durable spool of one host. One host per state directory.
pub(crate) struct Spool {
    dir: PathBuf,
    requests: flume::Sender<Request>,
    /// Held (read) while a batch of admissions queues its puts, which the writer waits for before
    /// it takes the requests of its next commit (see [`gather`](Spool::gather)).
    gathering: Arc<RwLock<()>>,
    /// KiB of `spool_max_bytes`: a held message keeps its record's share until it is settled.
    budget: Arc<Semaphore>,
    max_bytes: u64,
    figures: Arc<Figures>,
    recovered: AtomicU64,
    /// Cancelled once the writer thread has ended: a request it never read (sent after the close)
    /// waits in the channel for as long as a sender lives, and is answered by nothing.
    writer_ended: CancellationToken,
    /// The writer thread: joined when the spool is dropped, unless it does not close in time (see
    /// `Drop for Spool`).
    writer: Option<std::thread::JoinHandle<()>>,
    /// A close was given up on ([`close_within`](Spool::close_within)): the drop does not wait for
    /// the writer again.
    close_given_up: AtomicBool,
}

/// What opening a spool found: messages to deliver again (oldest first), each held, and damage.
pub(crate) struct Recovery {
    pub(crate) messages: Vec<(Message, SpoolHold)>,
    pub(crate) damage: Vec<Damage>,
}

impl Spool {
    /// Open the spool in `dir` (created if missing), recover what it holds and start its writer;
    /// `observe` sees each committed batch (its puts and how long write and fsync took). The writer
    /// pins `state_lock` (the lock of the state directory `dir` is in) until it closes or ends: a
    /// hung disk may hold it in a write past the spool's drop, and the write may still land.
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        observe: impl Fn(usize, Duration) + Send + 'static,
        state_lock: Option<Arc<StateLock>>,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let io = |error| SpoolError::Io { dir: dir.to_owned(), error };
        let (log, recovered, damage) = SegmentLog::open(dir).map_err(io)?;
        let (requests, queue) = flume::unbounded();
        let gathering = Arc::new(RwLock::new(()));
        let writer_gathering = gathering.clone();
        let figures = Arc::new(Figures::default());
        let (writer_figures, writer_ended) = (figures.clone(), CancellationToken::new());
        let ended = writer_ended.clone().drop_guard();
        let pin = state_lock.as_ref().map(StateLock::pin);
        // Runs until asked to close (or the spool and every hold are gone); then fsyncs and ends.
        let writer = std::thread::Builder::new()
            .name("switchyard-spool".into())
            .spawn(move || {
                let _ended = ended;
                writer::run(log, queue, writer_gathering, writer_figures, Box::new(observe), pin)
            })
            .map_err(io)?;
        let budget = Arc::new(Semaphore::new(kib_of(max_bytes)));
        let spool = Spool {
            dir: dir.to_owned(),
            requests,
            gathering,
            budget,
            max_bytes,
            figures,
            recovered: AtomicU64::new(recovered.len() as u64),
            writer_ended,
            writer: Some(writer),
            close_given_up: AtomicBool::new(false),
        };
        let messages = recovered
            .into_iter()
            .map(|entry| {
                // Its share of the budget as `put` counted it: the whole record.
                let kib = record_kib(record::put_body(&entry.message, entry.accepted_ms).len());
                // Over the budget when it shrank since: held all the same, never dropped.
                let permit = spool.budget.clone().try_acquire_many_owned(kib).ok();
                (entry.message, spool.hold(entry.seq, permit))
            })
            .collect();
        Ok((spool, Recovery { messages, damage }))
    }

    /// Room in `spool_max_bytes` for `message`'s record, to [`put`](Spool::put) it in; waits for it
    /// when `wait`, else refuses with [`SpoolError::Full`]. An admission takes it before its room in
    /// the intake: the recovery at start takes room in the intake for messages that hold theirs
    /// here, and only their delivery makes room here, so a send that held room in the intake while
    /// it waited here could hold them up, and with the spool full of them, for good.
    pub(crate) async fn room(&self, message: &Message, wait: bool) -> Result<SpoolRoom, SpoolError> {
        // Stamped with the time it is accepted by `put`.
        let body = record::put_body(message, 0);
        let kib = record_kib(body.len());
        if kib as usize > kib_of(self.max_bytes) {
            // Larger than the whole spool (a long topic, many headers): waiting would never end.
            return Err(SpoolError::TooLarge {
                bytes: body.len() + record::HEADER,
                max_bytes: self.max_bytes,
            });
        }
        let permit = match wait {
            true => self.budget.clone().acquire_many_owned(kib).await.map_err(|_| SpoolError::Closed)?,
            false => self
                .budget
                .clone()
                .try_acquire_many_owned(kib)
                .map_err(|_| SpoolError::Full { max_bytes: self.max_bytes })?,
        };
        Ok(SpoolRoom { body, permit })
    }

    /// Write the record `room` was taken for and fsync it (with whatever else is queued).
    pub(crate) async fn put(&self, room: SpoolRoom) -> Result<SpoolHold, SpoolError> {
        let SpoolRoom { mut body, permit } = room;
        let accepted_ms = writer::now_ms();
        record::stamp_accepted(&mut body, accepted_ms);
        let (done, written) = oneshot::channel();
        self.requests.send(Request::Put { body, accepted_ms, done }).map_err(|_| SpoolError::Closed)?;
        let mut answer = Answer { spool: self, permit: Some(permit), written };
        match (&mut answer.written).await {
            Ok(Ok(seq)) => Ok(self.hold(seq, answer.permit.take())),
            Ok(Err(error)) => Err(SpoolError::Io { dir: self.dir.clone(), error }),
            Err(_) => Err(SpoolError::Closed),
        }
    }

    /// Held while a batch of admissions queues its puts (none waits while it is held): the writer
    /// takes the requests of its next commit once no batch holds it (and holds it only while it
    /// takes them), so a batch's puts all make the same commit, whatever runs between them.
    pub(crate) fn gather(&self) -> RwLockReadGuard<'_, ()> {
        self.gathering.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write and fsync every remove queued so far, then close the log and unlock the directory;
    /// later puts are refused with [`SpoolError::Closed`].
    pub(crate) async fn close(&self) {
        let (done, closed) = flume::bounded(1);
        if self.requests.send(Request::Close(done)).is_ok() {
            let _ = closed.recv_async().await;
        }
    }

    /// [`close`](Spool::close), waiting at most `wait`: whether it closed. Given up on (a hung disk
    /// holds the writer in a write), the close goes on without a waiter, and the spool's drop does
    /// not wait for it either.
    pub(crate) async fn close_within(&self, wait: Duration) -> bool {
        let closed = tokio::time::timeout(wait, self.close()).await.is_ok();
        if !closed {
            self.close_given_up.store(true, Relaxed);
        }
        closed
    }

    /// What the spool holds now.
    pub(crate) fn status(&self) -> SpoolStatus {
        let oldest = self.figures.oldest_ms.load(Relaxed);
        SpoolStatus {
            dir: self.dir.clone(),
            depth: self.figures.depth.load(Relaxed),
            bytes: self.figures.live_bytes.load(Relaxed),
            disk_bytes: self.figures.disk_bytes.load(Relaxed),
            max_bytes: self.max_bytes,
            oldest_age_ms: (oldest != 0).then(|| writer::now_ms().saturating_sub(oldest)),
            recovered: self.recovered.load(Relaxed),
        }
    }

    fn hold(&self, seq: u64, permit: Option<OwnedSemaphorePermit>) -> SpoolHold {
        let (settled, kept) = (AtomicBool::new(false), AtomicBool::new(false));
        let writer_ended = self.writer_ended.clone();
        SpoolHold { seq, requests: self.requests.clone(), writer_ended, permit, settled, kept }
    }
}

impl Drop for Spool {
    /// A spool dropped before [`close`](Spool::close) (its host failed to start, or was dropped
    /// without a shutdown) closes as a crash would: what was queued before is written, a remove
    /// queued after it (messages dropped unsettled with the host) is not, so the next start
    /// delivers those messages again. Returns once the log is closed and its directory unlocked,
    /// unless the writer does not close within `CLOSE_ON_DROP_WAIT`, or at once when a close was
    /// given up on already: a hung disk holds it in a write, which cannot be cancelled. The writer
    /// is then left to end by itself, not joined, holding its log and the state directory's lock
    /// until it does.
    fn drop(&mut self) {
        let (done, closed) = flume::bounded(1);
        let _ = self.requests.send(Request::Close(done));
        let Some(writer) = self.writer.take() else { return };
        let wait = match self.close_given_up.load(Relaxed) {
            true => Duration::ZERO,
            false => CLOSE_ON_DROP_WAIT,
        };
        // Answered, or refused (the writer ended, or ends, without reading it): either way it ends.
        if let Err(flume::RecvTimeoutError::Timeout) = closed.recv_timeout(wait) {
            tracing::warn!(
                dir = %self.dir.display(),
                "the spool's writer has not closed (a hung disk?): left to end by itself, holding the state directory until it does"
            );
            return;
        }
        let _ = writer.join();
    }
}

/// Room in `spool_max_bytes` for one message's record ([`Spool::room`]), with the record: given
/// back when dropped unused.
pub(crate) struct SpoolRoom {
    /// The record's body ([`record::put_body`]), stamped when it is put.
    body: Vec<u8>,
    /// The record's share of `spool_max_bytes`, for its hold.
    permit: OwnedSemaphorePermit,
}

/// The answer to a put, awaited. Dropped before it was heard (the admission was given up on: a
/// timeout, a client that hung up), its record is removed, since no one saw the message accepted:
/// an answer already sent becomes a hold dropped at once; one not yet sent finds the answer
/// refused, and the writer removes the record itself.
struct Answer<'a> {
    spool: &'a Spool,
    /// The record's share of `spool_max_bytes`, for its hold.
    permit: Option<OwnedSemaphorePermit>,
    written: oneshot::Receiver<std::io::Result<u64>>,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        // Closed first, so that the answer is either here now or refused to the writer.
        self.written.close();
        if let Ok(Ok(seq)) = self.written.try_recv() {
            // Never seen accepted: nothing owes it an outcome.
            let hold = self.spool.hold(seq, self.permit.take());
            hold.settle();
        }
    }
}

/// A message's place in the spool: while it lives the message is on disk. Dropped once
/// [`settle`](SpoolHold::settle)d, and never kept ([`keep`](SpoolHold::keep)), it removes the record;
/// dropped otherwise (with no word, as the task of a runtime shut down drops what it holds, or
/// while a thread panics) the record stays for the next start, as a crash leaves it.
pub(crate) struct SpoolHold {
    seq: u64,
    requests: flume::Sender<Request>,
    /// The spool's [`writer_ended`](Spool::writer_ended), for [`withdraw`](SpoolHold::withdraw).
    writer_ended: CancellationToken,
    /// The record's share of `spool_max_bytes`, given back once it is removed.
    permit: Option<OwnedSemaphorePermit>,
    settled: AtomicBool,
    kept: AtomicBool,
}

impl SpoolHold {
    /// A share of the message reached its outcome, or the message was never accepted: its record
    /// goes once the hold is dropped, if no share of it was kept.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Relaxed);
    }

    /// The message was refused after its put (its admission found the host stopping, or the queue
    /// full): write its record's remove and fsync it (a failing disk keeps it owed, written by the
    /// next batch that succeeds). `false` when the spool closed first (a stop that ended while the
    /// admission waited): the record stays, and the next start delivers the message.
    pub(crate) async fn withdraw(mut self) -> bool {
        let (done, written) = oneshot::channel();
        let withdrawn = self.requests.send(Request::Withdraw(self.seq, done)).is_ok()
            && tokio::select! {
                biased;
                written = written => written.is_ok(),
                // Sent after the close, it was never read.
                () = self.writer_ended.cancelled() => false,
            };
        if withdrawn {
            drop(self.permit.take());
        }
        // Its remove is written, or it stays: either way the drop has nothing to send.
        self.kept.store(true, Relaxed);
        withdrawn
    }

    /// A share of the message could not reach an outcome (its dead letter was lost, its task was
    /// dropped): keep its record, so the next start delivers it again.
    pub(crate) fn keep(&self) {
        self.kept.store(true, Relaxed);
    }
}

impl Drop for SpoolHold {
    fn drop(&mut self) {
        if !self.settled.load(Relaxed) || self.kept.load(Relaxed) || std::thread::panicking() {
            // Still on disk: its share of the budget stays taken.
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
            return;
        }
        let _ = self.requests.send(Request::Remove(self.seq));
    }
}

impl std::fmt::Debug for SpoolHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolHold").field("seq", &self.seq).finish_non_exhaustive()
    }
}

/// `bytes` in KiB, rounded up as [`record_kib`] rounds: a record of at most `spool_max_bytes`
/// fits in the budget.
fn kib_of(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(1024)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS)
}

/// The KiB of `spool_max_bytes` a record with a body of `body` bytes holds: rounded up.
fn record_kib(body: usize) -> u32 {
    u32::try_from((body + record::HEADER).div_ceil(1024)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_said_once_in_a_report_of_the_error_and_its_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let Err(error) = Spool::open(&file.join(DIR_NAME), 1 << 20, |_, _| {}, None) else {
            panic!("a spool under a file cannot be created")
        };
        let report = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(report.matches("os error").count(), 1, "{report}");
    }

    #[tokio::test]
    async fn a_recovered_message_takes_the_share_of_the_budget_its_put_took() {
        let dir = tempfile::tempdir().unwrap();
        let message = Message::new("orders", "small payload").with_header("x-big", "h".repeat(8 * 1024));
        let (spool, _) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        let all = spool.budget.available_permits();
        let hold = spool.put(spool.room(&message, false).await.unwrap()).await.unwrap();
        let taken = all - spool.budget.available_permits();
        assert!(taken > 8, "the headers count, not only the payload: {taken} KiB");
        // Left unsettled, as a crash leaves it.
        std::mem::forget(hold);
        spool.close().await;
        drop(spool);
        let (spool, recovery) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        assert_eq!(recovery.messages.len(), 1);
        assert_eq!(all - spool.budget.available_permits(), taken, "recovered with the same share");
    }

    #[tokio::test]
    async fn a_room_dropped_unused_gives_back_its_share_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        let all = spool.budget.available_permits();
        let room = spool.room(&Message::new("orders", "given up"), false).await.unwrap();
        assert_eq!(spool.budget.available_permits(), all - 1);
        drop(room);
        assert_eq!(spool.budget.available_permits(), all);
        spool.close().await;
        assert_eq!(spool.status().depth, 0);
    }

    #[tokio::test]
    async fn an_answer_dropped_unheard_removes_its_record_and_gives_back_its_share() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        let all = spool.budget.available_permits();
        // A record on disk whose answer arrived after its admission was given up on: the answer
        // is all that knows its sequence number.
        let room = spool.room(&Message::new("orders", "given up"), false).await.unwrap();
        let hold = spool.put(room).await.unwrap();
        let (seq, permit) = (hold.seq, spool.budget.clone().try_acquire_many_owned(1).unwrap());
        std::mem::forget(hold);
        let (done, written) = oneshot::channel();
        done.send(Ok(seq)).unwrap();
        drop(Answer { spool: &spool, permit: Some(permit), written });
        assert_eq!(spool.budget.available_permits(), all - 1, "the forgotten hold's share only");
        spool.close().await;
        assert_eq!(spool.status().depth, 0);
        drop(spool);
        let (_, recovery) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        assert!(recovery.messages.is_empty());
    }

    /// Let go by the writer once it has answered a close, as it ends: holds it there until a
    /// close is queued after that answer (the spool's drop's), or finds the writer's channel shut.
    struct EndingWriter(Arc<std::sync::OnceLock<flume::Sender<Request>>>);

    impl Drop for EndingWriter {
        fn drop(&mut self) {
            let Some(requests) = self.0.get() else { return };
            // A safety net only: the drop sends its close at once.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !requests.is_disconnected() && requests.is_empty() && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
    }

    #[tokio::test]
    async fn a_spool_dropped_after_its_close_returns_at_once_while_its_writer_is_still_ending() {
        let dir = tempfile::tempdir().unwrap();
        let requests = Arc::new(std::sync::OnceLock::new());
        // Held by the writer's observer, which `writer::run` lets go of as it returns, after the
        // close is answered: the gap a shutdown's close leaves before the drop's, made certain.
        let ending = EndingWriter(requests.clone());
        let observe = move |_: usize, _: Duration| {
            std::hint::black_box(&ending);
        };
        let (spool, _) = Spool::open(dir.path(), 1 << 20, observe, None).unwrap();
        requests.set(spool.requests.clone()).unwrap();
        spool.close().await;
        let started = std::time::Instant::now();
        // Its close is sent while the writer, its close answered, has yet to end.
        drop(spool);
        let took = started.elapsed();
        assert!(took < CLOSE_ON_DROP_WAIT / 2, "the drop waited {took:?} for a close no one reads");
    }

    #[tokio::test]
    async fn a_hold_dropped_unsettled_leaves_its_record_and_its_share_and_a_settled_one_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        let all = spool.budget.available_permits();
        let settled = spool.room(&Message::new("orders", "settled"), false).await.unwrap();
        let settled = spool.put(settled).await.unwrap();
        let dropped = spool.room(&Message::new("orders", "dropped"), false).await.unwrap();
        let dropped = spool.put(dropped).await.unwrap();
        settled.settle();
        drop(settled);
        // With no word, as a task dropped with its runtime drops what it holds.
        drop(dropped);
        assert_eq!(spool.budget.available_permits(), all - 1, "the unsettled one's share stays taken");
        spool.close().await;
        assert_eq!(spool.status().depth, 1);
        drop(spool);
        let (_, recovery) = Spool::open(dir.path(), 1 << 20, |_, _| {}, None).unwrap();
        assert_eq!(recovery.messages.len(), 1);
        assert_eq!(recovery.messages[0].0.payload, "dropped");
    }
}
