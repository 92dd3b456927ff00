//! One spool record as it lies in a segment file, and reading a segment back.
//!
//! ```text
//! record := len: u32 LE | crc32: u32 LE | kind: u8 | seq: u64 LE | body   (len = 9 + body length,
//!           crc32 over kind, seq and body)
//! put    := kind 1, body = accepted at (unix ms, u64 LE) | the message in wire format 1
//! remove := kind 2, empty body: the put of `seq` reached its outcome
//! ```

use crate::message::Message;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
/// Bytes before the body: length, checksum, kind, sequence number.
pub(crate) const HEADER: usize = 4 + 4 + 1 + 8;
/// The largest record length read back: a larger length field is damage, not a record.
const MAX_LEN: u32 = 1 << 30;

/// A record read back from a segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// A message admitted at `accepted_ms` (unix milliseconds).
    Put { seq: u64, accepted_ms: u64, message: Message },
    /// The message of `seq` reached its outcome.
    Remove { seq: u64 },
}

impl Record {
    /// The sequence number the record is about.
    pub(crate) fn seq(&self) -> u64 {
        match self {
            Record::Put { seq, .. } | Record::Remove { seq } => *seq,
        }
    }
}

/// Append a put of `message` (its wire form, `body`, made by [`put_body`]) as `seq`.
pub(crate) fn write_put(out: &mut Vec<u8>, seq: u64, body: &[u8]) {
    write(out, PUT, seq, body);
}

/// Append a remove of `seq`.
pub(crate) fn write_remove(out: &mut Vec<u8>, seq: u64) {
    write(out, REMOVE, seq, &[]);
}

/// The body of a put: when `message` was accepted, then the message itself.
pub(crate) fn put_body(message: &Message, accepted_ms: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.payload.len() + message.topic.len());
    body.extend_from_slice(&accepted_ms.to_le_bytes());
    message.encode(&mut body, 0, true);
    body
}

fn write(out: &mut Vec<u8>, kind: u8, seq: u64, body: &[u8]) {
    let len = u32::try_from(9 + body.len()).expect("a spooled message is within max_message_bytes");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&seq.to_le_bytes());
    crc.update(body);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

/// The records of one segment's bytes, in order: the intact prefix, and where and why reading stopped
/// if it stopped before the end.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Each record with its size in bytes.
    pub(crate) records: Vec<(Record, u64)>,
    /// Bytes of whole, intact records from the start.
    pub(crate) intact: u64,
    /// Why the bytes after `intact` could not be read (a torn or corrupt tail).
    pub(crate) damage: Option<&'static str>,
}

/// Read the records of `bytes` until the end or the first that is torn or corrupt.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match read(rest) {
            Ok((record, size)) => {
                scan.records.push((record, size as u64));
                scan.intact += size as u64;
                rest = &rest[size..];
            }
            Err(problem) => {
                scan.damage = Some(problem);
                break;
            }
        }
    }
    scan
}

/// The record at the start of `bytes`, with its size.
fn read(bytes: &[u8]) -> Result<(Record, usize), &'static str> {
    let field = |at: usize, n: usize| bytes.get(at..at + n).ok_or("torn record (the file ends inside it)");
    let len = u32::from_le_bytes(field(0, 4)?.try_into().expect("4 bytes"));
    if !(9..=MAX_LEN).contains(&len) {
        return Err("impossible record length");
    }
    let crc = u32::from_le_bytes(field(4, 4)?.try_into().expect("4 bytes"));
    let content = field(8, len as usize)?;
    if crc32fast::hash(content) != crc {
        return Err("checksum mismatch");
    }
    let seq = u64::from_le_bytes(content[1..9].try_into().expect("8 bytes"));
    let body = &content[9..];
    let record = match content[0] {
        PUT => {
            let accepted_ms =
                u64::from_le_bytes(body.get(..8).ok_or("put without a time")?.try_into().expect("8"));
            let mut messages = switchyard_wire::decode(&body[8..]);
            let message = match (messages.next(), messages.next()) {
                (Some(Ok(message)), None) => Message::from_wire(&message),
                _ => return Err("put whose message cannot be decoded"),
            };
            Record::Put { seq, accepted_ms, message: Message { id: 0, ..message } }
        }
        REMOVE => Record::Remove { seq },
        _ => return Err("unknown record kind"),
    };
    Ok((record, 8 + len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> Message {
        Message::new("orders.eu", vec![n; 256]).with_header("x-sy-id", format!("id-{n}")).with_priority(n)
    }

    fn log_of(count: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for n in 0..count {
            write_put(&mut out, u64::from(n), &put_body(&message(n), 1_000 + u64::from(n)));
        }
        write_remove(&mut out, 0);
        out
    }

    #[test]
    fn records_read_back_as_written() {
        let scan = scan(&log_of(3));
        assert_eq!(scan.damage, None);
        assert_eq!(scan.records.len(), 4);
        assert_eq!(scan.records[1].0, Record::Put { seq: 1, accepted_ms: 1_001, message: message(1) });
        assert_eq!(scan.records[3].0, Record::Remove { seq: 0 });
        assert_eq!(scan.intact, log_of(3).len() as u64);
    }

    #[test]
    fn a_truncated_tail_leaves_the_intact_prefix() {
        let whole = log_of(3);
        let last_put_ends = whole.len() - HEADER;
        for cut in [whole.len() - 1, last_put_ends - 1, last_put_ends - 200, 3] {
            let scan = scan(&whole[..cut]);
            assert_eq!(scan.damage, Some("torn record (the file ends inside it)"), "cut at {cut}");
            let whole_records = scan.records.len();
            assert!(scan.intact <= cut as u64 && whole_records < 4, "cut at {cut}");
        }
        let scan = scan(&whole[..last_put_ends - 1]);
        assert_eq!(scan.records.len(), 2, "the two puts before the torn third");
    }

    #[test]
    fn a_corrupt_record_at_the_tail_is_refused_and_what_precedes_it_kept() {
        let mut bytes = log_of(3);
        let last_put_ends = bytes.len() - HEADER;
        bytes[last_put_ends - 10] ^= 0xff;
        let scan = scan(&bytes);
        assert_eq!(scan.damage, Some("checksum mismatch"));
        assert_eq!(scan.records.len(), 2);
        let second = scan.records.iter().map(|(_, size)| size).sum::<u64>();
        assert_eq!(scan.intact, second);
    }

    #[test]
    fn a_length_field_of_garbage_is_damage_not_a_huge_read() {
        let mut bytes = log_of(1);
        bytes.extend_from_slice(&[0xff; 32]);
        let scan = scan(&bytes);
        assert_eq!(scan.damage, Some("impossible record length"));
        assert_eq!(scan.records.len(), 2);
    }
}
