//! The compile cache: native code compiled from plugins, kept between runs
//! in a directory of the host's own, never the plugin directory. An entry
//! is named by the plugin's digest and the engine's settings, and sealed
//! with an HMAC-SHA256 over both and the code, under a key only this cache
//! directory's owner can read (`key`, mode 0600): a truncated, corrupted,
//! swapped or patched entry fails its check and is discarded, never loaded.
//! So the directory and its key must be this user's alone, as OpenSSH's
//! `StrictModes` asks of `~/.ssh`: a cache another user could write in (or
//! whose key they could read) is not used.
//! The cache is bounded: storing an entry removes those of other engine
//! settings and all but the [`KEPT_ENTRIES`] most recently used.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use wasmtime::Engine;
use wasmtime::component::Component;

type Seal = Hmac<Sha256>;

/// Bytes of the seal at the start of an entry.
const SEAL_BYTES: usize = 32;

/// Entries kept: storing one more removes the least recently used (stored
/// or loaded longest ago, by modification time).
const KEPT_ENTRIES: usize = 64;

/// A compile cache directory, opened for one engine.
pub(crate) struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    /// What the engine's settings make of compiled code, as a name part:
    /// code from other settings is never even looked at.
    engine: String,
}

/// What the cache had for a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The compiled code came from the cache.
    Hit,
    /// Compiled afresh (and stored for next time).
    Miss,
    /// The entry failed its check and was deleted; compiled afresh.
    Discarded(String),
    /// No cache is configured.
    Off,
    /// The configured cache is not used, and why: its directory or its key is not this user's
    /// alone, so another user could make the host run their native code. Compiled afresh, nothing
    /// stored.
    Refused(String),
}

/// Why [`CompileCache::open`] opened no cache.
pub(crate) enum OpenError {
    /// The directory or its key is not this user's alone (why): the cache is not to be used.
    NotPrivate(String),
    /// The directory or its key could not be made or read.
    Io(std::io::Error),
}

impl From<std::io::Error> for OpenError {
    fn from(err: std::io::Error) -> OpenError {
        OpenError::Io(err)
    }
}

impl CompileCache {
    /// Open the cache in `dir` for `engine`, creating `dir` (and any missing parent) 0700 if
    /// needed; a directory already there keeps the mode its owner gave it (a `cache_dir` of `.` or
    /// `$HOME` is not made private behind the operator's back: the key file is 0600 either way).
    /// Refused unless `dir` is owned by this user (the effective uid) and not writable by group or
    /// others, and so is its key, readable by none of them either.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<CompileCache, OpenError> {
        crate::owner_only::create_dir_all(dir)?;
        let others = ("write in it", "put a key and native code there for this host to run");
        not_private(dir, &std::fs::metadata(dir)?, 0o022, others)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine = format!("{:016x}", hasher.finish());
        Ok(CompileCache { dir: dir.to_owned(), key: key_in(dir)?, engine })
    }

    fn entry(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine))
    }

    fn seal(&self, digest: &str, code: &[u8]) -> Seal {
        let mut seal = Seal::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        seal.update(digest.as_bytes());
        seal.update(self.engine.as_bytes());
        seal.update(code);
        seal
    }

    /// The component cached for `digest`: `Ok(None)` when there is none,
    /// `Err(why)` when the entry failed its check (it is deleted).
    pub(crate) fn load(&self, engine: &Engine, digest: &str) -> Result<Option<Component>, String> {
        let path = self.entry(digest);
        let entry = match std::fs::read(&path) {
            Ok(entry) => entry,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("{}: {err}", path.display())),
        };
        let discard = |why: String| {
            let _ = std::fs::remove_file(&path);
            Err(format!("{}: {why}; discarded", path.display()))
        };
        if entry.len() < SEAL_BYTES {
            return discard("shorter than its seal".into());
        }
        let (seal, code) = entry.split_at(SEAL_BYTES);
        if self.seal(digest, code).verify_slice(seal).is_err() {
            return discard("its seal does not match (tampered, swapped or corrupted)".into());
        }
        match deserialize(engine, code) {
            Ok(component) => {
                // Used now: the last to be evicted. An entry that cannot be touched is evicted sooner.
                let touched = std::fs::File::options().write(true).open(&path);
                let _ = touched.and_then(|entry| entry.set_modified(SystemTime::now()));
                Ok(Some(component))
            }
            Err(err) => discard(format!("sealed but unusable: {err:#}")),
        }
    }

    /// Keep `component`'s code for `digest`: written aside, then renamed in,
    /// so a reader never sees half an entry.
    pub(crate) fn store(&self, digest: &str, component: &Component) -> std::io::Result<()> {
        let code = component.serialize().map_err(std::io::Error::other)?;
        let seal = self.seal(digest, &code).finalize().into_bytes();
        let mut aside = tempfile::NamedTempFile::new_in(&self.dir)?;
        aside.write_all(&seal)?;
        aside.write_all(&code)?;
        aside.persist(self.entry(digest)).map_err(|err| err.error)?;
        self.evict()
    }

    /// Remove the entries of other engine settings (another version of
    /// Switchyard or wasmtime) and all but the [`KEPT_ENTRIES`] most recently
    /// used of this engine's. An entry another host removed first is no error.
    fn evict(&self) -> std::io::Result<()> {
        let ours = format!("-{}.cwasm", self.engine);
        let mut used = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(&ours) {
                let modified = entry.metadata().and_then(|metadata| metadata.modified());
                used.push((modified.unwrap_or(SystemTime::UNIX_EPOCH), entry.path()));
            } else if name.ends_with(".cwasm") {
                remove(&entry.path())?;
            }
        }
        used.sort_unstable_by(|a, b| b.cmp(a));
        used.iter().skip(KEPT_ENTRIES).try_for_each(|(_, path)| remove(path))
    }
}

/// Remove `path`, unless it is gone already.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Load code this cache sealed.
#[expect(unsafe_code, reason = "wasmtime can only load compiled code as an unsafe call")]
fn deserialize(engine: &Engine, code: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `code` is what `Component::serialize` produced for an engine
    // with these settings (the entry's name says so and the seal, which only
    // the holder of this cache's key can make, covers name and code alike);
    // wasmtime checks its own header and the engine's settings again.
    unsafe { Component::deserialize(engine, code) }
}

/// Refused unless `path`, of `metadata`, is owned by this user and has none of the `loose` mode
/// bits, which would let other users do what `may` says: then whoever could, could `harm`.
fn not_private(
    path: &Path,
    metadata: &std::fs::Metadata,
    loose: u32,
    (may, harm): (&str, &str),
) -> Result<(), OpenError> {
    let (owner, user) = (metadata.uid(), rustix::process::geteuid().as_raw());
    let mode = metadata.mode() & 0o7777;
    let problem = if owner != user {
        format!("owned by uid {owner}, not by this user (uid {user}): its owner could {harm}")
    } else if mode & loose != 0 {
        format!("mode {mode:04o} lets other users {may}: one could {harm}")
    } else {
        return Ok(());
    };
    Err(OpenError::NotPrivate(format!("{}: {problem}", path.display())))
}

/// The key in `dir`, made (random, mode 0600) on first use: written aside
/// and linked in only if no other host made one first, so every host
/// sharing the cache reads the same whole key. One already there must be
/// this user's alone.
fn key_in(dir: &Path) -> Result<[u8; 32], OpenError> {
    let path = dir.join("key");
    let mut aside = tempfile::NamedTempFile::new_in(dir)?;
    let key: [u8; 32] = rand::random();
    aside.write_all(&key)?;
    aside.as_file().sync_all()?;
    match aside.persist_noclobber(&path) {
        Ok(_) => Ok(key),
        Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = std::fs::File::open(&path)?;
            let others = ("read or write it", "seal native code for this host to run");
            not_private(&path, &file.metadata()?, 0o077, others)?;
            let mut key = Vec::new();
            file.take(33).read_to_end(&mut key)?;
            let problem =
                || format!("{}: not a 32-byte key (delete it to start the cache afresh)", path.display());
            key.try_into().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, problem()).into())
        }
        Err(err) => Err(err.error.into()),
    }
}
