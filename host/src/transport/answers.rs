//! Answers carrying the id of the message they answer: for transports whose peer answers each
//! message in any order with a JSON object carrying the id it was sent with (`subprocess`,
//! `websocket` envelopes); [`Pending`](super::pending::Pending) hands each to its message's attempt.
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
