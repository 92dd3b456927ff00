//! `switchyard spool inspect|drain --state-dir DIR`: the spool of a host that is not running.

use super::status;
use anyhow::Context;
use std::fs::File;
use std::io::{StdoutLock, Write};
use std::os::fd::AsFd;
use std::path::Path;
use switchyard::DamageKind;

/// Print what the spool of `state_dir` holds, as JSON: depth, bytes, oldest age, messages per
/// topic, damage; and whether a host holds it now.
pub fn inspect(state_dir: &Path) -> anyhow::Result<()> {
    let dir = state_dir.join(switchyard::spool::DIR_NAME);
    anyhow::ensure!(
        dir.is_dir(),
        "{}: no spool here (is --state-dir the host's host.state_dir?)",
        dir.display()
    );
    let report = switchyard::spool::inspect(&dir)?;
    for damage in &report.damage {
        let after = match damage.kind {
            DamageKind::TornTail => "a host started on the spool cuts it off",
            DamageKind::Corrupt => {
                "the messages after them are counted, and a host started on the spool recovers them \
                 and moves the bytes aside"
            }
        };
        status::warn(format!("switchyard: {damage}; {after}"));
    }
    let written = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report)?);
    match written {
        // A reader that stopped reading (`| head`) has had what it wanted.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing the report"),
    }
}

/// Write every message the spool of `state_dir` holds to standard output as NDJSON, oldest first,
/// then remove them from the spool; a summary goes to standard error. When standard output is a
/// regular file, it is fsync'd, and its directory with it (`> FILE` may have just made it), before
/// the records are removed, so a crash leaves the messages in one place or the other; a pipe or a
/// terminal cannot be fsync'd: what reads it has them once they are written.
pub fn drain(state_dir: &Path) -> anyhow::Result<()> {
    let dir = state_dir.join(switchyard::spool::DIR_NAME);
    anyhow::ensure!(
        dir.is_dir(),
        "{}: no spool here (is --state-dir the host's host.state_dir?)",
        dir.display()
    );
    let mut out = DrainOutput::stdout().context("looking at standard output")?;
    let drained = switchyard::spool::drain(&dir, &mut out).context("draining the spool")?;
    for damage in &drained.damage {
        status::warn(format!("switchyard: {damage}; moved aside to {}.damaged", damage.segment.display()));
    }
    status::info(format!("switchyard: drained {} messages from {}", drained.messages, dir.display()));
    Ok(())
}

/// Standard output for `drain`, whose flush (after the last message, before the records are
/// removed) also fsyncs it, and the directory naming it, when it is a regular file.
struct DrainOutput {
    out: StdoutLock<'static>,
    /// Standard output's file, when it is a regular one (a duplicate of its descriptor), and its
    /// directory.
    file: Option<(File, File)>,
}

impl DrainOutput {
    fn stdout() -> anyhow::Result<DrainOutput> {
        let out = std::io::stdout().lock();
        let file = File::from(out.as_fd().try_clone_to_owned()?);
        if !file.metadata()?.file_type().is_file() {
            return Ok(DrainOutput { out, file: None });
        }
        // Where the file is now, as the kernel tells it: opened before the messages are taken,
        // so a directory that cannot be synced refuses the drain before anything is removed.
        let path = std::fs::read_link("/proc/self/fd/1").context("finding the file's name")?;
        let directory = path.parent().unwrap_or(Path::new("/"));
        let directory = File::open(directory)
            .with_context(|| format!("opening its directory {}", directory.display()))?;
        Ok(DrainOutput { out, file: Some((file, directory)) })
    }
}

impl Write for DrainOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.out.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        match &self.file {
            Some((file, directory)) => file.sync_all().and_then(|()| directory.sync_all()),
            None => Ok(()),
        }
    }
}
