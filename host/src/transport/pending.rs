//! Messages sent and not answered yet, matched to their answers by the id each went out with: for
//! transports whose peer answers in any order (`subprocess` and `websocket` envelopes, `nats`
//! requests). An attempt that ends, answered or cut by its deadline, forgets its own message, so a
//! peer that never answers holds nothing: an answer that comes after its attempt is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use tokio::sync::oneshot;

/// The messages sent on one connection or process and not answered yet, by the id each was sent with.
#[derive(Debug)]
pub(super) struct Pending<A> {
    /// `None` once the peer is gone: nobody waits any more.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<A>>>>,
    /// False once the peer is going: no one new waits, those waiting may still get their answers.
    taking: AtomicBool,
    next_id: AtomicU64,
}

impl<A> Default for Pending<A> {
    fn default() -> Pending<A> {
        Pending {
            waiting: Mutex::new(Some(HashMap::new())),
            taking: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
        }
    }
}

/// One message waiting for its answer; dropping it (answered, or its attempt given up) forgets it.
pub(super) struct Waiting<'a, A> {
    pending: &'a Pending<A>,
    /// The id the message goes out with.
    pub(super) id: u64,
    answer: oneshot::Receiver<A>,
}

impl<A> Pending<A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<A>>>> {
        self.waiting.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// A new id to send a message with, and its answer to await; `None` once the peer is going.
    pub(super) fn wait(&self) -> Option<Waiting<'_, A>> {
        if !self.taking.load(Relaxed) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let (sender, answer) = oneshot::channel();
        self.lock().as_mut()?.insert(id, sender);
        Some(Waiting { pending: self, id, answer })
    }

    /// Hand `answer` to whoever waits for `id`; `false` when nobody does.
    pub(super) fn answer(&self, id: u64, answer: A) -> bool {
        let waiting = self.lock().as_mut().and_then(|waiting| waiting.remove(&id));
        waiting.is_some_and(|waiting| waiting.send(answer).is_ok())
    }

    /// The peer is going (a process exited, its last answers still to be read): no one new waits.
    pub(super) fn stop_taking(&self) {
        self.taking.store(false, Relaxed);
    }

    /// The peer is gone: everyone waiting learns it, and no one waits again.
    pub(super) fn close(&self) {
        self.stop_taking();
        self.lock().take();
    }

    /// Whether the peer is going or gone.
    pub(super) fn is_closed(&self) -> bool {
        !self.taking.load(Relaxed) || self.lock().is_none()
    }

    /// How many messages wait for their answers now.
    pub(super) fn count(&self) -> usize {
        self.lock().as_ref().map_or(0, HashMap::len)
    }
}

impl<A> Waiting<'_, A> {
    /// The answer; `None` when the peer went first.
    pub(super) async fn answer(&mut self) -> Option<A> {
        (&mut self.answer).await.ok()
    }
}

impl<A> Drop for Waiting<'_, A> {
    fn drop(&mut self) {
        if let Some(waiting) = self.pending.lock().as_mut() {
            waiting.remove(&self.id);
        }
    }
}
