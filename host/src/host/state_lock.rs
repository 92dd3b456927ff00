//! A state directory is one host's at a time: its dead-letter file, spool and saved alerts are
//! rewritten in place, and two hosts on one directory would delete each other's records.

use super::BuildError;
use crate::owner_only;
use std::fs::File;
use std::path::Path;

/// The lock file of a state directory: held (an exclusive `flock`) by the host using it.
const LOCK_FILE: &str = "host.lock";

/// A state directory locked for one host; unlocked when dropped (or the process ends).
#[derive(Debug)]
pub(super) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Lock `dir` (creating it `0700`, its lock file `0600`) for this host, or say why not: another host (in this process or
    /// another) holds it, or it cannot be created.
    pub(super) fn acquire(dir: &Path) -> Result<StateLock, BuildError> {
        let refused = |problem: String| BuildError::StateDir { dir: dir.display().to_string(), problem };
        owner_only::create_dir_all(dir).map_err(|error| refused(format!("cannot create it: {error}")))?;
        let path = dir.join(LOCK_FILE);
        let file = owner_only::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| refused(format!("cannot open its {LOCK_FILE}: {error}")))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(refused(format!(
                "in use by another host (its {LOCK_FILE} is locked): give each host a host.state_dir of its own"
            ))),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(refused(format!("cannot lock its {LOCK_FILE}: {error}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_is_locked_for_one_host_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).expect("a new directory is created and locked");
        let refused = StateLock::acquire(&state).unwrap_err().to_string();
        assert!(
            refused.contains("in use by another host") && refused.contains("host.state_dir"),
            "{refused}"
        );
        drop(first);
        StateLock::acquire(&state).expect("free again once the first lets go");
    }

    #[test]
    fn a_state_directory_that_cannot_be_created_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let refused = StateLock::acquire(&file.join("state")).unwrap_err().to_string();
        assert!(refused.contains("cannot create it"), "{refused}");
    }
}
