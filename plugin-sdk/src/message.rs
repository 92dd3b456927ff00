//! Messages: borrowed views into the host's batch, and owned ones a plugin builds.

use switchyard_wire::{Head, Payload, decode_host_batch, write_message};

use crate::Error;

/// One message as a plugin sees it, read in place from the batch buffer the
/// host passed in: no field is copied.
///
/// Fields: `id`, `priority`, `topic`, `payload` (`None` for filters and
/// balancers, which see heads only), `payload_len` (always known) and
/// `source` (the input index, set by the host). Headers through
/// [`header`](switchyard_wire::MessageRef::header) (ASCII case-insensitive) and
/// [`headers`](switchyard_wire::MessageRef::headers) (in order).
pub type Message<'a> = switchyard_wire::MessageRef<'a>;

/// Iterator over a message's headers, as `(name, value)` pairs in order.
pub use switchyard_wire::Headers;

/// An owned message: a rewritten request, a reply, a transport's answer.
///
/// Build it from a [`Message`] (`OwnedMessage::from(&message)`), as a reply
/// ([`OwnedMessage::reply_to`]) or from scratch ([`OwnedMessage::new`]), then
/// adjust it with the `with_*` methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedMessage {
    id: u64,
    priority: u8,
    topic: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl OwnedMessage {
    /// An empty message on `topic` (id 0: the host assigns one).
    pub fn new(topic: impl Into<String>) -> Self {
        Self { topic: topic.into(), ..Self::default() }
    }

    /// An empty reply to `request`: same id, topic and priority, no headers,
    /// no payload.
    pub fn reply_to(request: &Message<'_>) -> Self {
        Self { id: request.id, priority: request.priority, ..Self::new(request.topic) }
    }

    /// Replace the topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Set header `name`: the first header of that name (ASCII
    /// case-insensitive) takes the new name and value and later ones are
    /// removed; without one, the header is appended.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        match self.headers.iter().position(|(key, _)| key.eq_ignore_ascii_case(&name)) {
            Some(first) => {
                let mut index = 0;
                self.headers.retain(|(key, _)| {
                    index += 1;
                    index - 1 <= first || !key.eq_ignore_ascii_case(&name)
                });
                self.headers[first] = (name, value);
            }
            None => self.headers.push((name, value)),
        }
        self
    }

    /// Replace the payload.
    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Replace the priority class (higher is more urgent).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// The message id (0 until the host assigns one).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The priority class.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut matches = self.headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name));
        matches.next().map(|(_, value)| value.as_str())
    }

    /// All headers, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.headers.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Encode as a batch of one message.
    pub(crate) fn to_batch(&self) -> Vec<u8> {
        let mut batch = Vec::new();
        let head = Head { id: self.id, source: 0, priority: self.priority, topic: &self.topic };
        write_message(&mut batch, &head, self.headers(), Payload::Bytes(&self.payload));
        batch
    }
}

impl From<&Message<'_>> for OwnedMessage {
    /// Copy a borrowed message (a heads-only message gets an empty payload).
    fn from(message: &Message<'_>) -> Self {
        Self {
            id: message.id,
            priority: message.priority,
            topic: message.topic.to_owned(),
            headers: message.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            payload: message.payload.unwrap_or_default().to_vec(),
        }
    }
}

/// The one message of a single-message batch the host wrote (middleware,
/// balancer, transport).
pub(crate) fn single(batch: &[u8]) -> Result<Message<'_>, Error> {
    // SAFETY: the host wrote the batch.
    #[allow(unsafe_code)]
    let mut messages = unsafe { decode_host_batch(batch) };
    match messages.next() {
        Some(message) => Ok(message?),
        None => Err(Error::failed("expected one message, got an empty batch")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_header_replaces_first_match_and_drops_duplicates() {
        let mut message =
            OwnedMessage::new("t").with_header("a", "1").with_header("b", "2").with_header("x", "x");
        message.headers.push(("A".into(), "3".into()));
        let message = message.with_header("A", "9").with_header("c", "4");
        let headers: Vec<_> = message.headers().collect();
        assert_eq!(headers, [("A", "9"), ("b", "2"), ("x", "x"), ("c", "4")]);
        assert_eq!(message.header("a"), Some("9"));
    }

    #[test]
    fn owned_message_round_trips_through_a_batch() {
        let message = OwnedMessage::new("orders").with_header("k", "v").with_payload(b"{}".to_vec());
        let batch = message.to_batch();
        let decoded = single(&batch).unwrap();
        assert_eq!(OwnedMessage::from(&decoded), message);
    }

    #[test]
    fn empty_batch_is_a_failure_not_a_panic() {
        assert!(matches!(single(&[]), Err(Error::Failed(_))));
        assert!(matches!(single(&[1, 2, 3]), Err(Error::Failed(_))));
    }
}
