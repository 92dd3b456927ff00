//! A message in flight through a route's stages, and what a stage made of it.

use crate::config::FailurePolicy;
use crate::dead_letter::DeadLetterReason;
use crate::message::Message;
use crate::plugin::{CompiledPlugin, PluginError};
use crate::receipt::ReceiptHold;
use crate::spool::SpoolHold;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// What a `request` caller is answered.
type Answer = Result<Option<Message>, crate::host::RequestError>;

/// Where the answer a `request` caller waits for goes. Dropped unanswered, it answers
/// [`HostGone`](crate::host::RequestError::HostGone): whatever held it went away with the host
/// (a task of its runtime, dropped as the runtime shut down; a queue dropped with the host), and
/// nothing will answer it; or, dropped by a thread that panics (a pipeline worker, a task),
/// [`WorkerFailed`](crate::host::RequestError::WorkerFailed).
pub(crate) struct ReplySender(Option<oneshot::Sender<Answer>>);

impl ReplySender {
    /// A reply's sender, and the receiver its caller waits on.
    pub(crate) fn new() -> (ReplySender, oneshot::Receiver<Answer>) {
        let (sender, pending) = oneshot::channel();
        (ReplySender(Some(sender)), pending)
    }

    /// Answer the caller; the answer comes back if the caller no longer waits.
    pub(crate) fn send(mut self, answer: Answer) -> Result<(), Answer> {
        self.0.take().expect("answered once, as it is consumed").send(answer)
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        let Some(sender) = self.0.take() else { return };
        let unanswered = match std::thread::panicking() {
            true => crate::host::RequestError::WorkerFailed,
            false => crate::host::RequestError::HostGone,
        };
        let _ = sender.send(Err(unanswered));
    }
}

/// When a message was accepted, its place in the spool (with `durability = "spool"`) and the
/// receipt its ingress waits on (see [`crate::receipt`]): every message made from it shares the
/// holds, so the record goes, and the receipt is told, once the last of them is dropped, each
/// [`settle`](Accepted::settle)d where it reached its outcome. One dropped unsettled keeps the
/// holds unsettled, whichever share it is: a copy lost to a panic, to a dead letter no one took,
/// or to a runtime shut down under the task that held it (tokio drops such tasks' futures) must
/// not count as settled when the other copies are.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) at: Instant,
    /// Its place in the batch of the worker that routes it (0 on the way that needs no worker),
    /// which every message made from it shares: the batch's routes run one after another, and
    /// their deliveries are put back in this order before they are handed over, so that a
    /// stream's messages reach their destination in the order they came whatever their routes.
    pub(crate) batch_position: usize,
    pub(crate) spooled: Option<Arc<SpoolHold>>,
    pub(crate) receipt: Option<Arc<ReceiptHold>>,
    /// Whether it is an alert transition's message (every message made from it is too): its dead
    /// letters are not counted in the `dead_letters` alert rules read, so that a rule on dead
    /// letters is not set off again by its own messages' letters.
    pub(crate) alert_message: bool,
    /// Whether this share still owes an outcome: from when the pipeline takes the message (or the
    /// spool gives it back at start) until [`settle`](Accepted::settle). Not before: an admission
    /// given up on, or refused, drops its message unaccepted, and its record goes; one accepted
    /// into the intake queue leaves it only for a worker, or with the host, whose spool closes
    /// first.
    owes_outcome: bool,
}

impl Accepted {
    /// This share reached its outcome (delivered, filtered, answered, dead-lettered to somewhere
    /// that took the letter, handed back): it no longer keeps the holds unsettled.
    pub(crate) fn settle(mut self) {
        self.owes_outcome = false;
    }

    /// Whether its source keeps it until it is settled and takes it back (a JetStream stream,
    /// told through the receipt): a stop then hands it back rather than dead-lettering it.
    pub(crate) fn source_keeps(&self) -> bool {
        self.receipt.is_some()
    }

    /// The host stops before it delivered the message: tell its receipt it is handed back.
    pub(crate) fn hand_back(&self) {
        if let Some(hold) = &self.receipt {
            hold.hand_back();
        }
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        let unsettled = self.owes_outcome || std::thread::panicking();
        if let Some(hold) = &self.spooled {
            match unsettled {
                true => hold.keep(),
                false => hold.settle(),
            }
        }
        if let Some(hold) = self.receipt.as_ref().filter(|_| unsettled) {
            hold.keep();
        }
    }
}

/// One accepted message as it enters the pipeline.
pub(crate) struct Envelope {
    pub(crate) message: Message,
    pub(crate) reply: Option<ReplySender>,
    pub(crate) accepted: Accepted,
    /// The message's share of `host.queue_bytes`, given back when a worker
    /// takes it.
    intake_bytes: OwnedSemaphorePermit,
}

impl Envelope {
    /// `message`, accepted now, holding `intake_bytes` (and its spool record, if spooled).
    pub(crate) fn new(
        message: Message,
        reply: Option<ReplySender>,
        intake_bytes: OwnedSemaphorePermit,
        spooled: Option<SpoolHold>,
    ) -> Envelope {
        let spooled = spooled.map(Arc::new);
        let accepted = Accepted {
            at: Instant::now(),
            batch_position: 0,
            spooled,
            receipt: None,
            alert_message: false,
            owes_outcome: false,
        };
        Envelope { message, reply, accepted, intake_bytes }
    }

    /// `message`, which the spool held at start (`hold`), accepted again now: it owes an outcome
    /// already, an earlier run having accepted it.
    pub(crate) fn recovered(
        message: Message,
        intake_bytes: OwnedSemaphorePermit,
        hold: SpoolHold,
    ) -> Envelope {
        let mut envelope = Envelope::new(message, None, intake_bytes, Some(hold));
        envelope.accepted.owes_outcome = true;
        envelope
    }

    /// The same envelope, an alert transition's message (see [`Accepted::alert_message`]).
    pub(crate) fn of_alert(mut self) -> Envelope {
        self.accepted.alert_message = true;
        self
    }

    /// The same envelope, telling `receipt` once the message is settled.
    pub(crate) fn with_receipt(mut self, receipt: ReceiptHold) -> Envelope {
        self.accepted.receipt = Some(Arc::new(receipt));
        self
    }
}

/// A message on its way through a route.
pub(crate) struct Item {
    pub(crate) message: Message,
    pub(crate) reply: Option<ReplySender>,
    /// Middleware versions the request passed, to run `on_reply` in reverse.
    pub(crate) middlewares: Vec<Arc<CompiledPlugin>>,
    /// When the message (or the one it was split from) was admitted.
    pub(crate) accepted: Accepted,
}

/// What one stage made of one item.
pub(crate) enum Fate {
    /// Go on to the next stage.
    Keep(Item),
    /// Dropped by a filter or transform.
    Dropped(Item),
    /// A middleware answered; do not deliver. (The rare variants box their
    /// second part: fates are moved around by the batch, and every one is as
    /// large as the largest variant.)
    Responded(Item, Box<Message>),
    /// Give up on it.
    DeadLetter(Item, Box<DeadLetterReason>),
    /// A stage failed under fail-open: carry on without it.
    Skipped(Item),
    /// The stage answered "retryable": run it on the item again, and if it
    /// still fails, fail under `policy` with `reason`.
    Retry(Item, FailurePolicy, Box<DeadLetterReason>),
}

impl Fate {
    /// The fate of `item` whose stage failed with `reason` under `policy`.
    /// A plugin's "rejected" answer means the message itself is bad: it is
    /// dead-lettered whatever the policy; a "retryable" one is worth another try.
    pub(crate) fn failed(item: Item, policy: FailurePolicy, reason: DeadLetterReason) -> Fate {
        match &reason {
            DeadLetterReason::PluginError { error: PluginError::Retryable(_), .. } => {
                Fate::Retry(item, policy, Box::new(reason))
            }
            _ => Fate::given_up(item, policy, reason),
        }
    }

    /// The fate of `item` that a stage did not run on, or ran on until it was cut, because the
    /// host's stop is past its grace period: dead-lettered `shutdown` (or handed back to a source
    /// that keeps it).
    pub(crate) fn shut_down(item: Item) -> Fate {
        Fate::DeadLetter(item, Box::new(DeadLetterReason::Shutdown))
    }

    /// The fate of `item` whose stage failed for good with `reason` under `policy`.
    pub(crate) fn given_up(item: Item, policy: FailurePolicy, reason: DeadLetterReason) -> Fate {
        let rejected =
            matches!(&reason, DeadLetterReason::PluginError { error: PluginError::Rejected(_), .. });
        match policy {
            FailurePolicy::FailOpen if !rejected => Fate::Skipped(item),
            _ => Fate::DeadLetter(item, Box::new(reason)),
        }
    }
}

impl Envelope {
    /// The message as it enters its route, at `batch_position` in its worker's batch. Its share
    /// of the intake budget joins `taken`, the shares of its batch, which the worker gives back at
    /// once: tokio locks the budget's waiters for every give-back.
    pub(crate) fn into_item(
        mut self,
        batch_position: usize,
        taken: &mut Option<OwnedSemaphorePermit>,
    ) -> Item {
        self.accepted.batch_position = batch_position;
        self.accepted.owes_outcome = true;
        match taken {
            // Every envelope's share is of the one host's budget, as `merge` requires.
            Some(shares) => shares.merge(self.intake_bytes),
            None => *taken = Some(self.intake_bytes),
        }
        Item { message: self.message, reply: self.reply, middlewares: Vec::new(), accepted: self.accepted }
    }

    /// `item` back as it was accepted, holding `intake_bytes` again: for the intake queue after
    /// all, when its destination had no room. Its admission may yet be given up on.
    pub(crate) fn again(item: Item, intake_bytes: OwnedSemaphorePermit) -> Envelope {
        let Item { message, reply, mut accepted, .. } = item;
        accepted.owes_outcome = false;
        Envelope { message, reply, accepted, intake_bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_s_shares_of_the_intake_budget_go_back_together_once_its_worker_lets_go() {
        let budget = Arc::new(tokio::sync::Semaphore::new(10));
        let share = |kib| budget.clone().try_acquire_many_owned(kib).unwrap();
        let envelopes = [
            Envelope::new(Message::new("a", "1"), None, share(3), None),
            Envelope::new(Message::new("b", "2"), None, share(4), None),
        ];
        let mut taken = None;
        let items: Vec<Item> = envelopes
            .into_iter()
            .enumerate()
            .map(|(at, envelope)| envelope.into_item(at, &mut taken))
            .collect();
        assert_eq!(budget.available_permits(), 3, "still held while the batch is routed");
        drop(taken);
        assert_eq!(budget.available_permits(), 10);
        let topics: Vec<&str> = items.iter().map(|item| item.message.topic.as_str()).collect();
        assert_eq!(topics, ["a", "b"]);
    }

    /// A message accepted and taken by the pipeline, and the receipt its holds tell.
    fn taken_with_receipt() -> (Accepted, crate::receipt::Receipt) {
        let (hold, receipt) = crate::receipt::ReceiptHold::new();
        let receipt_hold = Some(Arc::new(hold));
        let accepted = Accepted {
            at: Instant::now(),
            batch_position: 0,
            spooled: None,
            receipt: receipt_hold,
            alert_message: false,
            owes_outcome: true,
        };
        (accepted, receipt)
    }

    #[tokio::test]
    async fn a_copy_lost_to_a_panic_leaves_its_message_unsettled_when_the_other_copy_settles() {
        let (accepted, receipt) = taken_with_receipt();
        // A fan-out: one copy dropped by a worker that panics, the other delivered.
        let lost = accepted.clone();
        let panicked = crate::panic::catch(move || {
            let _copy = lost;
            panic!("a worker's own code panics");
        });
        assert!(panicked.is_err());
        accepted.settle();
        assert_eq!(receipt.settled().await, crate::receipt::Settlement::Unsettled);
    }

    #[tokio::test]
    async fn a_message_is_settled_once_every_copy_is_and_not_when_one_is_dropped_before_its_outcome() {
        let (accepted, receipt) = taken_with_receipt();
        let copy = accepted.clone();
        copy.settle();
        accepted.settle();
        assert_eq!(receipt.settled().await, crate::receipt::Settlement::Settled);

        // One copy delivered, the other dropped with the task that held it (a runtime shut down).
        let (accepted, receipt) = taken_with_receipt();
        let copy = accepted.clone();
        accepted.settle();
        drop(copy);
        assert_eq!(receipt.settled().await, crate::receipt::Settlement::Unsettled);
    }
}
