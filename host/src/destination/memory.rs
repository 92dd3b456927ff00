//! An in-process destination: messages land in a channel the embedder reads.

use super::{DeliveryError, DeliveryFuture, Destination};
use crate::message::Message;

/// Unread messages a [`MemoryDestination::new`] holds.
const DEFAULT_CAPACITY: usize = 1024;

/// Delivers into a bounded in-process channel; gives no reply. When the
/// channel is full, deliveries wait for the reader: backpressure reaches the
/// pipeline and then senders, and nothing is dropped.
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
    /// Send `message` into the channel, or hand it back when no one can read it. The host keeps
    /// a receiver for every memory destination it creates, so this fails only when an embedder
    /// dropped the receiver of its own.
    pub(crate) async fn send(&self, message: Message) -> Result<(), (DeliveryError, Message)> {
        let dropped = || DeliveryError::Fatal("the memory destination's receiver was dropped".into());
        self.sender.send_async(message).await.map_err(|unsent| (dropped(), unsent.into_inner()))
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

impl Destination for MemoryDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(async move { self.send(message).await.map(|()| None).map_err(|(error, _)| error) })
    }

    fn as_memory(&self) -> Option<&MemoryDestination> {
        Some(self)
    }

    /// Its only failure is a dropped receiver, which is fatal.
    fn may_answer_retryable(&self) -> bool {
        false
    }
}
