//! The dead-letter file: `dead-letters.jsonl` in the host's state directory,
//! one [`DeadLetterRecord`] as JSON a line. A letter is appended and fsync'd
//! before it counts as dead-lettered; letters re-delivered are removed at
//! once from what the file is read and counted as holding, and cut out of it
//! by writing what is left to a temporary file and renaming it over the old
//! one once they make up half of it, or when [`compact`](DeadLetterFile::compact)ed
//! (at the end of a re-delivery pass): draining the file writes it about once
//! again, not once per read. A crash at any point leaves either file whole
//! (re-delivery is at-least-once: a crash before the rename sends the letters
//! removed since the last one again). A file removed, replaced or cut short
//! while the host runs (by hand, its letters exported; the state directory
//! removed) is noticed before and after each append and at each read, and
//! the letters of the file then at its path are counted afresh: a letter is
//! never counted as written to a file no longer there.
//!
//! Reading, writing and removing do blocking file I/O: call them off the async runtime's
//! threads (`spawn_blocking`). What the file holds for whom ([`letters`](DeadLetterFile::letters),
//! [`held_for`](DeadLetterFile::held_for)) is told without waiting for its file I/O.

use super::position::Position;
use super::record::DeadLetterRecord;
use crate::owner_only;
use crate::state_lock::StateLock;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file's name inside the state directory.
pub const FILE_NAME: &str = "dead-letters.jsonl";

/// Where lines of the file that cannot be read are set aside, byte for byte, beside it (a dead
/// letter is never dropped: one damaged on disk may be mended by hand).
pub const DAMAGED_FILE_NAME: &str = "dead-letters.jsonl.damaged";

/// The dead-letter file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter file {}: {error}", path.display())]
pub struct FileError {
    /// The file (or its temporary twin).
    pub path: PathBuf,
    /// What failed: quoted in the message, so not its source too (a report of the error and its
    /// sources, as `{:#}` of anyhow gives, said it twice).
    pub error: io::Error,
}

/// The dead-letter file of one host. One host per state directory: two
/// hosts sharing one would re-deliver each other's letters twice.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    /// The state directory's lock, when a host holds the directory: the file is made only in the
    /// directory the host holds.
    state_lock: Option<Arc<StateLock>>,
    /// Shows the letters held; set under `held`'s lock, so it never lags behind.
    gauge: Gauge,
    /// The letters held, by the dead-letter destination they are meant for. Changed only under
    /// `state`'s lock (taken first), and read without it: `state` is held for file I/O (an
    /// append's fsync, a rewrite of the whole file), and what the file holds for whom is asked on
    /// the async runtime's threads.
    held: Mutex<Held>,
    /// Held for every read and write, so the file is only ever seen whole.
    state: Mutex<State>,
}

/// Letters held, by the dead-letter destination they are meant for.
type Held = BTreeMap<String, usize>;

#[derive(Debug, Default)]
struct State {
    /// Bytes of whole records in the file.
    len: u64,
    /// The lines removed but still in the file (letters re-delivered, unreadable lines), by
    /// where they start: where they end. Read past; cut out with the next rewrite.
    removed: BTreeMap<u64, u64>,
    /// The bytes of `removed`.
    removed_len: u64,
    /// The unreadable lines among `removed`: set aside with the next rewrite.
    unreadable: Vec<Range<u64>>,
    /// The file `len` and [`DeadLetterFile::held`] count, if there is one; the one `append` writes to.
    file: Option<FileId>,
    /// How many times the letters moved: a file was found in its place and counted afresh, or
    /// rewritten to cut out the lines removed. A [`Position`] taken before is not a place in the
    /// file now.
    generation: u64,
    /// The file opened for appending, once written to.
    append: Option<File>,
    /// Set once [`DeadLetterFile::close`]d: nothing reads or writes the file after.
    closed: bool,
}

/// What tells a file from another put at its path: its device and inode.
type FileId = (u64, u64);

fn file_id(metadata: &std::fs::Metadata) -> FileId {
    (metadata.dev(), metadata.ino())
}

/// Letters read for a look at the file ([`DeadLetterFile::list`]).
#[derive(Debug)]
pub struct Listing {
    /// The letters, in the order they were written.
    pub letters: Vec<DeadLetterRecord>,
    /// How many letters the file held as they were read.
    pub held: usize,
    /// Where the letters after these begin, if the file goes on past them.
    pub next: Option<Position>,
}

/// The first letters of the file, read for re-delivery.
#[derive(Debug)]
pub struct Batch {
    /// The letters, in the order they were written.
    pub letters: Vec<DeadLetterRecord>,
    /// How many letters the file held as they were read.
    pub held: usize,
    /// Where each of `letters` is in the file.
    spans: Vec<Range<u64>>,
    /// Where the lines among them that could not be read are (skipped with a warning).
    unreadable: Vec<Range<u64>>,
    /// Where the batch ends in the file.
    end: Position,
}

impl DeadLetterFile {
    /// The dead-letter file of state directory `dir`: the letters a
    /// previous run left are counted (an unreadable line is skipped with a
    /// warning; a torn last line, from a crash while appending, is cut off).
    /// Nothing is created until a letter is written. `gauge` shows how many
    /// letters it holds.
    pub fn open(dir: &Path, gauge: Gauge) -> Result<DeadLetterFile, FileError> {
        let path = dir.join(FILE_NAME);
        let error = |error| FileError { path: path.clone(), error };
        let (state, held, size) = count(&path).map_err(error)?;
        if state.len < size {
            tracing::warn!(file = %path.display(), bytes = size - state.len, "dead-letter file ends in a torn line (a crash while writing); cut off");
            let existing = OpenOptions::new().write(true).open(&path);
            existing.and_then(|existing| existing.set_len(state.len)).map_err(error)?;
        }
        gauge.set(letters(&held) as i64);
        let (held, state) = (Mutex::new(held), Mutex::new(state));
        Ok(DeadLetterFile { path, state_lock: None, gauge, held, state })
    }

    /// This file of a host holding its directory with `state_lock`: made anew (its directory
    /// removed while the host ran), it is made only in a directory that lock holds again, or not
    /// at all, so no other host can start on the directory it is in.
    pub(crate) fn locked_by(self, state_lock: Arc<StateLock>) -> DeadLetterFile {
        DeadLetterFile { state_lock: Some(state_lock), ..self }
    }

    /// Let the file go, and with it the state directory its host holds ([`locked_by`]), for the
    /// next host: its host was dropped, or failed to start. Waits for a read or write under way;
    /// from then on none is made (what the host's workers and tasks, which may run on a while, ask
    /// of it is refused), so the directory is free as this returns.
    ///
    /// [`locked_by`]: DeadLetterFile::locked_by
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        (state.closed, state.append) = (true, None);
        if let Some(state_lock) = &self.state_lock {
            state_lock.release();
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many letters it holds (not those removed, still in it until the next rewrite).
    pub fn letters(&self) -> usize {
        letters(&self.held())
    }

    /// How many letters it holds meant for dead-letter destination `destination`.
    pub fn held_for(&self, destination: &str) -> usize {
        self.held().get(destination).copied().unwrap_or(0)
    }

    /// The dead-letter destinations it holds letters for, by name.
    pub fn destinations(&self) -> Vec<String> {
        self.held().keys().cloned().collect()
    }

    /// Append `letter` and fsync it; on an error the file is as before.
    pub fn append(&self, letter: &DeadLetterRecord) -> Result<(), FileError> {
        let mut line = serde_json::to_vec(letter).expect("a record serializes");
        line.push(b'\n');
        let mut state = self.open_state()?;
        self.append_line(&mut state, &line).map_err(|error| self.error(error))?;
        state.len += line.len() as u64;
        *self.held().entry(letter.destination.clone()).or_default() += 1;
        self.gauge.inc();
        Ok(())
    }

    /// Write `line` after the letters of the file and fsync it. A write to a file removed
    /// meanwhile succeeds too, and goes nowhere: unless the file written is the one at its path
    /// once the line is on disk, the line is written once more, to the file there now (made anew
    /// if there is none).
    fn append_line(&self, state: &mut State, line: &[u8]) -> io::Result<()> {
        self.recount_if_replaced(state)?;
        for _ in 0..2 {
            if state.append.is_none() {
                state.append = Some(self.open_for_append(state)?);
            }
            let len = state.len;
            let file = state.append.as_mut().expect("opened above");
            if let Err(error) = file.write_all(line).and_then(|()| file.sync_data()) {
                let _ = file.set_len(len);
                state.append = None;
                return Err(error);
            }
            if !self.recount_if_replaced(state)? {
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "removed or replaced while a letter was written to it, twice",
        ))
    }

    /// The first `limit` letters from `from` on ([`Position::HEAD`]: the
    /// oldest), oldest first, passing over those `skip` picks: they stay in
    /// the file, before and among the letters read.
    pub fn read(
        &self,
        from: Position,
        limit: usize,
        skip: impl FnMut(&DeadLetterRecord) -> bool,
    ) -> Result<Batch, FileError> {
        let mut state = self.open_state()?;
        self.recount_if_replaced(&mut state).map_err(|error| self.error(error))?;
        let held = self.letters();
        let empty = Batch { letters: Vec::new(), held, spans: Vec::new(), unreadable: Vec::new(), end: from };
        if from.generation.is_some_and(|generation| generation != state.generation) {
            return Ok(empty);
        }
        let at = from.at;
        let scanned = |mut file: File| {
            file.seek(SeekFrom::Start(at))?;
            let mut batch = scan(&self.path, file, at..state.len.max(at), &state.removed, limit, skip)?;
            (batch.held, batch.end.generation) = (held, Some(state.generation));
            Ok(batch)
        };
        match File::open(&self.path) {
            Ok(file) => scanned(file).map_err(|error| self.error(error)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(empty),
            Err(error) => Err(self.error(error)),
        }
    }

    /// Up to `limit` letters from `from` on, oldest first, as many as fit in `budget` bytes of the
    /// file's lines (one at least, however long), for a look at the file: those removed, still in
    /// it until the next rewrite, are passed over. `None` when `from` is
    /// no longer a place in it (see [`Position`]). Only the lines are copied under the lock: the
    /// letters are read from them (and checked) after it, so a look at large letters holds up no
    /// letter being written for longer than a copy of `budget` bytes takes.
    pub fn list(&self, from: Position, limit: usize, budget: usize) -> Result<Option<Listing>, FileError> {
        let (lines, held, next) = {
            let mut state = self.open_state()?;
            self.recount_if_replaced(&mut state).map_err(|error| self.error(error))?;
            if from.generation.is_some_and(|generation| generation != state.generation) {
                return Ok(None);
            }
            let range = from.at..state.len.max(from.at);
            let lines = match File::open(&self.path) {
                Ok(file) => copy_lines(file, range, &state.removed, limit, budget),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(error) => Err(error),
            };
            let lines = lines.map_err(|error| self.error(error))?;
            let end = lines.last().map_or(from.at, |(at, line)| at + line.len() as u64);
            let removed_after: u64 = state.removed.range(end..).map(|(start, end)| end - start).sum();
            let next = (end + removed_after < state.len)
                .then_some(Position { generation: Some(state.generation), at: end });
            (lines, self.letters(), next)
        };
        let letters = (lines.into_iter())
            .filter_map(|(at, line)| {
                letter_on(&line).map_err(|error| unreadable(&self.path, at, &error)).ok()
            })
            .collect();
        Ok(Some(Listing { letters, held, next }))
    }

    /// Remove the letters of `batch` marked `delivered` (and its unreadable
    /// lines), keeping every other letter, in order; where the batch ends now. They are no longer
    /// read nor counted at once, and cut out of the file once the lines removed make up half of
    /// it (or when it is [`compact`](DeadLetterFile::compact)ed): an error means that rewrite
    /// failed, and they are cut out with the next. A batch of a file removed, replaced or
    /// rewritten since it was read is not where it was: nothing is removed.
    pub fn remove(&self, batch: &Batch, delivered: &[bool]) -> Result<Position, FileError> {
        if batch.unreadable.is_empty() && !delivered.contains(&true) {
            return Ok(batch.end);
        }
        let mut state = self.open_state()?;
        self.recount_if_replaced(&mut state).map_err(|error| self.error(error))?;
        if batch.end.generation != Some(state.generation) {
            return Ok(batch.end);
        }
        let mut held = self.held();
        let removed =
            batch.letters.iter().zip(&batch.spans).zip(delivered).filter(|(_, delivered)| **delivered);
        for ((letter, span), _) in removed {
            if state.removed.insert(span.start, span.end).is_none() {
                state.removed_len += span.end - span.start;
                if let Some(letters) = held.get_mut(&letter.destination) {
                    *letters -= 1;
                    if *letters == 0 {
                        held.remove(&letter.destination);
                    }
                }
            }
        }
        self.gauge.set(letters(&held) as i64);
        drop(held);
        for span in &batch.unreadable {
            if state.removed.insert(span.start, span.end).is_none() {
                state.removed_len += span.end - span.start;
                state.unreadable.push(span.clone());
            }
        }
        if state.removed_len * 2 < state.len {
            return Ok(batch.end);
        }
        let cut_before: u64 = state.removed.range(..batch.end.at).map(|(start, end)| end - start).sum();
        self.rewrite(&mut state)?;
        Ok(Position { generation: Some(state.generation), at: batch.end.at - cut_before })
    }

    /// Cut the lines removed out of the file now, if any: a re-delivery pass is over. An error
    /// means the file is as it was; they are cut out with the next rewrite.
    pub fn compact(&self) -> Result<(), FileError> {
        let mut state = self.open_state()?;
        self.recount_if_replaced(&mut state).map_err(|error| self.error(error))?;
        match state.removed.is_empty() {
            true => Ok(()),
            false => self.rewrite(&mut state),
        }
    }

    /// Rewrite the file without the lines `state` counts as removed, setting the unreadable ones
    /// aside first; on an error the file is as it was.
    fn rewrite(&self, state: &mut State) -> Result<(), FileError> {
        // Kept, not dropped: a line that cannot be read may be mended by hand.
        self.set_aside(&state.unreadable).map_err(|error| self.error(error))?;
        state.unreadable.clear();
        let tmp = self.path.with_extension("jsonl.tmp");
        let (len, file) =
            self.write_kept(&tmp, state).map_err(|error| FileError { path: tmp.clone(), error })?;
        std::fs::rename(&tmp, &self.path).map_err(|error| self.error(error))?;
        // The file is the new one from here, whatever its directory's fsync says.
        state.append = None;
        (state.len, state.file, state.removed_len) = (len, Some(file), 0);
        state.removed.clear();
        state.generation += 1;
        // Renamed, the removed letters are gone from the file this process reads: an error here
        // must not have them counted as kept (a twin of one alike in every byte would then be
        // removed unsent). A crash before the directory reaches the disk may bring them back,
        // to be sent again: at least once.
        if let Err(error) = sync_dir(&self.path) {
            tracing::warn!(error = %self.error(error), "the dead-letter file was rewritten but its directory not synced");
        }
        Ok(())
    }

    /// Write the file without the lines `state` counts as removed to `tmp`, byte for byte, and
    /// fsync it; returns its length and what it is.
    fn write_kept(&self, tmp: &Path, state: &State) -> io::Result<(u64, FileId)> {
        let mut out =
            BufWriter::new(owner_only::options().write(true).create(true).truncate(true).open(tmp)?);
        let mut old = File::open(&self.path)?;
        let mut at = 0;
        for (&start, &end) in state.removed.iter().chain([(&state.len, &state.len)]) {
            old.seek(SeekFrom::Start(at))?;
            io::copy(&mut (&mut old).take(start - at), &mut out)?;
            at = end;
        }
        let out = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        out.sync_all()?;
        let metadata = out.metadata()?;
        Ok((metadata.len(), file_id(&metadata)))
    }

    /// Append the lines at `spans` of the file, byte for byte, to the damaged file beside it
    /// ([`DAMAGED_FILE_NAME`]), and fsync it.
    fn set_aside(&self, spans: &[Range<u64>]) -> io::Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let damaged = self.path.with_file_name(DAMAGED_FILE_NAME);
        let mut out = owner_only::options().create(true).append(true).open(&damaged)?;
        let mut old = File::open(&self.path)?;
        for span in spans {
            old.seek(SeekFrom::Start(span.start))?;
            io::copy(&mut (&mut old).take(span.end - span.start), &mut out)?;
        }
        out.sync_all()?;
        sync_dir(&damaged)
    }

    /// The file, opened to append after the letters `state` counts. What a
    /// failed write left after them (part of a line that could not be cut off
    /// then) is cut off now, or the file is not appended to: a line written
    /// after it would be unreadable with it. A file made now, or found in
    /// place of the one `state` counted, is counted afresh. A host's file is
    /// opened only once the host holds its directory ([`StateLock::hold`]).
    fn open_for_append(&self, state: &mut State) -> io::Result<File> {
        match &self.state_lock {
            Some(state_lock) => state_lock.hold()?,
            None => owner_only::create_dir_all(self.path.parent().expect("the file is in a directory"))?,
        }
        let file = owner_only::options().create(true).append(true).open(&self.path)?;
        self.recount_if_replaced(state)?;
        let metadata = file.metadata()?;
        if state.file != Some(file_id(&metadata)) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "replaced while it was opened"));
        }
        if metadata.len() > state.len {
            file.set_len(state.len)?;
        }
        // The file's directory entry must survive a crash too.
        sync_dir(&self.path)?;
        Ok(file)
    }

    /// Count the file afresh if the one at its path is not the one `state`
    /// counted (removed, replaced or cut short while the host ran, as the
    /// spool's segments may be: see `SegmentLog::check_head`); whether it
    /// did. Held open, a removed file still takes letters, which nothing then
    /// keeps; one made anew must not be taken for it (nor extended to its length).
    /// A host's file found in its place is counted only in a directory the host
    /// holds ([`StateLock::hold`]): one that another host made and locked since
    /// the directory was removed holds that host's letters, not this one's.
    fn recount_if_replaced(&self, state: &mut State) -> io::Result<bool> {
        let on_disk = match std::fs::metadata(&self.path) {
            Ok(metadata) => Some((file_id(&metadata), metadata.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let same = match (on_disk, state.file) {
            (Some((on_disk, len)), Some(counted)) => on_disk == counted && len >= state.len,
            (None, None) => true,
            _ => false,
        };
        if same {
            return Ok(false);
        }
        if let (Some(_), Some(state_lock)) = (on_disk, &self.state_lock) {
            state_lock.hold()?;
        }
        let generation = state.generation + 1;
        // A torn last line (a file still being copied in place?) is left: one is cut off only
        // before a letter is appended after it.
        let (counted, found, _) = count(&self.path)?;
        *state = State { generation, ..counted };
        let mut held = self.held();
        let gone = letters(&held);
        *held = found;
        if gone + letters(&held) > 0 {
            tracing::warn!(file = %self.path.display(), gone, found = letters(&held), "the dead-letter file was removed, replaced or cut short while the host ran: the letters it held are no longer kept here (they stay counted as dead-lettered); the file now there is counted afresh and its letters re-delivered");
        }
        self.gauge.set(letters(&held) as i64);
        Ok(true)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// `state`, locked for a read or write, unless the file was [`close`](Self::close)d.
    fn open_state(&self) -> Result<MutexGuard<'_, State>, FileError> {
        let state = self.lock();
        match state.closed {
            true => {
                Err(self
                    .error(io::Error::other("the host has stopped: its state directory is no longer its")))
            }
            false => Ok(state),
        }
    }

    /// The letters held, by destination. Taken after `state`'s lock when both are.
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn error(&self, error: io::Error) -> FileError {
        FileError { path: self.path.clone(), error }
    }
}

/// How many letters `held` counts.
fn letters(held: &Held) -> usize {
    held.values().sum()
}

/// The file at `path`, how many letters it holds for each destination (none if there is none; an
/// unreadable line is skipped with a warning), and its size: more than their length if it ends in
/// a torn line. Read a line at a time: it holds no letter past its line, whatever the file's size
/// (one grown for days while its dead-letter destination was down).
fn count(path: &Path) -> io::Result<(State, Held, u64)> {
    let existing = match File::open(path) {
        Ok(existing) => existing,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok((State::default(), Held::new(), 0));
        }
        Err(error) => return Err(error),
    };
    let metadata = existing.metadata()?;
    let none_removed = BTreeMap::new();
    let mut lines = LetterLines::new(path, existing, 0..u64::MAX, &none_removed);
    let mut held = Held::new();
    for line in &mut lines {
        if let (Some(letter), _) = line? {
            *held.entry(letter.destination).or_default() += 1;
        }
    }
    let state = State { len: lines.at, file: Some(file_id(&metadata)), ..State::default() };
    Ok((state, held, metadata.len()))
}

/// Read up to `limit` letters from bytes `range` of `file` (at `path`, read
/// from `range.start` on), passing over the lines `removed` (by where they start) and the letters
/// `skip` picks; the batch ends after the last whole line read.
fn scan(
    path: &Path,
    file: File,
    range: Range<u64>,
    removed: &BTreeMap<u64, u64>,
    limit: usize,
    mut skip: impl FnMut(&DeadLetterRecord) -> bool,
) -> io::Result<Batch> {
    let end = Position { generation: None, at: range.start };
    let mut batch = Batch { letters: Vec::new(), held: 0, spans: Vec::new(), unreadable: Vec::new(), end };
    let mut lines = LetterLines::new(path, file, range, removed);
    while batch.letters.len() < limit {
        let Some(line) = lines.next() else { break };
        match line? {
            (Some(letter), _) if skip(&letter) => {}
            (Some(letter), span) => {
                batch.letters.push(letter);
                batch.spans.push(span);
            }
            (None, span) => batch.unreadable.push(span),
        }
    }
    batch.end.at = lines.at;
    Ok(batch)
}

/// The whole lines of bytes `range` of a file but those `removed` (by where they start), one at a
/// time: each with its letter (`None` for a line that cannot be read, warned of) and where it is.
struct LetterLines<'a> {
    path: &'a Path,
    reader: BufReader<io::Take<File>>,
    removed: &'a BTreeMap<u64, u64>,
    /// Where the next line starts: after the last whole line read.
    at: u64,
    line: Vec<u8>,
}

impl<'a> LetterLines<'a> {
    /// The lines of `file` (at `path`, read from `range.start` on).
    fn new(path: &'a Path, file: File, range: Range<u64>, removed: &'a BTreeMap<u64, u64>) -> Self {
        let reader = BufReader::new(file.take(range.end - range.start));
        LetterLines { path, reader, removed, at: range.start, line: Vec::new() }
    }
}

impl Iterator for LetterLines<'_> {
    type Item = io::Result<(Option<DeadLetterRecord>, Range<u64>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            let read = match self.reader.read_until(b'\n', &mut self.line) {
                Ok(read) => read,
                Err(error) => return Some(Err(error)),
            };
            if read == 0 || self.line.last() != Some(&b'\n') {
                return None;
            }
            let span = self.at..self.at + read as u64;
            self.at = span.end;
            if self.removed.contains_key(&span.start) {
                continue;
            }
            let letter = letter_on(&self.line).inspect_err(|error| unreadable(self.path, span.start, error));
            return Some(Ok((letter.ok(), span)));
        }
    }
}

/// The whole lines of bytes `range` of `file`, each with where it starts, but those `removed` (by
/// where they start): up to `limit` of them, as many as fit in `budget` bytes (the first whatever
/// its length).
fn copy_lines(
    mut file: File,
    range: Range<u64>,
    removed: &BTreeMap<u64, u64>,
    limit: usize,
    budget: usize,
) -> io::Result<Vec<(u64, Vec<u8>)>> {
    file.seek(SeekFrom::Start(range.start))?;
    let mut reader = BufReader::new(file.take(range.end - range.start));
    let (mut lines, mut at, mut copied) = (Vec::new(), range.start, 0);
    while lines.len() < limit {
        if let Some(end) = removed.get(&at) {
            io::copy(&mut (&mut reader).take(end - at), &mut io::sink())?;
            at = *end;
            continue;
        }
        let mut line = Vec::new();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 || line.last() != Some(&b'\n') || (!lines.is_empty() && copied + read > budget) {
            break;
        }
        lines.push((at, line));
        (at, copied) = (at + read as u64, copied + read);
    }
    Ok(lines)
}

/// The letter on `line` (one line of the file, read whole): one whose message cannot be made again
/// (its payload's base64, its id damaged) is as unreadable as one that is not JSON.
fn letter_on(line: &[u8]) -> Result<DeadLetterRecord, String> {
    let letter = serde_json::from_slice::<DeadLetterRecord>(line).map_err(|error| error.to_string())?;
    letter.to_message().map_err(|error| error.to_string())?;
    Ok(letter)
}

/// Warn of the line at `offset` of the file at `path` that `error` keeps from being read.
fn unreadable(path: &Path, offset: u64, error: &str) {
    tracing::warn!(file = %path.display(), offset, %error, "unreadable dead-letter line skipped; set aside in the damaged file with the next removal");
}

/// Fsync the directory holding `path`, so a created or renamed entry lasts.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path.parent().expect("the file is in a directory"))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn letter(n: u64, destination: &str) -> DeadLetterRecord {
        let mut message = Message::new("orders.eu", format!("payload {n}"));
        message.id = n;
        DeadLetterRecord::new(&message, destination)
    }

    fn ids(batch: &Batch) -> Vec<&str> {
        batch.letters.iter().map(|letter| letter.id.as_str()).collect()
    }

    #[test]
    fn an_io_error_is_said_once_in_a_report_of_the_error_and_its_sources() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir(state.path().join(FILE_NAME)).unwrap();
        let Err(error) = DeadLetterFile::open(state.path(), Gauge::default()) else {
            panic!("a directory is no dead-letter file")
        };
        let report = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(report.matches("os error").count(), 1, "{report}");
    }

    #[test]
    fn what_the_file_holds_for_whom_is_told_without_waiting_for_its_file_io() {
        // Appends (with their fsync) and rewrites hold the file's lock while they do file I/O.
        // These are asked on the async runtime's threads: before, each waited for that lock,
        // a whole rewrite of the file long, and held up the runtime's thread meanwhile.
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(DeadLetterFile::open(dir.path(), Gauge::default()).unwrap());
        file.append(&letter(1, "dead")).unwrap();
        let doing_file_io = file.lock();
        let (told, answer) = std::sync::mpsc::channel();
        let asked = file.clone();
        std::thread::spawn(move || {
            let _ = told.send((asked.held_for("dead"), asked.destinations(), asked.letters()));
        });
        let answer = answer.recv_timeout(std::time::Duration::from_secs(60));
        drop(doing_file_io);
        assert_eq!(
            answer,
            Ok((1, vec!["dead".into()], 1)),
            "told while the file's lock was held (safety net: 60 s)"
        );
    }

    #[test]
    fn a_closed_file_lets_its_state_directory_go_and_is_neither_read_nor_written_after() {
        // Its host dropped, the workers and tasks that still hold it may run on: the directory is
        // the next host's at once, and nothing of theirs may be written there under that host.
        let dir = tempfile::tempdir().unwrap();
        let state_lock = Arc::new(StateLock::acquire(dir.path()).unwrap());
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap().locked_by(state_lock);
        file.append(&letter(1, "dead")).unwrap();
        file.close();
        let next = StateLock::acquire(dir.path()).expect("free once the file is closed, though still held");
        let refused = file.append(&letter(2, "dead")).unwrap_err().to_string();
        assert!(refused.contains("the host has stopped"), "{refused}");
        assert!(file.read(Position::HEAD, 10, |_| false).is_err());
        drop(next);
        let again = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        assert_eq!(again.letters(), 1, "the letter written before it was closed, and it alone");
    }

    #[test]
    fn letters_written_are_read_back_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let file = DeadLetterFile::open(&state, Gauge::default()).unwrap();
        assert!(!state.exists(), "nothing is created before a letter is written");
        let written = [letter(1, "dead"), letter(2, "dead"), letter(3, "other")];
        written.iter().for_each(|letter| file.append(letter).unwrap());
        let again = DeadLetterFile::open(&state, Gauge::default()).unwrap();
        assert_eq!(again.read(Position::HEAD, 10, |_| false).unwrap().letters, written);
        assert_eq!((again.letters(), again.held_for("dead"), again.held_for("log")), (3, 2, 0));
        assert_eq!(again.destinations(), ["dead", "other"]);
        assert_eq!(ids(&again.read(Position::HEAD, 2, |_| false).unwrap()), ["1", "2"]);
    }

    #[test]
    fn a_listing_stops_at_its_budget_and_reads_on_from_next_until_letters_move() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        (1..=5).for_each(|n| file.append(&letter(n, "dead")).unwrap());
        let line = std::fs::read_to_string(file.path()).unwrap().lines().next().unwrap().len() + 1;
        let listed = |from: Position, budget| file.list(from, 10, budget).unwrap().expect("in place");
        let ids =
            |listing: &Listing| listing.letters.iter().map(|letter| letter.id.clone()).collect::<Vec<_>>();
        let first = listed(Position::HEAD, 2 * line + 1);
        assert_eq!((ids(&first), first.held), (vec!["1".to_owned(), "2".to_owned()], 5));
        let next: Position = first.next.unwrap().to_string().parse().unwrap();
        assert_eq!(next, first.next.unwrap(), "written as text and read back");
        let second = listed(next, 2 * line);
        assert_eq!(ids(&second), ["3", "4"]);
        let last = listed(second.next.unwrap(), 2 * line);
        assert_eq!((ids(&last), last.next), (vec!["5".to_owned()], None));
        assert_eq!(ids(&listed(Position::HEAD, 1)), ["1"], "one letter however long");
        assert_eq!(ids(&file.list(Position::HEAD, 3, usize::MAX).unwrap().unwrap()), ["1", "2", "3"]);

        file.append(&letter(6, "dead")).unwrap();
        assert_eq!(ids(&listed(second.next.unwrap(), usize::MAX)), ["5", "6"], "appending moves no letter");
        let head = file.read(Position::HEAD, 1, |_| false).unwrap();
        file.remove(&head, &[true]).unwrap();
        file.compact().unwrap();
        assert!(
            file.list(second.next.unwrap(), 10, usize::MAX).unwrap().is_none(),
            "a place before the rewrite"
        );
        assert_eq!(ids(&listed(Position::HEAD, usize::MAX)), ["2", "3", "4", "5", "6"]);
        assert!("3".parse::<Position>().is_err() && "x-1".parse::<Position>().is_err());
    }

    #[test]
    fn a_listing_passes_over_letters_removed_and_its_next_stays_good_until_they_are_cut_out() {
        // Letters re-delivered stay in the file until a rewrite cuts them out: a look at the file
        // must not show them as waiting, nor spend its budget on them.
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        (1..=7).for_each(|n| file.append(&letter(n, "dead")).unwrap());
        let line = std::fs::read_to_string(file.path()).unwrap().lines().next().unwrap().len() + 1;
        let listed = |from, limit, budget| file.list(from, limit, budget).unwrap().expect("in place");
        let ids =
            |listing: &Listing| listing.letters.iter().map(|letter| letter.id.clone()).collect::<Vec<_>>();
        let before = listed(Position::HEAD, 10, 2 * line).next.unwrap();

        let all = file.read(Position::HEAD, 10, |_| false).unwrap();
        file.remove(&all, &[true, false, true, false, false, false, true]).unwrap();
        assert_eq!(std::fs::read_to_string(file.path()).unwrap().lines().count(), 7, "three of seven: kept");
        let first = listed(Position::HEAD, 10, 2 * line);
        assert_eq!((ids(&first), first.held), (vec!["2".to_owned(), "4".to_owned()], 4));
        let on = listed(before, 10, usize::MAX);
        assert_eq!((ids(&on), on.next), (vec!["4".to_owned(), "5".to_owned(), "6".to_owned()], None));
        let three = listed(Position::HEAD, 3, usize::MAX);
        assert_eq!(ids(&three), ["2", "4", "5"]);
        assert_eq!(ids(&listed(three.next.unwrap(), 10, usize::MAX)), ["6"]);

        let head = file.read(Position::HEAD, 1, |_| false).unwrap();
        file.remove(&head, &[true]).unwrap();
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap().lines().count(),
            3,
            "four of seven: cut out"
        );
        assert!(file.list(before, 10, usize::MAX).unwrap().is_none(), "a place before the rewrite");
        assert!(file.list(three.next.unwrap(), 10, usize::MAX).unwrap().is_none());
        assert_eq!(ids(&listed(Position::HEAD, 10, usize::MAX)), ["4", "5", "6"]);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_writing_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        file.append(&letter(1, "dead")).unwrap();
        let mut raw = OpenOptions::new().append(true).open(file.path()).unwrap();
        raw.write_all(br#"{"id":"2","topic":"ord"#).unwrap();
        let again = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        assert_eq!(again.letters(), 1);
        again.append(&letter(3, "dead")).unwrap();
        assert_eq!(ids(&again.read(Position::HEAD, 10, |_| false).unwrap()), ["1", "3"]);
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn an_unreadable_line_is_skipped_and_set_aside_with_the_next_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        file.append(&letter(1, "dead")).unwrap();
        let mut raw = OpenOptions::new().append(true).open(file.path()).unwrap();
        raw.write_all(b"not json\n").unwrap();
        let mut damaged =
            serde_json::to_string(&letter(9, "dead")).unwrap().replace("\"id\":\"9\"", "\"id\":\"x\"");
        damaged.push('\n');
        raw.write_all(damaged.as_bytes()).unwrap();
        drop(file);
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        file.append(&letter(2, "dead")).unwrap();
        let batch = file.read(Position::HEAD, 10, |_| false).unwrap();
        assert_eq!((ids(&batch), batch.unreadable.len()), (vec!["1", "2"], 2));
        file.remove(&batch, &[false, false]).unwrap();
        let batch = file.read(Position::HEAD, 10, |_| false).unwrap();
        assert_eq!((ids(&batch), batch.unreadable.len()), (vec!["1", "2"], 0), "read past once removed");
        file.compact().unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains("not json") && text.lines().count() == 2, "{text}");
        let set_aside = std::fs::read_to_string(dir.path().join(DAMAGED_FILE_NAME)).unwrap();
        assert_eq!(set_aside, format!("not json\n{damaged}"), "kept byte for byte, not dropped");
    }

    #[test]
    fn a_file_is_counted_by_destination_past_unreadable_lines_and_up_to_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let line = |letter: &DeadLetterRecord| format!("{}\n", serde_json::to_string(letter).unwrap());
        // Not JSON, a payload that is not base64, an id that is not a message id: none counted.
        let unreadable = |field: &str, value: &str| {
            let mut record = serde_json::to_value(letter(9, "dead")).unwrap();
            record[field] = value.into();
            format!("{record}\n")
        };
        let lines = [
            line(&letter(1, "dead")),
            "not json\n".to_owned(),
            unreadable("payload", "*"),
            unreadable("id", "x"),
            line(&letter(2, "other")),
            line(&letter(3, "dead")),
            r#"{"id":"4","destination":"other"#.to_owned(),
        ];
        std::fs::write(dir.path().join(FILE_NAME), lines.concat()).unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        let counted = (file.letters(), file.held_for("dead"), file.held_for("other"));
        assert_eq!(counted, (3, 2, 1), "(letters, for dead, for other)");
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert_eq!(text, lines[..6].concat(), "the torn last line cut off, the rest left as it was");
    }

    #[test]
    fn letters_passed_over_do_not_count_and_stay_in_place_when_others_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        (1..=6).for_each(|n| file.append(&letter(n, "dead")).unwrap());
        let before = std::fs::read_to_string(file.path()).unwrap();
        let held_back = |letter: &DeadLetterRecord| ["1", "2", "4"].contains(&letter.id.as_str());
        let batch = file.read(Position::HEAD, 2, held_back).unwrap();
        assert_eq!(ids(&batch), ["3", "5"]);
        let next = file.remove(&batch, &[true, true]).unwrap();
        assert_eq!(ids(&file.read(Position::HEAD, 10, |_| false).unwrap()), ["1", "2", "4", "6"]);
        assert_eq!(ids(&file.read(next, 10, |_| false).unwrap()), ["6"], "read on where the batch ended");
        assert_eq!((file.letters(), std::fs::read_to_string(file.path()).unwrap()), (4, before.clone()));
        file.compact().unwrap();
        let lines: Vec<_> = before.lines().collect();
        let kept = [lines[0], lines[1], lines[3], lines[5]].map(|line| format!("{line}\n")).concat();
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), kept, "kept byte for byte");
        assert!(file.read(next, 10, |_| false).unwrap().letters.is_empty(), "not a place in the file now");
        assert_eq!(file.letters(), 4);
        assert!(file.read(Position::HEAD, 10, |_| true).unwrap().letters.is_empty());
    }

    #[test]
    fn letters_removed_are_cut_out_of_the_file_once_they_make_up_half_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        (1..=5).for_each(|n| file.append(&letter(n, "dead")).unwrap());
        let lines = |file: &DeadLetterFile| std::fs::read_to_string(file.path()).unwrap().lines().count();
        let first = file.read(Position::HEAD, 2, |_| false).unwrap();
        let next = file.remove(&first, &[true, true]).unwrap();
        assert_eq!((file.letters(), lines(&file)), (3, 5), "two of five: still in the file");
        let second = file.read(next, 1, |_| false).unwrap();
        assert_eq!(ids(&second), ["3"]);
        let next = file.remove(&second, &[true]).unwrap();
        assert_eq!((file.letters(), lines(&file)), (2, 2), "three of five: cut out");
        assert_eq!(
            ids(&file.read(next, 10, |_| false).unwrap()),
            ["4", "5"],
            "read on where the batch ended"
        );
        assert_eq!(
            ids(&DeadLetterFile::open(dir.path(), Gauge::default())
                .unwrap()
                .read(Position::HEAD, 10, |_| false)
                .unwrap()),
            ["4", "5"]
        );
    }

    #[test]
    fn a_letter_appended_after_the_file_was_removed_goes_to_a_new_file() {
        // The file was held open: the letter went to the removed file, counted as written, and
        // the letters removed went on being counted.
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        file.append(&letter(1, "gone")).unwrap();
        std::fs::remove_file(file.path()).unwrap();
        file.append(&letter(2, "dead")).unwrap();
        assert_eq!(ids(&file.read(Position::HEAD, 10, |_| false).unwrap()), ["2"]);
        assert_eq!((file.letters(), file.held_for("gone")), (1, 0));
        let again = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        assert_eq!(ids(&again.read(Position::HEAD, 10, |_| false).unwrap()), ["2"], "on disk");
    }

    #[test]
    fn a_file_removed_after_a_rewrite_is_written_anew_not_padded_to_its_old_length() {
        // Reopened after the rewrite, the new file was extended to the old one's length: the
        // next letter followed as many zero bytes, one unreadable line.
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        (1..=2).for_each(|n| file.append(&letter(n, "dead")).unwrap());
        file.remove(&file.read(Position::HEAD, 10, |_| false).unwrap(), &[true, false]).unwrap();
        std::fs::remove_file(file.path()).unwrap();
        file.append(&letter(3, "dead")).unwrap();
        let batch = file.read(Position::HEAD, 10, |_| false).unwrap();
        assert_eq!((ids(&batch), batch.unreadable.len(), file.letters()), (vec!["3"], 0, 1));
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains('\0') && text.lines().count() == 1, "{text:?}");
    }

    #[test]
    fn a_file_put_in_place_of_the_one_written_is_counted_and_appended_to_whole() {
        // The file in its place, longer than the one it replaced, was cut to that one's length
        // (and, while the old one was held open, not written to at all).
        let other = tempfile::tempdir().unwrap();
        let replacement = DeadLetterFile::open(other.path(), Gauge::default()).unwrap();
        (5..=7).for_each(|n| replacement.append(&letter(n, "other")).unwrap());
        for rewritten in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
            (1..=2).for_each(|n| file.append(&letter(n, "dead")).unwrap());
            if rewritten {
                // Not held open from here.
                file.remove(&file.read(Position::HEAD, 10, |_| false).unwrap(), &[true, false]).unwrap();
            }
            let copy = dir.path().join("copy");
            std::fs::copy(replacement.path(), &copy).unwrap();
            std::fs::rename(&copy, file.path()).unwrap();
            file.append(&letter(3, "dead")).unwrap();
            assert_eq!(
                ids(&file.read(Position::HEAD, 10, |_| false).unwrap()),
                ["5", "6", "7", "3"],
                "{rewritten}"
            );
            assert_eq!((file.letters(), file.held_for("other")), (4, 3));
        }
    }

    #[test]
    fn letters_of_a_file_removed_under_it_are_no_longer_counted_once_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let gauge = Gauge::default();
        let file = DeadLetterFile::open(dir.path(), gauge.clone()).unwrap();
        (1..=2).for_each(|n| file.append(&letter(n, "dead")).unwrap());
        std::fs::remove_file(file.path()).unwrap();
        assert!(file.read(Position::HEAD, 10, |_| false).unwrap().letters.is_empty());
        assert_eq!((file.letters(), file.held_for("dead"), gauge.get()), (0, 0, 0));
    }

    #[test]
    fn removing_delivered_letters_keeps_the_rest_and_later_ones_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::open(dir.path(), Gauge::default()).unwrap();
        (1..=3).for_each(|n| file.append(&letter(n, if n == 1 { "a" } else { "b" })).unwrap());
        let batch = file.read(Position::HEAD, 2, |_| false).unwrap();
        file.append(&letter(4, "b")).unwrap();
        file.remove(&batch, &[true, false]).unwrap();
        assert_eq!(ids(&file.read(Position::HEAD, 10, |_| false).unwrap()), ["2", "3", "4"]);
        assert_eq!((file.letters(), file.held_for("a")), (3, 0));
        file.append(&letter(5, "a")).unwrap();
        let all = file.read(Position::HEAD, 10, |_| false).unwrap();
        file.remove(&all, &[true, true, true, false]).unwrap();
        assert_eq!(ids(&file.read(Position::HEAD, 10, |_| false).unwrap()), ["5"]);
        let last = file.read(Position::HEAD, 10, |_| false).unwrap();
        file.remove(&last, &[true]).unwrap();
        assert_eq!((file.letters(), std::fs::metadata(file.path()).unwrap().len()), (0, 0));
        assert_eq!(DeadLetterFile::open(dir.path(), Gauge::default()).unwrap().letters(), 0);
    }
}
