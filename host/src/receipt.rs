//! Receipts: word of an accepted message's final outcome, for an ingress that must answer its own
//! source only then (a JetStream ingress acknowledges a message once it is settled).
//!
//! The word travels the way the spool's record does: a `ReceiptHold` rides in the message's
//! `Accepted`, shared with every message made from it (fan-out copies, split outputs, retries), and
//! the last of them to be dropped — each having been delivered, filtered, answered or dead-lettered
//! to somewhere that took the letter — tells the [`Receipt`]. When a message cannot reach an
//! outcome (its dead letter was lost, a worker panicked, a share of it was dropped before its
//! outcome, as a runtime shut down drops its tasks) the hold is kept, and the receipt says
//! [`Settlement::Unsettled`]. A message the host gives up on because it stops (still queued,
//! retried or under way at the end of the shutdown grace) is not dead-lettered, as one without a
//! receipt is: its source keeps it, so the host hands it back ([`Settlement::HandedBack`]) for the
//! source to deliver again, to another host.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use tokio::sync::oneshot;

/// What became of an accepted message, as far as its [`Receipt`] can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// It and everything made from it reached an outcome: delivered, filtered, responded, or
    /// dead-lettered (the letter taken by a dead-letter destination or the dead-letter file).
    Settled,
    /// It did not: a dead letter was lost, a worker panicked, or the host stopped first.
    Unsettled,
    /// The host stopped before it delivered it (or all made from it) and gave it back, neither
    /// delivered for sure nor dead-lettered: its source should deliver it again soon, to another
    /// host. A delivery cut while under way may have reached its destination, so a
    /// message delivered again may arrive twice, with the same `x-sy-id`.
    HandedBack,
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

/// The sending side of a [`Receipt`]: tells it [`Settlement::Settled`] when dropped, unless kept,
/// handed back or dropped by a panicking thread.
#[derive(Debug)]
pub(crate) struct ReceiptHold {
    tell: Option<oneshot::Sender<Settlement>>,
    /// What the shares of the hold said: [`SETTLED`], [`HANDED_BACK`] or [`KEPT`]; the furthest
    /// from settled wins (a message one copy of which was handed back, and another's dead letter
    /// lost, is unsettled).
    state: AtomicU8,
}

const SETTLED: u8 = 0;
const HANDED_BACK: u8 = 1;
const KEPT: u8 = 2;

impl ReceiptHold {
    /// A hold and the receipt it tells.
    pub(crate) fn new() -> (ReceiptHold, Receipt) {
        let (tell, told) = oneshot::channel();
        (ReceiptHold { tell: Some(tell), state: AtomicU8::new(SETTLED) }, Receipt(told))
    }

    /// The message could not reach an outcome: its receipt will say so.
    pub(crate) fn keep(&self) {
        self.state.fetch_max(KEPT, Relaxed);
    }

    /// The host stopped before it delivered the message: its receipt will say it is handed back
    /// (unless a copy of it is kept).
    pub(crate) fn hand_back(&self) {
        self.state.fetch_max(HANDED_BACK, Relaxed);
    }
}

impl Drop for ReceiptHold {
    fn drop(&mut self) {
        let settlement = match self.state.load(Relaxed) {
            _ if std::thread::panicking() => Settlement::Unsettled,
            SETTLED => Settlement::Settled,
            HANDED_BACK => Settlement::HandedBack,
            _ => Settlement::Unsettled,
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

    #[tokio::test]
    async fn a_hold_handed_back_tells_its_receipt_so_unless_a_share_of_it_is_kept() {
        let (hold, receipt) = ReceiptHold::new();
        hold.hand_back();
        drop(hold);
        assert_eq!(receipt.settled().await, Settlement::HandedBack);

        let (hold, receipt) = ReceiptHold::new();
        hold.keep();
        hold.hand_back();
        drop(hold);
        assert_eq!(receipt.settled().await, Settlement::Unsettled, "kept wins, whichever came first");
    }
}
