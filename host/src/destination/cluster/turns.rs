//! Each stream's turn: the deliveries of one stream go out one at a time, in the order they left the
//! queue.
//!
//! The dispatcher takes a [`StreamTurn`] as it pops a message (so tickets follow the queue's order,
//! whatever order the delivery tasks then run in); a delivery waits for its turn before its first
//! attempt and holds it through its retries until it ends. A turn dropped before it came (its
//! delivery cancelled) is skipped when it comes.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::endpoint::lock;

/// The turns of every stream of one destination with a delivery waiting or in flight.
#[derive(Default)]
pub(crate) struct StreamTurns {
    /// One gate per such stream, removed when its last turn ends: at most one per queued or
    /// in-flight message.
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    /// Signalled when a turn ends.
    ended: Notify,
}

#[derive(Default)]
struct GateState {
    /// The ticket the next turn taken gets.
    next: u64,
    /// The ticket whose turn it is.
    serving: u64,
    /// Tickets dropped before their turn came.
    abandoned: BTreeSet<u64>,
}

/// One delivery's place in its stream's line: see the [module docs](self).
pub(crate) struct StreamTurn {
    turns: Arc<StreamTurns>,
    key: String,
    gate: Arc<Gate>,
    ticket: u64,
}

impl StreamTurns {
    /// The next turn of stream `key`.
    pub(crate) fn take(self: &Arc<Self>, key: &str) -> StreamTurn {
        let mut gates = lock(&self.gates);
        let gate = gates.entry(key.to_owned()).or_default().clone();
        let ticket = {
            let mut state = lock(&gate.state);
            state.next += 1;
            state.next - 1
        };
        StreamTurn { turns: self.clone(), key: key.to_owned(), gate, ticket }
    }

    /// Streams with a delivery waiting or in flight.
    #[cfg(test)]
    fn streams(&self) -> usize {
        lock(&self.gates).len()
    }
}

impl StreamTurn {
    /// Resolves once every earlier turn of the stream has ended.
    pub(crate) async fn ready(&self) {
        loop {
            let ended = self.gate.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if lock(&self.gate.state).serving == self.ticket {
                return;
            }
            ended.await;
        }
    }
}

impl Drop for StreamTurn {
    fn drop(&mut self) {
        let mut gates = lock(&self.turns.gates);
        let mut guard = lock(&self.gate.state);
        let state = &mut *guard;
        if state.serving == self.ticket {
            state.serving += 1;
            while state.abandoned.remove(&state.serving) {
                state.serving += 1;
            }
        } else {
            state.abandoned.insert(self.ticket);
        }
        if state.serving == state.next {
            gates.remove(&self.key);
        }
        drop((guard, gates));
        self.gate.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll};

    /// Whether `turn` is ready now, without waiting.
    fn is_ready(turn: &StreamTurn) -> bool {
        let ready = turn.ready();
        tokio::pin!(ready);
        ready.as_mut().poll(&mut Context::from_waker(std::task::Waker::noop())) == Poll::Ready(())
    }

    #[test]
    fn turns_of_a_stream_come_in_the_order_they_were_taken() {
        let turns = Arc::new(StreamTurns::default());
        let (first, second, third) = (turns.take("a"), turns.take("a"), turns.take("a"));
        let other = turns.take("b");
        assert!(is_ready(&first) && is_ready(&other));
        assert!(!is_ready(&second) && !is_ready(&third));
        drop(first);
        assert!(is_ready(&second) && !is_ready(&third));
        drop(second);
        assert!(is_ready(&third));
    }

    #[test]
    fn a_turn_dropped_before_it_came_is_skipped_and_gates_go_when_unused() {
        let turns = Arc::new(StreamTurns::default());
        let (first, second, third) = (turns.take("a"), turns.take("a"), turns.take("a"));
        drop(second);
        assert!(!is_ready(&third));
        drop(first);
        assert!(is_ready(&third));
        assert_eq!(turns.streams(), 1);
        drop(third);
        assert_eq!(turns.streams(), 0);
    }

    #[tokio::test]
    async fn a_waiting_turn_wakes_when_the_one_before_ends() {
        let turns = Arc::new(StreamTurns::default());
        let first = turns.take("a");
        let second = turns.take("a");
        let waiting = tokio::spawn(async move { second.ready().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap();
    }
}
