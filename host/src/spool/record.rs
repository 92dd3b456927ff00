//! One spool record as it lies in a segment file, and reading a segment back.
//!
//! ```text
//! record := len: u32 LE | crc32: u32 LE | kind: u8 | seq: u64 LE | body   (len = 9 + body length,
//!           crc32 over kind, seq and body)
//! put    := kind 1, body = accepted at (unix ms, u64 LE) | the message in wire format 1
//! remove := kind 2, empty body: the put of `seq` reached its outcome
//! moved  := kind 3, body = the first put's seq (u64 LE) | a put's body: that message, copied
//!           forward from an older segment (see `SegmentLog`'s compaction); it stands for the
//!           first put, and a remove of the first put's seq removes it
//! ```
//!
//! A put's (or a moved put's) sequence number is above that of every put before it in the log. A
//! record that cannot be read is skipped and reading resumes at the next one that verifies (see
//! [`scan`]).

use crate::message::Message;

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const MOVED: u8 = 3;
/// Bytes before the body: length, checksum, kind, sequence number.
pub(crate) const HEADER: usize = 4 + 4 + 1 + 8;
/// The largest record length read back: a larger length field is damage, not a record.
const MAX_LEN: u32 = 1 << 30;

/// A record read back from a segment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    /// A message admitted at `accepted_ms` (unix milliseconds), first put as `first`: `seq` for
    /// a put, the put it was copied from for a moved put. Its remove names `first`.
    Put { seq: u64, first: u64, accepted_ms: u64, message: Message },
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

/// Append a moved put of the message first put as `first` (its put's `body`) as `seq`.
pub(crate) fn write_moved(out: &mut Vec<u8>, seq: u64, first: u64, body: &[u8]) {
    let mut moved = Vec::with_capacity(8 + body.len());
    moved.extend_from_slice(&first.to_le_bytes());
    moved.extend_from_slice(body);
    write(out, MOVED, seq, &moved);
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

/// Set the time a put's `body` (from [`put_body`]) says its message was accepted.
pub(crate) fn stamp_accepted(body: &mut [u8], accepted_ms: u64) {
    body[..8].copy_from_slice(&accepted_ms.to_le_bytes());
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

/// Bytes of a segment that could not be read as records.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unreadable {
    /// Where they start, from the start of the segment.
    pub(crate) offset: u64,
    /// How many.
    pub(crate) len: u64,
    /// Why the record at `offset` could not be read.
    pub(crate) problem: &'static str,
    /// No record that verifies follows them: the segment's tail, as a crash cutting a write short
    /// leaves it in the segment being written (any other segment was fsync'd whole, so its tail is
    /// corrupt). Otherwise intact records follow (corruption, such as bit rot or a bad sector).
    pub(crate) tail: bool,
}

/// The records of one segment's bytes, in order, and the bytes between or after them that could
/// not be read.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Each record with its size in bytes.
    pub(crate) records: Vec<(Record, u64)>,
    /// The unreadable stretches, in order; only the last can be a tail.
    pub(crate) damage: Vec<Unreadable>,
    /// The sequence number of the last put read (they only grow along the log), else the one
    /// [`scan`] was given.
    pub(crate) last_put: Option<u64>,
}

/// Read the records of `bytes`, the segment after those whose puts went up to `last_put`.
///
/// A record that cannot be read is skipped, and reading goes on at the next record that verifies
/// (see [`resync`]); unreadable bytes with no record that verifies after them are the tail.
/// Removes that follow a damaged length field with no put after them are skipped with it (as
/// [`resync`] skips those before a put), but the damage is not a tail.
pub(crate) fn scan(bytes: &[u8], last_put: Option<u64>) -> Scan {
    let mut scan = Scan { last_put, ..Scan::default() };
    let mut at = 0;
    while at < bytes.len() {
        match read(&bytes[at..]) {
            Ok((record, size)) => {
                if let Record::Put { seq, .. } = record {
                    scan.last_put = Some(seq);
                }
                scan.records.push((record, size as u64));
                at += size;
            }
            Err(problem) => {
                let resumed = resync(bytes, at, scan.last_put);
                let end = resumed.unwrap_or(bytes.len());
                let tail = resumed.is_none() && !records_follow(bytes, at, scan.last_put);
                // A length field damaged to run past the end, with records after it: not torn.
                let problem = match problem {
                    TORN if !tail => "impossible record length",
                    problem => problem,
                };
                let (offset, len) = (at as u64, (end - at) as u64);
                scan.damage.push(Unreadable { offset, len, problem, tail });
                at = end;
            }
        }
    }
    scan
}

/// Where records resume after the unreadable record at `at`, if anywhere.
///
/// The format has no magic number and no checksum of the length field, and a payload may hold
/// anything, even a spool segment's bytes; a false start is guarded against as follows.
/// - A record is taken only whole: a length of at most `MAX_LEN` inside the segment, the CRC-32
///   over kind, sequence number and body, a known kind, a put's body one well-formed message; and
///   in order: a put's sequence number above `last_put` (they only grow along the log, so an old
///   record, such as a segment's bytes sent as a message, is not taken), a remove's at most
///   `last_put` (a remove follows its put).
/// - When the damaged record's length field still points at such a record, reading resumes
///   there: the damage was inside that one record (its payload, most of its bytes), and the next
///   record begins exactly where it ends, never inside a payload.
/// - Otherwise (the length field is what was damaged) each later offset is tried, and one is
///   taken only where a put starts that is followed by another record that verifies (or by the
///   end of the segment, or by a torn record): two records in a row, each checksummed. Removes
///   between the damage and that put are skipped with it, so the messages they settled are
///   delivered again rather than a remove inside the damaged payload settling a message.
fn resync(bytes: &[u8], at: usize, last_put: Option<u64>) -> Option<usize> {
    let declared = bytes.get(at..at + 4).map(|len| u32::from_le_bytes(len.try_into().expect("4 bytes")));
    if let Some(len) = declared.filter(|len| (9..=MAX_LEN).contains(len)) {
        let next = at + 8 + len as usize;
        if next < bytes.len() && record_at(bytes, next, last_put).is_some() {
            return Some(next);
        }
    }
    (at + 1..bytes.len()).find(|&from| match record_at(bytes, from, last_put) {
        Some((Record::Put { .. }, end)) => followed(bytes, end),
        _ => false,
    })
}

/// Whether a record that verifies and is in order (as [`resync`] takes them, a remove too) starts
/// after the unreadable record at `at`, followed by another record that verifies (or by the end
/// of the segment, or by a torn record): removes after a damaged length field, which [`resync`]
/// does not resume at, show that the damage is not a torn tail.
fn records_follow(bytes: &[u8], at: usize, last_put: Option<u64>) -> bool {
    (at + 1..bytes.len())
        .any(|from| record_at(bytes, from, last_put).is_some_and(|(_, end)| followed(bytes, end)))
}

/// The record that verifies and is in order after `last_put` (see [`resync`]) at `from`, if any,
/// with where it ends.
fn record_at(bytes: &[u8], from: usize, last_put: Option<u64>) -> Option<(Record, usize)> {
    let in_order = |record: &Record| match record {
        Record::Put { seq, .. } => last_put.is_none_or(|last| *seq > last),
        Record::Remove { seq } => last_put.is_some_and(|last| *seq <= last),
    };
    match might_start_record(&bytes[from..]).then(|| read(&bytes[from..])) {
        Some(Ok((record, size))) if in_order(&record) => Some((record, from + size)),
        _ => None,
    }
}

/// Whether what follows a record ending at `end` bears it out: the end of the segment, a record
/// that verifies, or a torn one.
fn followed(bytes: &[u8], end: usize) -> bool {
    end == bytes.len() || matches!(read(&bytes[end..]), Ok(_) | Err(TORN))
}

/// Whether a record may start at `bytes`, by what costs no checksum: its length fits in `bytes`
/// and its kind is known, a remove's body empty. Most offsets fail this, so that trying each in
/// turn seldom checksums more than a few bytes.
fn might_start_record(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..HEADER) else { return false };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let fits = (9..=MAX_LEN).contains(&len) && 8 + len as usize <= bytes.len();
    fits && match header[8] {
        PUT => len >= 9 + 8,
        MOVED => len >= 9 + 8 + 8,
        REMOVE => len == 9,
        _ => false,
    }
}

const TORN: &str = "torn record (the file ends inside it)";

/// The record at the start of `bytes`, with its size.
fn read(bytes: &[u8]) -> Result<(Record, usize), &'static str> {
    let field = |at: usize, n: usize| bytes.get(at..at + n).ok_or(TORN);
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
        PUT => read_put(seq, seq, body)?,
        MOVED => {
            let first = u64::from_le_bytes(
                body.get(..8).ok_or("moved put without its first")?.try_into().expect("8"),
            );
            read_put(seq, first, &body[8..])?
        }
        REMOVE => Record::Remove { seq },
        _ => return Err("unknown record kind"),
    };
    Ok((record, 8 + len as usize))
}

/// The put of a message first put as `first`, as `seq`, from its put body.
fn read_put(seq: u64, first: u64, body: &[u8]) -> Result<Record, &'static str> {
    let accepted_ms = u64::from_le_bytes(body.get(..8).ok_or("put without a time")?.try_into().expect("8"));
    let mut messages = switchyard_wire::decode(&body[8..]);
    let message = match (messages.next(), messages.next()) {
        (Some(Ok(message)), None) => Message::from_wire(&message),
        _ => return Err("put whose message cannot be decoded"),
    };
    Ok(Record::Put { seq, first, accepted_ms, message: Message { id: 0, ..message } })
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

    /// `whole` with byte `at` xor'ed with `mask`.
    fn flipped_at(whole: &[u8], at: usize, mask: u8) -> Vec<u8> {
        let mut bytes = whole.to_vec();
        bytes[at] ^= mask;
        bytes
    }

    /// The sequence numbers of the records `scan` read, in order.
    fn seqs_of(scan: &Scan) -> Vec<u64> {
        scan.records.iter().map(|(record, _)| record.seq()).collect()
    }

    /// Where each record of `bytes` starts.
    fn starts(bytes: &[u8]) -> Vec<usize> {
        let scan = scan(bytes, None);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        let sizes = scan.records.iter().map(|(_, size)| *size as usize);
        sizes.scan(0, |at, size| Some(std::mem::replace(at, *at + size))).collect()
    }

    #[test]
    fn records_read_back_as_written() {
        let scan = scan(&log_of(3), None);
        assert_eq!(scan.damage, []);
        assert_eq!(scan.records.len(), 4);
        assert_eq!(
            scan.records[1].0,
            Record::Put { seq: 1, first: 1, accepted_ms: 1_001, message: message(1) }
        );
        assert_eq!(scan.records[3].0, Record::Remove { seq: 0 });
        assert_eq!(scan.last_put, Some(2));
    }

    #[test]
    fn a_moved_put_reads_back_as_its_first_put_under_its_own_sequence_number() {
        let mut bytes = log_of(2);
        write_moved(&mut bytes, 9, 1, &put_body(&message(1), 1_001));
        let scan = scan(&bytes, None);
        assert_eq!(scan.damage, []);
        let moved = Record::Put { seq: 9, first: 1, accepted_ms: 1_001, message: message(1) };
        assert_eq!(scan.records[3].0, moved);
        assert_eq!(scan.last_put, Some(9), "a moved put is in the log's order of puts");
    }

    #[test]
    fn a_truncated_tail_leaves_the_intact_prefix() {
        let whole = log_of(3);
        let last_put_ends = whole.len() - HEADER;
        for cut in [whole.len() - 1, last_put_ends - 1, last_put_ends - 200, 3] {
            let scan = scan(&whole[..cut], None);
            let [tail] = &scan.damage[..] else { panic!("cut at {cut}: {:?}", scan.damage) };
            assert_eq!((tail.problem, tail.tail), (TORN, true), "cut at {cut}");
            let kept = scan.records.iter().map(|(_, size)| size).sum::<u64>();
            assert_eq!(kept + tail.len, cut as u64, "cut at {cut}");
            assert_eq!(tail.offset, kept, "cut at {cut}");
        }
        let scan = scan(&whole[..last_put_ends - 1], None);
        assert_eq!(scan.records.len(), 2, "the two puts before the torn third");
    }

    #[test]
    fn a_corrupt_record_at_the_tail_is_refused_and_what_precedes_it_kept() {
        let mut bytes = log_of(3);
        let last_put_ends = bytes.len() - HEADER;
        bytes[last_put_ends - 10] ^= 0xff;
        let read = scan(&bytes, None);
        let [damage] = &read.damage[..] else { panic!("{:?}", read.damage) };
        assert_eq!(
            (damage.problem, damage.tail),
            ("checksum mismatch", false),
            "the remove after it is read"
        );
        assert_eq!(read.records.len(), 3);
        let mut bytes = log_of(3);
        bytes.truncate(last_put_ends);
        bytes[last_put_ends - 10] ^= 0xff;
        let scan = scan(&bytes, None);
        let [tail] = &scan.damage[..] else { panic!("{:?}", scan.damage) };
        assert_eq!((tail.problem, tail.tail), ("checksum mismatch", true), "nothing after it: the tail");
        assert_eq!(scan.records.len(), 2);
        assert_eq!(tail.offset + tail.len, bytes.len() as u64);
    }

    #[test]
    fn a_length_field_of_garbage_is_damage_not_a_huge_read() {
        let mut bytes = log_of(1);
        bytes.extend_from_slice(&[0xff; 32]);
        let scan = scan(&bytes, None);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!((scan.damage[0].problem, scan.damage[0].tail), ("impossible record length", true));
        assert_eq!(scan.records.len(), 2);
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_the_records_after_it_read() {
        let whole = log_of(4);
        let at = starts(&whole);
        for flipped in [at[1] + 4, at[1] + 8, at[1] + 12, at[1] + HEADER + 100, at[2] - 1] {
            let bytes = flipped_at(&whole, flipped, 0x01);
            let scan = scan(&bytes, None);
            let seqs = seqs_of(&scan);
            assert_eq!(seqs, [0, 2, 3, 0], "byte {flipped} flipped");
            let (offset, len) = (at[1] as u64, (at[2] - at[1]) as u64);
            assert_eq!(scan.damage.len(), 1, "byte {flipped} flipped");
            assert_eq!(
                (scan.damage[0].offset, scan.damage[0].len, scan.damage[0].tail),
                (offset, len, false)
            );
        }
    }

    #[test]
    fn a_damaged_length_field_is_passed_by_finding_the_next_put_and_the_record_after_it() {
        let whole = log_of(4);
        let at = starts(&whole);
        for (flipped, problem) in [(at[1], "checksum mismatch"), (at[1] + 3, "impossible record length")] {
            let bytes = flipped_at(&whole, flipped, 0x40);
            let scan = scan(&bytes, None);
            let seqs = seqs_of(&scan);
            assert_eq!(seqs, [0, 2, 3, 0], "byte {flipped} flipped");
            let damage = &scan.damage[0];
            assert_eq!(
                (damage.offset, damage.len, damage.problem),
                (at[1] as u64, (at[2] - at[1]) as u64, problem)
            );
        }
    }

    #[test]
    fn a_damaged_length_field_followed_only_by_removes_is_not_a_tail() {
        let mut whole = log_of(3);
        write_remove(&mut whole, 1);
        let at = starts(&whole);
        for (flipped, problem) in [(at[2], "checksum mismatch"), (at[2] + 3, "impossible record length")] {
            let bytes = flipped_at(&whole, flipped, 0x40);
            let scan = scan(&bytes, None);
            let seqs = seqs_of(&scan);
            assert_eq!(seqs, [0, 1], "byte {flipped} flipped: the removes after it are skipped with it");
            let [damage] = &scan.damage[..] else { panic!("{:?}", scan.damage) };
            assert_eq!(
                (damage.offset, damage.len, damage.problem, damage.tail),
                (at[2] as u64, (bytes.len() - at[2]) as u64, problem, false),
                "byte {flipped} flipped"
            );
        }
    }

    #[test]
    fn an_old_record_inside_a_damaged_put_is_not_taken_for_the_log() {
        // A message whose payload holds spool records (a segment sent as a message), its length
        // field damaged: trying each offset meets the records in its payload.
        let mut bytes = Vec::new();
        write_put(&mut bytes, 5, &put_body(&message(5), 1_005));
        let carrier = Message::new("orders.eu", log_of(3));
        let carrier_at = bytes.len();
        write_put(&mut bytes, 6, &put_body(&carrier, 1_006));
        write_put(&mut bytes, 7, &put_body(&message(7), 1_007));
        write_remove(&mut bytes, 6);
        let valid_put_at = starts(&bytes)[2];
        bytes[carrier_at + 3] ^= 0x40;
        let scan = scan(&bytes, None);
        let seqs = seqs_of(&scan);
        assert_eq!(seqs, [5, 7, 6], "the payload's puts 0-2 and its remove of 0 are not read");
        let damage = &scan.damage[0];
        assert_eq!((damage.offset, damage.len), (carrier_at as u64, (valid_put_at - carrier_at) as u64));
    }

    #[test]
    fn records_out_of_sequence_order_are_not_resumed_at() {
        let mut bytes = Vec::new();
        write_put(&mut bytes, 8, &put_body(&message(8), 1_008));
        let at = bytes.len();
        write_put(&mut bytes, 9, &put_body(&message(9), 1_009));
        // Not a log this host wrote: a put whose number is not above the last one's.
        write_put(&mut bytes, 3, &put_body(&message(3), 1_003));
        write_put(&mut bytes, 10, &put_body(&message(10), 1_010));
        bytes[at + HEADER + 20] ^= 0x01;
        let scan = scan(&bytes, None);
        let seqs = seqs_of(&scan);
        assert_eq!(seqs, [8, 10], "9 lost and 3 skipped with it");
        assert_eq!(scan.damage.len(), 1);
    }
}
