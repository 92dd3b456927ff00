//! The bounded priority queue in front of a network destination: the most
//! urgent priority class first, the oldest first within a class, and every
//! entry out by its deadline.
//!
//! Pushing waits while the queue is full, which is how a slow destination
//! pushes back on the pipeline and, through it, on senders. Two consumers
//! take from it: the destination's dispatcher takes the most urgent of what
//! it can send now, a stream's items in the order they came whatever their class
//! ([`pop_first`](DeliveryQueue::pop_first)), and an expirer takes what waited past the queue's
//! timeout as soon as it passes ([`expired`](DeliveryQueue::expired)), not
//! only when the dispatcher gets to it. Closing lets both drain what is left.
//!
//! A reload that rebuilds the destination [`hand_over`](DeliveryQueue::hand_over)s
//! the queue to the new instance's: what waits moves there with its class and
//! its enqueue time, later pushes follow it, and both consumers of the old one end.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A bounded priority queue of `T`.
#[derive(Debug)]
pub struct DeliveryQueue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Signalled (one waiter: the dispatcher) when an entry is pushed or the queue closes.
    pushed: Notify,
    /// Signalled when an entry is popped or the queue closes.
    popped: Notify,
    /// Signalled (every waiter) when an entry is pushed or the queue closes:
    /// the expirer and [`closed`](DeliveryQueue::closed) wait on it.
    changed: Notify,
}

#[derive(Debug)]
struct State<T> {
    /// One first-in first-out line per priority class; no empty lines.
    classes: BTreeMap<u8, VecDeque<Entry<T>>>,
    len: usize,
    closed: bool,
    /// The queue this one was handed over to: pushes go there.
    successor: Option<Arc<DeliveryQueue<T>>>,
    /// Hand-overs whose older deliveries have not all ended: nothing is popped
    /// (but entries still expire) while any is; once the queue is closed, what
    /// belongs to no stream is, and drained, it ends its consumers.
    held: usize,
    /// Items pushed so far, into this queue and those handed over to it: the next one's
    /// [`seq`](Queued::seq).
    pushes: u64,
}

impl<T> State<T> {
    /// Put `entry` in line in class `priority` by when it was first pushed: lines stay oldest
    /// first, which the expirer relies on.
    fn insert(&mut self, priority: u8, entry: Entry<T>) {
        let line = self.classes.entry(priority).or_default();
        let at = line.partition_point(|queued| queued.arrival() <= entry.arrival());
        line.insert(at, entry);
        self.len += 1;
    }

    /// Where the item to take instead of the one at `at` in class `class` waits: the oldest item
    /// of its stream (by `stream_of`), which an earlier push of a less urgent class may be, or
    /// that very item. More urgent classes and the item's own line before it hold none of its
    /// stream older: a look refuses a stream's later items once it refused one.
    fn oldest_of_its_stream(
        &self,
        class: u8,
        at: usize,
        stream_of: impl Fn(&T) -> Option<&str>,
    ) -> (u8, usize) {
        let chosen = &self.classes[&class][at];
        let Some(stream) = stream_of(&chosen.item) else { return (class, at) };
        let mut oldest = (chosen.arrival(), class, at);
        for (&lower, line) in self.classes.range(..class) {
            let before = oldest.0;
            let mut older = line.iter().take_while(|entry| entry.arrival() < before);
            if let Some(at) = older.position(|entry| stream_of(&entry.item) == Some(stream)) {
                oldest = (line[at].arrival(), lower, at);
            }
        }
        (oldest.1, oldest.2)
    }
}

/// What one queue did with a push, without following a hand-over.
enum Pushed<T> {
    Done,
    Full(T),
    Closed(T),
    /// Handed over: the item is for this successor.
    Moved(T, Arc<DeliveryQueue<T>>),
}

/// One waiting item with when it came.
#[derive(Debug)]
struct Entry<T> {
    enqueued: Instant,
    /// See [`Queued::seq`].
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    /// Where it came in the order items reached the queue: by enqueue time, and among items of
    /// one enqueue time (a paused or coarse clock gives several the same) by push.
    fn arrival(&self) -> (Instant, u64) {
        (self.enqueued, self.seq)
    }
}

/// An item taken from the queue, with when it was pushed.
#[derive(Debug)]
pub struct Queued<T> {
    /// The item.
    pub item: T,
    /// When it entered the queue.
    pub enqueued: Instant,
    /// Its number in the order items were pushed, into the queue and those it took over: it
    /// orders items of one `enqueued` instant, as [`adopt`](DeliveryQueue::adopt) keeps it.
    pub seq: u64,
}

/// Why an item could not be pushed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The queue is at capacity.
    Full(T),
    /// The queue was closed.
    Closed(T),
}

impl<T> DeliveryQueue<T> {
    /// An empty queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> DeliveryQueue<T> {
        DeliveryQueue {
            state: Mutex::new(State {
                classes: BTreeMap::new(),
                len: 0,
                closed: false,
                successor: None,
                held: 0,
                pushes: 0,
            }),
            capacity: capacity.max(1),
            pushed: Notify::new(),
            popped: Notify::new(),
            changed: Notify::new(),
        }
    }

    /// Push `item` of class `priority` (higher is more urgent) if there is room now; into the
    /// queue this one was handed over to, if it was.
    pub fn try_push(&self, priority: u8, item: T) -> Result<(), PushError<T>> {
        match self.push_here(priority, item) {
            Pushed::Done => Ok(()),
            Pushed::Full(item) => Err(PushError::Full(item)),
            Pushed::Closed(item) => Err(PushError::Closed(item)),
            Pushed::Moved(item, successor) => successor.try_push(priority, item),
        }
    }

    /// Push `item` into this very queue if there is room now.
    fn push_here(&self, priority: u8, item: T) -> Pushed<T> {
        let mut state = self.lock();
        if let Some(successor) = &state.successor {
            return Pushed::Moved(item, successor.clone());
        }
        if state.closed {
            return Pushed::Closed(item);
        }
        if state.len >= self.capacity {
            return Pushed::Full(item);
        }
        let entry = Entry { enqueued: Instant::now(), seq: state.pushes, item };
        state.pushes += 1;
        state.classes.entry(priority).or_default().push_back(entry);
        state.len += 1;
        drop(state);
        self.pushed.notify_one();
        self.changed.notify_waiters();
        Pushed::Done
    }

    /// Push `item`, waiting while the queue is full until `stop` is cancelled. It comes back
    /// `Closed` once the queue is closed, `Full` if `stop` came first. A queue handed over
    /// meanwhile sends it on, and the wait for room goes on there.
    pub async fn push(
        &self,
        priority: u8,
        mut item: T,
        stop: &CancellationToken,
    ) -> Result<(), PushError<T>> {
        loop {
            let room = self.popped.notified();
            tokio::pin!(room);
            // Most pushes find room at the first look. A full queue is looked at again once this
            // push waits for a pop (`enable`), so a pop between the look and the wait is not missed:
            // an unpolled `notified()` does not wait yet, and two pops in that gap woke one of two
            // pushers (`notify_one` keeps one wake-up for nobody).
            for look_again in [false, true] {
                if look_again {
                    room.as_mut().enable();
                }
                item = match self.push_here(priority, item) {
                    Pushed::Full(back) => back,
                    Pushed::Done => return Ok(()),
                    Pushed::Closed(back) => return Err(PushError::Closed(back)),
                    // Handed over meanwhile: the wait for room goes on there.
                    Pushed::Moved(back, successor) => {
                        return Box::pin(successor.push(priority, back, stop)).await;
                    }
                };
            }
            tokio::select! {
                () = room => {}
                () = stop.cancelled() => return Err(PushError::Full(item)),
            }
        }
    }

    /// Resolves once an entry leaves the queue pushes go to now (this one, or the one it was
    /// handed over to), or that queue closes: a push that found it full with
    /// [`try_push`](Self::try_push) may try again. For a pusher that must hold nothing while it
    /// waits (what [`push`](Self::push) holds is the item).
    pub async fn room(&self) {
        let popped = self.popped.notified();
        tokio::pin!(popped);
        // Told of pops from here on, then looked at: room made, or a close, since the push that
        // found the queue full is not missed (a close wakes only those already told).
        popped.as_mut().enable();
        let (successor, room) = {
            let state = self.lock();
            (state.successor.clone(), state.closed || state.len < self.capacity)
        };
        match successor {
            Some(successor) => Box::pin(successor.room()).await,
            None if room => {}
            None => popped.await,
        }
    }

    /// Put `queued` of class `priority`, taken from this queue (or one it took over), back in
    /// line where it came (by its `enqueued` time and `seq`), room or not (it was admitted
    /// once): its delivery on a replaced destination reached no endpoint. Into the queue this
    /// one was handed over to, if it was; `Closed` if it is closed.
    pub fn adopt(&self, priority: u8, queued: Queued<T>) -> Result<(), PushError<T>> {
        let mut state = self.lock();
        if let Some(successor) = state.successor.clone() {
            drop(state);
            return successor.adopt(priority, queued);
        }
        let Queued { item, enqueued, seq } = queued;
        if state.closed {
            return Err(PushError::Closed(item));
        }
        state.insert(priority, Entry { enqueued, seq, item });
        drop(state);
        self.pushed.notify_one();
        self.changed.notify_waiters();
        Ok(())
    }

    /// Hand this queue over to `to` (a new instance of its destination, not closed): what waits
    /// moves there, each in its class by when it was pushed (its deadline stays), room or not;
    /// later pushes go there, numbered after this queue's; this queue is closed and, empty, ends
    /// its consumers.
    pub fn hand_over(&self, to: &Arc<DeliveryQueue<T>>) {
        let mut state = self.lock();
        let classes = std::mem::take(&mut state.classes);
        state.len = 0;
        state.closed = true;
        state.successor = Some(to.clone());
        // Both locks, predecessor first: no push into `to` through this queue overtakes what moves.
        let mut next = to.lock();
        next.pushes = next.pushes.max(state.pushes);
        for (priority, line) in classes {
            line.into_iter().for_each(|entry| next.insert(priority, entry));
        }
        drop((next, state));
        to.pushed.notify_one();
        to.changed.notify_waiters();
        self.pushed.notify_waiters();
        self.pushed.notify_one();
        self.popped.notify_waiters();
        self.changed.notify_waiters();
    }

    /// The queue this one was handed over to, if it was.
    pub fn successor(&self) -> Option<Arc<DeliveryQueue<T>>> {
        self.lock().successor.clone()
    }

    /// Pop nothing until a matching [`release`](DeliveryQueue::release); once the queue is closed,
    /// only its items of a stream wait for that.
    pub fn hold(&self) {
        self.lock().held += 1;
    }

    /// Whether a [`hold`](DeliveryQueue::hold) is on.
    pub fn is_held(&self) -> bool {
        self.lock().held > 0
    }

    /// End one [`hold`](DeliveryQueue::hold).
    pub fn release(&self) {
        let mut state = self.lock();
        state.held = state.held.saturating_sub(1);
        drop(state);
        self.pushed.notify_one();
    }

    /// Take the most urgent item, waiting while the queue is empty; `None`
    /// once it is closed and drained.
    pub async fn pop(&self) -> Option<Queued<T>> {
        let popped = self.pop_first(|| |_: &T| Some(()), |_| None, None).await;
        popped.map(|(queued, ())| queued)
    }

    /// Take the most urgent item that a look accepts, with what it made of it, waiting while there
    /// is none; `None` once the queue is closed and drained. Each time the queue is looked through,
    /// `look` makes what judges its items, most urgent first, under the queue's lock; it refuses
    /// those that cannot go yet (a stream's messages while one of it is in flight), which keep
    /// their place, and expire, in line, and once it refused an item of a stream it refuses the
    /// stream's later ones. An accepted item of a stream (as `stream_of` names it) leaves in the
    /// order its stream's items came: the stream's oldest item, which may wait in a less urgent
    /// class, goes in its place. `retake` is signalled (to every waiter) when a look may accept an
    /// item one refused.
    pub async fn pop_first<U, F: FnMut(&T) -> Option<U>>(
        &self,
        mut look: impl FnMut() -> F,
        stream_of: impl Fn(&T) -> Option<&str>,
        retake: Option<&Notify>,
    ) -> Option<(Queued<T>, U)> {
        let never = Notify::new();
        loop {
            let arrival = self.pushed.notified();
            let retaken = retake.unwrap_or(&never).notified();
            tokio::pin!(retaken);
            retaken.as_mut().enable();
            match self.try_pop_first(look(), &stream_of) {
                Ok(popped) => return popped,
                Err(()) => tokio::select! {
                    () = arrival => {}
                    () = retaken => {}
                },
            }
        }
    }

    /// The most urgent item `take` accepts now, or its stream's oldest in its place; `Ok(None)`
    /// once closed and drained, `Err(())` while open and empty, or while `take` accepts none. It
    /// looks past the refused items, a set lookup or two each for the dispatcher's `take`.
    fn try_pop_first<U>(
        &self,
        mut take: impl FnMut(&T) -> Option<U>,
        stream_of: &impl Fn(&T) -> Option<&str>,
    ) -> Result<Option<(Queued<T>, U)>, ()> {
        let mut state = self.lock();
        if state.classes.is_empty() {
            return if state.closed { Ok(None) } else { Err(()) };
        }
        // A held queue lets nothing out; closed, it drains what belongs to no stream, but a
        // stream's items must not go beside what its predecessor still sends.
        let held = state.held > 0;
        if held && !state.closed {
            return Err(());
        }
        let found = state.classes.iter().rev().find_map(|(&class, line)| {
            let mut entries =
                line.iter().enumerate().filter(|(_, entry)| !held || stream_of(&entry.item).is_none());
            entries.find_map(|(at, entry)| take(&entry.item).map(|taken| (class, at, taken)))
        });
        let Some((class, at, taken)) = found else { return Err(()) };
        let (class, at) = state.oldest_of_its_stream(class, at, stream_of);
        let line = state.classes.get_mut(&class).expect("the accepted item's line");
        let entry = line.remove(at).expect("the accepted item");
        if line.is_empty() {
            state.classes.remove(&class);
        }
        Ok(Some((self.took(state, entry), taken)))
    }

    /// Take the oldest item once it has waited `timeout`, waiting for that;
    /// `None` once the queue is closed and drained. Each line is oldest
    /// first, so this sleeps until the oldest's deadline, or a push (an item
    /// put back by [`adopt`](DeliveryQueue::adopt) may be older) or the close,
    /// and looks again.
    pub async fn expired(&self, timeout: Duration) -> Option<Queued<T>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let mut state = self.lock();
                let oldest = state.classes.iter().map(|(class, line)| (line[0].enqueued, *class)).min();
                match oldest {
                    Some((enqueued, class)) if enqueued + timeout <= Instant::now() => {
                        let line = state.classes.get_mut(&class).expect("the oldest's line");
                        let entry = line.pop_front().expect("no empty lines");
                        if line.is_empty() {
                            state.classes.remove(&class);
                        }
                        return Some(self.took(state, entry));
                    }
                    Some((enqueued, _)) => Some(enqueued + timeout),
                    None if state.closed => return None,
                    None => None,
                }
            };
            match deadline {
                Some(deadline) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    // Closed: what is left may drain before its deadline.
                    () = changed => {}
                },
                None => changed.await,
            }
        }
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().closed {
                return;
            }
            changed.await;
        }
    }

    /// Counts `entry` out of the queue and tells a waiting pusher; once the
    /// queue is closed, also the expirer, which ends when it is drained.
    fn took(&self, mut state: std::sync::MutexGuard<'_, State<T>>, entry: Entry<T>) -> Queued<T> {
        state.len -= 1;
        let closed = state.closed;
        drop(state);
        self.popped.notify_one();
        if closed {
            self.changed.notify_waiters();
        }
        Queued { item: entry.item, enqueued: entry.enqueued, seq: entry.seq }
    }

    /// Refuse further pushes; what is queued can still be popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.pushed.notify_waiters();
        self.pushed.notify_one();
        self.popped.notify_waiters();
        self.changed.notify_waiters();
    }

    /// [`close`](Self::close) the queue and take what waits in it: for a queue whose consumers
    /// are gone for good (its runtime shut down), whose items nothing else would ever take.
    pub fn close_and_empty(&self) -> Vec<T> {
        let taken = {
            let mut state = self.lock();
            state.len = 0;
            std::mem::take(&mut state.classes)
        };
        self.close();
        taken.into_values().flatten().map(|entry| entry.item).collect()
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.lock().len
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
    use std::time::Duration;

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

    #[tokio::test(start_paused = true)]
    async fn a_stream_s_oldest_item_goes_in_place_of_a_more_urgent_later_one() {
        // Also when they are pushed at one instant (a paused or coarse clock): the stream's oldest
        // was looked for only among items pushed strictly earlier, so a2 went before a1.
        for apart in [Duration::from_millis(1), Duration::ZERO] {
            let queue = DeliveryQueue::new(8);
            for (priority, item) in [(0, "a1"), (0, "b1"), (5, "c1"), (9, "a2"), (9, "a3")] {
                queue.try_push(priority, item).unwrap();
                tokio::time::advance(apart).await;
            }
            queue.close();
            let mut order = Vec::new();
            // The stream is an item's first letter.
            let pop = || queue.pop_first(|| |_: &_| Some(()), |item| item.get(..1), None);
            while let Some((queued, ())) = pop().await {
                order.push(queued.item);
            }
            let expected = ["a1", "a2", "a3", "c1", "b1"];
            assert_eq!(order, expected, "{apart:?} apart: stream a in its order, at a2's urgency");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_put_back_goes_before_those_pushed_after_it_at_the_same_instant() {
        // a1 is under way when the queue is handed over; a2, pushed after it at the same enqueue
        // time, waits. a1 put back went in line after a2 (ties went last), so a2 left first.
        let (old, new) = (DeliveryQueue::new(4), Arc::new(DeliveryQueue::new(4)));
        old.try_push(0, "a1").unwrap();
        let under_way = old.pop().await.unwrap();
        old.try_push(0, "a2").unwrap();
        old.hand_over(&new);
        new.try_push(0, "a3").unwrap();
        old.adopt(0, under_way).unwrap();
        new.close();
        let mut order = Vec::new();
        while let Some(queued) = new.pop().await {
            order.push(queued.item);
        }
        assert_eq!(order, ["a1", "a2", "a3"]);
    }

    #[tokio::test]
    async fn full_queue_refuses_now_and_makes_push_wait_for_room() {
        let queue = Arc::new(DeliveryQueue::new(2));
        queue.try_push(0, 1).unwrap();
        queue.try_push(0, 2).unwrap();
        assert_eq!(queue.try_push(0, 3), Err(PushError::Full(3)));
        let pusher = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(7, 3, &CancellationToken::new()).await }
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
        let stop = CancellationToken::new();
        queue.push(0, "x", &stop).await.unwrap();
        queue.push(0, "y", &stop).await.unwrap();
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
            async move { queue.push(0, 2, &CancellationToken::new()).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        assert_eq!(pusher.await.unwrap(), Err(PushError::Closed(2)));
    }

    #[tokio::test]
    async fn a_stop_releases_a_pusher_waiting_for_room_with_its_item() {
        let queue = Arc::new(DeliveryQueue::new(1));
        queue.try_push(0, 1).unwrap();
        let stop = CancellationToken::new();
        let pusher = tokio::spawn({
            let (queue, stop) = (queue.clone(), stop.clone());
            async move { queue.push(0, 2, &stop).await }
        });
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished());
        stop.cancel();
        assert_eq!(pusher.await.unwrap(), Err(PushError::Full(2)));
        assert_eq!(queue.len(), 1, "the stopped item was not queued");
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

    #[tokio::test(start_paused = true)]
    async fn an_item_expires_when_its_timeout_passes_not_when_it_is_popped() {
        let queue = Arc::new(DeliveryQueue::new(4));
        let start = Instant::now();
        queue.try_push(0, "old").unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        queue.try_push(9, "urgent but young").unwrap();
        let expirer = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut out = Vec::new();
                while let Some(queued) = queue.expired(Duration::from_millis(1000)).await {
                    out.push((queued.item, Instant::now() - start));
                }
                out
            }
        });
        tokio::time::advance(Duration::from_millis(699)).await;
        tokio::task::yield_now().await;
        assert_eq!(queue.len(), 2, "nothing expires early");
        tokio::time::advance(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(queue.len(), 1, "the oldest expired on time, while nobody popped");
        queue.close();
        let expired = expirer.await.unwrap();
        let expected =
            [("old", Duration::from_millis(1000)), ("urgent but young", Duration::from_millis(1300))];
        assert_eq!(expired, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_over_queue_moves_what_waits_with_its_class_and_age_and_sends_pushes_on() {
        let (old, new) = (DeliveryQueue::new(4), Arc::new(DeliveryQueue::new(8)));
        let start = Instant::now();
        old.try_push(0, "a").unwrap();
        old.try_push(5, "b").unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        old.try_push(0, "c").unwrap();
        old.hand_over(&new);
        assert_eq!((old.len(), new.len()), (0, 3));
        assert!(old.pop().await.is_none(), "the old queue's consumers end");
        old.push(9, "late", &CancellationToken::new()).await.unwrap();
        assert_eq!(new.pop().await.unwrap().item, "late");
        let b = new.pop().await.unwrap();
        assert_eq!((b.item, b.enqueued), ("b", start), "its deadline stays");
        assert_eq!(new.pop().await.unwrap().item, "a");
        assert_eq!(new.pop().await.unwrap().item, "c");
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_item_goes_back_in_line_by_its_age_and_a_hold_keeps_everything_in() {
        let (old, new) = (DeliveryQueue::new(4), Arc::new(DeliveryQueue::new(1)));
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        old.try_push(0, "second").unwrap();
        new.hold();
        old.hand_over(&new);
        old.adopt(0, Queued { item: "first", enqueued: start, seq: 0 }).unwrap();
        assert_eq!(new.len(), 2, "room or not");
        let popper = tokio::spawn({
            let new = new.clone();
            async move { new.pop().await.unwrap().item }
        });
        tokio::task::yield_now().await;
        assert!(!popper.is_finished(), "held");
        new.release();
        assert_eq!(popper.await.unwrap(), "first");
        assert_eq!(new.pop().await.unwrap().item, "second");
        new.close();
        let shut = Queued { item: "shut", enqueued: start, seq: 0 };
        assert_eq!(old.adopt(0, shut), Err(PushError::Closed("shut")));
    }

    #[tokio::test]
    async fn a_hold_keeps_a_closed_queue_s_stream_items_in_until_released_and_a_drained_one_ends_at_once() {
        let queue = Arc::new(DeliveryQueue::new(2));
        queue.try_push(9, "stream a").unwrap();
        queue.try_push(0, "no stream").unwrap();
        queue.hold();
        queue.close();
        let popper = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut popped = Vec::new();
                loop {
                    let next =
                        queue.pop_first(|| |_: &_| Some(()), |item| item.strip_prefix("stream "), None);
                    let Some((queued, ())) = next.await else { break };
                    popped.push(queued.item);
                }
                popped
            }
        });
        tokio::task::yield_now().await;
        assert!(!popper.is_finished(), "closed, and stream a held all the same");
        assert_eq!(queue.len(), 1, "what belongs to no stream drained");
        queue.release();
        assert_eq!(popper.await.unwrap(), ["no stream", "stream a"]);
        let drained = DeliveryQueue::<u8>::new(1);
        drained.hold();
        drained.close();
        assert!(drained.pop().await.is_none(), "nothing left to hold");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_resolves_only_once_the_queue_closes() {
        let queue = Arc::new(DeliveryQueue::<u8>::new(1));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.closed().await }
        });
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        queue.close();
        waiter.await.unwrap();
    }
}
