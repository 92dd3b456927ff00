//! Receipts: word of an accepted message's final outcome, for an ingress that must answer its own
//! source only then (a JetStream ingress acknowledges a message once it is settled).
//!
//! The word travels the way the spool's record does: a `ReceiptHold` rides in the message's
//! `Accepted`, shared with every message made from it (fan-out copies, split outputs, retries), and
//! the last of them to be dropped — each having been delivered, filtered, answered or dead-lettered
//! to somewhere that took the letter — tells the [`Receipt`]. When a message cannot reach an
//! outcome (its dead letter was lost, a worker panicked) the hold is kept, and the receipt says
//! [`Settlement::Unsettled`]; so does a host that stops before it settled the message.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::sync::oneshot;

/// What became of an accepted message, as far as its [`Receipt`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// It and everything made from it reached an outcome: delivered, filtered, responded, or
    /// dead-lettered (the letter taken by a dead-letter destination or the dead-letter file).
    Settled,
    /// It did not: a dead letter was lost, a worker panicked, or the host stopped first.
    Unsettled,
}

/// Resolves once an accepted message is settled (or can no longer be): from
/// [`Host::send_with_receipt`](crate::Host::send_with_receipt).
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Settlement>);

impl Receipt {
    /// Wait for the message's settlement.
    pub async fn settled(self) -> Settlement {
        self.0.await.unwrap_or(Settlement::Unsettled)
    }
}

/// The sending side of a [`Receipt`]: tells it [`Settlement::Settled`] when dropped, unless kept or
/// dropped by a panicking thread.
#[derive(Debug)]
pub(crate) struct ReceiptHold {
    tell: Option<oneshot::Sender<Settlement>>,
    kept: AtomicBool,
}

impl ReceiptHold {
    /// A hold and the receipt it tells.
    pub(crate) fn new() -> (ReceiptHold, Receipt) {
        let (tell, told) = oneshot::channel();
        (ReceiptHold { tell: Some(tell), kept: AtomicBool::new(false) }, Receipt(told))
    }

    /// The message could not reach an outcome: its receipt will say so.
    pub(crate) fn keep(&self) {
        self.kept.store(true, Relaxed);
    }
}

impl Drop for ReceiptHold {
    fn drop(&mut self) {
        let settlement = match self.kept.load(Relaxed) || std::thread::panicking() {
            true => Settlement::Unsettled,
            false => Settlement::Settled,
        };
        if let Some(tell) = self.tell.take() {
            let _ = tell.send(settlement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_receipt_is_settled_once_the_last_share_of_its_hold_is_dropped() {
        let (hold, receipt) = ReceiptHold::new();
        let first = Arc::new(hold);
        let copy = first.clone();
        drop(first);
        let mut receipt = std::pin::pin!(receipt.settled());
        assert!(futures_util::poll!(&mut receipt).is_pending(), "a copy is still in flight");
        drop(copy);
        assert_eq!(receipt.await, Settlement::Settled);
    }

    #[tokio::test]
    async fn a_kept_hold_tells_its_receipt_unsettled() {
        let (hold, receipt) = ReceiptHold::new();
        hold.keep();
        drop(hold);
        assert_eq!(receipt.settled().await, Settlement::Unsettled);
    }
}
