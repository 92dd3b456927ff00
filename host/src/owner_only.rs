//! Files and directories only their owner may read or write: the state directory and what the host
//! keeps in it (messages' payloads in the spool and the dead-letter file, lock files), which the
//! default umask would leave readable by every user (0644 files, 0755 directories).
//!
//! Modes are given at creation only: a directory the operator made keeps the mode they gave it.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The mode of a file the host creates in the state directory.
pub(crate) const FILE_MODE: u32 = 0o600;
/// The mode of a directory the host creates for its state.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Create `dir` and any missing parent, each `0700`; directories already there are left as they are.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Options that create a file `0600` (a file already there keeps its mode).
pub(crate) fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Append `bytes` to the file at `path`, created `0600` if absent, and fsync them.
pub(crate) fn append(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = options().create(true).append(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        path.metadata().unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_directories_are_the_owners_and_existing_ones_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let operators = dir.path().join("operators");
        std::fs::create_dir(&operators).unwrap();
        std::fs::set_permissions(&operators, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&operators.join("state/spool")).unwrap();
        assert_eq!(mode(&operators), 0o755, "the operator's directory is not changed");
        assert_eq!(mode(&operators.join("state")), 0o700);
        assert_eq!(mode(&operators.join("state/spool")), 0o700);
        append(&operators.join("state/file"), b"payload").unwrap();
        assert_eq!(mode(&operators.join("state/file")), 0o600);
        append(&operators.join("state/file"), b" and more").unwrap();
        assert_eq!(std::fs::read(operators.join("state/file")).unwrap(), b"payload and more");
    }
}
