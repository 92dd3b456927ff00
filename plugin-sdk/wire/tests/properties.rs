//! Properties of the wire codec: what is written reads back identical, and
//! any byte string decodes or errors, never panics.

use proptest::prelude::*;
use switchyard_wire::{Head, MessageRef, Payload, decode, write_message};

/// A message as the test owns it.
#[derive(Debug, Clone, PartialEq)]
struct Owned {
    id: u64,
    source: u32,
    priority: u8,
    topic: String,
    headers: Vec<(String, String)>,
    /// `Err(len)`: written with the payload omitted.
    payload: Result<Vec<u8>, usize>,
}

impl Owned {
    fn write(&self, out: &mut Vec<u8>) {
        let head = Head { id: self.id, source: self.source, priority: self.priority, topic: &self.topic };
        let headers = self.headers.iter().map(|(name, value)| (name.as_str(), value.as_str()));
        let payload = match &self.payload {
            Ok(bytes) => Payload::Bytes(bytes),
            Err(len) => Payload::Omitted(*len),
        };
        write_message(out, &head, headers, payload);
    }

    fn read(message: &MessageRef<'_>) -> Owned {
        let headers = message.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect();
        let payload = match message.payload {
            Some(bytes) => {
                assert_eq!(message.payload_len, bytes.len(), "payload_len of carried bytes");
                Ok(bytes.to_vec())
            }
            None => Err(message.payload_len),
        };
        Owned {
            id: message.id,
            source: message.source,
            priority: message.priority,
            topic: message.topic.to_owned(),
            headers,
            payload,
        }
    }
}

/// Header names that often collide case-insensitively, and any text.
fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-cA-C-]{0,3}", any::<String>()]
}

fn message() -> impl Strategy<Value = Owned> {
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Ok),
        (0..=u32::MAX as usize).prop_map(Err),
    ];
    let headers = proptest::collection::vec((name(), any::<String>()), 0..6);
    (any::<u64>(), any::<u32>(), any::<u8>(), any::<String>(), headers, payload).prop_map(
        |(id, source, priority, topic, headers, payload)| Owned {
            id,
            source,
            priority,
            topic,
            headers,
            payload,
        },
    )
}

fn batch(messages: &[Owned]) -> Vec<u8> {
    let mut buf = Vec::new();
    for message in messages {
        message.write(&mut buf);
    }
    buf
}

/// Decode `bytes` to the end, calling every accessor of every message; the
/// messages read before the first error, and whether there was one.
fn decode_everything(bytes: &[u8]) -> (Vec<Owned>, bool) {
    let mut messages = decode(bytes);
    let mut read = Vec::new();
    for item in messages.by_ref() {
        match item {
            Ok(message) => {
                for (name, value) in message.headers() {
                    let first = message.header(name).expect("a header is found by its own name");
                    let _ = (first, value, message.header(&name.to_uppercase()));
                }
                assert_eq!(message.headers().count(), message.headers().clone().count());
                assert!(format!("{message:?}").contains("MessageRef"));
                read.push(Owned::read(&message));
            }
            Err(err) => {
                assert!(err.offset <= bytes.len(), "{err} past the end ({})", bytes.len());
                assert!(err.to_string().starts_with("malformed message batch at byte"));
                assert!(messages.next().is_none(), "decoding stops at the first error");
                return (read, true);
            }
        }
    }
    (read, false)
}

/// Failures are shown as a minimal case and a regression test written by
/// hand; no `proptest-regressions` files. `PROPTEST_CASES` sets the count.
fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// A way to damage a valid batch.
#[derive(Debug, Clone)]
enum Damage {
    /// Keep only the first `at` bytes (modulo the length).
    Truncate(usize),
    /// XOR the byte at `at` with `mask`.
    Flip { at: usize, mask: u8 },
    /// Write `value` as a little-endian u32 at `at` (a length or count field, often).
    Length { at: usize, value: u32 },
    /// Insert `bytes` at `at`.
    Insert { at: usize, bytes: Vec<u8> },
    /// Remove `len` bytes at `at`.
    Remove { at: usize, len: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    let huge = prop_oneof![Just(u32::MAX), Just(u32::MAX - 3), Just(1 << 31), 0..64u32, any::<u32>()];
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        (any::<usize>(), huge).prop_map(|(at, value)| Damage::Length { at, value }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| Damage::Remove { at, len }),
    ]
}

impl Damage {
    fn apply(&self, buf: &mut Vec<u8>) {
        let at = |at: usize, room: usize| if buf.len() < room { 0 } else { at % (buf.len() - room + 1) };
        match self {
            Damage::Truncate(len) => buf.truncate(len % (buf.len() + 1)),
            Damage::Flip { at: pos, mask } if !buf.is_empty() => {
                let pos = at(*pos, 1);
                buf[pos] ^= mask;
            }
            Damage::Flip { .. } => {}
            Damage::Length { at: pos, value } if buf.len() >= 4 => {
                let pos = at(*pos, 4);
                buf[pos..pos + 4].copy_from_slice(&value.to_le_bytes());
            }
            Damage::Length { .. } => {}
            Damage::Insert { at: pos, bytes } => {
                let pos = at(*pos, 0);
                buf.splice(pos..pos, bytes.iter().copied());
            }
            Damage::Remove { at: pos, len } => {
                let pos = at(*pos, 0);
                buf.drain(pos..(pos + len).min(buf.len()));
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn written_messages_read_back_identical(messages in proptest::collection::vec(message(), 0..5)) {
        let buf = batch(&messages);
        let (read, failed) = decode_everything(&buf);
        prop_assert!(!failed);
        prop_assert_eq!(read, messages.clone());
        for (message, decoded) in messages.iter().zip(decode(&buf)) {
            let decoded = decoded.unwrap();
            for (name, value) in &message.headers {
                let first = message.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name));
                prop_assert_eq!(decoded.header(name), first.map(|(_, v)| v.as_str()));
                prop_assert!(decoded.headers().any(|(n, v)| n == name && v == value));
            }
        }
    }

    #[test]
    fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes);
    }

    #[test]
    fn a_truncated_batch_reads_the_messages_before_the_cut(
        messages in proptest::collection::vec(message(), 1..4),
        cut in any::<usize>(),
    ) {
        let buf = batch(&messages);
        let cut = cut % (buf.len() + 1);
        let (read, failed) = decode_everything(&buf[..cut]);
        let whole = messages.iter().scan(0, |end, message| {
            let mut one = Vec::new();
            message.write(&mut one);
            *end += one.len();
            Some(*end)
        }).take_while(|end| *end <= cut).count();
        prop_assert_eq!(&read[..], &messages[..whole]);
        let at_a_boundary = cut == 0 || batch(&messages[..whole]).len() == cut;
        prop_assert_eq!(failed, !at_a_boundary);
    }

    #[test]
    fn a_damaged_batch_decodes_or_errors(
        messages in proptest::collection::vec(message(), 1..4),
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let mut buf = batch(&messages);
        for damage in &damages {
            damage.apply(&mut buf);
        }
        decode_everything(&buf);
    }
}
