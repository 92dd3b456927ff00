//! The bounded priority queue in front of a network destination: the most
//! urgent priority class first, the oldest first within a class.
//!
//! Pushing waits while the queue is full, which is how a slow destination
//! pushes back on the pipeline and, through it, on senders. One consumer (the
//! destination's dispatcher) pops; closing lets it drain what is left.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A bounded priority queue of `T`.
#[derive(Debug)]
pub struct DeliveryQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Signalled when an entry is pushed or the queue closes.
    pushed: Notify,
    /// Signalled when an entry is popped or the queue closes.
    popped: Notify,
}

#[derive(Debug)]
struct State<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    closed: bool,
}

/// One waiting item with what orders it.
#[derive(Debug)]
struct Entry<T> {
    priority: u8,
    seq: u64,
    enqueued: Instant,
    item: T,
}

/// An item taken from the queue, with when it was pushed.
#[derive(Debug)]
pub struct Queued<T> {
    /// The item.
    pub item: T,
    /// When it entered the queue.
    pub enqueued: Instant,
}

/// Why an item could not be pushed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The queue is at capacity.
    Full(T),
    /// The queue was closed.
    Closed(T),
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// The max-heap's top is the highest priority, then the lowest sequence.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority.cmp(&other.priority).then_with(|| other.seq.cmp(&self.seq))
    }
}

impl<T> DeliveryQueue<T> {
    /// An empty queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> DeliveryQueue<T> {
        DeliveryQueue {
            state: Mutex::new(State { heap: BinaryHeap::new(), next_seq: 0, closed: false }),
            capacity: capacity.max(1),
            pushed: Notify::new(),
            popped: Notify::new(),
        }
    }

    /// Push `item` of class `priority` (higher is more urgent) if there is room now.
    pub fn try_push(&self, priority: u8, item: T) -> Result<(), PushError<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed(item));
        }
        if state.heap.len() >= self.capacity {
            return Err(PushError::Full(item));
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.heap.push(Entry { priority, seq, enqueued: Instant::now(), item });
        drop(state);
        self.pushed.notify_one();
        Ok(())
    }

    /// Push `item`, waiting while the queue is full. Fails only once closed.
    pub async fn push(&self, priority: u8, mut item: T) -> Result<(), T> {
        loop {
            let room = self.popped.notified();
            match self.try_push(priority, item) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed(back)) => return Err(back),
                Err(PushError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Take the most urgent item, waiting while the queue is empty; `None`
    /// once it is closed and drained.
    pub async fn pop(&self) -> Option<Queued<T>> {
        loop {
            let arrival = self.pushed.notified();
            match self.try_pop() {
                Ok(queued) => return queued,
                Err(()) => arrival.await,
            }
        }
    }

    /// The most urgent item now; `Ok(None)` once closed and drained,
    /// `Err(())` while open and empty.
    fn try_pop(&self) -> Result<Option<Queued<T>>, ()> {
        let mut state = self.lock();
        match state.heap.pop() {
            Some(Entry { item, enqueued, .. }) => {
                drop(state);
                self.popped.notify_one();
                Ok(Some(Queued { item, enqueued }))
            }
            None if state.closed => Ok(None),
            None => Err(()),
        }
    }

    /// Refuse further pushes; what is queued can still be popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.pushed.notify_waiters();
        self.pushed.notify_one();
        self.popped.notify_waiters();
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn pops_by_class_then_age() {
        let queue = DeliveryQueue::new(10);
        for (priority, item) in [(0, "a"), (5, "b"), (0, "c"), (9, "d"), (5, "e")] {
            queue.try_push(priority, item).unwrap();
        }
        queue.close();
        let mut order = Vec::new();
        while let Some(queued) = queue.pop().await {
            order.push(queued.item);
        }
        assert_eq!(order, ["d", "b", "e", "a", "c"]);
    }

    #[tokio::test]
    async fn full_queue_refuses_now_and_makes_push_wait_for_room() {
        let queue = Arc::new(DeliveryQueue::new(2));
        queue.try_push(0, 1).unwrap();
        queue.try_push(0, 2).unwrap();
        assert_eq!(queue.try_push(0, 3), Err(PushError::Full(3)));
        let pusher = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(7, 3).await }
        });
        // The pusher cannot finish until a pop makes room.
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished());
        assert_eq!(queue.pop().await.unwrap().item, 1);
        pusher.await.unwrap().unwrap();
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop().await.unwrap().item, 3, "the urgent late item goes first");
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_and_ends_after_close_and_drain() {
        let queue = Arc::new(DeliveryQueue::new(4));
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut seen = Vec::new();
                while let Some(queued) = queue.pop().await {
                    seen.push(queued.item);
                }
                seen
            }
        });
        queue.push(0, "x").await.unwrap();
        queue.push(0, "y").await.unwrap();
        queue.close();
        assert_eq!(queue.try_push(0, "z"), Err(PushError::Closed("z")));
        assert_eq!(consumer.await.unwrap(), ["x", "y"]);
    }

    #[tokio::test]
    async fn close_releases_a_waiting_pusher() {
        let queue = Arc::new(DeliveryQueue::new(1));
        queue.try_push(0, 1).unwrap();
        let pusher = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(0, 2).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(pusher.await.unwrap(), Err(2));
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_when_each_item_was_pushed() {
        let queue = DeliveryQueue::new(4);
        let start = Instant::now();
        queue.try_push(0, "old").unwrap();
        tokio::time::advance(std::time::Duration::from_millis(250)).await;
        queue.try_push(0, "new").unwrap();
        assert_eq!(queue.pop().await.unwrap().enqueued, start);
        let second = queue.pop().await.unwrap();
        assert_eq!(second.enqueued - start, std::time::Duration::from_millis(250));
    }
}
