//! Reading files that others may write — plugins, their sidecars, the
//! config file — as untrusted input: only a regular file (in the plugin
//! directory, a symbolic link only when it resolves inside it), opened
//! without blocking (a FIFO cannot stall a reload) and read up to a size
//! limit (a sparse or endless file cannot fill memory).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Bytes of a plugin's sidecar or of a config file, at most.
pub const MAX_SETTINGS_BYTES: u64 = 4 << 20;

/// Where a symbolic link may lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Anywhere: a file the operator names (the config file, `check FILE`).
    Anywhere,
    /// Only inside the link's own directory: files in the plugin directory.
    WithinDirectory,
}

/// The bytes of the file at `path`, or `None` when it changed while it was
/// read (a copy or an in-place write in progress: its next change event
/// brings it back). Refused with an `InvalidInput` error naming the problem:
/// not a regular file, a link leading where `links` forbids, or more than
/// `max` bytes.
pub fn read(path: &Path, max: u64, links: Links) -> std::io::Result<Option<Vec<u8>>> {
    // Opened as a place only (`O_PATH`: nothing is read, no device is opened), then checked on what
    // was opened, not on the path: a link swapped between a check and the open cannot lead out.
    let place =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path).map_err(|err| {
            match err.kind() {
                // The link is there: what is missing is what it points to.
                std::io::ErrorKind::NotFound if std::fs::symlink_metadata(path).is_ok() => {
                    let to = std::fs::read_link(path).map(|to| to.display().to_string()).unwrap_or_default();
                    refused(format!("a symbolic link to nothing (to {to})"))
                }
                _ => err,
            }
        })?;
    let opened = Path::new("/proc/self/fd").join(place.as_raw_fd().to_string());
    if links == Links::WithinDirectory {
        let target = std::fs::read_link(&opened)?;
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !target.starts_with(std::fs::canonicalize(dir)?) {
            return Err(refused(format!("a symbolic link out of its directory, to {}", target.display())));
        }
    }
    let kind_of_place = place.metadata()?.file_type();
    if !kind_of_place.is_file() {
        return Err(refused(format!("not a regular file but {}", kind(kind_of_place))));
    }
    // Reopened through the descriptor: the very file checked.
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&opened)?;
    let before = file.metadata()?;
    let too_big = |size: u64| refused(format!("{size} bytes, over the limit of {max}"));
    if before.len() > max {
        return Err(too_big(before.len()));
    }
    let mut bytes = Vec::with_capacity(before.len() as usize);
    (&mut file).take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    let after = file.metadata()?;
    let settled = before.len() == after.len()
        && bytes.len() as u64 == after.len()
        && before.modified().ok() == after.modified().ok();
    Ok(settled.then_some(bytes))
}

fn refused(problem: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, problem)
}

/// What a file of `file_type` is, in words: "a directory", "a FIFO", ….
pub(crate) fn kind(file_type: std::fs::FileType) -> &'static str {
    match file_type {
        t if t.is_dir() => "a directory",
        t if t.is_fifo() => "a FIFO",
        t if t.is_char_device() => "a character device",
        t if t.is_block_device() => "a block device",
        t if t.is_socket() => "a socket",
        _ => "something else",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_within_its_limit_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read(&path, 10, Links::WithinDirectory).unwrap(), Some(b"0123456789".to_vec()));
        let over = read(&path, 9, Links::WithinDirectory).unwrap_err().to_string();
        assert_eq!(over, "10 bytes, over the limit of 9");
    }

    #[test]
    fn a_link_inside_its_directory_is_followed_and_one_out_of_it_refused() {
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(dir.path().join("real.wasm"), b"inside").unwrap();
        std::fs::write(elsewhere.path().join("real.wasm"), b"outside").unwrap();
        std::os::unix::fs::symlink("missing.wasm", dir.path().join("dangling.wasm")).unwrap();
        let dangling = read(&dir.path().join("dangling.wasm"), 1 << 20, Links::WithinDirectory).unwrap_err();
        assert_eq!(dangling.to_string(), "a symbolic link to nothing (to missing.wasm)");
        std::os::unix::fs::symlink("real.wasm", dir.path().join("in.wasm")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("real.wasm"), dir.path().join("out.wasm")).unwrap();
        assert_eq!(
            read(&dir.path().join("in.wasm"), 100, Links::WithinDirectory).unwrap(),
            Some(b"inside".to_vec())
        );
        let out = read(&dir.path().join("out.wasm"), 100, Links::WithinDirectory).unwrap_err().to_string();
        assert!(out.starts_with("a symbolic link out of its directory, to "), "{out}");
        let named = read(&dir.path().join("out.wasm"), 100, Links::Anywhere).unwrap();
        assert_eq!(named, Some(b"outside".to_vec()), "a file the operator names may be a link anywhere");
    }

    #[test]
    fn a_link_swapped_while_it_is_read_never_leads_out_of_its_directory() {
        // The link was checked, then opened by its path again: one swapped in between was followed
        // out of the directory (a helper read a secret file's first line into a reload's error).
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(dir.path().join("inside.toml"), b"inside").unwrap();
        std::fs::write(elsewhere.path().join("secret.toml"), b"secret").unwrap();
        let (link, swap) = (dir.path().join("p.toml"), dir.path().join("p.toml.next"));
        std::os::unix::fs::symlink("inside.toml", &link).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, link, swap) = (stop.clone(), link.clone(), swap.clone());
            let targets = [dir.path().join("inside.toml"), elsewhere.path().join("secret.toml")];
            std::thread::spawn(move || {
                for target in targets.iter().cycle() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::os::unix::fs::symlink(target, &swap).unwrap();
                    std::fs::rename(&swap, &link).unwrap();
                }
            })
        };
        for _ in 0..3000 {
            if let Ok(Some(bytes)) = read(&link, 100, Links::WithinDirectory) {
                assert_eq!(bytes, b"inside", "read through a link out of its directory");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
    }

    #[test]
    fn a_directory_or_device_is_refused_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(dir.path(), 100, Links::Anywhere).unwrap_err().to_string(),
            "not a regular file but a directory"
        );
        let zero = read(Path::new("/dev/zero"), 100, Links::Anywhere).unwrap_err().to_string();
        assert_eq!(zero, "not a regular file but a character device");
    }
}
