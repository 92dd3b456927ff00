//! Firing alerts kept across restarts: `state_dir/alerts.json` holds the rules that are firing,
//! with when they fired and whether someone acknowledged them, and the number of the last
//! transition, rewritten at every transition and when one is acknowledged. A host started on the
//! same state directory takes them up again, so an alert that fired before a restart neither
//! fires a second time nor stays firing for ever in its receivers' view: it resolves once its
//! condition is seen not to hold. Its transitions are numbered on from the last host's.
//!
//! The file is written off the alert book's lock and off the runtime's threads, by a
//! [`SavedAlertsWriter`]: a slow or hung disk holds the writes, never the evaluations or the
//! acknowledgements.

use crate::config::AlertConfig;
use crate::state_lock::StateLock;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The file's name in the state directory.
const FILE: &str = "alerts.json";

/// One firing alert as kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct SavedAlert {
    /// The rule it fired under: when the host starts again without a rule of this name and
    /// condition, it resolves, and a rule of this name starts afresh.
    pub(super) config: AlertConfig,
    /// When it fired: milliseconds since the Unix epoch.
    pub(super) since_ms: u64,
    /// Whether someone acknowledged it.
    pub(super) acknowledged: bool,
}

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Kept {
    /// The number of the last transition (`seq`): the next host numbers on from it.
    pub(super) seq: u64,
    /// The alerts firing.
    pub(super) firing: Vec<SavedAlert>,
}

/// The file as a host writes it, or as hosts before transitions were numbered across restarts
/// wrote it (the firing alerts alone).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Written {
    Kept(Kept),
    FiringOnly(Vec<SavedAlert>),
}

/// Where a host keeps its firing alerts.
#[derive(Debug)]
pub(super) struct SavedAlerts {
    path: PathBuf,
    /// The state directory's lock, when a host holds the directory: the file is written only in
    /// the directory it holds.
    state_lock: Option<Arc<StateLock>>,
}

impl SavedAlerts {
    /// The alerts kept in `state_dir`.
    pub(super) fn in_dir(state_dir: &Path) -> SavedAlerts {
        SavedAlerts { path: state_dir.join(FILE), state_lock: None }
    }

    /// These alerts, of a host holding their directory with `state_lock`: written only while it
    /// holds it ([`StateLock::hold`]), so a directory removed while the host ran is made again
    /// with its lock, or not at all, and no other host can start on it.
    pub(super) fn locked_by(self, state_lock: Arc<StateLock>) -> SavedAlerts {
        SavedAlerts { state_lock: Some(state_lock), ..self }
    }

    /// What was kept: nothing when there is no file yet, and nothing (said in a warning) when it
    /// cannot be read; a host starts whatever the file holds.
    pub(super) fn load(&self) -> Kept {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Kept::default(),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "firing alerts not taken up: the file cannot be read");
                return Kept::default();
            }
        };
        match serde_json::from_str(&text) {
            Ok(Written::Kept(kept)) => kept,
            Ok(Written::FiringOnly(firing)) => Kept { seq: 0, firing },
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "firing alerts not taken up: the file is not what this host writes");
                Kept::default()
            }
        }
    }

    /// Keep `kept` instead of what was kept: written beside the file, then renamed over it,
    /// so a host killed meanwhile leaves the old list or the new one (not fsync'd: after a machine
    /// crash the file may be unreadable, and the next host starts without it).
    pub(super) fn save(&self, kept: &Kept) -> std::io::Result<()> {
        match (&self.state_lock, self.path.parent()) {
            (Some(state_lock), _) => state_lock.hold()?,
            (None, Some(dir)) => crate::owner_only::create_dir_all(dir)?,
            (None, None) => {}
        }
        let text = serde_json::to_string_pretty(kept).map_err(std::io::Error::other)?;
        let temporary = self.path.with_extension("json.tmp");
        let mut file =
            crate::owner_only::options().write(true).create(true).truncate(true).open(&temporary)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        std::fs::rename(&temporary, &self.path)
    }
}

/// Writes the states of the firing alerts handed to it, off the caller's thread: one write at a
/// time, on a blocking thread, each of the newest state handed over (those handed over while one
/// was written are passed over), so an older state never overwrites a newer one.
#[derive(Debug)]
pub(super) struct SavedAlertsWriter {
    /// The newest state handed over; `None` once closed.
    newest: Mutex<Option<watch::Sender<Kept>>>,
    /// The task writing them, until closed and the last is written.
    writing: Mutex<Option<JoinHandle<()>>>,
}

impl SavedAlertsWriter {
    /// A writer to `saved`, a task of the current tokio runtime.
    pub(super) fn start(saved: SavedAlerts) -> SavedAlertsWriter {
        let (newest, handed) = watch::channel(Kept::default());
        let writing = tokio::spawn(write_each(Arc::new(saved), handed));
        SavedAlertsWriter { newest: Mutex::new(Some(newest)), writing: Mutex::new(Some(writing)) }
    }

    /// Have `kept` written, in place of a state handed over that no write has taken yet; without
    /// waiting. Once closed, nothing is written.
    pub(super) fn hand_over(&self, kept: Kept) {
        if let Some(newest) = &*self.newest.lock().unwrap_or_else(|poison| poison.into_inner()) {
            newest.send_replace(kept);
        }
    }

    /// Take no more states; resolves once the last handed over is written (or failed to be).
    pub(super) async fn close(&self) {
        self.newest.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        let writing = self.writing.lock().unwrap_or_else(|poison| poison.into_inner()).take();
        if let Some(writing) = writing {
            // An error: the task panicked (the runtime logs it); there is nothing to wait for.
            let _ = writing.await;
        }
    }
}

/// Write the newest state `handed` holds each time it changes, until its sender is gone and the
/// last is written; a failure is logged, and the alerts work on (a restart would then not know
/// what fired).
async fn write_each(saved: Arc<SavedAlerts>, mut handed: watch::Receiver<Kept>) {
    while handed.changed().await.is_ok() {
        let kept = handed.borrow_and_update().clone();
        let saved = saved.clone();
        let written = tokio::task::spawn_blocking(move || saved.save(&kept)).await;
        if let Err(err) = written.unwrap_or_else(|joined| Err(std::io::Error::other(joined))) {
            tracing::warn!(%err, "firing alerts could not be kept in the state directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    #[test]
    fn saved_alerts_load_as_saved_and_a_missing_or_foreign_file_loads_none() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedAlerts::in_dir(&dir.path().join("state"));
        assert_eq!(saved.load(), Kept::default());
        let config = AlertConfig {
            name: "down".into(),
            when: "endpoint_down > 0".into(),
            for_s: 30,
            severity: Severity::Critical,
            summary: Some("an endpoint is down".into()),
        };
        let firing = vec![SavedAlert { config, since_ms: 1_764_806_400_000, acknowledged: true }];
        let kept = Kept { seq: 7, firing: firing.clone() };
        saved.save(&kept).unwrap();
        assert_eq!(saved.load(), kept);
        let path = dir.path().join("state").join(FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(path.metadata().unwrap().permissions().mode() & 0o777, 0o600, "the owner's alone");
        std::fs::write(&path, serde_json::to_string(&firing).unwrap()).unwrap();
        assert_eq!(saved.load(), Kept { seq: 0, firing }, "as an earlier host wrote it");
        std::fs::write(&path, "{ not json").unwrap();
        assert_eq!(saved.load(), Kept::default());
    }
}
