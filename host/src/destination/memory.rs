//! An in-process destination: messages land in a channel the embedder reads.

use super::{DeliveryFuture, Destination};
use crate::message::Message;

/// Delivers into an unbounded in-process channel; gives no reply.
#[derive(Debug, Clone)]
pub struct MemoryDestination {
    sender: flume::Sender<Message>,
}

impl MemoryDestination {
    /// A destination and the receiver of what it is given.
    pub fn new() -> (MemoryDestination, flume::Receiver<Message>) {
        let (sender, receiver) = flume::unbounded();
        (MemoryDestination { sender }, receiver)
    }
}

impl Destination for MemoryDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        // The host keeps a receiver for every memory destination it creates, so
        // the send fails only when an embedder dropped the receiver of its own.
        let result =
            self.sender.send(message).map(|()| None).map_err(|_| {
                super::DeliveryError::Fatal("the memory destination's receiver was dropped".into())
            });
        Box::pin(std::future::ready(result))
    }
}
