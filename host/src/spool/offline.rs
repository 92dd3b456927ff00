//! The spool of a host that is not running, for its operator: `switchyard spool inspect` reads it
//! without changing anything; `switchyard spool drain` writes what it holds as NDJSON and removes it.

use super::log::{Contents, LOCK_FILE, SegmentLog};
use super::record;
use super::{Damage, SpoolError, writer::now_ms};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a spool directory holds: [`inspect`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpoolReport {
    /// The spool directory.
    pub dir: PathBuf,
    /// Whether a process (a running host, a drain) holds the spool's lock now.
    pub in_use: bool,
    /// Messages held: accepted, outcome not recorded.
    pub depth: u64,
    /// Bytes of their records.
    pub bytes: u64,
    /// Bytes of the segment files.
    pub disk_bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Milliseconds since the oldest message held was accepted.
    pub oldest_age_ms: Option<u64>,
    /// Messages held per topic.
    pub topics: BTreeMap<String, u64>,
    /// Unreadable bytes in the segments: a torn tail of the last one, and corruption (skipped:
    /// the messages after it are counted above). A host started on the spool moves
    /// them aside.
    pub damage: Vec<Damage>,
}

/// Read the spool in `dir` without changing it (a running host may hold it: the figures are then
/// a moment's).
pub fn inspect(dir: &Path) -> Result<SpoolReport, SpoolError> {
    let io = |error| SpoolError::Io { dir: dir.to_owned(), error };
    let contents = Contents::read(dir).map_err(io)?;
    let in_use = match std::fs::File::open(dir.join(LOCK_FILE)) {
        Ok(lock) => lock.try_lock_shared().is_err(),
        Err(_) => false,
    };
    let mut topics = BTreeMap::new();
    for entry in contents.messages.values() {
        *topics.entry(entry.message.topic.clone()).or_default() += 1;
    }
    let oldest = contents.messages.values().map(|entry| entry.accepted_ms).min();
    Ok(SpoolReport {
        dir: dir.to_owned(),
        in_use,
        depth: contents.messages.len() as u64,
        bytes: contents.live_bytes(),
        disk_bytes: contents.disk_bytes,
        segments: contents.segment_count(),
        oldest_age_ms: oldest.map(|oldest| now_ms().saturating_sub(oldest)),
        topics,
        damage: contents.damage().cloned().collect(),
    })
}

/// What [`drain`] did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Drained {
    /// Messages written out and removed from the spool.
    pub messages: u64,
    /// Unreadable bytes found: torn tails and corruption skipped (moved aside to `NAME.seg.damaged`).
    pub damage: Vec<Damage>,
}

/// Take the spool in `dir` (refused while a host holds it), write each message it holds to `out`
/// as one JSON object a line, oldest first — `{"id": x-sy-id, "accepted_ms", "topic", "priority",
/// "headers": [[name, value], …], "payload"}` (`"payload_base64"` instead when it is not UTF-8) —
/// and, once all are written and `out` flushed, remove them. If writing fails, nothing is removed.
/// The records are gone once this returns: for the messages to survive a crash, `out`'s flush must
/// make them durable (`switchyard spool drain` fsyncs a regular file there, and its directory).
pub fn drain(dir: &Path, out: &mut dyn Write) -> Result<Drained, SpoolError> {
    let io = |error| SpoolError::Io { dir: dir.to_owned(), error };
    let (mut log, messages, damage) = SegmentLog::open(dir).map_err(io)?;
    for entry in &messages {
        let message = &entry.message;
        let mut line = serde_json::json!({
            "id": message.unique_id(),
            "accepted_ms": entry.accepted_ms,
            "topic": message.topic,
            "priority": message.priority,
            "headers": message.headers,
        });
        let (field, payload) = crate::message::payload_field(&message.payload);
        line[field] = payload;
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)?;
    let seqs: Vec<u64> = messages.iter().map(|entry| entry.seq).collect();
    let mut removes = Vec::new();
    seqs.iter().for_each(|seq| record::write_remove(&mut removes, *seq));
    log.append(&removes, &[], &seqs, true).map_err(io)?;
    Ok(Drained { messages: messages.len() as u64, damage })
}
