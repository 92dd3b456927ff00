//! An in-process destination: messages land in a channel the embedder reads.

use super::{DeliveryError, DeliveryFuture, Destination};
use crate::message::Message;
use futures_util::task::AtomicWaker;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Unread messages a [`MemoryDestination::new`] holds.
const DEFAULT_CAPACITY: usize = 1024;

/// Delivers into a bounded in-process channel; gives no reply. When the
/// channel is full, deliveries wait for the reader: backpressure reaches the
/// pipeline and then senders, and nothing is dropped. A wait given up (a
/// fallback's deadline, the end of a stop's grace period) leaves the message
/// either in the channel, delivered, or out of it, dead-lettered: never both.
#[derive(Debug, Clone)]
pub struct MemoryDestination {
    sender: flume::Sender<Message>,
}

impl MemoryDestination {
    /// A destination holding up to 1024 unread messages (`DEFAULT_CAPACITY`), and
    /// the receiver of what it is given.
    pub fn new() -> (MemoryDestination, flume::Receiver<Message>) {
        MemoryDestination::with_capacity(DEFAULT_CAPACITY)
    }

    /// A destination holding up to `capacity` unread messages (at least one).
    pub fn with_capacity(capacity: usize) -> (MemoryDestination, flume::Receiver<Message>) {
        let (sender, receiver) = flume::bounded(capacity.max(1));
        (MemoryDestination { sender }, receiver)
    }
}

impl MemoryDestination {
    /// Send `message` into the channel, waiting for room until `deadline` resolves; the message
    /// comes back with the deadline's error, or when no one can read it. The host keeps a receiver
    /// for every memory destination it creates, so the latter happens only when an embedder
    /// dropped the receiver of its own.
    pub(crate) async fn send(
        &self,
        message: Message,
        deadline: impl Future<Output = DeliveryError>,
    ) -> Result<(), (DeliveryError, Message)> {
        let dropped = || DeliveryError::Fatal("the memory destination's receiver was dropped".into());
        let message = match self.sender.try_send(message) {
            Ok(()) => return Ok(()),
            Err(flume::TrySendError::Disconnected(message)) => return Err((dropped(), message)),
            Err(flume::TrySendError::Full(message)) => message,
        };
        // Full: wait in the channel's line of senders, watching whether a reader takes it.
        let watch = Arc::new(TakenWatch {
            sender: self.sender.clone(),
            taken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let watching = Waker::from(watch.clone());
        let mut waiting = self.sender.send_async(message.clone());
        let mut deadline = std::pin::pin!(deadline);
        let ended = std::future::poll_fn(|cx| {
            watch.task.register(cx.waker());
            if let Poll::Ready(sent) = Pin::new(&mut waiting).poll(&mut Context::from_waker(&watching)) {
                return Poll::Ready(Ok(sent));
            }
            deadline.as_mut().poll(cx).map(Err)
        })
        .await;
        match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((dropped(), message)),
            Err(error) => {
                // Dropped, the wait leaves the line under the channel's lock; a reader that took
                // the message in before did so under that lock and told `watch` there. So it is
                // in for good if `watch` was told, and ours for good if not.
                drop(waiting);
                match watch.taken.load(Ordering::SeqCst) {
                    true => Ok(()),
                    false => Err((error, message)),
                }
            }
        }
    }

    /// How many unread messages it holds at most.
    pub(crate) fn capacity(&self) -> usize {
        self.sender.capacity().expect("a memory destination's channel is bounded")
    }

    /// Put `message` into the channel if it has room now and someone can read it; else it comes
    /// back (for [`MemoryDestination::send`] to wait for room, or to tell why not).
    pub(crate) fn try_send(&self, message: Message) -> Result<(), Message> {
        self.sender.try_send(message).map_err(flume::TrySendError::into_inner)
    }
}

/// The waker of a send waiting for room: it wakes the waiting task, and tells whether a reader
/// took the message in. A flume channel wakes a waiting sender, under its lock, in two cases only:
/// when a reader moves its message into the channel, and when the last receiver is dropped (then
/// the channel is marked disconnected first, and the message is never read). Dropping a waiting
/// send takes it out of the line under that lock too. (flume 0.12: `Chan::pull_pending`,
/// `Shared::disconnect_all`, `SendFut::reset_hook`; check them again when flume is upgraded.)
struct TakenWatch {
    /// The channel, to tell the two cases apart.
    sender: flume::Sender<Message>,
    /// Set when a reader took the message in.
    taken: AtomicBool,
    /// The task waiting.
    task: AtomicWaker,
}

impl Wake for TakenWatch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.sender.is_disconnected() {
            self.taken.store(true, Ordering::SeqCst);
        }
        self.task.wake();
    }
}

impl Destination for MemoryDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        let forever = std::future::pending();
        Box::pin(async move { self.send(message, forever).await.map(|()| None).map_err(|(error, _)| error) })
    }

    fn as_memory(&self) -> Option<&MemoryDestination> {
        Some(self)
    }

    /// Its only failure is a dropped receiver, which is fatal.
    fn may_answer_retryable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long a send waits for room in these tests.
    const WAIT: Duration = Duration::from_millis(100);

    /// The deadline of a send: `WAIT`, when `at_deadline` runs (the reader's move, say) just
    /// before the deadline is told, between the send's last look at its message and its end.
    async fn deadline(at_deadline: impl FnOnce()) -> DeliveryError {
        tokio::time::sleep(WAIT).await;
        at_deadline();
        DeliveryError::NoRoom { waited_ms: WAIT.as_millis() as u64 }
    }

    /// A full destination of one message, "first", and its receiver.
    fn full() -> (MemoryDestination, flume::Receiver<Message>) {
        let (memory, receiver) = MemoryDestination::with_capacity(1);
        memory.try_send(Message::new("t", "first")).expect("room for one");
        (memory, receiver)
    }

    fn payloads(messages: impl IntoIterator<Item = Message>) -> Vec<String> {
        messages.into_iter().map(|message| String::from_utf8_lossy(&message.payload).into_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_the_reader_takes_at_the_deadline_is_delivered_not_handed_back() {
        let (memory, receiver) = full();
        let mut read = Vec::new();
        // The reader takes "first" at the deadline instant, which moves the waiting "second" in.
        let taken_then = deadline(|| read.extend(receiver.try_recv()));
        let sent = memory.send(Message::new("t", "second"), taken_then).await;
        read.extend(receiver.drain());
        // Each message read, or handed back to be dead-lettered: never both, never neither.
        assert_eq!(payloads(read), ["first", "second"], "read");
        let handed_back = sent.err().map(|(_, message)| message);
        assert_eq!(payloads(handed_back), Vec::<String>::new(), "also handed back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_still_waiting_at_the_deadline_is_handed_back_and_never_read() {
        let (memory, receiver) = full();
        let sent = memory.send(Message::new("t", "second"), deadline(|| ())).await;
        let Err((error, message)) = sent else { panic!("sent into a full channel no one read") };
        assert_eq!(error, DeliveryError::NoRoom { waited_ms: 100 });
        assert_eq!(payloads([message]), ["second"]);
        assert_eq!(payloads(receiver.drain()), ["first"], "what the channel holds");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_waiting_when_the_receiver_is_dropped_at_the_deadline_is_handed_back() {
        let (memory, receiver) = full();
        let sent = memory.send(Message::new("t", "second"), deadline(|| drop(receiver))).await;
        let Err((_, message)) = sent else { panic!("sent into a channel no one can read") };
        assert_eq!(payloads([message]), ["second"]);
    }
}
