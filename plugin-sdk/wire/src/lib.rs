//! The Switchyard wire layout: message batches as one flat byte buffer.
//!
//! Crossing the WebAssembly boundary costs a fixed price per call plus one guest
//! allocation per string or list passed by value. Carrying a whole batch of
//! messages in one `list<u8>` pays the allocation once per batch; the guest
//! reads fields straight out of the buffer without copying them.
//!
//! ```text
//! batch   = message*
//! message = u64 id, u32 source, u8 priority, u8 flags, str topic,
//!           u32 header-count, (str name, str value)*, bytes payload
//! str     = bytes = u32 length, length bytes            (little-endian)
//! ```
//! With [`FLAG_PAYLOAD_OMITTED`] set, `bytes payload` is only its `u32` length
//! (the real payload size) and no bytes follow: filters see heads only.
//!
//! ```
//! use switchyard_wire::{decode, write_message, Head, Payload};
//! let mut buf = Vec::new();
//! let head = Head { id: 7, source: 0, priority: 1, topic: "orders.eu" };
//! write_message(&mut buf, &head, [("tenant", "acme")], Payload::Bytes(b"{}"));
//! let msg = decode(&buf).next().unwrap().unwrap();
//! assert_eq!(msg.topic, "orders.eu");
//! assert_eq!(msg.header("Tenant"), Some("acme"));
//! assert_eq!(msg.payload, Some(&b"{}"[..]));
//! ```

use std::fmt;

pub mod decisions;
pub mod native;

/// The version of this layout. A plugin exports the version it was built for
/// (`switchyard:plugin/format`, written by the SDK's export macros) and a host
/// refuses a plugin whose version differs from its own; change the number with
/// any change to the bytes. `docs/wire-format.md` specifies version 1.
pub const FORMAT_VERSION: u32 = 1;

/// Flag bit: the payload bytes were left out; only their length is present.
pub const FLAG_PAYLOAD_OMITTED: u8 = 1;

/// The fixed fields of a message to encode.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Message id assigned by the host.
    pub id: u64,
    /// Index of the input message this one came from (transform outputs).
    pub source: u32,
    /// Priority class; higher is more urgent.
    pub priority: u8,
    /// The message's topic, e.g. `orders.eu`.
    pub topic: &'a str,
}

/// The payload to encode: its bytes, or only its size.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Carry the payload bytes.
    Bytes(&'a [u8]),
    /// Carry only the payload's length (for heads-only batches).
    Omitted(usize),
}

/// A malformed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Byte offset where decoding failed.
    pub offset: usize,
    /// What was wrong there.
    pub problem: &'static str,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed message batch at byte {}: {}", self.offset, self.problem)
    }
}

impl std::error::Error for WireError {}

/// Append one message to `out`.
pub fn write_message<'h>(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    headers: impl IntoIterator<Item = (&'h str, &'h str), IntoIter: ExactSizeIterator>,
    payload: Payload<'_>,
) {
    let headers = headers.into_iter();
    let flags = match payload {
        Payload::Bytes(_) => 0,
        Payload::Omitted(_) => FLAG_PAYLOAD_OMITTED,
    };
    // The fixed fields in one copy.
    let mut fixed = [0; 14];
    fixed[..8].copy_from_slice(&head.id.to_le_bytes());
    fixed[8..12].copy_from_slice(&head.source.to_le_bytes());
    fixed[12..].copy_from_slice(&[head.priority, flags]);
    out.extend_from_slice(&fixed);
    write_bytes(out, head.topic.as_bytes());
    out.extend_from_slice(&len_u32(headers.len()).to_le_bytes());
    for (name, value) in headers {
        write_bytes(out, name.as_bytes());
        write_bytes(out, value.as_bytes());
    }
    match payload {
        Payload::Bytes(bytes) => write_bytes(out, bytes),
        Payload::Omitted(len) => out.extend_from_slice(&len_u32(len).to_le_bytes()),
    }
}

// Inlined into `write_message`, which is generic and so compiled in each
// caller's crate: a call per field cost more than the copy.
#[inline]
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len_u32(bytes.len()).to_le_bytes());
    out.extend_from_slice(bytes);
}

#[inline]
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("wire fields are limited to 4 GiB")
}

/// One decoded message, borrowing from the batch buffer.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Message id assigned by the host.
    pub id: u64,
    /// Index of the input message this one came from.
    pub source: u32,
    /// Priority class; higher is more urgent.
    pub priority: u8,
    /// The message's topic.
    pub topic: &'a str,
    /// The payload bytes, or `None` when the batch carries heads only.
    pub payload: Option<&'a [u8]>,
    /// The payload's size in bytes (known even when the bytes were omitted).
    pub payload_len: usize,
    header_count: u32,
    header_bytes: &'a [u8],
}

impl<'a> MessageRef<'a> {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value)
    }

    /// The payload as text: `None` when it was left out or is not UTF-8.
    /// A payload that is all ASCII, as JSON and most text is, is recognised
    /// eight bytes at a time. Parsing this text (`serde_json::from_str`)
    /// rather than the bytes (`from_slice`) spares the parser a UTF-8 check
    /// of every string in the document: in WebAssembly those checks cost
    /// several times the whole payload's.
    #[allow(unsafe_code)]
    pub fn payload_text(&self) -> Option<&'a str> {
        let bytes = self.payload?;
        if is_ascii(bytes) {
            // SAFETY: ASCII is UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).ok()
    }

    /// All headers, in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            reader: Reader { buf: self.header_bytes, pos: 0, utf8: Utf8::Known },
            remaining: self.header_count,
        }
    }
}

/// Iterator over a message's headers, see [`MessageRef::headers`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    reader: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let name = self.reader.checked_str()?;
        let value = self.reader.checked_str()?;
        Some((name, value))
    }

    /// Exact: a message's headers were all read once when it was decoded.
    /// (Collecting them allocates once.)
    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.remaining as usize;
        (remaining, Some(remaining))
    }
}

impl ExactSizeIterator for Headers<'_> {}

/// Decode the messages of `batch`, in order.
pub fn decode(batch: &[u8]) -> Messages<'_> {
    Messages { reader: Reader::checking(batch) }
}

/// Decode the messages of a batch the host wrote, in order, without checking
/// that its strings are UTF-8: a plugin's SDK reads every batch it is given
/// this way. The layout (lengths, counts) is still checked.
///
/// # Safety
///
/// Every string in `batch` (topics, header names and values) must be UTF-8,
/// as it is in any batch the host writes: it writes them from Rust `str`s.
#[allow(unsafe_code)]
pub unsafe fn decode_host_batch(batch: &[u8]) -> Messages<'_> {
    Messages { reader: Reader { buf: batch, pos: 0, utf8: Utf8::Known } }
}

/// Whether a [`Reader`] checks that strings are UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utf8 {
    /// Check every string: the batch came from a plugin.
    Check,
    /// Every string is known to be UTF-8 (see [`decode_host_batch`]).
    Known,
}

/// Iterator over the messages of a batch, see [`decode`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<MessageRef<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.pos == self.reader.buf.len() {
            return None;
        }
        let item = self.reader.message();
        if item.is_err() {
            self.reader.pos = self.reader.buf.len();
        }
        Some(item)
    }
}

#[derive(Debug, Clone)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    utf8: Utf8,
}

impl<'a> Reader<'a> {
    /// A reader of `buf` from its start that checks every string.
    fn checking(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0, utf8: Utf8::Check }
    }

    fn message(&mut self) -> Result<MessageRef<'a>, WireError> {
        let id = u64::from_le_bytes(self.array()?);
        let source = u32::from_le_bytes(self.array()?);
        let [priority, flags] = self.array()?;
        let topic = self.str()?;
        let header_count = self.u32()?;
        let headers_start = self.pos;
        for _ in 0..header_count {
            self.str()?;
            self.str()?;
        }
        let header_bytes = &self.buf[headers_start..self.pos];
        let (payload, payload_len) = if flags & FLAG_PAYLOAD_OMITTED != 0 {
            (None, self.u32()? as usize)
        } else {
            let bytes = self.bytes()?;
            (Some(bytes), bytes.len())
        };
        Ok(MessageRef { id, source, priority, topic, payload, payload_len, header_count, header_bytes })
    }

    fn error(&self, problem: &'static str) -> WireError {
        WireError { offset: self.pos, problem }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.buf.len());
        let end = end.ok_or_else(|| self.error("truncated"))?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    #[allow(unsafe_code)]
    #[inline(always)]
    fn str(&mut self) -> Result<&'a str, WireError> {
        let start = self.pos;
        let bytes = self.bytes()?;
        if self.utf8 == Utf8::Known || is_ascii(bytes) {
            // SAFETY: ASCII is UTF-8, and `Utf8::Known` is made only by
            // `decode_host_batch`, whose caller vouches for every string.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| WireError { offset: start, problem: "string is not UTF-8" })
    }

    /// The next string of a region [`Reader::message`] has already checked
    /// (a message's headers), without checking its UTF-8 again: headers are
    /// read on every lookup, by the host and by plugins alike.
    #[allow(unsafe_code)]
    fn checked_str(&mut self) -> Option<&'a str> {
        let bytes = self.bytes().ok()?;
        // SAFETY: a `Headers` reader covers only `header_bytes` of a `MessageRef`, which only
        // `Reader::message` makes, after `str` checked every name and value in that region.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

/// Whether every byte of `bytes` is ASCII, tested eight bytes at a time.
/// Topics and header strings are short and almost always ASCII; for them this
/// costs a fraction of a full UTF-8 check, whose set-up dominates on short
/// strings (a third of a filter call's guest instructions went to it).
fn is_ascii(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let mut seen = 0u64;
    for word in &mut words {
        seen |= u64::from_le_bytes(word.try_into().expect("chunks of eight"));
    }
    let tail = words.remainder().iter().fold(0u8, |seen, byte| seen | byte);
    seen & 0x8080_8080_8080_8080 == 0 && tail < 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: Payload<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        let head = Head { id: 1, source: 3, priority: 2, topic: "a.b" };
        write_message(&mut buf, &head, [("k", "v"), ("x-y", "z")], payload);
        let head = Head { id: 2, source: 4, priority: 0, topic: "c" };
        write_message(&mut buf, &head, [], payload);
        buf
    }

    #[test]
    fn round_trips_a_batch_of_two() {
        let buf = sample(Payload::Bytes(b"hello"));
        let messages: Vec<_> = decode(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!((messages[0].id, messages[0].source, messages[0].priority), (1, 3, 2));
        assert_eq!(messages[0].headers().collect::<Vec<_>>(), [("k", "v"), ("x-y", "z")]);
        assert_eq!((messages[0].headers().len(), messages[1].headers().len()), (2, 0));
        assert_eq!(messages[0].header("X-Y"), Some("z"));
        assert_eq!(messages[1].topic, "c");
        assert_eq!(messages[1].payload, Some(&b"hello"[..]));
    }

    #[test]
    #[allow(unsafe_code)]
    fn a_host_batch_reads_alike_and_its_layout_is_still_checked() {
        let buf = sample(Payload::Bytes(b"hello"));
        fn fields(message: MessageRef<'_>) -> String {
            let headers: Vec<_> = message.headers().collect();
            format!("{} {} {} {headers:?} {:?}", message.id, message.source, message.topic, message.payload)
        }
        // SAFETY: `sample` writes its strings from `str`s.
        let host: Vec<_> = unsafe { decode_host_batch(&buf) }.map(|m| fields(m.unwrap())).collect();
        let checked: Vec<_> = decode(&buf).map(|m| fields(m.unwrap())).collect();
        assert_eq!((host.len(), host), (2, checked));
        // SAFETY: as above; truncating leaves no partial string behind it.
        let err = unsafe { decode_host_batch(&buf[..10]) }.next().unwrap().unwrap_err();
        assert_eq!(err.problem, "truncated");
    }

    #[test]
    fn omitted_payload_keeps_its_length() {
        let buf = sample(Payload::Omitted(65536));
        let first = decode(&buf).next().unwrap().unwrap();
        assert_eq!((first.payload, first.payload_len), (None, 65536));
        assert_eq!(decode(&buf).count(), 2);
    }

    #[test]
    fn payload_text_is_the_payload_when_it_is_utf8_and_none_otherwise() {
        let text_of = |payload: Payload<'_>| {
            let buf = sample(payload);
            decode(&buf).next().unwrap().unwrap().payload_text().map(str::to_owned)
        };
        // ASCII on both sides of the eight-byte steps, and UTF-8 that is not ASCII.
        for text in ["", "{\"a\":1}", "abcdefgh", "abcdefghi", "{\"name\":\"Zoë\"}", "abcdefgh☃"] {
            assert_eq!(text_of(Payload::Bytes(text.as_bytes())).as_deref(), Some(text));
        }
        for bad in [&b"\xff"[..], b"abcdefgh\xff", b"{\"a\":\"\xc3\"}"] {
            assert_eq!(text_of(Payload::Bytes(bad)), None, "{bad:?}");
        }
        assert_eq!(text_of(Payload::Omitted(5)), None, "a head has no payload to read");
    }

    #[test]
    fn truncated_buffer_is_an_error_not_a_panic() {
        let buf = sample(Payload::Bytes(b"hello"));
        for cut in 0..buf.len() {
            let results: Vec<_> = decode(&buf[..cut]).collect();
            let failed = results.iter().any(Result::is_err);
            assert!(cut == 0 || failed || results.len() == 1, "cut {cut}");
        }
        let err = decode(&buf[..10]).next().unwrap().unwrap_err();
        assert_eq!(err.problem, "truncated");
    }

    #[test]
    fn strings_are_checked_as_utf8_whether_ascii_or_not() {
        // Lengths on both sides of the eight-byte steps, ASCII and not.
        for text in ["", "a", "abcdefg", "abcdefgh", "abcdefghi", "héllo", "abcdefgh☃", "☃abcdefghijklmnop"]
        {
            let mut buf = Vec::new();
            let head = Head { id: 1, source: 0, priority: 0, topic: text };
            write_message(&mut buf, &head, [("name", text)], Payload::Bytes(b""));
            let message = decode(&buf).next().unwrap().unwrap();
            assert_eq!((message.topic, message.header("name")), (text, Some(text)));
            // A byte never valid in UTF-8, anywhere in a whole word or the tail, is refused.
            let topic_at = 18;
            for at in 0..text.len() {
                let mut bad = buf.clone();
                bad[topic_at + at] = 0xff;
                let err = decode(&bad).next().unwrap().unwrap_err();
                assert_eq!(err, WireError { offset: 14, problem: "string is not UTF-8" }, "{text:?} at {at}");
            }
        }
    }

    #[test]
    fn invalid_utf8_topic_is_reported_with_its_offset() {
        let mut buf = sample(Payload::Bytes(b""));
        buf[18] = 0xff;
        let err = decode(&buf).next().unwrap().unwrap_err();
        assert_eq!(err, WireError { offset: 14, problem: "string is not UTF-8" });
    }
}
