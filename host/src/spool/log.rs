//! The segment log: numbered append-only files `NNNNNNNNNNNNNNNN.seg` in the spool directory. Puts and
//! removes are appended to the newest segment; a new one is started past [`SEGMENT_BYTES`] and at
//! every open (never appending after a tail that may be torn). The oldest segments are deleted, in
//! order, once every message put in them is removed, so a remove is never deleted before its put.
//! A message held for long (or for good: its outcome never recorded in this run) would pin its
//! segment and every later one; once the segments behind the head outnumber what the messages held
//! need, the oldest one's messages are copied forward into the head as moved puts (see
//! [`SegmentLog::compact`]), and it goes.
//!
//! The directory, if the log creates it, is `0700`; its files are `0600` (they hold messages'
//! payloads). Every method does blocking file I/O; the spool's writer thread owns the log.

use super::record::{self, Record};
use crate::message::Message;
use crate::owner_only;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A segment past this size is closed and a new one started.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;

/// Segments behind the head kept, beyond twice the segments the held messages' records fill,
/// before the oldest is compacted.
const COMPACT_SLACK: u64 = 2;

/// A spooled message recovered at open.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) seq: u64,
    /// When it was accepted, unix milliseconds.
    pub(crate) accepted_ms: u64,
    pub(crate) message: Message,
}

/// Bytes of a segment that could not be read as records, found at open: moved aside to
/// `NAME.seg.damaged` and taken out of the segment, which keeps every record that verifies.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Damage {
    /// The segment.
    pub segment: PathBuf,
    /// A torn tail or corruption between records.
    pub kind: DamageKind,
    /// Where the unreadable bytes start, in bytes from the start of the segment as it was found.
    pub offset: u64,
    /// How many bytes could not be read (and were skipped).
    pub lost: u64,
    /// Why the record at `offset` could not be read.
    pub problem: &'static str,
}

/// What kind of [`Damage`] a segment had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DamageKind {
    /// Nothing readable follows the unreadable bytes in the last segment, the one being written
    /// at the crash: its last record is incomplete or fails its checksum, as a crash cutting a
    /// write short leaves it. Expected after a crash (such a record was never acknowledged), so
    /// it is cut off quietly.
    TornTail,
    /// Any other unreadable bytes (bit rot, a bad sector): intact records follow them, or they
    /// end a segment that later segments follow (it was fsync'd whole before the next was
    /// started). They are skipped and reading resumes at the next record that verifies, so the
    /// messages and removes after them are recovered. Messages whose put was in them are lost;
    /// those whose remove was in them (or among the removes after a damaged length field, before
    /// the next put) are delivered again.
    Corrupt,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (segment, lost, offset, problem) = (self.segment.display(), self.lost, self.offset, self.problem);
        match self.kind {
            DamageKind::TornTail => {
                write!(f, "{segment}: a torn tail of {lost} bytes at offset {offset} ({problem})")
            }
            DamageKind::Corrupt => write!(
                f,
                "{segment}: {lost} corrupt bytes at offset {offset} ({problem}) skipped; the records after \
                 them, from offset {}, are read",
                offset + lost
            ),
        }
    }
}

/// A message in the log that has not reached its outcome.
#[derive(Debug, Clone, Copy)]
struct Live {
    /// The segment of its latest put (moved puts copy it forward).
    segment: u64,
    bytes: u64,
    accepted_ms: u64,
}

/// The lock file of a spool directory: held (an exclusive `flock`) by the one process using it.
pub(crate) const LOCK_FILE: &str = "lock";

/// The segment log of one spool directory.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    /// The lock file, locked while the log is open: a second host (or `switchyard spool drain`)
    /// on the same directory would reuse sequence numbers, and one's removes delete the other's
    /// messages.
    _lock: File,
    /// The segment appended to: its number, file and length.
    head: (u64, File, u64),
    /// Set once the head segment is found deleted under the running host (its directory removed):
    /// nothing written since is on disk, so every later append is refused with this problem.
    deleted: Option<String>,
    /// Messages not yet removed, by the sequence number of their first put (so the first is the
    /// oldest): the one their remove names.
    live: BTreeMap<u64, Live>,
    /// Live messages per segment, for every segment on disk (zero for those waiting their turn).
    per_segment: BTreeMap<u64, usize>,
    /// Bytes of the segment files.
    disk_bytes: u64,
    /// Bytes of live records.
    live_bytes: u64,
    /// The next sequence number.
    next_seq: u64,
}

/// What the segments of a spool directory hold, read without changing anything.
#[derive(Debug, Default)]
pub(crate) struct Contents {
    /// Messages put and not removed, by sequence number (so oldest first).
    pub(crate) messages: BTreeMap<u64, Recovered>,
    /// Each segment's number, path, and the bytes of it that could not be read.
    segments: Vec<(u64, PathBuf, Vec<Damage>)>,
    live: BTreeMap<u64, Live>,
    /// Bytes of the segment files.
    pub(crate) disk_bytes: u64,
    next_seq: u64,
}

impl Contents {
    /// Read every record of every segment of `dir` (none if it does not exist) that verifies,
    /// skipping the bytes that do not. A segment gone by the time it is read is skipped: a running
    /// host deleted it after the listing, every message put in it settled or moved forward.
    pub(crate) fn read(dir: &Path) -> io::Result<Contents> {
        let mut contents = Contents::default();
        let found = match dir.exists() {
            true => segments(dir)?,
            false => Vec::new(),
        };
        let mut last_put = None;
        // Only the segment being written at the crash can have a torn tail.
        let head = found.last().map(|(number, _)| *number);
        for (number, path) in found {
            let bytes = match fs::read(&path) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                read => read?,
            };
            let scan = record::scan(&bytes, last_put);
            last_put = scan.last_put;
            contents.disk_bytes += bytes.len() as u64;
            let damage = scan.damage.into_iter().map(|unreadable| Damage {
                segment: path.clone(),
                kind: match unreadable.tail && Some(number) == head {
                    true => DamageKind::TornTail,
                    false => DamageKind::Corrupt,
                },
                offset: unreadable.offset,
                lost: unreadable.len,
                problem: unreadable.problem,
            });
            let damage = damage.collect();
            contents.segments.push((number, path, damage));
            for (record, bytes) in scan.records {
                contents.next_seq = contents.next_seq.max(record.seq() + 1);
                match record {
                    // A moved put takes the place of its first put's (or an earlier move's).
                    Record::Put { first: seq, accepted_ms, message, .. } => {
                        contents.live.insert(seq, Live { segment: number, bytes, accepted_ms });
                        contents.messages.insert(seq, Recovered { seq, accepted_ms, message });
                    }
                    Record::Remove { seq } => {
                        contents.live.remove(&seq);
                        contents.messages.remove(&seq);
                    }
                }
            }
        }
        Ok(contents)
    }

    /// The unreadable bytes found, segment by segment.
    pub(crate) fn damage(&self) -> impl Iterator<Item = &Damage> {
        self.segments.iter().flat_map(|(_, _, damage)| damage)
    }

    /// Bytes of the records of the messages held.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.values().map(|entry| entry.bytes).sum()
    }

    /// The segment files, by number.
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl SegmentLog {
    /// Open (creating) the log in `dir`, locking it: every record that verifies is read back;
    /// unreadable bytes are moved aside to `NAME.seg.damaged` and taken out of their segment, a
    /// torn tail of the last segment logged quietly (info), any other damage loudly (a warning).
    /// Returns the log, its live messages oldest first, and the damage found.
    pub(crate) fn open(dir: &Path) -> io::Result<(SegmentLog, Vec<Recovered>, Vec<Damage>)> {
        owner_only::create_dir_all(dir)?;
        let lock =
            owner_only::options().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        if let Err(error) = lock.try_lock() {
            let problem = format!("in use by another process (its {LOCK_FILE} file is locked): {error}");
            return Err(io::Error::new(io::ErrorKind::WouldBlock, problem));
        }
        let Contents { messages, segments, live, mut disk_bytes, next_seq } = Contents::read(dir)?;
        // The last run's removes, written without an fsync (see `append`), are read as settled:
        // its last segment is sealed before the next is started, as a full one is, so that
        // only the last segment can have a torn tail and no message settled is delivered again.
        if let Some((_, last, _)) = segments.last() {
            File::open(last)?.sync_data()?;
        }
        let mut damage = Vec::new();
        let mut per_segment = BTreeMap::new();
        for (number, path, damaged) in segments {
            if !damaged.is_empty() {
                set_aside(dir, &path, &damaged)?;
                for damaged in damaged {
                    match damaged.kind {
                        DamageKind::TornTail => tracing::info!(
                            "spool: {damaged}, as a crash mid-write leaves it: cut off, kept in {}.damaged",
                            path.display()
                        ),
                        DamageKind::Corrupt => tracing::warn!(
                            "spool: {damaged}; a message put in them is lost, one settled in them is \
                             delivered again; the bytes are kept in {}.damaged",
                            path.display()
                        ),
                    }
                    disk_bytes -= damaged.lost;
                    damage.push(damaged);
                }
            }
            per_segment.insert(number, 0);
        }
        for entry in live.values() {
            *per_segment.get_mut(&entry.segment).expect("its segment was read") += 1;
        }
        let live_bytes = live.values().map(|entry| entry.bytes).sum();
        let head_number = per_segment.keys().next_back().map_or(1, |last| last + 1);
        let head = (head_number, create_segment(dir, head_number)?, 0);
        per_segment.insert(head_number, 0);
        let mut log = SegmentLog {
            dir: dir.to_owned(),
            _lock: lock,
            head,
            deleted: None,
            live,
            per_segment,
            disk_bytes,
            live_bytes,
            next_seq,
        };
        log.reclaim()?;
        Ok((log, messages.into_values().collect(), damage))
    }

    /// The sequence number the next put takes.
    pub(crate) fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Append `bytes` (whole records) to the head segment, fsync'd when `sync`. `puts` are the
    /// puts among them (sequence number, record bytes, accepted at), tracked once written, and
    /// `removes` the sequence numbers of the removes among them, forgotten once written (before
    /// the compaction the append may bring: a message it moved after its remove would be read as
    /// held again at the next open, and delivered twice); segments no longer needed go. A
    /// failed write is cut off, its segment fsync'd, and the next goes to a new segment (to the
    /// same one when no new one can be started). Once the head segment is found
    /// deleted (see [`SegmentLog::check_head`]) every append is refused.
    ///
    /// `puts` took their numbers from [`next_seq`](Self::next_seq) before this call, so the
    /// compaction a new head brings comes after `bytes`: its moved puts take the numbers after
    /// theirs, and puts keep the order of their numbers along the log (which reading past damage
    /// relies on, see [`record::scan`]).
    pub(crate) fn append(
        &mut self,
        bytes: &[u8],
        puts: &[(u64, u64, u64)],
        removes: &[u64],
        sync: bool,
    ) -> io::Result<()> {
        if let Some(problem) = &self.deleted {
            return Err(io::Error::new(io::ErrorKind::NotFound, problem.clone()));
        }
        let full = self.head.2 >= SEGMENT_BYTES;
        if full {
            // Removes are written without an fsync: a segment is sealed whole, so that only the
            // last one can have a torn tail after a crash (see `DamageKind::TornTail`).
            self.head.1.sync_data()?;
            self.start_head()?;
        }
        let (_, file, len) = &mut self.head;
        let written = file.write_all(bytes).and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if let Err(error) = written {
            // Cut back to its whole records and sealed, as a full segment is (above), before the
            // next is started: removes written unsynced before this batch are in it. The write's
            // error is the one told: a failure to start the next segment only keeps this one.
            let _ = file.set_len(*len);
            if let Err(problem) = file.sync_data().and_then(|()| self.rotate()) {
                tracing::warn!(error = %problem, "the spool could not start a new segment after a failed write: it goes on in this one");
            }
            return Err(error);
        }
        // After the write and fsync, so a deletion before they finished refuses this batch too.
        self.check_head()?;
        let (number, _, len) = &mut self.head;
        *len += bytes.len() as u64;
        self.disk_bytes += bytes.len() as u64;
        let segment = *number;
        for &(seq, bytes, accepted_ms) in puts {
            self.live.insert(seq, Live { segment, bytes, accepted_ms });
            self.live_bytes += bytes;
        }
        *self.per_segment.get_mut(&segment).expect("the head is tracked") += puts.len();
        for &seq in removes {
            if let Some(entry) = self.live.remove(&seq) {
                self.live_bytes -= entry.bytes;
                *self.per_segment.get_mut(&entry.segment).expect("tracked") -= 1;
            }
        }
        let settled = if full { self.compact_oldest() } else { self.reclaim() };
        if let Err(error) = settled {
            // `bytes` is on disk: a segment that stays is no reason to refuse it.
            tracing::warn!(%error, "the spool could not delete a settled segment; it stays on disk");
        }
        Ok(())
    }

    /// Fail (and fail every later append) when the head segment is no longer in its directory: the
    /// state directory or the segment was deleted under the running host. Writes to an unlinked file
    /// succeed, but nothing of them survives a crash, so acknowledging them would lose messages.
    /// One `fstat` per batch.
    fn check_head(&mut self) -> io::Result<()> {
        let (number, file, _) = &self.head;
        if file.metadata()?.nlink() > 0 {
            return Ok(());
        }
        // Named without its directory: the text reaches clients refused for it.
        let problem = format!(
            "its segment {number:016}.seg was deleted while the host ran (was the state directory \
             removed?): messages written since are not on disk, and none is accepted until the host is \
             restarted"
        );
        self.deleted = Some(problem.clone());
        Err(io::Error::new(io::ErrorKind::NotFound, problem))
    }

    /// Live messages, their bytes, the oldest's admission time (unix ms) and the segment files' bytes.
    pub(crate) fn figures(&self) -> (usize, u64, Option<u64>, u64) {
        let oldest = self.live.values().next().map(|entry| entry.accepted_ms);
        (self.live.len(), self.live_bytes, oldest, self.disk_bytes)
    }

    /// Start a new head segment and [compact](Self::compact_oldest) the oldest.
    fn rotate(&mut self) -> io::Result<()> {
        self.start_head()?;
        self.compact_oldest()
    }

    /// Start a new head segment. The old one is deleted if no record was written to it: a full
    /// disk refuses write after write, each followed by a rotation, and the empty segments it left
    /// took the inodes a restart needs.
    fn start_head(&mut self) -> io::Result<()> {
        let number = self.head.0 + 1;
        let (old, _, old_len) =
            std::mem::replace(&mut self.head, (number, create_segment(&self.dir, number)?, 0));
        self.per_segment.insert(number, 0);
        if old_len == 0 {
            // Nothing in it but, at most, a failed write's bytes that were never acknowledged.
            self.per_segment.remove(&old);
            match fs::remove_file(segment_path(&self.dir, old)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }

    /// [`compact`](Self::compact) the oldest segment if it is due, then delete the segments
    /// settled. A failed compaction is logged: the segment stays until its messages are settled.
    fn compact_oldest(&mut self) -> io::Result<()> {
        if let Err(error) = self.compact() {
            tracing::warn!(%error, "the spool could not compact its oldest segment: it stays on disk until the messages in it are settled");
        }
        self.reclaim()
    }

    /// Copy the messages held in the oldest segment forward into the head (as moved puts, fsync'd),
    /// when the segments behind the head are more than twice the segments the held messages' records
    /// fill and [`COMPACT_SLACK`] more: [`reclaim`](Self::reclaim) then deletes it, and every
    /// settled segment after it. A segment goes only once every older one has (a remove must not
    /// outlive its put), so without this one message held for long (a slow destination's backlog)
    /// or for good (its outcome never recorded in this run: a dead letter lost, a panic) kept every
    /// segment written after it, and the disk filled. One segment at each rotation: the copying is
    /// at most a segment's bytes for every segment written. A crash midway leaves a message in both
    /// segments, and the moved put, later in the log, stands for it.
    fn compact(&mut self) -> io::Result<()> {
        let behind = self.per_segment.len() as u64 - 1;
        if behind <= COMPACT_SLACK + 2 * self.live_bytes.div_ceil(SEGMENT_BYTES) {
            return Ok(());
        }
        let Some((&oldest, &held)) = self.per_segment.first_key_value() else { return Ok(()) };
        if held == 0 || oldest == self.head.0 {
            return Ok(());
        }
        let segment = fs::read(segment_path(&self.dir, oldest))?;
        let (mut out, mut moved) = (Vec::new(), Vec::new());
        for (record, _) in record::scan(&segment, None).records {
            let Record::Put { first, accepted_ms, message, .. } = record else { continue };
            if self.live.get(&first).is_none_or(|entry| entry.segment != oldest) {
                continue;
            }
            let start = out.len();
            record::write_moved(&mut out, self.next_seq(), first, &record::put_body(&message, accepted_ms));
            moved.push((first, (out.len() - start) as u64));
        }
        let (head, file, len) = &mut self.head;
        if let Err(error) = file.write_all(&out).and_then(|()| file.sync_data()) {
            let _ = file.set_len(*len);
            return Err(error);
        }
        *len += out.len() as u64;
        self.disk_bytes += out.len() as u64;
        let head = *head;
        for &(first, bytes) in &moved {
            let entry = self.live.get_mut(&first).expect("held: only this thread forgets");
            self.live_bytes = self.live_bytes - entry.bytes + bytes;
            (entry.segment, entry.bytes) = (head, bytes);
        }
        *self.per_segment.get_mut(&oldest).expect("tracked") -= moved.len();
        *self.per_segment.get_mut(&head).expect("the head is tracked") += moved.len();
        Ok(())
    }

    /// Make the head's writes fail, as a full disk does: its file is swapped for a read-only
    /// handle on it, until the next rotation.
    #[cfg(test)]
    pub(crate) fn fail_writes(&mut self) {
        self.head.1 = File::open(segment_path(&self.dir, self.head.0)).expect("the head segment is there");
    }

    /// Delete the oldest segments while nothing live is in them (never the head).
    fn reclaim(&mut self) -> io::Result<()> {
        while let Some((&oldest, &0)) = self.per_segment.first_key_value() {
            if oldest == self.head.0 {
                break;
            }
            let path = segment_path(&self.dir, oldest);
            self.disk_bytes = self.disk_bytes.saturating_sub(fs::metadata(&path).map_or(0, |m| m.len()));
            match fs::remove_file(&path) {
                // Deleted by someone else (the state directory removed): as good as reclaimed;
                // failing here would fail, and be logged, at every later remove.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                removed => removed?,
            }
            self.per_segment.remove(&oldest);
        }
        Ok(())
    }
}

/// Move the unreadable bytes of the segment at `path` (`damage`, in order) to the end of
/// `NAME.seg.damaged` (fsync'd before the segment changes) and take them out of the segment: a
/// torn tail alone is cut off; otherwise the segment's records are written to a new file that
/// replaces it (fsync'd, then renamed over it).
fn set_aside(dir: &Path, path: &Path, damage: &[Damage]) -> io::Result<()> {
    let bytes = fs::read(path)?;
    let (mut kept, mut aside, mut at) = (Vec::with_capacity(bytes.len()), Vec::new(), 0);
    for damaged in damage {
        let (start, end) = (damaged.offset as usize, (damaged.offset + damaged.lost) as usize);
        kept.extend_from_slice(&bytes[at..start]);
        aside.extend_from_slice(&bytes[start..end]);
        at = end;
    }
    kept.extend_from_slice(&bytes[at..]);
    // Appended: damage found at an earlier start may be there, holding a lost message's bytes.
    owner_only::append(&path.with_extension("seg.damaged"), &aside)?;
    if let [tail] = damage
        && tail.kind == DamageKind::TornTail
    {
        // Fsync'd: the segment is no longer the last once the next is created.
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(tail.offset)?;
        return file.sync_all();
    }
    let rewritten = path.with_extension("seg.rewritten");
    let mut file = owner_only::options().write(true).create(true).truncate(true).open(&rewritten)?;
    file.write_all(&kept)?;
    file.sync_all()?;
    fs::rename(&rewritten, path)?;
    File::open(dir)?.sync_all()
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.seg"))
}

/// The segment files of `dir`, by number.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .extension()
            .filter(|ext| *ext == "seg")
            .and(path.file_stem())
            .and_then(|stem| stem.to_str()?.parse().ok());
        if let Some(number) = number {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Create segment `number` and fsync the directory so it lasts.
fn create_segment(dir: &Path, number: u64) -> io::Result<File> {
    let file = owner_only::options().create(true).append(true).open(segment_path(dir, number))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Put `payloads` in `log`, fsync'd, as the writer does; their sequence numbers.
    fn put(log: &mut SegmentLog, payloads: &[&str]) -> Vec<u64> {
        let (mut bytes, mut puts) = (Vec::new(), Vec::new());
        for payload in payloads {
            let (seq, start) = (log.next_seq(), bytes.len());
            let message = Message::new("t", payload.to_string()).with_header("x-sy-id", *payload);
            record::write_put(&mut bytes, seq, &record::put_body(&message, 7));
            puts.push((seq, (bytes.len() - start) as u64, 7));
        }
        log.append(&bytes, &puts, &[], true).unwrap();
        puts.iter().map(|(seq, ..)| *seq).collect()
    }

    fn remove(log: &mut SegmentLog, seqs: &[u64]) {
        let mut bytes = Vec::new();
        seqs.iter().for_each(|seq| record::write_remove(&mut bytes, *seq));
        log.append(&bytes, &[], seqs, false).unwrap();
    }

    fn payloads(recovered: &[Recovered]) -> Vec<String> {
        recovered.iter().map(|entry| String::from_utf8(entry.message.payload.to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_reopened_log_recovers_what_was_put_and_not_removed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert!(recovered.is_empty() && damage.is_empty());
        let seqs = put(&mut log, &["a", "b", "c"]);
        remove(&mut log, &seqs[1..2]);
        assert_eq!(log.figures().0, 2);
        drop(log);
        let (mut log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "c"]);
        assert_eq!(recovered[1].message.unique_id(), Some("c"));
        assert!(damage.is_empty());
        assert_eq!(log.figures().0, 2);
        assert!(log.next_seq() > seqs[2], "sequence numbers are never reused");
    }

    #[test]
    fn a_torn_tail_is_cut_off_moved_aside_and_the_intact_prefix_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        put(&mut log, &["a", "b"]);
        put(&mut log, &["c"]);
        let segment = log.head.0;
        drop(log);
        let path = segment_path(dir.path(), segment);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
        let (log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "b"]);
        assert_eq!(damage.len(), 1);
        assert_eq!(
            (damage[0].segment.clone(), damage[0].problem),
            (path.clone(), "torn record (the file ends inside it)")
        );
        assert_eq!(damage[0].kind, DamageKind::TornTail);
        assert_eq!(damage[0].offset + damage[0].lost, len - 5);
        let aside = fs::read(path.with_extension("seg.damaged")).unwrap();
        assert_eq!(aside.len() as u64, damage[0].lost, "the unreadable bytes are kept aside");
        assert_eq!(fs::metadata(&path).unwrap().len(), damage[0].offset);
        drop(log);
        let (_, again, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&again), ["a", "b"]);
        assert!(damage.is_empty(), "damage is reported once: {damage:?}");
    }

    #[test]
    fn a_corrupt_record_at_the_tail_is_reported_and_the_records_before_it_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        put(&mut log, &["a", "b", "c"]);
        let path = segment_path(dir.path(), log.head.0);
        drop(log);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "b"]);
        assert_eq!((damage[0].kind, damage[0].problem), (DamageKind::TornTail, "checksum mismatch"));
    }

    /// The segment `number` of `dir` with byte `at` of its record `index` flipped; where that
    /// record starts, and its size.
    fn flip(dir: &Path, number: u64, index: usize, at: usize) -> (u64, u64) {
        let path = segment_path(dir, number);
        let mut bytes = fs::read(&path).unwrap();
        let sizes = record::scan(&bytes, None).records.into_iter().map(|(_, size)| size);
        let starts: Vec<u64> =
            sizes.scan(0, |start, size| Some(std::mem::replace(start, *start + size))).collect();
        let next = starts.get(index + 1).copied().unwrap_or(bytes.len() as u64);
        bytes[starts[index] as usize + at] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        (starts[index], next - starts[index])
    }

    /// `damage` is one checksum mismatch of `lost` bytes at `offset` of segment `path`, and those
    /// bytes are what its `.damaged` file holds.
    fn assert_set_aside(damage: &[Damage], path: &Path, offset: u64, lost: u64) {
        let expected = Damage {
            segment: path.to_path_buf(),
            kind: DamageKind::Corrupt,
            offset,
            lost,
            problem: "checksum mismatch",
        };
        assert_eq!(damage, [expected]);
        assert_eq!(fs::read(path.with_extension("seg.damaged")).unwrap().len() as u64, lost);
    }

    #[test]
    fn a_corrupt_record_mid_segment_is_skipped_and_the_records_after_it_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let first = put(&mut log, &["a", "b", "c"]);
        put(&mut log, &["d"]);
        remove(&mut log, &first[..1]);
        put(&mut log, &["e"]);
        let (segment, before) = (log.head.0, log.head.2);
        drop(log);
        // The put of c, in the middle of its payload.
        let (offset, size) = flip(dir.path(), segment, 2, record::HEADER + 12);

        let (mut log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(
            payloads(&recovered),
            ["b", "d", "e"],
            "a was settled, c lost, d and e after it recovered"
        );
        let path = segment_path(dir.path(), segment);
        assert_set_aside(&damage, &path, offset, size);
        assert_eq!(fs::metadata(&path).unwrap().len(), before - size, "the corrupt bytes are taken out");
        assert_eq!(log.figures().0, 3);
        assert_eq!(log.figures().3, before - size);
        // The log goes on: a new put, and the recovered ones settled in turn.
        let more = put(&mut log, &["f"]);
        assert!(more[0] > first[2], "sequence numbers are never reused");
        remove(&mut log, &[recovered[0].seq]);
        drop(log);
        let (mut log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["d", "e", "f"]);
        assert!(damage.is_empty(), "damage is reported once: {damage:?}");
        let seqs: Vec<u64> = recovered.iter().map(|entry| entry.seq).collect();
        remove(&mut log, &seqs);
        drop(log);
        let (_, recovered, _) = SegmentLog::open(dir.path()).unwrap();
        assert!(recovered.is_empty());
        assert_eq!(
            segments(dir.path()).unwrap().len(),
            1,
            "the settled segments are deleted, the corrupt one too"
        );
    }

    #[test]
    fn a_corrupt_remove_delivers_its_message_again_and_loses_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let seqs = put(&mut log, &["a", "b"]);
        remove(&mut log, &seqs);
        put(&mut log, &["c"]);
        let segment = log.head.0;
        drop(log);
        // The remove of a (the third record): its sequence number.
        flip(dir.path(), segment, 2, 10);
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "c"], "a's remove is lost: a again; b settled, c recovered");
        assert_eq!(
            damage.iter().map(|damage| (damage.kind, damage.lost)).collect::<Vec<_>>(),
            [(DamageKind::Corrupt, record::HEADER as u64)]
        );
    }

    #[test]
    fn corruption_in_one_segment_leaves_the_next_segments_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        put(&mut log, &["a", "b"]);
        let first = log.head.0;
        log.rotate().unwrap();
        let later = put(&mut log, &["c"]);
        let head = log.head.0;
        drop(log);
        let head_bytes = fs::read(segment_path(dir.path(), head)).unwrap();
        // b, the last record of its segment: not a torn tail, since a later segment was started
        // after it was written whole.
        let (offset, size) = flip(dir.path(), first, 1, record::HEADER + 3);
        let (mut log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "c"]);
        let path = segment_path(dir.path(), first);
        assert_set_aside(&damage, &path, offset, size);
        assert_eq!(fs::metadata(&path).unwrap().len(), offset, "b's bytes are taken out");
        assert_eq!(
            fs::read(segment_path(dir.path(), head)).unwrap(),
            head_bytes,
            "the later segment is whole"
        );
        assert!(log.next_seq() > later[0]);
    }

    #[test]
    fn removes_after_a_damaged_length_field_make_it_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let seqs = put(&mut log, &["a", "b", "c"]);
        remove(&mut log, &seqs[..2]);
        let segment = log.head.0;
        drop(log);
        // The length field of c's put, the last put of the last segment: only removes follow.
        let (offset, _) = flip(dir.path(), segment, 2, 0);
        let size = fs::metadata(segment_path(dir.path(), segment)).unwrap().len() - offset;
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "b"], "c lost; a and b, whose removes are skipped, again");
        let summary: Vec<_> = damage.iter().map(|damage| (damage.kind, damage.offset, damage.lost)).collect();
        assert_eq!(summary, [(DamageKind::Corrupt, offset, size)]);
    }

    #[test]
    fn damage_found_at_a_later_start_is_added_to_what_was_set_aside_before() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        put(&mut log, &["a", "b", "c", "d"]);
        let segment = log.head.0;
        drop(log);
        let path = segment_path(dir.path(), segment);
        let mut aside = Vec::new();
        for (lost, recovered) in [("b", &["a", "c", "d"][..]), ("c", &["a", "d"])] {
            // The second record each time: b, then c once b's bytes are taken out.
            let (offset, size) = flip(dir.path(), segment, 1, record::HEADER + 12);
            aside.extend_from_slice(&fs::read(&path).unwrap()[offset as usize..(offset + size) as usize]);
            let (_, found, damage) = SegmentLog::open(dir.path()).unwrap();
            assert_eq!(payloads(&found), recovered);
            assert_eq!(damage.len(), 1, "{lost} corrupt: {damage:?}");
            assert_eq!(fs::read(path.with_extension("seg.damaged")).unwrap(), aside, "after {lost}");
        }
    }

    #[test]
    fn settled_segments_are_deleted_oldest_first_and_the_head_never() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let first = put(&mut log, &["a"]);
        log.rotate().unwrap();
        let second = put(&mut log, &["b"]);
        log.rotate().unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 3);
        remove(&mut log, &second);
        assert_eq!(segments(dir.path()).unwrap().len(), 3, "the older segment still holds a, so b's stays");
        remove(&mut log, &first);
        assert_eq!(segments(dir.path()).unwrap().len(), 1, "both settled: only the head is left");
        assert_eq!(log.figures(), (0, 0, None, log.head.2));
        drop(log);
        let (_, recovered, _) = SegmentLog::open(dir.path()).unwrap();
        assert!(recovered.is_empty());
    }

    #[test]
    fn a_segment_deleted_between_the_listing_and_its_reading_is_read_as_reclaimed() {
        // `switchyard spool inspect` reads the spool of a running host, which deletes settled
        // segments meanwhile: one it listed can be gone when it reads it. A dangling name stands
        // for that one here: listed, nothing there to read.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let (settled, settled_in) = (put(&mut log, &["settled"]), log.head.0);
        log.rotate().unwrap();
        put(&mut log, &["held"]);
        remove(&mut log, &settled);
        let reclaimed = segment_path(dir.path(), settled_in);
        assert!(!reclaimed.exists(), "settled, its segment is deleted");
        std::os::unix::fs::symlink(dir.path().join("gone"), &reclaimed).unwrap();
        let contents = Contents::read(dir.path()).unwrap();
        assert_eq!(contents.segment_count(), 1);
        assert_eq!(payloads(&contents.messages.into_values().collect::<Vec<_>>()), ["held"]);
    }

    #[test]
    fn messages_held_in_old_segments_are_moved_forward_and_the_settled_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let first = put(&mut log, &["kept", "settled"]);
        remove(&mut log, &first[1..]);
        let first_segment = segment_path(dir.path(), log.head.0);
        let before_compaction = fs::read(&first_segment).unwrap();
        log.rotate().unwrap();
        let second = put(&mut log, &["second"]);
        for round in 0..12 {
            log.rotate().unwrap();
            let settled = put(&mut log, &[&format!("settled {round}")]);
            remove(&mut log, &settled);
        }
        // Two held messages, a few bytes: the head, the slack and what they were moved to.
        let count = segments(dir.path()).unwrap().len();
        assert!(count <= 2 + COMPACT_SLACK as usize, "{count} segments kept for two messages held");
        assert_eq!(log.figures().0, 2);
        // A crash between a moved put's fsync and its old segment's deletion leaves both.
        fs::write(&first_segment, before_compaction).unwrap();
        drop(log);
        let (mut log, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(payloads(&recovered), ["kept", "second"], "once each, in the order they were put");
        assert_eq!(recovered.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [first[0], second[0]]);
        assert!(!first_segment.exists(), "the old copy's segment is settled");
        // Removed by the sequence number they were first put as, wherever they were moved to.
        remove(&mut log, &[first[0]]);
        drop(log);
        let (_, recovered, _) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["second"]);
    }

    /// Put `held` (never removed), then settled segments behind them up to the last rotation that
    /// compacts nothing, and mark the head full: the next append starts a new head and compacts
    /// the oldest segment, the one holding `held`, into it.
    /// The held messages' sequence numbers.
    fn hold_until_the_next_append_compacts(log: &mut SegmentLog, held: &[&str]) -> Vec<u64> {
        let seqs = put(log, held);
        let due = |log: &SegmentLog| COMPACT_SLACK + 2 * log.live_bytes.div_ceil(SEGMENT_BYTES);
        while (log.per_segment.len() as u64 - 1) < due(log) {
            log.rotate().unwrap();
            let settled = put(log, &["settled"]);
            remove(log, &settled);
        }
        // As a head written up to SEGMENT_BYTES leaves it, without writing 16 MiB.
        log.head.2 = SEGMENT_BYTES;
        seqs
    }

    /// The sequence numbers of the puts (moved ones too) in segment `number` of `dir`, in order,
    /// with their payloads.
    fn puts_in(dir: &Path, number: u64) -> Vec<(u64, String)> {
        let scan = record::scan(&fs::read(segment_path(dir, number)).unwrap(), None);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        let puts = scan.records.into_iter().filter_map(|(record, _)| match record {
            Record::Put { seq, message, .. } => {
                Some((seq, String::from_utf8(message.payload.to_vec()).unwrap()))
            }
            Record::Remove { .. } => None,
        });
        puts.collect()
    }

    #[test]
    fn puts_moved_forward_by_an_append_follow_its_puts_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        hold_until_the_next_append_compacts(&mut log, &["kept", "also kept"]);
        let full_head = log.head.0;
        // Numbered before the append, as the writer numbers a batch's puts.
        let acked = put(&mut log, &["acked"]);
        assert_ne!(log.head.0, full_head, "the append started a new head");
        let puts = puts_in(dir.path(), log.head.0);
        let payloads: Vec<&str> = puts.iter().map(|(_, payload)| payload.as_str()).collect();
        assert_eq!(payloads, ["acked", "kept", "also kept"], "the held messages were moved after the batch");
        assert_eq!(puts[0].0, acked[0]);
        assert!(puts.windows(2).all(|pair| pair[0].0 < pair[1].0), "put numbers only grow: {puts:?}");
    }

    #[test]
    fn a_message_settled_in_the_batch_that_compacts_stays_settled() {
        // Its remove and the compaction came with one append, the compaction after the batch: the
        // message, not yet forgotten, was moved after its remove, and read as held at the next open.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let held = hold_until_the_next_append_compacts(&mut log, &["kept", "settled"]);
        let full_head = log.head.0;
        remove(&mut log, &held[1..]);
        assert_ne!(log.head.0, full_head, "the append started a new head");
        drop(log);
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(payloads(&recovered), ["kept"], "the settled message came back");
    }

    #[test]
    fn corruption_after_a_compaction_loses_only_the_damaged_message() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        hold_until_the_next_append_compacts(&mut log, &["kept", "damaged"]);
        put(&mut log, &["acked"]);
        put(&mut log, &["later"]);
        let head = log.head.0;
        drop(log);
        let records = record::scan(&fs::read(segment_path(dir.path(), head)).unwrap(), None).records;
        let damaged = records.iter().position(
            |(record, _)| matches!(record, Record::Put { message, .. } if message.payload[..] == *b"damaged"),
        );
        flip(dir.path(), head, damaged.expect("moved into the head"), record::HEADER + 12);
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(payloads(&recovered), ["kept", "acked", "later"], "the intact acknowledged puts are read");
    }

    #[test]
    fn a_failed_write_is_the_error_told_when_no_new_segment_can_be_started_either() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let first = put(&mut log, &["a"]);
        // The next segment's name taken by a directory: it cannot be created (EISDIR).
        let next = segment_path(dir.path(), log.head.0 + 1);
        fs::create_dir(&next).unwrap();
        log.fail_writes();
        let mut bytes = Vec::new();
        record::write_remove(&mut bytes, first[0]);
        let error = log.append(&bytes, &[], &[], true).expect_err("the write fails");
        assert_eq!(error.raw_os_error(), Some(9), "EBADF, the write's own error: {error}");
        fs::remove_dir(&next).unwrap();
        drop(log);
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a"]);
        assert!(damage.is_empty(), "{damage:?}");
    }

    #[test]
    fn failed_writes_leave_no_empty_segments_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, ..) = SegmentLog::open(dir.path()).unwrap();
        let first = put(&mut log, &["a"]);
        for _ in 0..3 {
            log.fail_writes();
            let mut bytes = Vec::new();
            record::write_remove(&mut bytes, first[0]);
            log.append(&bytes, &[], &[], true).expect_err("the write fails");
        }
        assert_eq!(
            segments(dir.path()).unwrap().len(),
            2,
            "a's segment and one empty head, not one a failure"
        );
        put(&mut log, &["b"]);
        drop(log);
        let (_, recovered, damage) = SegmentLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&recovered), ["a", "b"]);
        assert!(damage.is_empty(), "{damage:?}");
    }
}
