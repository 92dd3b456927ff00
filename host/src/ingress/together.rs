//! Messages read together on one connection or stream (the WebSocket ingress's frames, a gRPC
//! `PublishStream`'s messages, a core NATS subscription's messages): those already read when one
//! is, none waited for, are admitted
//! with it as one batch ([`admit_together`]), so that with `durability = "spool"` their records
//! share one fsync, where one message after another waited for one each. A lone message is
//! admitted at once, as before.

use crate::host::{Host, SendError};
use crate::message::{Message, MessageId};
use futures_util::{Stream, StreamExt};

/// The most messages read together that are admitted as one batch.
const READ_TOGETHER: usize = 256;

/// The most bytes, as read, of the messages admitted as one batch: a message read past them waits
/// for the next batch (one larger goes alone).
const READ_TOGETHER_BYTES: usize = 1 << 20;

/// The room a batch of messages read together has taken: at most [`READ_TOGETHER`] messages and
/// [`READ_TOGETHER_BYTES`], the first whatever its size.
#[derive(Default)]
pub(super) struct BatchRoom {
    messages: usize,
    bytes: usize,
}

impl BatchRoom {
    /// Whether one more message of `bytes` joins the batch: taking its room if it does.
    pub(super) fn take(&mut self, bytes: usize) -> bool {
        let joins = self.messages == 0
            || (self.messages < READ_TOGETHER && self.bytes.saturating_add(bytes) <= READ_TOGETHER_BYTES);
        if joins {
            self.messages += 1;
            self.bytes = self.bytes.saturating_add(bytes);
        }
        joins
    }
}

/// Admit the messages of `read` as one batch, waiting for room as [`Host::send`] does, each with
/// what its answer needs (`Ok`), and answer each with `answer` once it is accepted (or refused);
/// those refused before admission (`Err`) are answered as they are. The answers, in order, each
/// once its message is queued (or refused): not held back by a later message waiting for room.
pub(super) fn admit_together<'a, Needs: 'a, Answer: 'a>(
    host: &'a Host,
    read: Vec<Result<(Message, Needs), Answer>>,
    answer: impl FnMut(Needs, Result<MessageId, SendError>) -> Answer + 'a,
) -> impl Stream<Item = Answer> + 'a {
    let mut messages = Vec::with_capacity(read.len());
    let due: Vec<_> = read
        .into_iter()
        .map(|read| {
            read.map(|(message, needs)| {
                messages.push((message, None));
                needs
            })
        })
        .collect();
    let admitted = Box::pin(host.send_batch(messages));
    futures_util::stream::unfold(
        (due.into_iter(), admitted, answer),
        |(mut due, mut admitted, mut answer)| async move {
            let answered = match due.next()? {
                Ok(needs) => answer(needs, admitted.next().await.expect("a result for each message")),
                Err(refused) => refused,
            };
            Some((answered, (due, admitted, answer)))
        },
    )
}
