//! One dead letter as one line of the dead-letter file.

use super::reason::{REASON_CODE_HEADER, REASON_HEADER, ROUTE_HEADER};
use crate::message::{Message, MessageId};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::time::{SystemTime, UNIX_EPOCH};

/// A dead letter kept in the dead-letter file while its dead-letter
/// destination is down: the labelled message, and where it was going.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterRecord {
    /// The message id.
    pub id: String,
    /// The message's topic.
    pub topic: String,
    /// Its priority class.
    pub priority: u8,
    /// Its headers in order, the dead-letter labels (`x-sy-dead-letter`, …) included.
    pub headers: Vec<(String, String)>,
    /// Its payload, base64 (standard alphabet, padded).
    pub payload: String,
    /// The reason's stable code, e.g. `delivery-failed`.
    pub code: String,
    /// The reason in full.
    pub reason: String,
    /// The route the message was on, if any.
    pub route: Option<String>,
    /// The dead-letter destination it was meant for (the first of its chain).
    pub destination: String,
    /// When it was written, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A record that does not make a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Its payload is not base64.
    #[error("payload is not base64: {0}")]
    Payload(String),
    /// Its id is not a message id.
    #[error("id \"{0}\" is not a message id")]
    Id(String),
}

impl DeadLetterRecord {
    /// The record of `letter` (a message labelled by
    /// [`DeadLetterReason::label`](super::DeadLetterReason::label)), meant for
    /// dead-letter destination `destination`, written now.
    pub fn new(letter: &Message, destination: &str) -> DeadLetterRecord {
        let header = |name| letter.header(name).map(str::to_owned);
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
        DeadLetterRecord {
            id: letter.id.to_string(),
            topic: letter.topic.clone(),
            priority: letter.priority,
            headers: letter.headers.clone(),
            payload: BASE64.encode(&letter.payload),
            code: header(REASON_CODE_HEADER).unwrap_or_default(),
            reason: header(REASON_HEADER).unwrap_or_default(),
            route: header(ROUTE_HEADER),
            destination: destination.to_owned(),
            at_ms,
        }
    }

    /// The labelled message again, as it was when written.
    pub fn to_message(&self) -> Result<Message, RecordError> {
        let payload =
            BASE64.decode(&self.payload).map_err(|error| RecordError::Payload(error.to_string()))?;
        let id = self.id.parse::<MessageId>().map_err(|_| RecordError::Id(self.id.clone()))?;
        Ok(Message {
            id,
            topic: self.topic.clone(),
            headers: self.headers.clone(),
            payload: payload.into(),
            priority: self.priority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::DeadLetterReason;

    #[test]
    fn a_record_gives_back_the_labelled_message_byte_for_byte() {
        let mut message = Message::new("orders.eu", vec![0u8, 159, 146, 150, b'\n'])
            .with_header("tier", "gold\nsilver")
            .with_priority(7);
        message.id = 42;
        let letter = DeadLetterReason::NoRoute { topic: "orders.eu".into() }.label(message, Some("orders"));
        let record = DeadLetterRecord::new(&letter, "dead");
        assert_eq!((record.code.as_str(), record.route.as_deref()), ("no-route", Some("orders")));
        assert_eq!(record.reason, "no route matches topic \"orders.eu\"");
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains('\n'), "one record is one line: {line}");
        let read: DeadLetterRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(read, record);
        assert_eq!(read.to_message().unwrap(), letter);
    }

    #[test]
    fn a_record_with_a_bad_payload_or_id_says_which() {
        let record = DeadLetterRecord::new(&Message::new("t", "p"), "dead");
        let bad_payload = DeadLetterRecord { payload: "not base64!".into(), ..record.clone() };
        assert!(matches!(bad_payload.to_message(), Err(RecordError::Payload(_))));
        let bad_id = DeadLetterRecord { id: "x".into(), ..record };
        assert_eq!(bad_id.to_message(), Err(RecordError::Id("x".into())));
    }
}
