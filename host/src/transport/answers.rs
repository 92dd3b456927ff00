//! Answers matched by id: for transports whose peer answers each message in any order with a JSON
//! object carrying the id it was sent with (`subprocess`, `websocket` envelopes).
//!
//! The answer format: `{"id": 7}` (taken, no reply), `{"id": 7, "payload": "…", "topic": "…",
//! "headers": [["k", "v"]]}` (a reply; topic and headers optional; `payload_base64` for bytes: one
//! that does not decode is a refused reply to a message taken all the same), or
//! `{"id": 7, "error": "…", "retryable": true}` (not taken; `retryable` false or absent: final).
//! An answer that cannot be read but names its id ([`answered_id`]) took its message all the same:
//! its reply is refused ([`Answer::malformed`]).

use super::AttemptResult;
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use base64::Engine;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
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
    /// Why the answer could not be read, for one made by [`Answer::malformed`].
    #[serde(skip)]
    malformed: Option<String>,
}

impl Answer {
    /// The answer to the message sent with `id` that could not be read, for `problem`: the peer
    /// answered, so it took the message; only its reply is refused.
    pub(super) fn malformed(id: u64, problem: String) -> Answer {
        Answer {
            id,
            payload: None,
            payload_base64: None,
            topic: None,
            headers: Vec::new(),
            error: None,
            retryable: false,
            malformed: Some(problem),
        }
    }

    /// What the attempt that sent `message` gives: its reply, or how it failed.
    pub(super) fn into_result(self, message: &Message) -> AttemptResult {
        if let Some(problem) = self.malformed {
            return Err((Outcome::ReplyRefused, problem));
        }
        if let Some(error) = self.error {
            let error = crate::bounded_text::error_text(&error);
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

/// The answer `text` holds; when it cannot be read (for `problem`, when given, or as JSON), the
/// refused reply to the message it names ([`Answer::malformed`]); `Err` with why when it names none.
pub(super) fn read_answer(text: &[u8], problem: Option<String>) -> Result<Answer, String> {
    let problem = match problem {
        Some(problem) => problem,
        None => match serde_json::from_slice(text) {
            Ok(answer) => return Ok(answer),
            Err(err) => format!("a malformed answer: {err}"),
        },
    };
    match answered_id(text) {
        Some(id) => Ok(Answer::malformed(id, problem)),
        None => {
            Err(format!("{problem}: {}", crate::bounded_text::one_line(&String::from_utf8_lossy(text), 200)))
        }
    }
}

/// The id an answer that cannot be read (not JSON, not UTF-8, a field of the wrong type, or only
/// the start of a line too long) says it answers: its object's `id`, when met before the text stops
/// making sense.
fn answered_id(text: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(text);
    let mut id = None;
    // Reading stops with an error at the first thing wrong, or past the id: either way, the id is
    // what it found.
    let _stopped = IdOf(&mut id).deserialize(&mut serde_json::Deserializer::from_str(&text));
    id
}

/// Reads an answer object's `id` into its place, and nothing after it.
struct IdOf<'a>(&'a mut Option<u64>);

impl<'de> DeserializeSeed<'de> for IdOf<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IdOf<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an answer object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "id" {
                *self.0 = Some(map.next_value()?);
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_cannot_be_read_names_its_id_when_met_before_what_is_wrong() {
        for (text, id) in [
            (&b"{\"id\": 7, \"payload\": \"\xff\"}"[..], Some(7)),
            (b"{\"payload\": \"\xff\", \"id\": 8}", Some(8)),
            (br#"{"topic": 3, "id": 9}"#, Some(9)),
            (br#"{"id": 10, "payload": "cut here"#, Some(10)),
            (br#"{"payload": "cut here"#, None),
            (br#"{"id": "11"}"#, None),
            (b"not json", None),
        ] {
            assert_eq!(answered_id(text), id, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn a_peers_error_text_is_kept_as_one_line_of_bounded_length() {
        let error = format!("bad\nWARN forged log line{}", "x".repeat(1 << 20));
        let answer: Answer = serde_json::from_value(serde_json::json!({"id": 1, "error": error})).unwrap();
        let Err((_, kept)) = answer.into_result(&Message::new("jobs", "one")) else { unreachable!() };
        assert!(kept.starts_with(r"bad\nWARN forged log line"), "{kept:.100}");
        assert!(!kept.contains('\n'), "{kept:.100}");
        assert!(kept.len() <= 1024 + "...".len(), "{} bytes", kept.len());
    }
}
