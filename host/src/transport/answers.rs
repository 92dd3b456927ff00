//! Answers matched by id: for transports whose peer answers each message in any order with a JSON
//! object carrying the id it was sent with (`subprocess`, `websocket` envelopes).
//!
//! The answer format: `{"id": 7}` (taken, no reply), `{"id": 7, "payload": "…", "topic": "…",
//! "headers": [["k", "v"]]}` (a reply; topic and headers optional; `payload_base64` for bytes: one
//! that does not decode is a refused reply to a message taken all the same), or
//! `{"id": 7, "error": "…", "retryable": true}` (not taken; `retryable` false or absent: final).

use super::AttemptResult;
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use tokio::sync::oneshot;

/// A peer's answer to one message.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Answer {
    /// The id the message was sent with.
    pub(super) id: u64,
    payload: Option<String>,
    payload_base64: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    error: Option<String>,
    #[serde(default)]
    retryable: bool,
}

impl Answer {
    /// What the attempt that sent `message` gives: its reply, or how it failed.
    pub(super) fn into_result(self, message: &Message) -> AttemptResult {
        if let Some(error) = self.error {
            return Err(match self.retryable {
                true => (Outcome::Retryable(RetryReason::Plugin), error),
                false => (Outcome::Fatal(FatalReason::Rejected), error),
            });
        }
        let payload = match (self.payload, self.payload_base64) {
            (Some(text), _) => text.into_bytes(),
            (None, Some(encoded)) => {
                // An answer with no error took the message: only its reply is refused.
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|err| (Outcome::ReplyRefused, format!("an answer's payload_base64: {err}")))?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Message {
            id: message.id,
            topic: self.topic.unwrap_or_else(|| message.topic.clone()),
            headers: self.headers,
            payload: payload.into(),
            priority: message.priority,
        }))
    }
}

/// The messages sent on one connection or process and not answered yet, by the id each was sent with.
#[derive(Debug)]
pub(super) struct Pending {
    /// `None` once the peer is gone: nobody waits any more.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>,
    /// False once the peer is going: no one new waits, those waiting may still get their answers.
    taking: AtomicBool,
    next_id: AtomicU64,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            waiting: Mutex::new(Some(HashMap::new())),
            taking: AtomicBool::new(true),
            next_id: AtomicU64::new(1),
        }
    }
}

/// One message waiting for its answer; dropping it (answered, or its attempt given up) forgets it.
pub(super) struct Waiting<'a> {
    pending: &'a Pending,
    /// The id the message goes out with.
    pub(super) id: u64,
    answer: oneshot::Receiver<Answer>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Answer>>>> {
        self.waiting.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// A new id to send a message with, and its answer to await; `None` once the peer is going.
    pub(super) fn wait(&self) -> Option<Waiting<'_>> {
        if !self.taking.load(Relaxed) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let (sender, answer) = oneshot::channel();
        self.lock().as_mut()?.insert(id, sender);
        Some(Waiting { pending: self, id, answer })
    }

    /// Hand `answer` to whoever waits for its id; `false` when nobody does.
    pub(super) fn answer(&self, answer: Answer) -> bool {
        let waiting = self.lock().as_mut().and_then(|waiting| waiting.remove(&answer.id));
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
}

impl Waiting<'_> {
    /// The answer; `None` when the peer went first.
    pub(super) async fn answer(&mut self) -> Option<Answer> {
        (&mut self.answer).await.ok()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.pending.lock().as_mut() {
            waiting.remove(&self.id);
        }
    }
}
