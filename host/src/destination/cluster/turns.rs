//! Each stream's turn: the deliveries of one stream go out one at a time, in the order they leave
//! the queue.
//!
//! The dispatcher takes a message from the queue only when its stream's turn is free
//! ([`StreamTurns::try_take`]), skipping those whose stream has a delivery under way: they wait in
//! the queue (where its timeout still applies), holding no delivery slot; when one of the stream's
//! is taken, the stream's oldest goes in its place
//! ([`pop_first`](crate::destination::DeliveryQueue::pop_first)). A delivery holds its
//! [`StreamTurn`] through its retries until it is settled (by the destination's fallback, a network
//! one's delivery of it included, or dead-lettered), and so does a message that times out in the
//! queue while its stream's turn is free (the dispatcher waiting for a slot or an endpoint);
//! dropping the turn frees the stream and signals [`StreamTurns::ended`], so the dispatcher looks
//! again at what it skipped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::endpoint::lock;

/// The streams of one destination with a delivery under way.
#[derive(Default)]
pub(crate) struct StreamTurns {
    /// The keys of those streams: at most one per delivery in flight.
    busy: Mutex<HashSet<String>>,
    /// Signalled (to every waiter) when a turn ends.
    ended: Notify,
}

/// One delivery's turn in its stream: see the [module docs](self).
pub(crate) struct StreamTurn {
    turns: Arc<StreamTurns>,
    key: String,
}

impl StreamTurns {
    /// The turn of stream `key`, unless a delivery of the stream holds it.
    pub(crate) fn try_take(self: &Arc<Self>, key: &str) -> Option<StreamTurn> {
        let fresh = lock(&self.busy).insert(key.to_owned());
        fresh.then(|| StreamTurn { turns: self.clone(), key: key.to_owned() })
    }

    /// Signalled (to every waiter) when a turn ends: a message skipped for its stream may go.
    pub(crate) fn ended(&self) -> &Notify {
        &self.ended
    }
}

impl Drop for StreamTurn {
    fn drop(&mut self) {
        lock(&self.turns.busy).remove(&self.key);
        self.turns.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_turn_is_taken_once_until_it_ends() {
        let turns = Arc::new(StreamTurns::default());
        let first = turns.try_take("a").expect("a free stream");
        assert!(turns.try_take("a").is_none(), "stream a is busy");
        let other = turns.try_take("b");
        assert!(other.is_some(), "other streams are not held up");
        drop(first);
        assert!(turns.try_take("a").is_some(), "its turn ended");
    }

    #[tokio::test]
    async fn an_ending_turn_wakes_who_waits_for_one() {
        let turns = Arc::new(StreamTurns::default());
        let first = turns.try_take("a").unwrap();
        let ended = turns.ended().notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(10), ended).await.unwrap();
    }
}
