//! A state directory is one host's at a time: its dead-letter file, spool and saved alerts are
//! rewritten in place, and two hosts on one directory would delete each other's records.

use crate::owner_only;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The lock file of a state directory: held (an exclusive `flock`) by the host using it.
const LOCK_FILE: &str = "host.lock";

/// A state directory locked for one host; unlocked when let go (once no [`StatePin`] is left) or
/// dropped (or the process ends).
#[derive(Debug)]
pub(crate) struct StateLock {
    dir: PathBuf,
    held: Mutex<Held>,
}

/// Where a [`StateLock`] stands.
#[derive(Debug)]
struct Held {
    /// The lock file held, with its device and inode; `None` once unlocked.
    file: Option<(File, (u64, u64))>,
    /// Whether the host let the directory go: nothing of it may write there any more.
    let_go: bool,
    /// Threads that may still write in the directory whatever the host does ([`StatePin`]).
    pins: usize,
}

impl Held {
    /// Unlock the file once the host let it go and no pin is left.
    fn unlock_if_free(&mut self) {
        if self.let_go && self.pins == 0 {
            self.file = None;
        }
    }
}

/// Held by a thread that may go on writing in the state directory after its host let it go (the
/// spool's writer, which a hung disk can hold in a write that may still land): the directory stays
/// locked, for no other host to take, until every pin is dropped.
#[derive(Debug)]
pub(crate) struct StatePin(Arc<StateLock>);

impl Drop for StatePin {
    fn drop(&mut self) {
        let mut held = self.0.held();
        held.pins -= 1;
        held.unlock_if_free();
    }
}

impl StateLock {
    /// Lock `dir` (creating it `0700`, its lock file `0600`) for this host, or say why not: another
    /// host (in this process or another) holds it, or it cannot be created.
    pub(crate) fn acquire(dir: &Path) -> Result<StateLock, String> {
        let held = Held { file: Some(lock(dir)?), let_go: false, pins: 0 };
        Ok(StateLock { dir: dir.to_owned(), held: Mutex::new(held) })
    }

    /// Make sure the lock file at its path is the one this host holds, before the host writes in
    /// the directory. One gone (the state directory removed while the host ran) is made again,
    /// directory and all, and locked; that fails if another host has made and locked it meanwhile,
    /// or once the host let the directory go.
    pub(crate) fn hold(&self) -> io::Result<()> {
        let mut held = self.held();
        let (Some((_, id)), false) = (&held.file, held.let_go) else {
            return Err(io::Error::other("the host has stopped: its state directory is no longer its"));
        };
        match std::fs::metadata(self.dir.join(LOCK_FILE)) {
            Ok(metadata) if (metadata.dev(), metadata.ino()) == *id => return Ok(()),
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let again = lock(&self.dir).map_err(|problem| {
            io::Error::other(format!(
                "the state directory {} lost its {LOCK_FILE} while the host ran (was it removed?) and cannot be this host's again: {problem}",
                self.dir.display()
            ))
        })?;
        tracing::warn!(dir = %self.dir.display(), "the state directory lost its {LOCK_FILE} while the host ran (was it removed?): made again and locked");
        held.file = Some(again);
        Ok(())
    }

    /// Let the directory go: another host may have it, once no [`StatePin`] is left.
    pub(crate) fn release(&self) {
        let mut held = self.held();
        held.let_go = true;
        held.unlock_if_free();
    }

    /// Keep the directory locked while the pin lives, whether or not the host lets it go.
    pub(crate) fn pin(self: &Arc<Self>) -> StatePin {
        self.held().pins += 1;
        StatePin(self.clone())
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Make `dir` if need be, and lock its lock file: the file and its device and inode, or why not.
fn lock(dir: &Path) -> Result<(File, (u64, u64)), String> {
    owner_only::create_dir_all(dir).map_err(|error| format!("cannot create it: {error}"))?;
    let path = dir.join(LOCK_FILE);
    let file = owner_only::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot open its {LOCK_FILE}: {error}"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(format!(
                "in use by another host (its {LOCK_FILE} is locked): give each host a host.state_dir of its own"
            ));
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(format!("cannot lock its {LOCK_FILE}: {error}"));
        }
    }
    let metadata = file.metadata().map_err(|error| format!("cannot read its {LOCK_FILE}: {error}"))?;
    Ok((file, (metadata.dev(), metadata.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_is_locked_for_one_host_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).expect("a new directory is created and locked");
        let refused = StateLock::acquire(&state).unwrap_err();
        assert!(
            refused.contains("in use by another host") && refused.contains("host.state_dir"),
            "{refused}"
        );
        first.release();
        let second = StateLock::acquire(&state).expect("free again once the first lets go");
        drop(second);
        StateLock::acquire(&state).expect("free again once the second is dropped");
    }

    #[test]
    fn a_pinned_state_directory_let_go_stays_locked_until_its_last_pin_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let lock = Arc::new(StateLock::acquire(&state).unwrap());
        let (first, second) = (lock.pin(), lock.pin());
        lock.release();
        assert!(lock.hold().is_err(), "let go: nothing of this host writes there any more");
        let refused = StateLock::acquire(&state).unwrap_err();
        assert!(refused.contains("in use by another host"), "{refused}");
        drop(first);
        StateLock::acquire(&state).expect_err("one pin is left");
        drop(second);
        StateLock::acquire(&state).expect("free once the last pin is dropped");
    }

    #[test]
    fn a_state_directory_that_cannot_be_created_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let refused = StateLock::acquire(&file.join("state")).unwrap_err();
        assert!(refused.contains("cannot create it"), "{refused}");
    }

    #[test]
    fn a_state_directory_removed_is_made_again_and_locked_unless_another_host_locked_it_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).unwrap();
        first.hold().expect("its lock is in place");
        std::fs::remove_dir_all(&state).unwrap();
        first.hold().expect("made again");
        let refused = StateLock::acquire(&state).unwrap_err();
        assert!(refused.contains("in use by another host"), "{refused}");
        std::fs::remove_dir_all(&state).unwrap();
        let second = StateLock::acquire(&state).expect("the removed directory is free to take");
        let refused = first.hold().unwrap_err().to_string();
        assert!(refused.contains("in use by another host"), "{refused}");
        drop(second);
        first.release();
        let refused = first.hold().unwrap_err().to_string();
        assert!(refused.contains("has stopped"), "{refused}");
    }
}
