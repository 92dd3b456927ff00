//! An in-process destination: messages land in a channel the embedder reads.

use super::{DeliveryFuture, Destination};
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

impl Destination for MemoryDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        Box::pin(async move {
            // The host keeps a receiver for every memory destination it creates,
            // so the send fails only when an embedder dropped the receiver of its own.
            self.sender.send_async(message).await.map(|()| None).map_err(|_| {
                super::DeliveryError::Fatal("the memory destination's receiver was dropped".into())
            })
        })
    }

    /// Its only failure is a dropped receiver, which is fatal.
    fn may_answer_retryable(&self) -> bool {
        false
    }
}
