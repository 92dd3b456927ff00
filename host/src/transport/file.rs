//! The `file` transport: each message appended as one JSON line (as the `log` destination prints it) to
//! a file whose path may name the message's topic, synced to disk as the options say, rotated by size.
//!
//! A line is written whole or not at all: one write per line under the file's lock, and a write that
//! fails part-way is cut back off the file before the attempt fails (so a retry cannot leave half a
//! line behind), to the length the file had just before it (someone else may have emptied it in
//! place since, as logrotate's `copytruncate` does). Lines are kept whole from one destination's
//! writes only: no two destinations of a configuration may have the same path (or template), but
//! the one a reload rebuilt, finishing its attempts, may lose a line it appended while this one
//! cut back. A line written whole whose sync then fails stays: the attempt may have delivered
//! it, and is retried only where a duplicate is welcome (`idempotent`). A rotation renames the full
//! file to `PATH.N` (the first free N from 1) and starts an empty one, so no line is ever lost or
//! split by it. A file someone else moved or removed (logrotate, an operator) is noticed at the next
//! line, by the path no longer naming it, and the path opened afresh. The destination has one
//! endpoint, named by the path template; its health probe checks that the template's directory
//! exists. Every look at the file system is made on a blocking thread, never one of the runtime's:
//! a hung mount (hard NFS, FUSE) holds that thread only, and the attempt's `timeout_ms` (the
//! check's `health.timeout_ms`) still cuts the wait. At most [`MAX_WRITING`] lines are being
//! written at once, each on its thread: an attempt behind them waits for its turn without a
//! thread, so a hung mount holds a few of the blocking pool's threads, not one for each attempt
//! (an attempt cut there wrote nothing, and is no attempt: the message goes again, as one that
//! waited for a free connection does). With a file per topic, an error of one topic's
//! file (a directory in its place, a file not writable, not a regular file) is that message's, not
//! the endpoint's: the message is dead-lettered at once, and the other topics' files go on being
//! written; what is not a regular file is refused without waiting on it (a FIFO with no reader). At
//! most [`MAX_OPEN_FILES`] files are kept open: past that, the one least recently used is closed
//! (synced first, unless `fsync = "never"`) and opened again, for appending, at its next line.

use super::{AttemptFuture, AttemptResult, ProbeFuture, Transport, TransportContext, TransportOptions};
use super::{AttemptProgress, SettingError, Step, Wait};
use crate::config::{DestinationConfig, EndpointConfig, HealthSettings};
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// `options = {..}` of a `file` destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOptions {
    /// The file's path; `{topic}` in it is replaced by the message's topic (a topic holding a path
    /// separator is refused). Relative to the working directory.
    pub path: String,
    /// When written lines are synced to disk: `"every"` line before it counts as delivered (the
    /// default), `"never"` (the system decides), or a number of milliseconds: at most that long after
    /// a line was written.
    #[serde(default)]
    pub fsync: Fsync,
    /// Start a new file once the current one would grow past this many bytes (never, when unset).
    pub max_bytes: Option<u64>,
}

/// When a `file` destination syncs what it wrote to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum Fsync {
    /// `"every"` or `"never"`.
    Policy(FsyncPolicy),
    /// At most this many milliseconds after a line was written.
    IntervalMs(u64),
}

/// The named fsync policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// Each line is on disk before the message counts as delivered.
    #[default]
    Every,
    /// The operating system writes back when it likes.
    Never,
}

impl Default for Fsync {
    fn default() -> Fsync {
        Fsync::Policy(FsyncPolicy::Every)
    }
}

impl TransportOptions for FileOptions {
    /// One endpoint, named by the path template: the transport lists none.
    fn endpoints(&self, listed: &[EndpointConfig]) -> Result<Vec<EndpointConfig>, SettingError> {
        if let Some(listed) = listed.first() {
            let problem = "the file transport has no endpoints: it writes to options.path".into();
            let value = format!("{:?}", crate::config::shown(&listed.address));
            return Err(SettingError { field: "endpoints", value, problem });
        }
        if self.path.trim().is_empty() {
            let problem = "options.path must name a file (no file has an empty name)".into();
            return Err(SettingError { field: "options", value: format!("path = {:?}", self.path), problem });
        }
        if matches!(self.fsync, Fsync::IntervalMs(0)) {
            let problem = "options.fsync must be at least 1 ms (or \"every\", \"never\")".into();
            return Err(SettingError { field: "options", value: "fsync = 0".into(), problem });
        }
        if self.max_bytes == Some(0) {
            let problem = "options.max_bytes must be at least 1".into();
            return Err(SettingError { field: "options", value: "max_bytes = 0".into(), problem });
        }
        Ok(vec![EndpointConfig { address: self.path.clone(), weight: 1 }])
    }

    /// The file (or the files of the template) it writes: the same string, or the same path written
    /// another way, is another destination's to write only if none writes it already.
    fn sole_use(&self) -> Option<super::SoleUse> {
        Some(super::SoleUse {
            key: crate::config::resolved(Path::new(&self.path)).display().to_string(),
            kind: "file",
            written: format!("path = {:?}", self.path),
            why: "their lines would interleave in it, and each rotates, cuts back and syncs it as its only writer",
        })
    }

    /// The file it writes; with `{topic}` in the name of a directory on its path, the directory
    /// that one is in, where a topic may name any directory.
    fn written_path(&self) -> Option<PathBuf> {
        let mut components = Path::new(&self.path).components().peekable();
        let mut fixed = PathBuf::from(".");
        while let Some(component) = components.next() {
            let directory = components.peek().is_some();
            if directory && component.as_os_str().to_string_lossy().contains("{topic}") {
                break;
            }
            fixed.push(component);
        }
        Some(fixed)
    }
}

/// The `file` transport of `destination`; with an fsync interval, a task syncs on that beat while
/// the transport lives.
pub(super) fn build(
    options: FileOptions,
    destination: &DestinationConfig,
    _context: &TransportContext,
) -> Arc<dyn Transport> {
    let files = Arc::new(Files {
        options,
        destination: destination.name.clone(),
        open: Mutex::default(),
        checking: Arc::new(tokio::sync::Semaphore::new(1)),
        writing: Arc::new(tokio::sync::Semaphore::new(MAX_WRITING)),
    });
    if let (Fsync::IntervalMs(ms), Ok(runtime)) = (files.options.fsync, tokio::runtime::Handle::try_current())
    {
        runtime.spawn(sync_every(Arc::downgrade(&files), Duration::from_millis(ms)));
    }
    Arc::new(FileTransport(files))
}

/// Appends JSON lines to files; see the module docs.
#[derive(Debug)]
pub struct FileTransport(Arc<Files>);

/// Files one destination keeps open at most. A file per topic kept open for good held a descriptor
/// for every topic ever written, until the process had none left for anything.
const MAX_OPEN_FILES: usize = 64;

/// Lines one destination writes at once, each on a thread of the runtime's blocking pool: a few,
/// so that the files of several topics are written (and synced) side by side. Each attempt took
/// a thread of its own, to wait behind a write a hung mount held, until the pool (512 threads)
/// had none left for anything else.
const MAX_WRITING: usize = 4;

/// The files of one destination.
#[derive(Debug)]
struct Files {
    options: FileOptions,
    destination: String,
    open: Mutex<Slots>,
    /// The health check under way, at most one: a check a hung mount holds keeps its blocking
    /// thread, and the next ones fail at once rather than each holding another.
    checking: Arc<tokio::sync::Semaphore>,
    /// The lines being written, at most [`MAX_WRITING`]: a permit is taken before a line's thread,
    /// and let go as the thread is done with it.
    writing: Arc<tokio::sync::Semaphore>,
}

/// A slot for each path written lately, with when it was last used: at most [`MAX_OPEN_FILES`], but
/// for slots in use when another was made.
#[derive(Debug, Default)]
struct Slots {
    by_path: HashMap<PathBuf, (u64, Arc<Mutex<Slot>>)>,
    uses: u64,
}

/// The file of one path, opened under the slot's own lock (the table's is not held meanwhile).
#[derive(Debug)]
enum Slot {
    /// Not opened yet, or its last open failed.
    Unopened,
    /// Open for appending.
    Open(OpenFile),
    /// Closed to keep the open files few: the table holds a new slot for the path, or will.
    Closed,
}

/// Why a line could not be appended: whether any of it stays in the file decides whether another
/// attempt may write it again.
#[derive(Debug, thiserror::Error)]
enum AppendError {
    /// Nothing of the line is in the file: the file could not be opened or rotated, or the line not
    /// written (a write that failed part-way is cut back off).
    #[error("{0}")]
    NotWritten(std::io::Error),
    /// The whole line is in the file, but syncing it to disk failed (`EIO`, `ENOSPC`, `EDQUOT`): it
    /// may be read, or reach the disk after all.
    #[error("the line was written, but syncing it failed: {0}")]
    NotSynced(std::io::Error),
}

/// What is at a path a line was to go to, when it is not a regular file: refused, as writing to it
/// could wait for good (a FIFO) or go to a device.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file but {0}")]
struct NotARegularFile(&'static str);

/// When the directory entry of a file made or renamed is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameSync {
    /// Before the file is used.
    Now,
    /// With the file's next sync.
    WithTheFile,
    /// Never.
    Never,
}

/// One file being appended to.
#[derive(Debug)]
struct OpenFile {
    file: File,
    /// Its device and inode: whether its path still names it.
    identity: (u64, u64),
    /// Its length when last looked at, as it was opened and before each line: where the next line
    /// starts (someone else may have emptied the file, or appended to it, meanwhile).
    len: u64,
    /// Whether lines were written since the last sync.
    unsynced: bool,
    /// The directory whose entry for the file (made, or renamed to) is not synced yet: with an
    /// interval, it is synced with the file's next sync.
    unsynced_name: Option<PathBuf>,
    /// When it was last synced.
    synced_at: Instant,
}

impl Files {
    /// Append `line` to `path`, rotating first if it would pass `max_bytes`, and sync as the policy says.
    fn append(&self, path: &Path, line: &[u8]) -> Result<(), AppendError> {
        loop {
            let slot = self.slot(path);
            let mut slot = lock(&slot);
            if matches!(*slot, Slot::Unopened) {
                *slot =
                    Slot::Open(OpenFile::append(path, self.syncs_names()).map_err(AppendError::NotWritten)?);
            }
            // Closed after this attempt found its slot: the path's new slot is opened again.
            if let Slot::Open(file) = &mut *slot {
                return self.append_to(path, file, line);
            }
        }
    }

    /// Append `line` to `file`, open at `path`; see [`Files::append`].
    fn append_to(&self, path: &Path, file: &mut OpenFile, line: &[u8]) -> Result<(), AppendError> {
        let not_written = AppendError::NotWritten;
        match file.length_at(path) {
            // Emptied in place by someone else (logrotate's `copytruncate`), or appended to: the
            // line goes at the file's end as it is now, not where this one's last line ended.
            Some(len) => file.len = len,
            None => {
                // Renamed or removed by someone else (logrotate, an operator): lines written to the
                // file kept open would go where nobody reads them, or nowhere. The path is opened
                // afresh.
                tracing::info!(path = %path.display(), "the file was moved or removed: opening the path again");
                if file.unsynced {
                    let _ = file.sync();
                }
                *file = OpenFile::append(path, self.syncs_names()).map_err(not_written)?;
            }
        }
        if let Some(max_bytes) =
            self.options.max_bytes.filter(|max| file.len > 0 && file.len + line.len() as u64 > *max)
        {
            tracing::debug!(path = %path.display(), max_bytes, "rotating");
            *file = rotate(path, file, self.syncs_names()).map_err(not_written)?;
        }
        if let Err(err) = file.file.write_all(line) {
            // Cut a partly written line back off, so no retry leaves half a line before the whole
            // one: to the length the file had just before, and only if the write lengthened it (one
            // that wrote nothing leaves the file as it is).
            if file.file.metadata().is_ok_and(|meta| meta.len() > file.len) {
                let _ = file.file.set_len(file.len);
            }
            return Err(AppendError::NotWritten(err));
        }
        file.unsynced = true;
        let due = match self.options.fsync {
            Fsync::Policy(FsyncPolicy::Every) => true,
            Fsync::Policy(FsyncPolicy::Never) => false,
            Fsync::IntervalMs(ms) => file.synced_at.elapsed() >= Duration::from_millis(ms),
        };
        if due {
            file.sync().map_err(AppendError::NotSynced)?;
        }
        Ok(())
    }

    /// The slot of `path`, made now if it has none; the files that closes to keep the open ones few
    /// are synced (as the policy promises) and closed after the table's lock is let go.
    fn slot(&self, path: &Path) -> Arc<Mutex<Slot>> {
        let (slot, closed) = lock(&self.open).slot(path);
        for mut file in closed {
            if file.unsynced
                && self.options.fsync != Fsync::Policy(FsyncPolicy::Never)
                && let Err(err) = file.sync()
            {
                tracing::warn!(destination = %self.destination, %err, "fsync before closing failed");
            }
        }
        slot
    }

    /// When a file made or renamed has its directory synced, so that a line synced is found under
    /// its name after a crash: at once with `fsync = "every"`, with the file's next sync on an
    /// interval.
    fn syncs_names(&self) -> NameSync {
        match self.options.fsync {
            Fsync::Policy(FsyncPolicy::Every) => NameSync::Now,
            Fsync::IntervalMs(_) => NameSync::WithTheFile,
            Fsync::Policy(FsyncPolicy::Never) => NameSync::Never,
        }
    }

    /// Sync every file with unsynced lines.
    fn sync_all(&self) {
        let slots: Vec<_> = lock(&self.open).by_path.values().map(|(_, slot)| slot.clone()).collect();
        sync_slots(&slots, &self.destination);
    }

    /// The path `message` goes to, or why it cannot go anywhere.
    fn path_of(&self, message: &Message) -> Result<PathBuf, String> {
        let topic = &message.topic;
        if topic.contains(['/', '\\']) && self.options.path.contains("{topic}") {
            return Err(format!("topic {topic:?} holds a path separator: it cannot name a file"));
        }
        Ok(PathBuf::from(self.options.path.replace("{topic}", topic)))
    }

    /// Whether something that `topic` names exists: the topic's file, or a directory the template
    /// names by topic. An error about a name is then that topic's alone (a directory in place of
    /// its file, a file not writable); when nothing the topic names exists, what failed is the
    /// template's own directory (missing, not writable), and every topic fails alike.
    fn names_existing(&self, topic: &str) -> bool {
        let template = Path::new(&self.options.path);
        let named = template.ancestors().map(Path::to_string_lossy).filter(|part| part.contains("{topic}"));
        named
            .map(|part| part.replace("{topic}", topic))
            .any(|path| Path::new(&path).symlink_metadata().is_ok())
    }
}

impl Drop for Files {
    /// With an fsync interval, sync the lines written since the last beat as the files go (a
    /// reload rebuilt or removed the destination, and the beat stops with them), on a blocking
    /// thread when on a runtime.
    fn drop(&mut self) {
        if !matches!(self.options.fsync, Fsync::IntervalMs(_)) {
            return;
        }
        let slots: Vec<_> =
            std::mem::take(&mut lock(&self.open).by_path).into_values().map(|(_, slot)| slot).collect();
        let destination = std::mem::take(&mut self.destination);
        let sync = move || sync_slots(&slots, &destination);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(sync)),
            Err(_) => sync(),
        }
    }
}

/// Sync each file of `slots` with unsynced lines (or name), telling a failure as `destination`'s.
fn sync_slots(slots: &[Arc<Mutex<Slot>>], destination: &str) {
    for slot in slots {
        if let Slot::Open(file) = &mut *lock(slot)
            && (file.unsynced || file.unsynced_name.is_some())
            && let Err(err) = file.sync()
        {
            tracing::warn!(%destination, %err, "fsync failed");
        }
    }
}

impl Slots {
    /// The slot of `path`, made now if it has none, and the files taken out of the slots closed to
    /// make room for it: the least recently used first, skipping those in use.
    fn slot(&mut self, path: &Path) -> (Arc<Mutex<Slot>>, Vec<OpenFile>) {
        self.uses += 1;
        if let Some((used, slot)) = self.by_path.get_mut(path) {
            *used = self.uses;
            return (slot.clone(), Vec::new());
        }
        let mut closed = Vec::new();
        while self.by_path.len() >= MAX_OPEN_FILES
            && let Some(taken) = self.close_least_recently_used()
        {
            closed.extend(match taken {
                Slot::Open(file) => Some(file),
                Slot::Unopened | Slot::Closed => None,
            });
        }
        let slot = Arc::new(Mutex::new(Slot::Unopened));
        self.by_path.insert(path.to_owned(), (self.uses, slot.clone()));
        (slot, closed)
    }

    /// Remove the least recently used slot not in use, leaving it [`Slot::Closed`] for an attempt that
    /// found it before, and give what it held; `None` when every slot is in use.
    fn close_least_recently_used(&mut self) -> Option<Slot> {
        let mut by_use: Vec<_> = self.by_path.iter().collect();
        by_use.sort_unstable_by_key(|(_, (used, _))| *used);
        let (path, taken) = by_use.into_iter().find_map(|(path, (_, slot))| {
            let mut slot = match slot.try_lock() {
                Ok(slot) => slot,
                Err(std::sync::TryLockError::Poisoned(poison)) => poison.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            };
            Some((path.clone(), std::mem::replace(&mut *slot, Slot::Closed)))
        })?;
        self.by_path.remove(&path);
        Some(taken)
    }
}

impl AppendError {
    /// How the attempt that failed with this to append a line of `line_bytes` to `path` ends, and
    /// its problem; `size_limit` gives the process's file size limit, read only for `EFBIG`, and
    /// `topics_own` whether an error about a name is the message's topic's alone
    /// ([`Files::names_existing`]), read only for such errors.
    fn verdict(
        &self,
        path: &Path,
        line_bytes: u64,
        size_limit: impl FnOnce() -> Option<u64>,
        topics_own: impl FnOnce() -> bool,
    ) -> (Outcome, String) {
        let problem = format!("{}: {self}", path.display());
        let error = match self {
            // The line is in the file, read by whoever reads it now, and maybe on disk after all:
            // like a request that went out and got no answer, it may have been delivered, and
            // another attempt would append it a second time.
            AppendError::NotSynced(_) => return (Outcome::Retryable(RetryReason::Reset), problem),
            AppendError::NotWritten(error) => error,
        };
        match error.kind() {
            // A name no file can have (too long, not valid here) is this message's for good.
            std::io::ErrorKind::InvalidFilename | std::io::ErrorKind::InvalidInput => {
                (Outcome::Fatal(FatalReason::Rejected), problem)
            }
            // So is a line larger than the process's file size limit (`ulimit -f`) on its own; past
            // it only with what the file holds, the file is full: the endpoint's, as below.
            std::io::ErrorKind::FileTooLarge if size_limit().is_some_and(|limit| line_bytes > limit) => {
                let problem = format!("{problem}: the line alone is larger than the file size limit");
                (Outcome::Fatal(FatalReason::Rejected), problem)
            }
            // So is a file of this topic's alone that cannot be opened: waiting would hold back
            // every topic's messages, with the endpoint left out, for a file the others do not use.
            _ if is_about_a_name(error) && topics_own() => (Outcome::Fatal(FatalReason::Rejected), problem),
            // Nothing of the line stays in the file: as safe to retry as a refused connection.
            _ => (Outcome::Retryable(RetryReason::Connect), problem),
        }
    }
}

/// Whether `error` is about the name a file is opened at (what it names is a directory or no regular
/// file, or not writable, or a path through something missing), not about the file system (full,
/// failing).
fn is_about_a_name(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{IsADirectory, NotADirectory, NotFound, PermissionDenied};
    matches!(error.kind(), IsADirectory | NotADirectory | PermissionDenied | NotFound)
        || error.get_ref().is_some_and(|inner| inner.is::<NotARegularFile>())
}

impl OpenFile {
    /// The regular file at `path`, created if there is none (its directory then synced as `names`
    /// says), opened for appending.
    fn append(path: &Path, names: NameSync) -> std::io::Result<OpenFile> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let not_regular = |meta: std::fs::Metadata| {
            std::io::Error::other(NotARegularFile(crate::regular_file::kind(meta.file_type())))
        };
        // Without blocking: opening a FIFO with no reader fails at once (`ENXIO`) rather than waiting
        // for one, holding the path's slot and a thread for good. On a regular file it changes nothing.
        let open = |create| {
            std::fs::OpenOptions::new().create(create).append(true).custom_flags(libc::O_NONBLOCK).open(path)
        };
        let (opened, created) = match open(false) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => (open(true), true),
            opened => (opened, false),
        };
        let file = match opened {
            Err(err) if err.raw_os_error() == Some(libc::ENXIO) => match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => return Err(not_regular(meta)),
                _ => return Err(err),
            },
            opened => opened?,
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(not_regular(meta));
        }
        let mut unsynced_name = None;
        if created {
            match names {
                NameSync::Now => sync_directory(directory_of(path))?,
                NameSync::WithTheFile => unsynced_name = Some(directory_of(path).to_owned()),
                NameSync::Never => {}
            }
        }
        let identity = (meta.dev(), meta.ino());
        let len = meta.len();
        Ok(OpenFile { file, identity, len, unsynced: false, unsynced_name, synced_at: Instant::now() })
    }

    /// Its length, when `path` still names this file (one stat a line); `None` when the path names
    /// another file, or none.
    fn length_at(&self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        ((meta.dev(), meta.ino()) == self.identity).then_some(meta.len())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        if let Some(directory) = &self.unsynced_name {
            sync_directory(directory)?;
        }
        (self.unsynced, self.unsynced_name, self.synced_at) = (false, None, Instant::now());
        Ok(())
    }
}

/// Sync and close `file` at `path`, rename it to `PATH.N` (the first N from 1 that is free), and open
/// a new, empty one in its place; the directory is synced after both as `names` says.
fn rotate(path: &Path, file: &mut OpenFile, names: NameSync) -> std::io::Result<OpenFile> {
    file.sync()?;
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let free = (1..).map(numbered).find(|candidate| !candidate.exists()).expect("some number is free");
    std::fs::rename(path, free)?;
    // The new file's creation syncs the directory, with the rename in it.
    OpenFile::append(path, names)
}

/// The directory `path` is in.
fn directory_of(path: &Path) -> &Path {
    path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Sync `directory`: the names made or renamed in it are then on disk.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    File::open(directory)?.sync_all()
}

/// Sync `files` every `interval` while they are in use; what the last beat left is synced as they
/// go (their `drop`).
async fn sync_every(files: Weak<Files>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let Some(files) = files.upgrade() else { return };
        // Syncing blocks: off the runtime's threads.
        if tokio::task::spawn_blocking(move || files.sync_all()).await.is_err() {
            return;
        }
    }
}

/// The process's file size limit (`ulimit -f`) in bytes, from `/proc/self/limits`; `None` when there
/// is none (or it cannot be read).
fn file_size_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max file size"))?;
    line["Max file size".len()..].split_whitespace().next()?.parse().ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl FileTransport {
    async fn write(&self, message: &Message) -> AttemptResult {
        let path =
            self.0.path_of(message).map_err(|problem| (Outcome::Fatal(FatalReason::Rejected), problem))?;
        let mut line = message.json_line(&self.0.destination).into_bytes();
        line.push(b'\n');
        let line_bytes = line.len() as u64;
        let (files, topic) = (self.0.clone(), message.topic.clone());
        // Nothing is written before its turn comes.
        AttemptProgress::mark_current(Step::Waiting(Wait::Write));
        let turn = files.writing.clone().acquire_owned().await.expect("the semaphore is never closed");
        AttemptProgress::mark_current(Step::MaySend);
        // The verdict on a failed line looks at the file system too: on the same blocking thread.
        let written = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            files.append(&path, &line).map_err(|error| {
                let topics_own = || files.names_existing(&topic);
                error.verdict(&path, line_bytes, file_size_limit, topics_own)
            })
        });
        match written.await {
            Ok(written) => written.map(|()| None),
            Err(err) => {
                Err((Outcome::Retryable(RetryReason::Connect), format!("the write did not finish: {err}")))
            }
        }
    }
}

impl Transport for FileTransport {
    fn attempt<'a>(&'a self, _address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.write(message))
    }

    /// The directory the path template names exists: looked at on a blocking thread, so that
    /// `health.timeout_ms` cuts a look a hung mount holds; while one is held, the check fails at once.
    fn probe<'a>(&'a self, _address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        let template = PathBuf::from(&self.0.options.path);
        let dir = directory_of(&template).to_owned();
        if dir.to_string_lossy().contains("{topic}") {
            return Box::pin(std::future::ready(Ok(())));
        }
        let Ok(checking) = self.0.checking.clone().try_acquire_owned() else {
            let held = format!("{}: the last check has not ended (a hung mount?)", dir.display());
            return Box::pin(std::future::ready(Err(held)));
        };
        Box::pin(async move {
            let found = tokio::task::spawn_blocking(move || {
                let _checking = checking;
                match std::fs::metadata(&dir) {
                    Ok(meta) if meta.is_dir() => Ok(()),
                    Ok(_) => Err(format!("{}: not a directory", dir.display())),
                    Err(err) => Err(format!("{}: {err}", dir.display())),
                }
            });
            found.await.unwrap_or_else(|err| Err(format!("the check did not finish: {err}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn a_sync_that_fails_after_the_line_was_written_may_have_delivered_it() {
        let path = Path::new("archive/orders.jsonl");
        let no_limit = || None;
        for errno in [libc::EIO, libc::ENOSPC, libc::EDQUOT] {
            let error = AppendError::NotSynced(std::io::Error::from_raw_os_error(errno));
            let (outcome, problem) = error.verdict(path, 100, no_limit, || true);
            assert_eq!(outcome, Outcome::Retryable(RetryReason::Reset), "{problem}");
            assert!(problem.starts_with("archive/orders.jsonl: the line was written, but syncing it failed"));
        }
        // The same errors before anything was written leave nothing in the file.
        for errno in [libc::EIO, libc::ENOSPC, libc::EDQUOT] {
            let error = AppendError::NotWritten(std::io::Error::from_raw_os_error(errno));
            assert_eq!(
                error.verdict(path, 100, no_limit, || true).0,
                Outcome::Retryable(RetryReason::Connect)
            );
        }
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_its_topics_problem_only_when_the_topic_names_it() {
        let path = Path::new("archive/orders.jsonl");
        let not_regular = || std::io::Error::other(NotARegularFile("a FIFO"));
        let errors =
            [libc::EISDIR, libc::ENOTDIR, libc::EACCES, libc::ENOENT].map(std::io::Error::from_raw_os_error);
        for error in errors.into_iter().chain([not_regular()]) {
            let error = AppendError::NotWritten(error);
            let (outcome, problem) = error.verdict(path, 100, || None, || true);
            assert_eq!(outcome, Outcome::Fatal(FatalReason::Rejected), "{problem}");
            assert!(problem.starts_with("archive/orders.jsonl: "), "{problem}");
            // The template's own directory (missing, not writable): every topic's file fails alike.
            let (outcome, problem) = error.verdict(path, 100, || None, || false);
            assert_eq!(outcome, Outcome::Retryable(RetryReason::Connect), "{problem}");
        }
    }

    #[test]
    fn attempts_behind_a_hung_write_wait_for_a_turn_without_a_blocking_thread_each() {
        // A write a hung mount never ends holds the file's slot (here the test holds it). Every
        // attempt behind it took a blocking thread of its own to wait on the slot, cut at its
        // deadline or not: under load, the runtime's whole blocking pool.
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("hung.jsonl");
        let files = Arc::new(Files {
            options: FileOptions {
                path: path.display().to_string(),
                fsync: Fsync::Policy(FsyncPolicy::Never),
                max_bytes: None,
            },
            destination: "files".into(),
            open: Mutex::default(),
            checking: Arc::new(tokio::sync::Semaphore::new(1)),
            writing: Arc::new(tokio::sync::Semaphore::new(MAX_WRITING)),
        });
        let transport = FileTransport(files.clone());
        let threads = Arc::new(AtomicUsize::new(0));
        let started = threads.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .on_thread_start(move || {
                started.fetch_add(1, SeqCst);
            })
            .build()
            .unwrap();
        let slot = files.slot(&path);
        let hung = lock(&slot);
        let message = Message::new("jobs", "line");
        let attempts = 4 * MAX_WRITING;
        runtime.block_on(async {
            for _ in 0..attempts {
                // Polled as far as it goes, then cut, as its deadline would.
                let attempt = transport.attempt(&files.options.path, &message);
                assert!(futures_util::FutureExt::now_or_never(attempt).is_none(), "waits behind the write");
            }
            // One cut as it waits for its turn sent nothing: it is no attempt.
            let progress = AttemptProgress::default();
            let attempt = progress.scope(transport.attempt(&files.options.path, &message));
            assert!(futures_util::FutureExt::now_or_never(attempt).is_none(), "waits for its turn");
            assert_eq!(progress.abandon(), Step::Waiting(Wait::Write));
        });
        drop(hung);
        // Once the runtime is gone, every blocking thread it started has ended.
        drop(runtime);
        let threads = threads.load(SeqCst);
        assert_eq!(threads, MAX_WRITING, "blocking threads the waiting attempts took");
        // Those that only waited for a turn wrote nothing, then or later.
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, MAX_WRITING, "only the attempts whose turn came wrote their lines");
    }

    #[test]
    fn only_what_the_topic_names_makes_an_error_the_topics() {
        let out = tempfile::tempdir().unwrap();
        let files = |template: &str| Files {
            options: FileOptions {
                path: format!("{}/{template}", out.path().display()),
                fsync: Fsync::default(),
                max_bytes: None,
            },
            destination: "files".into(),
            open: Mutex::default(),
            checking: Arc::new(tokio::sync::Semaphore::new(1)),
            writing: Arc::new(tokio::sync::Semaphore::new(MAX_WRITING)),
        };
        std::fs::create_dir_all(out.path().join("blocked.jsonl")).unwrap();
        std::fs::create_dir_all(out.path().join("eu/orders")).unwrap();
        assert!(files("{topic}.jsonl").names_existing("blocked"), "its file");
        assert!(!files("{topic}.jsonl").names_existing("jobs"), "nothing of its own yet");
        assert!(files("{topic}/orders/x.jsonl").names_existing("eu"), "a directory named by it");
        assert!(!files("{topic}/orders/x.jsonl").names_existing("us"));
        assert!(!files("blocked.jsonl").names_existing("blocked"), "one file for all: no topic's own");
    }
}
