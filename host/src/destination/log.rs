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
        let spawned =
            std::thread::Builder::new().name("switchyard-log".into()).spawn(move || write_lines(queue));
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

/// Write what `queue` brings, as many lines as are waiting per flush.
fn write_lines(queue: flume::Receiver<Line>) {
    let stdout = std::io::stdout();
    while let Ok(first) = queue.recv() {
        let batch: Vec<Line> = std::iter::once(first).chain(queue.try_iter().take(QUEUED_LINES)).collect();
        let mut out = stdout.lock();
        let written = batch
            .iter()
            .try_for_each(|(line, _)| writeln!(out, "{line}"))
            .and_then(|()| out.flush())
            .map_err(|err| format!("writing to standard output: {err}"));
        drop(out);
        for (_, waiting) in batch {
            let _ = waiting.send(written.clone());
        }
    }
}
