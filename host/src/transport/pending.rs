//! Messages sent and not answered yet, matched to their answers by the id each went out with: for
//! transports whose peer answers in any order (`subprocess` and `websocket` envelopes, `nats`
//! requests). An attempt that ends, answered or cut by its deadline, forgets its own message, so a
//! peer that never answers holds nothing: an answer that comes after its attempt is dropped. A
//! peer that answers nothing at all in time is taken for stuck and retired ([`Awaited`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The messages sent on one connection or process and not answered yet, by the id each was sent with.
#[derive(Debug)]
pub(super) struct Pending<A> {
    /// `None` once the peer is gone: nobody waits any more.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<A>>>>,
    /// False once the peer is going: no one new waits, those waiting may still get their answers.
    taking: AtomicBool,
    next_id: AtomicU64,
    /// How many answers came, whoever waited for them.
    answers: AtomicU64,
}

impl<A> Default for Pending<A> {
    fn default() -> Pending<A> {
        Pending {
            waiting: Mutex::new(Some(HashMap::new())),
            taking: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
            answers: AtomicU64::new(0),
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

    /// A new id to send a message with, and its answer to await, the peer retired when it is stuck
    /// (see [`Awaited`]): `ended` is cancelled once it takes no new message and none waits, and
    /// until `young_until`, a peer that never answered yet is not taken for stuck. `None` once the
    /// peer is going.
    pub(super) fn await_answer<'a>(
        &'a self,
        ended: &'a CancellationToken,
        young_until: Option<Instant>,
    ) -> Option<Awaited<'a, A>> {
        let answers_before = self.answers.load(SeqCst);
        let waiting = Some(self.wait()?);
        Some(Awaited { pending: self, ended, waiting, answers_before, young_until, awaiting: false })
    }

    /// Hand `answer` to whoever waits for `id`; `false` when nobody does.
    pub(super) fn answer(&self, id: u64, answer: A) -> bool {
        self.answers.fetch_add(1, SeqCst);
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

/// A message of a peer, from the id it goes out with to the end of its wait for its answer. Its
/// attempt cut at its deadline as it waited, the peer having answered nothing at all since the
/// message took its id (before it went out), the peer is taken for stuck — its handler answers nothing, though it may
/// still read what it is sent or answer pings — and retired: it takes no new message (the next
/// attempt starts another peer), and, as any peer that stopped taking messages, is ended once none
/// it holds waits. Answers come in any order, so one slow message while others are answered
/// retires nothing.
pub(super) struct Awaited<'a, A> {
    pending: &'a Pending<A>,
    /// Cancelled once the peer takes no new message and none waits: whoever runs it ends it then.
    ended: &'a CancellationToken,
    /// Taken as it is dropped, before the peer's messages are counted.
    waiting: Option<Waiting<'a, A>>,
    /// The answers the peer had given when the message took its id.
    answers_before: u64,
    /// Until then, a peer that never answered yet is not taken for stuck (a process slow to start).
    young_until: Option<Instant>,
    /// Whether the message went out and its answer is awaited.
    awaiting: bool,
}

impl<A> Awaited<'_, A> {
    /// The id the message goes out with.
    pub(super) fn id(&self) -> u64 {
        self.waiting.as_ref().expect("taken only as it is dropped").id
    }

    /// The answer to the message, once it went out; `None` when the peer went first.
    pub(super) async fn answer(mut self) -> Option<A> {
        self.awaiting = true;
        let answer = self.waiting.as_mut().expect("taken only as it is dropped").answer().await;
        self.awaiting = false;
        answer
    }
}

impl<A> Drop for Awaited<'_, A> {
    fn drop(&mut self) {
        drop(self.waiting.take());
        let Awaited { pending, ended, .. } = *self;
        let answers = pending.answers.load(SeqCst);
        let young = answers == 0 && self.young_until.is_some_and(|until| Instant::now() < until);
        if self.awaiting && answers == self.answers_before && !young {
            pending.stop_taking();
        }
        if pending.is_closed() && pending.count() == 0 {
            ended.cancel();
        }
    }
}
