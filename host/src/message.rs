//! The unit of work: a message with a topic, ordered headers and a payload.

use bytes::Bytes;

/// A message's sequence number within one running [`Host`]: it correlates a
/// message inside the process and restarts with it. The id that is unique
/// across restarts and hosts is the [`ID_HEADER`] header.
///
/// [`Host`]: crate::Host
pub type MessageId = u64;

/// Header holding a message's globally unique id (a UUIDv7), set when the
/// message is accepted unless the embedding code set one; receivers use it
/// to recognise a message delivered twice. HTTP ingress never takes it (nor
/// any `x-sy-` header) from a client.
pub const ID_HEADER: &str = "x-sy-id";

/// Header carrying the sequence number, in its stream, of a message a JetStream ingress pulled.
pub const STREAM_SEQ_HEADER: &str = "x-sy-stream-seq";

/// The host's headers an ingress or admission gives a message as it takes it in: its id and, pulled
/// from a JetStream stream, its sequence number there. One of each is the host's, whoever set its
/// value, not one of the headers the sender gave, which the header limit counts ([`SendersHeaders`]).
const INTAKE_HEADERS: [&str; 2] = [ID_HEADER, STREAM_SEQ_HEADER];

/// Counts the headers a message's sender gave, and their bytes (names and values), as the header
/// limit and `host.max_message_bytes` do: all but one of each of [`INTAKE_HEADERS`]. A message taken
/// in with as many headers and bytes as the limits allow keeps within them once the host gave it its
/// own, and when a stage sends it on unchanged.
#[derive(Debug, Default)]
pub(crate) struct SendersHeaders {
    count: usize,
    bytes: usize,
    /// Which of [`INTAKE_HEADERS`] were seen (the first of each is the host's).
    intake: [bool; INTAKE_HEADERS.len()],
}

impl SendersHeaders {
    /// Count header `name: value`.
    pub(crate) fn add(&mut self, name: &str, value: &str) {
        if is_host_header(name)
            && let Some(at) = INTAKE_HEADERS.iter().position(|intake| name.eq_ignore_ascii_case(intake))
            && !self.intake[at]
        {
            self.intake[at] = true;
            return;
        }
        self.count += 1;
        self.bytes += name.len() + value.len();
    }

    /// The headers counted that the sender gave.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The bytes of the headers counted that the sender gave, names and values.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Header in which the http and nats transports give a message's topic (replacing one the message
/// carried).
pub const TOPIC_HEADER: &str = "x-sy-topic";

/// What the names of the host's own headers begin with (in any case): the id, a stream's
/// sequence number, a dead letter's reason. Ingresses do not take them from clients, and what a
/// plugin adds, changes or removes among them is undone.
pub const HOST_HEADER_PREFIX: &str = "x-sy-";

/// Whether `name` is one of the host's own headers ([`HOST_HEADER_PREFIX`]).
pub(crate) fn is_host_header(name: &str) -> bool {
    // Byte by byte, ASCII letters in either case: called for every header where plugins make messages.
    let lower = |b: u8| b | 0x20;
    match name.as_bytes() {
        [x, b'-', s, y, b'-', ..] => lower(*x) == b'x' && lower(*s) == b's' && lower(*y) == b'y',
        _ => false,
    }
}

thread_local! {
    /// The ordering of the ids a thread makes. `Uuid::now_v7` orders them process-wide through
    /// one mutex, taken for every message by every thread that admits messages.
    static ID_CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
}

/// `payload` as a JSON field of a message printed for people and tools: `("payload", text)`
/// when it is UTF-8, else `("payload_base64", its base64)`, so that no byte is lost.
pub fn payload_field(payload: &[u8]) -> (&'static str, serde_json::Value) {
    use base64::Engine;
    match std::str::from_utf8(payload) {
        Ok(text) => ("payload", text.into()),
        Err(_) => ("payload_base64", base64::engine::general_purpose::STANDARD.encode(payload).into()),
    }
}

/// What the JSON of a message holds besides the strings its [size](Message::size) counts (its
/// topic, its headers' names and values, its payload): field names, quotes and separators (six bytes
/// a header, at most 1024 headers), its priority, and an envelope's own fields (an ingress frame's
/// `ref`, at most 256 bytes, and `wait`; an answer's `id`), with room to spare for whitespace.
const JSON_ENVELOPE_BYTES: usize = 64 << 10;

/// The largest frame, or message of several frames, a WebSocket reads: the JSON of any message
/// within `max_message_bytes`, however its peer wrote it (a byte of a JSON string is at most six, as
/// `\u0001`; a character past ASCII escaped is at most three times its UTF-8; base64 makes four of
/// three), with [`JSON_ENVELOPE_BYTES`] around it. So a message the host would take is never refused
/// for its frame, and one past `max_message_bytes` in a frame within this is refused by its size.
pub(crate) fn largest_json(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(6).saturating_add(JSON_ENVELOPE_BYTES)
}

/// A new globally unique message id: a UUIDv7, time-ordered (strictly, among the ids one thread
/// makes; by millisecond across threads).
pub(crate) fn unique_id() -> String {
    let context = uuid::timestamp::context::ThreadLocalContext::new(&ID_CONTEXT);
    let id = uuid::Uuid::new_v7(uuid::Timestamp::now(context));
    // Encoded into a stack buffer and copied once: `to_string` went through
    // the formatter and grew its string from nothing, per message.
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text).to_owned()
}

/// What a filter decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on to the next stage.
    Keep,
    /// Drop it: a counted decision, not a loss.
    Drop,
}

/// One message flowing through Switchyard.
///
/// It may gain fields (a deadline, say): outside this crate it is made with [`Message::new`], not
/// with a struct expression, which would break when one comes.
///
/// ```compile_fail,E0639
/// let message = switchyard::Message {
///     id: 0,
///     topic: "orders.eu".into(),
///     headers: Vec::new(),
///     payload: "{}".into(),
///     priority: 0,
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Assigned by the host when the message is accepted (0 before).
    pub id: MessageId,
    /// Routing key, e.g. `orders.eu`.
    pub topic: String,
    /// Ordered header pairs; names compare ASCII case-insensitively.
    pub headers: Vec<(String, String)>,
    /// The body, shared without copying.
    pub payload: Bytes,
    /// Priority class; higher is more urgent.
    pub priority: u8,
}

impl Message {
    /// The message as one JSON object (no newline), as the `log` destination prints it and the `file`
    /// and `subprocess` transports write it: `{"destination":…,"id":…,"topic":…,"priority":…,
    /// "headers":[[k,v],…],"payload":…}`, a payload that is not UTF-8 as `"payload_base64"` (see
    /// [`payload_field`]): every byte arrives.
    pub fn json_line(&self, destination: &str) -> String {
        let mut line = serde_json::json!({
            "destination": destination,
            "id": self.id,
            "topic": self.topic,
            "priority": self.priority,
            "headers": self.headers,
        });
        let (field, payload) = payload_field(&self.payload);
        line[field] = payload;
        line.to_string()
    }

    /// A message on `topic` carrying `payload`, with no headers and priority 0.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message { id: 0, topic: topic.into(), headers: Vec::new(), payload: payload.into(), priority: 0 }
    }

    /// Its size as `host.max_message_bytes` counts it: its topic, payload and the headers its
    /// sender gave ([`SendersHeaders`]: not the host's id, nor a stream's sequence number, which an
    /// ingress gives it before admission).
    pub(crate) fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.senders_headers().bytes()
    }

    /// How many of its headers the sender gave ([`SendersHeaders`]): what the header limit counts.
    pub(crate) fn senders_header_count(&self) -> usize {
        self.senders_headers().count()
    }

    fn senders_headers(&self) -> SendersHeaders {
        let mut senders = SendersHeaders::default();
        self.headers.iter().for_each(|(name, value)| senders.add(name, value));
        senders
    }

    /// The globally unique id ([`ID_HEADER`]), once the message was accepted.
    pub fn unique_id(&self) -> Option<&str> {
        self.header(ID_HEADER)
    }

    /// Add a header (kept in order; an existing one of that name stays).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the priority class.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// Replace every header named `name` by one with `value`, or add it.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
    }

    /// Take `original`'s sequence number, unique id and other host headers: this message stands
    /// for it (a native transform's first output, a middleware's forward). A plugin cannot
    /// choose them.
    pub(crate) fn stand_in_for(&mut self, original: &Message) {
        self.id = original.id;
        self.carry_unique_id(original.unique_id());
        let kept: Vec<_> = original.host_headers_but_id().cloned().collect();
        self.carry_host_headers(&kept);
    }

    /// The message without any of the host's own headers: a reply as the host takes it from
    /// whatever answered (an endpoint, a worker, a plugin), which has no business setting the
    /// host's id or dead-letter headers.
    pub(crate) fn without_host_headers(mut self) -> Message {
        self.headers.retain(|(name, _)| !is_host_header(name));
        self
    }

    /// The host's own headers but the id, in order.
    fn host_headers_but_id(&self) -> impl Iterator<Item = &(String, String)> {
        self.headers.iter().filter(|(name, _)| is_host_header(name) && !name.eq_ignore_ascii_case(ID_HEADER))
    }

    /// Make `kept` this message's host headers but the id: left where they are when the message
    /// carries exactly them already, else every other one removed and these appended.
    pub(crate) fn carry_host_headers(&mut self, kept: &[(String, String)]) {
        if self.host_headers_but_id().eq(kept) {
            return;
        }
        self.headers.retain(|(name, _)| !is_host_header(name) || name.eq_ignore_ascii_case(ID_HEADER));
        self.headers.extend_from_slice(kept);
    }

    /// Make `unique_id` this message's one id header: left where it is when
    /// the message carries exactly it already (once, under its exact name),
    /// else set; every id header removed when there is none.
    fn carry_unique_id(&mut self, unique_id: Option<&str>) {
        if self.carries_only(unique_id) {
            return;
        }
        match unique_id {
            Some(id) => self.set_header(ID_HEADER, id),
            None => self.headers.retain(|(key, _)| !key.eq_ignore_ascii_case(ID_HEADER)),
        }
    }

    /// Whether this message has exactly one id header, named exactly [`ID_HEADER`], holding `unique_id`.
    fn carries_only(&self, unique_id: Option<&str>) -> bool {
        let mut ids = self.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case(ID_HEADER));
        matches!((ids.next(), ids.next()), (Some((name, id)), None) if name == ID_HEADER && Some(id.as_str()) == unique_id)
    }

    pub(crate) fn wire_head(&self, source: u32) -> switchyard_wire::Head<'_> {
        switchyard_wire::Head { id: self.id, source, priority: self.priority, topic: &self.topic }
    }

    pub(crate) fn wire_headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.headers.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Append this message to a wire batch, with or without its payload.
    pub(crate) fn encode(&self, out: &mut Vec<u8>, source: u32, with_payload: bool) {
        let payload = if with_payload {
            switchyard_wire::Payload::Bytes(&self.payload)
        } else {
            switchyard_wire::Payload::Omitted(self.payload.len())
        };
        switchyard_wire::write_message(out, &self.wire_head(source), self.wire_headers(), payload);
    }

    /// Build an owned message from a decoded wire message.
    pub(crate) fn from_wire(message: &switchyard_wire::MessageRef<'_>) -> Self {
        Message {
            id: message.id,
            topic: message.topic.to_owned(),
            headers: message.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            payload: Bytes::copy_from_slice(message.payload.unwrap_or_default()),
            priority: message.priority,
        }
    }

    /// Build the message standing for `input` (a transform's first output of
    /// it) from its wire form `message`: it takes `input`'s ids and host headers, as
    /// [`Message::stand_in_for`] sets them, and `input`'s parts rather than
    /// copies of them: the topic if unchanged, the header list, rewritten in
    /// place (each header the output left as it was kept, its id header too),
    /// and an unchanged payload, shared. `input` keeps its sequence number;
    /// the rest of it may be left empty.
    pub(crate) fn first_output_of(message: &switchyard_wire::MessageRef<'_>, input: &mut Message) -> Self {
        let topic = match message.topic == input.topic {
            true => std::mem::take(&mut input.topic),
            false => message.topic.to_owned(),
        };
        let kept: Vec<_> = input.host_headers_but_id().cloned().collect();
        let mut headers = std::mem::take(&mut input.headers);
        // The unique id is moved out of its header, and back in if the output
        // kept that header as it was.
        let id_at = headers.iter().position(|(name, _)| name.eq_ignore_ascii_case(ID_HEADER));
        let mut unique_id = id_at.map(|at| std::mem::take(&mut headers[at].1));
        let count = message.headers().len();
        for (index, (name, value)) in message.headers().enumerate() {
            match headers.get_mut(index) {
                Some((same_name, id))
                    if Some(index) == id_at && same_name == name && unique_id.as_deref() == Some(value) =>
                {
                    *id = unique_id.take().expect("compared above");
                }
                Some((same_name, same_value)) => {
                    if same_name != name {
                        name.clone_into(same_name);
                    }
                    if same_value != value {
                        value.clone_into(same_value);
                    }
                }
                None => headers.push((name.to_owned(), value.to_owned())),
            }
        }
        headers.truncate(count);
        let payload = message.payload.unwrap_or_default();
        let payload = match payload == &input.payload[..] {
            true => std::mem::take(&mut input.payload),
            false => Bytes::copy_from_slice(payload),
        };
        let mut output = Message { id: input.id, topic, headers, payload, priority: message.priority };
        match (unique_id, id_at) {
            // Kept in its place: it is the output's unique id unless another header claims to be one.
            (None, Some(at)) => {
                if !output.carries_only(Some(&output.headers[at].1)) {
                    let id = std::mem::take(&mut output.headers[at].1);
                    output.carry_unique_id(Some(&id));
                }
            }
            (unique_id, _) => output.carry_unique_id(unique_id.as_deref()),
        }
        output.carry_host_headers(&kept);
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_wire::{Head, Payload, decode, write_message};

    fn input() -> Message {
        Message::new("orders.eu", "{}")
            .with_header("x-tenant", "acme")
            .with_header(ID_HEADER, "id-1")
            .with_header("content-type", "application/json")
    }

    #[test]
    fn a_json_line_carries_a_payload_that_is_not_utf8_whole_in_base64() {
        use base64::Engine;
        let text: serde_json::Value = serde_json::from_str(&input().json_line("d")).unwrap();
        assert_eq!((&text["payload"], &text["payload_base64"]), (&"{}".into(), &serde_json::Value::Null));
        let bytes = [0xff, 0xfe, 0x00, 0x01, b'b'];
        let line: serde_json::Value =
            serde_json::from_str(&Message::new("t", bytes.to_vec()).json_line("d")).unwrap();
        assert_eq!(line["payload"], serde_json::Value::Null, "{line}");
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(line["payload_base64"].as_str().unwrap());
        assert_eq!(decoded.unwrap(), bytes, "every byte, not U+FFFD");
    }

    #[test]
    fn unique_ids_are_lower_case_hyphenated_uuid_v7s_ordered_within_a_thread_and_unique_across() {
        let (first, second) = (unique_id(), unique_id());
        let parsed = uuid::Uuid::parse_str(&first).unwrap();
        assert_eq!((parsed.get_version_num(), parsed.to_string()), (7, first.clone()));
        // Many in a row, so that several share a millisecond: the counter orders those.
        let made_by = || (0..20_000).map(|_| unique_id()).collect::<Vec<_>>();
        let (here, there) = (made_by(), std::thread::spawn(made_by).join().unwrap());
        for ids in [&here, &there] {
            assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "one thread's ids increase");
        }
        let all: std::collections::HashSet<&String> = here.iter().chain(&there).collect();
        assert_eq!(all.len(), here.len() + there.len(), "no id is made twice");
        assert!(first < second);
    }

    /// `message` written as a transform's output would be, then decoded and built as the first
    /// output of `input`; checked against a copy that inherited `input`'s ids.
    fn first_output(message: &Message, input: &mut Message) -> Message {
        let mut batch = Vec::new();
        let head = Head { id: message.id, source: 0, priority: message.priority, topic: &message.topic };
        write_message(&mut batch, &head, message.wire_headers(), Payload::Bytes(&message.payload));
        let output = decode(&batch).next().unwrap().unwrap();
        let mut copied = Message::from_wire(&output);
        copied.stand_in_for(input);
        let built = Message::first_output_of(&output, input);
        assert_eq!(built, copied, "reusing the input builds what copying builds");
        built
    }

    #[test]
    fn a_first_output_takes_what_it_kept_of_its_input_and_equals_a_copy() {
        let mut original = input();
        original.id = 7;
        let id_text = original.headers[1].1.as_ptr();
        let unchanged = first_output(&input(), &mut original);
        assert_eq!((unchanged.id, unchanged.unique_id()), (7, Some("id-1")));
        assert_eq!(unchanged.headers[1].1.as_ptr(), id_text, "the id header was moved, not copied");
        assert!(original.topic.is_empty() && original.headers.is_empty(), "moved, not copied: {original:?}");

        let mut original = input();
        let mut changed = input().with_header("x-stamp", "s");
        changed.topic = "orders.us".into();
        changed.headers[0].1 = "other".into();
        changed.payload = Bytes::from_static(b"[]");
        assert_eq!(first_output(&changed, &mut original), changed);
        assert_eq!(original.topic, "orders.eu", "a changed topic is copied from the output");

        let mut original = input();
        let fewer = Message::new("orders.eu", "{}").with_header("x-tenant", "acme");
        let output = first_output(&fewer, &mut original);
        assert_eq!(output.headers, [("x-tenant".into(), "acme".into()), (ID_HEADER.into(), "id-1".into())]);
    }

    #[test]
    fn a_first_output_carries_its_input_ids_whatever_id_headers_it_had() {
        for headers in [
            vec![("x-tenant", "acme"), (ID_HEADER, "id-1")],
            vec![("x-tenant", "acme"), (ID_HEADER, "id-1"), ("X-SY-ID", "chosen")],
            vec![("x-tenant", "acme"), ("X-Sy-Id", "id-1")],
            vec![("x-tenant", "acme"), (ID_HEADER, "chosen")],
            vec![(ID_HEADER, "id-1")],
            vec![],
        ] {
            let mut output = Message::new("orders.eu", "{}");
            for (name, value) in &headers {
                output = output.with_header(*name, *value);
            }
            let output = first_output(&output, &mut input());
            let ids: Vec<_> =
                output.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case(ID_HEADER)).collect();
            assert_eq!(ids, [&(ID_HEADER.to_owned(), "id-1".to_owned())], "{headers:?}");
        }
        let mut without_id = Message::new("orders.eu", "{}").with_header("x-tenant", "acme");
        let output = first_output(&input(), &mut without_id);
        assert_eq!(output.unique_id(), None, "an input without an id gives none to its output");
    }

    #[test]
    fn inheriting_ids_leaves_one_id_header_whatever_the_output_carried() {
        let original = input();
        for headers in [
            vec![(ID_HEADER, "id-1")],
            vec![(ID_HEADER, "id-1"), ("X-SY-ID", "chosen")],
            vec![("X-Sy-Id", "id-1")],
            vec![(ID_HEADER, "chosen")],
            vec![],
        ] {
            let mut output = Message::new("t", "");
            for (name, value) in &headers {
                output = output.with_header(*name, *value);
            }
            output.stand_in_for(&original);
            let ids: Vec<_> =
                output.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case(ID_HEADER)).collect();
            assert_eq!(ids, [&(ID_HEADER.to_owned(), "id-1".to_owned())], "{headers:?}");
        }
    }

    #[test]
    fn a_plugin_cannot_add_change_or_remove_a_host_header() {
        // A transform or middleware could forge `x-sy-topic` for a NATS receiver, `x-sy-attempts`
        // for a dead letter, or take a stream's sequence number off.
        let input = || input().with_header("x-sy-stream-seq", "41");
        let host_headers = |m: &Message| -> Vec<(String, String)> {
            m.headers.iter().filter(|(name, _)| is_host_header(name)).cloned().collect()
        };
        let expected = host_headers(&input());
        for forged in [
            input().with_header("X-SY-TOPIC", "forged"),
            input().with_header("x-sy-attempts", "3").with_header("x-tenant", "other"),
            Message::new("orders.eu", "{}").with_header("x-sy-stream-seq", "40"),
            Message::new("orders.eu", "{}"),
        ] {
            let mut forwarded = forged.clone();
            forwarded.stand_in_for(&input());
            assert_eq!(host_headers(&forwarded), expected, "stand-in for {forged:?}");
            let output = first_output(&forged, &mut input());
            assert_eq!(host_headers(&output), expected, "first output {forged:?}");
            let theirs = |m: &Message| m.headers.iter().filter(|(name, _)| !is_host_header(name)).count();
            assert_eq!(theirs(&output), theirs(&forged), "a plugin's own headers stay: {output:?}");
        }
        let unchanged = first_output(&input(), &mut input());
        assert_eq!(unchanged, input(), "an output that kept them as they were is left alone");
        assert!(is_host_header("X-Sy-Anything") && !is_host_header("x-sy") && !is_host_header("é-sy-x"));
    }

    #[test]
    fn the_sender_gave_every_header_but_one_of_each_the_host_gives_on_intake() {
        let sent = Message::new("t", "").with_header("x-a", "1").with_header("X-SY-ID", "mine");
        assert_eq!(sent.senders_header_count(), 1, "the id is the host's, whoever set its value");
        let pulled = sent.clone().with_header(STREAM_SEQ_HEADER, "7").with_header("x-sy-route", "r");
        assert_eq!(pulled.senders_header_count(), 2, "and a stream's sequence, not other x-sy- headers");
        let twice = pulled.clone().with_header(ID_HEADER, "again").with_header(STREAM_SEQ_HEADER, "8");
        assert_eq!(twice.senders_header_count(), 4, "a second id or sequence is the sender's");
        // The size counts the same headers: "t", "x-a" "1", and in `pulled` "x-sy-route" "r".
        assert_eq!((sent.size(), pulled.size()), (5, 16));
        assert_eq!(twice.size(), 16 + "x-sy-id".len() + "again".len() + "x-sy-stream-seq".len() + 1);
    }
}
