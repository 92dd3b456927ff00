//! Files still open for writing: a file written in place is read once its writer closes it, as
//! the kernel tells (inotify's close-after-write), not once it has been quiet for a moment. A
//! writer that writes, pauses and writes more had the file read between its writes, half-written:
//! a config cut after a complete route was applied without the routes after it.
//!
//! A writer that holds the file open without writing to it for [`HELD_OPEN_AT_MOST`] is taken as
//! done with it: the file is read as it is, with a warning, so that no writer holds a reload back
//! for ever. A file renamed into place (editors, `mv`, deploy tools) is complete once it is there,
//! and is read at once.

use super::links::place;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a file its writer holds open is left unread after its last write to it: past that,
/// it is read as it is (with a warning).
pub(crate) const HELD_OPEN_AT_MOST: Duration = Duration::from_secs(5);

/// The files written and not closed since, as file events tell them.
#[derive(Default)]
pub(crate) struct OpenWrites {
    /// Each file written and not closed since, by its place (its directory resolved, its own name
    /// kept, as file events name it).
    files: Mutex<BTreeMap<PathBuf, Written>>,
    /// Told when a file leaves `files` or is waited out.
    released: Condvar,
}

/// A file written and not closed since.
struct Written {
    /// When it was last written.
    last: Instant,
    /// Its writer held it open past [`HELD_OPEN_AT_MOST`] after `last`: it is read as it is.
    waited_out: bool,
}

impl OpenWrites {
    /// Note what `event` tells of its files: written (held open by its writer), or closed after
    /// writing, removed or renamed (no longer).
    pub(crate) fn note(&self, event: &notify::Event) {
        let mut files = self.files.lock().unwrap_or_else(|poison| poison.into_inner());
        let places = event.paths.iter().map(|path| place(path).unwrap_or_else(|| path.clone()));
        for place in places {
            match event.kind {
                EventKind::Modify(ModifyKind::Data(_)) => {
                    files.insert(place, Written { last: Instant::now(), waited_out: false });
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => {
                    files.remove(&place);
                    self.released.notify_all();
                }
                _ => {}
            }
        }
    }

    /// Whether what was just read from `path` must not be used yet: its writer holds it open and
    /// wrote to it less than [`HELD_OPEN_AT_MOST`] ago. One held open longer than that is read as
    /// it is, and said so.
    pub(crate) fn holds(&self, path: &Path) -> bool {
        let Some(at) = path.canonicalize().ok().or_else(|| place(path)) else { return false };
        match self.files.lock().unwrap_or_else(|poison| poison.into_inner()).get(&at) {
            Some(Written { waited_out: false, .. }) => true,
            Some(Written { waited_out: true, .. }) => {
                tracing::warn!(
                    file = %path.display(),
                    "read as it is while its writer still holds it open: it wrote nothing for {HELD_OPEN_AT_MOST:?}"
                );
                false
            }
            None => false,
        }
    }

    /// Wait, at most [`HELD_OPEN_AT_MOST`], until `path` is not held: an explicit reload right
    /// after a writer closed the file may come before the close's event did, and a writer still
    /// at it is given the time the watcher gives it.
    pub(crate) fn wait_for_writer(&self, path: &Path) {
        let Some(at) = path.canonicalize().ok().or_else(|| place(path)) else { return };
        let files = self.files.lock().unwrap_or_else(|poison| poison.into_inner());
        let held = |files: &mut BTreeMap<PathBuf, Written>| {
            files.get(&at).is_some_and(|written| !written.waited_out)
        };
        let waited = self.released.wait_timeout_while(files, HELD_OPEN_AT_MOST, held);
        drop(waited.unwrap_or_else(|poison| poison.into_inner()));
    }

    /// When the first file held open now is to be read as it is, if any is.
    pub(crate) fn next_wait_end(&self) -> Option<Instant> {
        let files = self.files.lock().unwrap_or_else(|poison| poison.into_inner());
        let held = files.values().filter(|written| !written.waited_out);
        held.map(|written| written.last + HELD_OPEN_AT_MOST).min()
    }

    /// The files held open past [`HELD_OPEN_AT_MOST`] after their last write at `now`: from now on
    /// read as they are (until written again).
    pub(crate) fn wait_out(&self, now: Instant) -> Vec<PathBuf> {
        let mut files = self.files.lock().unwrap_or_else(|poison| poison.into_inner());
        let due = files
            .iter_mut()
            .filter(|(_, written)| !written.waited_out && written.last + HELD_OPEN_AT_MOST <= now);
        let due: Vec<PathBuf> = due
            .map(|(place, written)| {
                written.waited_out = true;
                place.clone()
            })
            .collect();
        if !due.is_empty() {
            self.released.notify_all();
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RenameMode};

    fn event(kind: EventKind, path: &Path) -> notify::Event {
        notify::Event::new(kind).add_path(path.to_path_buf())
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_written_is_held_until_its_writer_closes_it_renames_it_or_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.wasm");
        std::fs::write(&file, b"half").unwrap();
        let writes = OpenWrites::default();
        let written = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let ends = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Remove(notify::event::RemoveKind::File),
        ];
        for end in ends {
            writes.note(&event(written, &file));
            assert!(writes.holds(&file));
            // Its own reads, and a file created, end nothing.
            writes.note(&event(EventKind::Access(AccessKind::Close(AccessMode::Read)), &file));
            writes.note(&event(EventKind::Create(CreateKind::File), &file));
            assert!(writes.holds(&file), "{end:?}");
            writes.note(&event(end, &file));
            assert!(!writes.holds(&file), "{end:?}");
        }
        // Named through a link to its directory, it is the same file.
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        writes.note(&event(written, &link.join("t.wasm")));
        assert!(writes.holds(&file));
        assert_eq!(writes.next_wait_end(), Some(Instant::now() + HELD_OPEN_AT_MOST));
        tokio::time::advance(HELD_OPEN_AT_MOST).await;
        assert_eq!(writes.wait_out(Instant::now()), [file.canonicalize().unwrap()]);
        assert!(!writes.holds(&file), "held open past the longest wait: read as it is");
        assert_eq!(writes.next_wait_end(), None);
        // Written again, it is held again.
        writes.note(&event(written, &file));
        assert!(writes.holds(&file));
    }
}
