//! What a `dirs` grant lets a plugin open: the regular files and the
//! directories under the granted directory, nothing else. wasmtime-wasi's
//! `open-at` opens whatever the path names, blocking: a FIFO with no writer
//! (or a device) held the calling thread, and the pipeline worker waiting on
//! it, inside a host call that the call's deadline cannot reach — for good;
//! and opening a device can act on it (a tape rewinds), a socket fails with
//! the kernel's "no such device or address". `open-at` is replaced by one
//! that looks before it opens: it takes an `O_PATH` descriptor of what the
//! path names (which opens nothing), looks at that, refuses anything but a
//! regular file or a directory, and opens a kept one through that descriptor
//! (its `/proc/self/fd` link: the very file looked at, never the path again,
//! which could be swapped meanwhile), without blocking. Resolving a path,
//! looking at a file and opening it can still wait on a slow or hung mount
//! (NFS, FUSE): that is done on a thread of WASI's blocking pool, which the
//! call waits for at most until its deadline, as for every other
//! filesystem call (see [`deadline`](super::deadline)). The granted
//! directory itself is opened so too, as each instance is made (the first
//! call on a worker, after a fault, a renewal, a new version; the load trial)
//! and before any call deadline is set: waited for at most the plugin's
//! deadline (`limits.timeout_ms`), past which the instance is not made (a
//! timeout) and the trial fails
//! ([`LoadError::GrantTimedOut`](super::LoadError::GrantTimedOut)).
//!
//! The path is resolved as wasmtime-wasi resolves it on Linux (its own
//! resolver is not public): `openat2` with `RESOLVE_BENEATH`, which never
//! leaves the granted directory, by `..`, an absolute path or a link. Where
//! there is no `openat2` (Linux before 5.6: `unsupported`; a seccomp filter
//! that denies it: `not-permitted`) every open is refused, where
//! wasmtime-wasi would resolve the path step by step; where there is no
//! procfs at `/proc`, every open of a file that exists is refused
//! `unsupported`: nothing is opened blocking or unlooked at.
//!
//! Every file or directory opened is a file descriptor of the host's: an
//! instance holds at most [`MAX_OPEN_FILES`] open at once, as it holds at most
//! [`super::socket_cap::MAX_SOCKETS`] sockets, so that a plugin keeping what it
//! opens cannot take the host's descriptors (its ingress accepts, spool and
//! dead-letter writes failing). One more open is answered as the host's own
//! full descriptor table would answer it (`EMFILE`: `io`). An opened file is
//! held until its last holder is dropped: its descriptor, or a stream read
//! from or written to it, which outlives the descriptor (wasmtime-wasi does not
//! tie them), so that is what is counted.

use super::deadline::{FILESYSTEM, WaitEnd, until};
use super::sandbox::StoreState;
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::path::DecInt;
use std::fs::File;
use std::sync::Arc;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, Dir, File as FileDescriptor, FsPerms};
use wasmtime_wasi::p2::bindings::filesystem::types::{DescriptorFlags, ErrorCode, OpenFlags, PathFlags};
use wasmtime_wasi::runtime::spawn_blocking;
use wasmtime_wasi::{OpenMode, WasiCtxBuilder};

/// The arguments of `open-at`: the directory, how to follow a link at the
/// end of the path, the path, how to open and what for.
type OpenAtArgs = (Resource<Descriptor>, PathFlags, String, OpenFlags, DescriptorFlags);

/// Files and directories one plugin instance may hold open at once through
/// its `dirs` grants, each a file descriptor of the host's: as many as sockets.
pub const MAX_OPEN_FILES: usize = 128;

/// Shadow `descriptor.open-at` with a version that opens only regular files
/// and directories, never anything else, never waits to open one, waits
/// for the mount at most until the call's deadline, and keeps the instance
/// within [`MAX_OPEN_FILES`].
pub(crate) fn open_only_files_and_dirs(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(FILESYSTEM)?.func_wrap(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, StoreState>, args: OpenAtArgs| {
            Ok((store.data_mut().open_file(args)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl StoreState {
    /// What `open-at` answers the guest: the file or directory opened,
    /// counted, its error, or what a full descriptor table answers (and
    /// nothing opened) when the instance holds [`MAX_OPEN_FILES`] already.
    fn open_file(
        &mut self,
        (dir, path_flags, path, open_flags, flags): OpenAtArgs,
    ) -> wasmtime::Result<Result<Resource<Descriptor>, ErrorCode>> {
        self.open_files.retain(|file| file.strong_count() > 0);
        if self.open_files.len() >= MAX_OPEN_FILES {
            return Ok(Err(error_code(Errno::MFILE)));
        }
        let Descriptor::Dir(dir) = self.table().get(&dir)? else {
            return Ok(Err(ErrorCode::NotDirectory));
        };
        // The thread's own: it may outlive the call, which then ends at the deadline.
        let dir = dir.clone();
        let opening = spawn_blocking(move || open_at(&dir, path_flags, &path, open_flags, flags));
        let opened = match self.settle_wait(until(self.wait_end(), opening).map(Ok))? {
            Ok(opened) => opened,
            Err(code) => return Ok(Err(code)),
        };
        let file = match &opened {
            Descriptor::File(file) => &file.file,
            Descriptor::Dir(dir) => &dir.dir,
        };
        self.open_files.push(Arc::downgrade(file));
        Ok(Ok(self.table().push(opened)?))
    }
}

/// `builder` with the host directory `path` granted to the guest as `guest`
/// with `perms`, or why it cannot be; `None` when it did not open by
/// `deadline`. wasmtime-wasi opens it blocking, on the thread that asks: here
/// a thread of the blocking pool, waited for at most until `deadline` (an
/// open not started by then never starts). A thread left waiting on a mount
/// that does not answer is the open's own, and its builder with it: it ends
/// once the mount answers, what it opened dropped.
pub(super) fn preopen(
    mut builder: WasiCtxBuilder,
    path: &str,
    guest: &str,
    perms: FsPerms,
    deadline: tokio::time::Instant,
) -> Option<wasmtime::Result<WasiCtxBuilder>> {
    let (path, guest) = (path.to_owned(), guest.to_owned());
    let opening = spawn_blocking(move || {
        #[cfg(test)]
        tests::wait_while_hung(path.as_ref());
        builder.preopened_dir(&path, &guest, perms)?;
        Ok(builder)
    });
    until(WaitEnd { deadline: Some(deadline), cut: None }, opening)
}

/// Open `path` under `dir` as wasmtime-wasi's `open-at` does (the same
/// flags, checks and descriptor), but without blocking, and only if it is a
/// regular file or a directory: anything else is `not-permitted`, as an open
/// the grant does not allow (a write under a read-only grant, a path out of
/// the directory) is, and is never opened. Blocking only while the mount
/// answers: run on a thread of the blocking pool, as wasmtime-wasi's own
/// open is.
fn open_at(
    dir: &Dir,
    path_flags: PathFlags,
    path: &str,
    open_flags: OpenFlags,
    flags: DescriptorFlags,
) -> Result<Descriptor, ErrorCode> {
    let (oflags, open_mode) = requested(path_flags, open_flags, flags)?;
    if open_mode.contains(OpenMode::WRITE) && dir.perms.write_not_permitted() {
        return Err(ErrorCode::NotPermitted);
    }
    let (opened, kind) = open_file_or_dir(&dir.dir, path, oflags)?;
    let opened = File::from(opened);
    // Blocking again, as wasmtime-wasi's own descriptors are.
    let status = rustix::fs::fcntl_getfl(&opened).map_err(error_code)?;
    rustix::fs::fcntl_setfl(&opened, status - OFlags::NONBLOCK).map_err(error_code)?;
    // The sandbox's WASI context never lets WASI block the calling thread
    // (`WasiCtxBuilder::allow_blocking_current_thread`, off by default).
    let blocking_current_thread = false;
    Ok(if kind == FileType::Directory {
        Descriptor::Dir(Dir::new(opened, dir.perms, open_mode, blocking_current_thread))
    } else {
        Descriptor::File(FileDescriptor::new(opened, dir.perms, open_mode, blocking_current_thread))
    })
}

/// How many times a missing file asked to be created is looked for again
/// when one of its name appeared before it could be created.
const CREATE_ATTEMPTS: usize = 4;

/// `path` under `dir` opened as `oflags` ask, without blocking, and its type:
/// a regular file or a directory, never opened if it is anything else. What
/// the path names is looked at first through an `O_PATH` descriptor (which
/// opens nothing: no device's driver is called, no FIFO waits), then opened
/// through that descriptor, not the path. A missing file asked to be created
/// is created exclusively (so never is one that appeared meanwhile opened
/// unlooked at; it is looked at instead): a link to a missing file is not
/// followed to create it (`exist`).
fn open_file_or_dir(dir: &File, path: &str, oflags: OFlags) -> Result<(OwnedFd, FileType), ErrorCode> {
    let create_new = oflags | OFlags::EXCL | OFlags::NONBLOCK;
    if oflags.contains(OFlags::EXCL) {
        // Created, or refused: what is there is never opened.
        return Ok((open_beneath(dir, path, create_new)?, FileType::RegularFile));
    }
    // The only flags `openat2` takes with `O_PATH`.
    let look = (oflags & (OFlags::DIRECTORY | OFlags::NOFOLLOW)) | OFlags::PATH | OFlags::CLOEXEC;
    for _ in 0..CREATE_ATTEMPTS {
        let found = match open_beneath(dir, path, look) {
            Err(ErrorCode::NoEntry) if oflags.contains(OFlags::CREATE) => {
                match open_beneath(dir, path, create_new) {
                    // One appeared meanwhile (or a link to a missing file is there): look again.
                    Err(ErrorCode::Exist) => continue,
                    created => return Ok((created?, FileType::RegularFile)),
                }
            }
            found => found?,
        };
        let kind = FileType::from_raw_mode(rustix::fs::fstat(&found).map_err(error_code)?.st_mode);
        return match kind {
            // A link not followed: what opening it answers.
            FileType::Symlink => Err(ErrorCode::Loop),
            // What creating over a directory answers.
            FileType::Directory if oflags.contains(OFlags::CREATE) => Err(ErrorCode::IsDirectory),
            FileType::RegularFile | FileType::Directory => Ok((reopen(&found, oflags)?, kind)),
            _ => Err(ErrorCode::NotPermitted),
        };
    }
    Err(ErrorCode::Exist)
}

/// The file `found` (an `O_PATH` descriptor) holds, opened as `oflags` ask,
/// without blocking: through its link in `/proc/self/fd`, which opens that
/// very file, whatever the path now names. Unsupported without procfs.
fn reopen(found: &OwnedFd, oflags: OFlags) -> Result<OwnedFd, ErrorCode> {
    let fds = rustix_linux_procfs::proc_self_fd().map_err(|_| ErrorCode::Unsupported)?;
    // Nothing left to create, and the link followed is the file's own.
    let oflags = (oflags - (OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW)) | OFlags::NONBLOCK;
    rustix::fs::openat(fds, DecInt::from_fd(found), oflags, Mode::empty()).map_err(error_code)
}

/// The open flags and the mode that wasmtime-wasi's `open-at` derives from
/// its arguments, or the error it answers them with.
fn requested(
    path_flags: PathFlags,
    open_flags: OpenFlags,
    flags: DescriptorFlags,
) -> Result<(OFlags, OpenMode), ErrorCode> {
    let syncs = DescriptorFlags::FILE_INTEGRITY_SYNC
        | DescriptorFlags::DATA_INTEGRITY_SYNC
        | DescriptorFlags::REQUESTED_WRITE_SYNC;
    if flags.intersects(syncs) {
        return Err(ErrorCode::Unsupported);
    }
    let creates = OpenFlags::CREATE | OpenFlags::EXCLUSIVE | OpenFlags::TRUNCATE;
    if open_flags.contains(OpenFlags::DIRECTORY) && open_flags.intersects(creates) {
        return Err(ErrorCode::Invalid);
    }
    // No controlling terminal taken by opening one; closed on exec.
    let mut oflags = OFlags::CLOEXEC | OFlags::NOCTTY;
    if open_flags.contains(OpenFlags::CREATE) {
        oflags |= OFlags::CREATE;
        if open_flags.contains(OpenFlags::EXCLUSIVE) {
            oflags |= OFlags::EXCL;
        }
    }
    if open_flags.contains(OpenFlags::TRUNCATE) {
        oflags |= OFlags::TRUNC;
    }
    if open_flags.contains(OpenFlags::DIRECTORY) {
        oflags |= OFlags::DIRECTORY;
    }
    if !path_flags.contains(PathFlags::SYMLINK_FOLLOW) {
        oflags |= OFlags::NOFOLLOW;
    }
    // Written if asked, or created or truncated; read if asked, or not written
    // (the OS then opens it, and the grant's permissions refuse its use later).
    let write = flags.contains(DescriptorFlags::WRITE)
        || open_flags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
    let read = flags.contains(DescriptorFlags::READ) || !flags.contains(DescriptorFlags::WRITE);
    oflags |= match (read, write) {
        (true, false) => OFlags::RDONLY,
        (false, _) => OFlags::WRONLY,
        (true, true) => OFlags::RDWR,
    };
    let mut open_mode = OpenMode::empty();
    open_mode.set(OpenMode::READ, read);
    open_mode.set(OpenMode::WRITE, write);
    Ok((oflags, open_mode))
}

/// `openat2` of `path` beneath `dir`, never out of it (through `..`, an
/// absolute path or a link) nor through a `/proc` magic link; retried a few
/// times when a rename elsewhere on the host made it fail `EAGAIN`, as
/// wasmtime-wasi does.
fn open_beneath(dir: &File, path: &str, oflags: OFlags) -> Result<OwnedFd, ErrorCode> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // A created file's permissions, as `std` makes them (`openat2` takes none otherwise).
    let mode = if oflags.contains(OFlags::CREATE) { Mode::from_raw_mode(0o666) } else { Mode::empty() };
    let open = || rustix::fs::openat2(dir, path, oflags, mode, resolve);
    let mut opened = open();
    for _ in 1..4 {
        if !matches!(opened, Err(Errno::AGAIN)) {
            break;
        }
        opened = open();
    }
    opened.map_err(|err| match err {
        // A path out of the directory.
        Errno::XDEV => ErrorCode::NotPermitted,
        Errno::NOSYS => ErrorCode::Unsupported,
        err => error_code(err),
    })
}

/// The code wasmtime-wasi answers `err` with.
fn error_code(err: Errno) -> ErrorCode {
    std::io::Error::from(err).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directories whose open waits, as on a hung mount, until their test lets them go (drops
    /// the sender of their channel).
    static HUNG: std::sync::Mutex<Vec<(std::path::PathBuf, flume::Receiver<()>)>> =
        std::sync::Mutex::new(Vec::new());

    /// The test seam of a granted directory's open: wait while `path` is hung.
    pub(super) fn wait_while_hung(path: &std::path::Path) {
        let hung = HUNG.lock().unwrap().iter().find(|(hung, _)| hung == path).map(|(_, held)| held.clone());
        if let Some(held) = hung {
            let _released = held.recv();
        }
    }

    /// Hang `path` until the sender returned is dropped.
    fn hang(path: &std::path::Path) -> flume::Sender<()> {
        let (release, held) = flume::bounded(0);
        HUNG.lock().unwrap().push((path.to_owned(), held));
        release
    }

    /// A grant of `path` with `perms`.
    fn grant(path: &std::path::Path, perms: FsPerms) -> Dir {
        Dir::new(File::open(path).unwrap(), perms, OpenMode::READ | OpenMode::WRITE, false)
    }

    /// What opening `path` under `dir` (following a link at its end) gave:
    /// a file or a directory, kept blocking, or the error.
    fn opened(
        dir: &Dir,
        path: &str,
        open_flags: OpenFlags,
        flags: DescriptorFlags,
    ) -> Result<&'static str, ErrorCode> {
        let (kind, file) = match open_at(dir, PathFlags::SYMLINK_FOLLOW, path, open_flags, flags)? {
            Descriptor::File(file) => ("file", file.file),
            Descriptor::Dir(dir) => ("dir", dir.dir),
        };
        assert!(!rustix::fs::fcntl_getfl(&*file).unwrap().contains(OFlags::NONBLOCK), "{path}");
        Ok(kind)
    }

    /// A FIFO at `path`.
    fn mkfifo(path: &std::path::Path) {
        let fifo = rustix::fs::FileType::Fifo;
        rustix::fs::mknodat(rustix::fs::CWD, path, fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    }

    const READ: DescriptorFlags = DescriptorFlags::READ;
    const WRITE: DescriptorFlags = DescriptorFlags::WRITE;

    #[test]
    fn an_instance_holds_at_most_its_cap_of_open_files_also_through_what_outlives_their_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        let settings = Arc::new(crate::plugin::sandbox::PluginSettings::default());
        let mut state = StoreState::new(settings).unwrap();
        let granted = state.table().push(Descriptor::Dir(grant(dir.path(), FsPerms::ReadOnly))).unwrap();
        let open = |state: &mut StoreState| {
            let granted = Resource::new_borrow(granted.rep());
            state.open_file((granted, PathFlags::empty(), "file".into(), OpenFlags::empty(), READ)).unwrap()
        };
        let opened: Vec<_> = (0..MAX_OPEN_FILES).map(|_| open(&mut state).unwrap()).collect();
        let full = Err(error_code(Errno::MFILE));
        assert_eq!(open(&mut state).map(|_| ()), full, "one more than the cap");
        // A stream read from a file holds it as this does, past its descriptor's drop.
        let held: Vec<_> = opened
            .into_iter()
            .map(|opened| match state.table().delete(opened).unwrap() {
                Descriptor::File(file) => file.file,
                Descriptor::Dir(_) => unreachable!("a file was opened"),
            })
            .collect();
        assert_eq!(open(&mut state).map(|_| ()), full, "still held open");
        drop(held);
        assert!(open(&mut state).is_ok(), "closed, counted out");
    }

    #[test]
    fn regular_files_and_directories_open_and_a_fifo_or_a_device_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        mkfifo(&dir.path().join("fifo"));
        let granted = grant(dir.path(), FsPerms::ReadOnly);
        assert_eq!(opened(&granted, "file", OpenFlags::empty(), READ), Ok("file"));
        assert_eq!(opened(&granted, "sub", OpenFlags::DIRECTORY, READ), Ok("dir"));
        assert_eq!(opened(&granted, "file", OpenFlags::DIRECTORY, READ), Err(ErrorCode::NotDirectory));
        // No writer: opened blocking, it would wait for one for good.
        assert_eq!(opened(&granted, "fifo", OpenFlags::empty(), READ), Err(ErrorCode::NotPermitted));
        assert_eq!(
            opened(&grant("/dev".as_ref(), FsPerms::ReadOnly), "null", OpenFlags::empty(), READ),
            Err(ErrorCode::NotPermitted)
        );
    }

    #[test]
    fn a_fifo_or_a_socket_is_refused_unopened_however_it_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        mkfifo(&dir.path().join("fifo"));
        // Told of a hang-up once a writer opened the FIFO and left.
        let reader =
            rustix::fs::open(dir.path().join("fifo"), OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty());
        let reader = reader.unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
        let granted = grant(dir.path(), FsPerms::ReadWrite);
        let refused = |path, open_flags, flags| {
            let refused = opened(&granted, path, open_flags, flags);
            assert_eq!(refused, Err(ErrorCode::NotPermitted), "{path} {open_flags:?} {flags:?}");
        };
        refused("fifo", OpenFlags::empty(), WRITE);
        refused("fifo", OpenFlags::CREATE, WRITE);
        refused("fifo", OpenFlags::TRUNCATE, READ | WRITE);
        let mut waiting = [rustix::event::PollFd::new(&reader, rustix::event::PollFlags::IN)];
        rustix::event::poll(&mut waiting, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap();
        assert!(!waiting[0].revents().contains(rustix::event::PollFlags::HUP), "the FIFO was opened");
        // Opened, a socket fails "no such device or address" (`io`).
        refused("socket", OpenFlags::empty(), READ);
        refused("socket", OpenFlags::CREATE, WRITE);
    }

    #[test]
    fn paths_out_of_the_grant_and_writes_under_a_read_only_grant_are_refused() {
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(elsewhere.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("secret"), dir.path().join("out")).unwrap();
        let granted = grant(dir.path(), FsPerms::ReadOnly);
        let secret = format!("../{}/secret", elsewhere.path().file_name().unwrap().to_str().unwrap());
        for path in ["out", &secret, "/etc/passwd"] {
            assert_eq!(
                opened(&granted, path, OpenFlags::empty(), READ),
                Err(ErrorCode::NotPermitted),
                "{path}"
            );
        }
        assert_eq!(opened(&granted, "new", OpenFlags::CREATE, WRITE), Err(ErrorCode::NotPermitted));
        assert!(!dir.path().join("new").exists());
    }

    #[test]
    fn a_read_write_grant_creates_and_opens_links_within_it_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let granted = grant(dir.path(), FsPerms::ReadWrite);
        let exclusive = OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
        assert_eq!(opened(&granted, "new", exclusive, WRITE), Ok("file"));
        assert_eq!(opened(&granted, "new", exclusive, WRITE), Err(ErrorCode::Exist));
        // Created if missing, else opened (and truncated as asked).
        assert_eq!(opened(&granted, "other", OpenFlags::CREATE, WRITE), Ok("file"));
        std::fs::write(dir.path().join("other"), "x").unwrap();
        assert_eq!(opened(&granted, "other", OpenFlags::CREATE | OpenFlags::TRUNCATE, WRITE), Ok("file"));
        assert_eq!(std::fs::read(dir.path().join("other")).unwrap(), b"");
        assert_eq!(opened(&granted, "sub", OpenFlags::CREATE, READ), Err(ErrorCode::IsDirectory));
        std::os::unix::fs::symlink("new", dir.path().join("link")).unwrap();
        assert_eq!(opened(&granted, "link", OpenFlags::empty(), READ | WRITE), Ok("file"));
        let unfollowed = open_at(&granted, PathFlags::empty(), "link", OpenFlags::empty(), READ).err();
        assert_eq!(unfollowed, Some(ErrorCode::Loop));
        // Created only where nothing is: not through a link to a missing file.
        std::os::unix::fs::symlink("missing", dir.path().join("dangling")).unwrap();
        assert_eq!(opened(&granted, "dangling", OpenFlags::CREATE, WRITE), Err(ErrorCode::Exist));
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn a_granted_directory_that_does_not_open_fails_an_instance_and_the_trial_at_the_plugins_deadline() {
        use crate::plugin::{PluginEngine, PluginFault, PluginFormat, PluginInstance};
        let data = tempfile::tempdir().unwrap();
        let engine = PluginEngine::new(None).unwrap();
        let dirs = [("/data".to_owned(), data.path().display().to_string())].into();
        let limits = crate::config::PluginLimits { timeout_ms: 100, ..Default::default() };
        let config = crate::config::PluginConfig { name: "probe".into(), dirs, limits, ..Default::default() };
        let bytes = std::fs::read(switchyard_plugin_artifacts::FS_PROBE).unwrap();
        // Compiled, not tried: no code of the plugin runs here, only the open of its directory.
        let plugin = crate::plugin::compile_bytes(&engine, PluginFormat::Wasm, &bytes, config).unwrap();
        // Held until the end of the test, or until an assertion fails.
        let _release = hang(data.path());
        let (answer, answered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let fault = PluginInstance::new(&engine, plugin.clone()).err();
            let refused = crate::plugin::trial_instantiation(&engine, &plugin, 1 << 20).err();
            answer.send((fault, refused.map(|refused| refused.to_string())))
        });
        // A safety net: without the deadline, neither answers while the directory does not open.
        let answer = answered.recv_timeout(std::time::Duration::from_secs(20));
        let (fault, refused) = answer.expect("an instance made or tried within 20 s");
        assert_eq!(fault, Some(PluginFault::TimedOut(std::time::Duration::from_millis(100))));
        let grant = format!("dirs.\"/data\" = \"{}\"", data.path().display());
        let refused = refused.unwrap_or_default();
        assert!(refused.starts_with(&format!("plugin \"probe\": {grant}: not opened within")), "{refused}");
    }
}
