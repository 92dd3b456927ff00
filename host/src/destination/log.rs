//! A destination that writes each message as one JSON line on standard
//! output, from a thread of its own: a slow or blocked stdout holds back this
//! destination's deliveries (its queue of lines is bounded), never a runtime
//! thread.

use super::{DeliveryError, DeliveryFuture, Destination};
use crate::message::Message;
use std::io::Write;
use tokio::sync::oneshot;

/// Lines waiting for the writer thread before deliveries wait.
const QUEUED_LINES: usize = 1024;

/// One line to write, and who waits for it to be written.
type Line = (String, oneshot::Sender<Result<(), String>>);

/// Prints `{"destination":…,"id":…,"topic":…,"headers":[[k,v],…],"payload":…}`
/// lines; the payload is shown as UTF-8 (lossy). Gives no reply. A message
/// is delivered once its line is written and flushed.
#[derive(Debug, Clone)]
pub struct LogDestination {
    name: String,
    lines: flume::Sender<Line>,
}

impl LogDestination {
    /// A log destination reporting itself as `name`; its writer thread ends
    /// when the last clone is dropped.
    pub fn new(name: impl Into<String>) -> LogDestination {
        let (lines, queue) = flume::bounded(QUEUED_LINES);
        let spawned = std::thread::Builder::new()
            .name("switchyard-log".into())
            .spawn(move || write_lines(queue, || std::io::stdout().lock()));
        if let Err(err) = spawned {
            // Deliveries then fail (retryable) with the reason; nothing is lost.
            tracing::error!(%err, "cannot start the log destination's writer thread");
        }
        LogDestination { name: name.into(), lines }
    }
}

impl Destination for LogDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        let line = message.json_line(&self.name);
        Box::pin(async move {
            let stopped = || DeliveryError::Retryable("the log writer thread is not running".into());
            let (written, done) = oneshot::channel();
            self.lines.send_async((line, written)).await.map_err(|_| stopped())?;
            match done.await {
                Ok(Ok(())) => Ok(None),
                Ok(Err(error)) => Err(DeliveryError::Retryable(error)),
                Err(_) => Err(stopped()),
            }
        })
    }
}

/// Write what `queue` brings to the writer `lock` gives (standard output, locked), as many lines
/// as are waiting per hold of the lock. Each line is flushed as it is written (standard output,
/// line-buffered, has then nothing left to flush), so that its waiter is told whether it was: a
/// write that fails fails its line and those after it, never one written before it, which a retry
/// would write twice.
fn write_lines<W: Write>(queue: flume::Receiver<Line>, mut lock: impl FnMut() -> W) {
    while let Ok(first) = queue.recv() {
        let batch: Vec<Line> = std::iter::once(first).chain(queue.try_iter().take(QUEUED_LINES)).collect();
        let mut out = lock();
        let mut failed: Option<String> = None;
        for (line, waiting) in batch {
            let written = match &failed {
                Some(error) => Err(error.clone()),
                None => writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|err| format!("writing to standard output: {err}")),
            };
            if let Err(error) = &written {
                failed = Some(error.clone());
            }
            let _ = waiting.send(written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that takes `lines` whole lines, then fails every write.
    #[derive(Clone)]
    struct FailingAfter {
        written: Arc<Mutex<Vec<u8>>>,
        lines: usize,
    }

    impl Write for FailingAfter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut written = self.written.lock().unwrap();
            if written.iter().filter(|&&byte| byte == b'\n').count() == self.lines {
                return Err(std::io::Error::other("disk full"));
            }
            written.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_failing_at_one_line_of_a_batch_fails_that_line_and_those_after_it_only() {
        let (lines, queue) = flume::bounded(QUEUED_LINES);
        let waiting: Vec<_> = (0..5)
            .map(|n| {
                let (written, done) = oneshot::channel();
                lines.send((format!("line {n}"), written)).unwrap();
                done
            })
            .collect();
        // All five wait when the writer starts: one batch.
        drop(lines);
        let out = FailingAfter { written: Arc::default(), lines: 2 };
        write_lines(queue, || out.clone());
        let outcomes: Vec<_> = waiting.into_iter().map(|mut done| done.try_recv().unwrap()).collect();
        let failed = Err("writing to standard output: disk full".to_owned());
        assert_eq!(outcomes, [Ok(()), Ok(()), failed.clone(), failed.clone(), failed]);
        assert_eq!(*out.written.lock().unwrap(), b"line 0\nline 1\n");
    }
}
