//! `switchyard spool inspect|drain --state-dir DIR`: the spool of a host that is not running.

use anyhow::Context;
use std::io::Write;
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
        eprintln!("switchyard: {damage}; {after}");
    }
    let written = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report)?);
    match written {
        // A reader that stopped reading (`| head`) has had what it wanted.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing the report"),
    }
}

/// Write every message the spool of `state_dir` holds to standard output as NDJSON, oldest first,
/// then remove them from the spool; a summary goes to standard error.
pub fn drain(state_dir: &Path) -> anyhow::Result<()> {
    let dir = state_dir.join(switchyard::spool::DIR_NAME);
    anyhow::ensure!(
        dir.is_dir(),
        "{}: no spool here (is --state-dir the host's host.state_dir?)",
        dir.display()
    );
    let mut out = std::io::stdout().lock();
    let drained = switchyard::spool::drain(&dir, &mut out).context("draining the spool")?;
    for damage in &drained.damage {
        eprintln!("switchyard: {damage}; moved aside to {}.damaged", damage.segment.display());
    }
    eprintln!("switchyard: drained {} messages from {}", drained.messages, dir.display());
    Ok(())
}
