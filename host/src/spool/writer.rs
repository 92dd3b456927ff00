//! The spool's writer thread: the only one that writes the log. It gathers every request queued
//! while it wrote the last batch and writes them with one write and one fsync (group commit), so
//! concurrent admissions share the cost of the disk.

use super::log::SegmentLog;
use super::record;
use crate::state_lock::StatePin;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Requests gathered into one write, at most.
const MAX_BATCH: usize = 4096;

/// What the writer is asked to do.
pub(crate) enum Request {
    /// Write a put of `body` (see [`record::put_body`]) and fsync it; answer its sequence number.
    /// An answer no one takes (the admission was given up on) has the record removed again.
    Put { body: Vec<u8>, accepted_ms: u64, done: oneshot::Sender<io::Result<u64>> },
    /// The message of this sequence number reached its outcome: write its remove (fsync'd with the
    /// next put or the close: a remove lost to a crash only delivers that message again).
    Remove(u64),
    /// The message of this sequence number was refused after its put was answered (the host
    /// stopping, its queue full): write its remove and fsync it, then answer, so that the refusal
    /// is told once the record is gone. A batch that fails to write keeps it owed, as any remove.
    Withdraw(u64, oneshot::Sender<()>),
    /// Fsync what is written, close the log (unlocking the directory) and stop; answer once done.
    /// Removes queued after it are not written: those messages are delivered again at the next start.
    Close(flume::Sender<()>),
}

/// What the writer shows of the log after each batch (read by `/v1/spool` and the gauges).
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) depth: AtomicU64,
    pub(crate) live_bytes: AtomicU64,
    /// Unix milliseconds of the oldest live message's admission; 0 when there is none.
    pub(crate) oldest_ms: AtomicU64,
    pub(crate) disk_bytes: AtomicU64,
}

impl Figures {
    fn publish(&self, log: &SegmentLog) {
        let (depth, live_bytes, oldest, disk_bytes) = log.figures();
        self.depth.store(depth as u64, Relaxed);
        self.live_bytes.store(live_bytes, Relaxed);
        self.oldest_ms.store(oldest.unwrap_or(0), Relaxed);
        self.disk_bytes.store(disk_bytes, Relaxed);
    }
}

/// Observes each batch the writer commits: its puts and how long the write and fsync took.
pub(crate) type CommitObserver = Box<dyn Fn(usize, Duration) + Send>;

/// Serve `requests` until one asks to close or every sender is gone, then fsync and return;
/// `pin` keeps the state directory locked until then (a close lets it go, and shuts `requests`,
/// before it is answered).
/// `gathering` is held (read) while a batch of admissions queues its puts: a batch's requests are
/// taken once none is (see [`Spool::gather`](super::Spool::gather)).
pub(crate) fn run(
    mut log: SegmentLog,
    requests: flume::Receiver<Request>,
    gathering: Arc<RwLock<()>>,
    figures: Arc<Figures>,
    observe: CommitObserver,
    pin: Option<StatePin>,
) {
    figures.publish(&log);
    let mut buf = Vec::new();
    // The failure last logged, while batches keep failing with it: a deleted spool (or a full disk)
    // refuses every batch, and one line says so, not one a batch.
    let mut failing: Option<String> = None;
    // Removes not yet on disk, which lead the next batch: those of a batch that failed to write,
    // and those the writer owes itself for puts whose admission was given up while they were
    // written (see `Spool::put`). The latter start that batch at once; the former wait for the
    // next request, so a failing disk is not retried in a loop.
    let (mut owed, mut at_once) = (Vec::new(), false);
    loop {
        let first = match at_once {
            false => match requests.recv() {
                Ok(first) => Some(first),
                Err(_) => break,
            },
            true => None,
        };
        buf.clear();
        let (mut puts, mut answers, mut removes, mut close) = (Vec::new(), Vec::new(), Vec::new(), None);
        let mut withdrawn = Vec::new();
        for seq in owed.drain(..) {
            record::write_remove(&mut buf, seq);
            removes.push(seq);
        }
        for request in take_requests(first, &requests, &gathering) {
            match request {
                Request::Put { body, accepted_ms, done } => {
                    let (seq, start) = (log.next_seq(), buf.len());
                    record::write_put(&mut buf, seq, &body);
                    puts.push((seq, (buf.len() - start) as u64, accepted_ms));
                    answers.push((seq, done));
                }
                Request::Remove(seq) => {
                    record::write_remove(&mut buf, seq);
                    removes.push(seq);
                }
                Request::Withdraw(seq, done) => {
                    record::write_remove(&mut buf, seq);
                    removes.push(seq);
                    withdrawn.push(done);
                }
                Request::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
        }
        let sync = !puts.is_empty() || !withdrawn.is_empty() || close.is_some();
        let started = Instant::now();
        let written = log.append(&buf, &puts, &removes, sync);
        match &written {
            // Only a batch that is on disk counts: `spool_writes_total` is messages fsync'd.
            Ok(()) if !puts.is_empty() => observe(puts.len(), started.elapsed()),
            Ok(()) => {}
            // Not on disk: those messages are still held (a graceful stop would leave them to be
            // delivered again), until the next batch writes their removes.
            Err(_) => owed = std::mem::take(&mut removes),
        }
        // Before the answers: an admitted message is in the figures once its sender hears back.
        figures.publish(&log);
        for done in withdrawn {
            // No one hears it: the admission was given up on, and its record is gone all the same.
            let _ = done.send(());
        }
        match written {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!("the spool writes again; messages are accepted");
                }
                for (seq, done) in answers {
                    if done.send(Ok(seq)).is_err() {
                        // No one hears it: its admission was given up on (a timeout, a client that
                        // hung up), so no hold will ever remove its record.
                        owed.push(seq);
                    }
                }
                at_once = !owed.is_empty();
            }
            Err(error) => {
                let problem = error.to_string();
                if failing.as_ref() != Some(&problem) {
                    tracing::error!(%error, puts = puts.len(), removes = owed.len(), "the spool could not write a batch: messages are refused, and settled ones stay in the spool until a write succeeds (said once while batches fail alike)");
                    failing = Some(problem);
                }
                at_once = false;
                for (_, done) in answers {
                    let _ = done.send(Err(io::Error::new(error.kind(), error.to_string())));
                }
            }
        }
        if let Some(done) = close {
            if !owed.is_empty() {
                finish(&mut log, &owed);
            }
            // The channel shut before the answer: a close sent once it is heard (the spool's
            // drop, after a shutdown's close) is refused at once, not left unread and unanswered.
            drop((log, pin, requests));
            let _ = done.send(());
            return;
        }
    }
    finish(&mut log, &owed);
}

/// The requests of the next batch: `first` and those queued by now, at most [`MAX_BATCH`], up to a
/// close (those after it are left: they are not served). Taken while no batch of admissions is
/// queueing its puts (`gathering`), so that a batch's puts are all in, or none.
fn take_requests(
    first: Option<Request>,
    requests: &flume::Receiver<Request>,
    gathering: &RwLock<()>,
) -> Vec<Request> {
    let _no_batch_queueing = gathering.write().unwrap_or_else(PoisonError::into_inner);
    let mut gathered = Vec::new();
    for request in first.into_iter().chain(requests.try_iter()).take(MAX_BATCH) {
        let close = matches!(request, Request::Close(_));
        gathered.push(request);
        if close {
            break;
        }
    }
    gathered
}

/// Write the removes still `owed` and fsync what is written: the writer's last write.
fn finish(log: &mut SegmentLog, owed: &[u64]) {
    let mut bytes = Vec::new();
    owed.iter().for_each(|seq| record::write_remove(&mut bytes, *seq));
    if let Err(error) = log.append(&bytes, &[], owed, true) {
        tracing::warn!(%error, "the spool's last fsync failed: settled messages may be delivered again");
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Put a small record through the writer of `requests` and wait for its answer.
    fn put(requests: &flume::Sender<Request>) -> io::Result<u64> {
        let (done, written) = oneshot::channel();
        let body = record::put_body(&crate::message::Message::new("t", "payload"), 7);
        requests.send(Request::Put { body, accepted_ms: 7, done }).unwrap();
        written.blocking_recv().expect("the writer answers")
    }

    #[test]
    fn only_puts_on_disk_are_counted_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        log.fail_writes();
        let counted = Arc::new(AtomicUsize::new(0));
        let observer = counted.clone();
        let observe: CommitObserver = Box::new(move |puts, _| {
            observer.fetch_add(puts, Relaxed);
        });
        let (requests, queue) = flume::unbounded();
        let writer =
            std::thread::spawn(move || run(log, queue, Arc::default(), Arc::default(), observe, None));
        put(&requests).expect_err("the write fails");
        put(&requests).expect("the next goes to a new segment");
        drop(requests);
        writer.join().unwrap();
        assert_eq!(counted.load(Relaxed), 1, "the refused put is not counted");
    }

    #[test]
    fn a_put_whose_answer_no_one_takes_is_removed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (log, ..) = SegmentLog::open(dir.path()).unwrap();
        let (requests, queue) = flume::unbounded();
        let figures = Arc::new(Figures::default());
        let shown = figures.clone();
        let writer =
            std::thread::spawn(move || run(log, queue, Arc::default(), shown, Box::new(|_, _| {}), None));
        let (done, written) = oneshot::channel();
        drop(written);
        let body = record::put_body(&crate::message::Message::new("t", "given up"), 7);
        requests.send(Request::Put { body, accepted_ms: 7, done }).unwrap();
        let kept = put(&requests).unwrap();
        drop(requests);
        writer.join().unwrap();
        assert_eq!(figures.depth.load(Relaxed), 1, "only the put whose answer was taken");
        let (_, recovered, _) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(recovered.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [kept]);
    }

    #[test]
    fn the_removes_of_a_batch_that_failed_to_write_are_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let (mut bytes, mut puts) = (Vec::new(), Vec::new());
        for payload in ["a", "b"] {
            let (seq, start) = (log.next_seq(), bytes.len());
            record::write_put(
                &mut bytes,
                seq,
                &record::put_body(&crate::message::Message::new("t", payload), 7),
            );
            puts.push((seq, (bytes.len() - start) as u64, 7));
        }
        log.append(&bytes, &puts, &[], true).unwrap();
        log.fail_writes();
        let (requests, queue) = flume::unbounded();
        let writer = std::thread::spawn(move || {
            run(log, queue, Arc::default(), Arc::default(), Box::new(|_, _| {}), None)
        });
        requests.send(Request::Remove(puts[0].0)).unwrap();
        drop(requests);
        writer.join().unwrap();
        let (_, recovered, _) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(recovered.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [puts[1].0], "a settled");
    }
}
