//! Watching the plugin directory and the config file: file-system events are
//! gathered until things are quiet for a moment, then applied.

use super::reloader::{Reloader, Retry};
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the directory must be quiet before changes are applied: editors'
/// atomic renames and `cp` of a file arrive as bursts of events.
pub const SETTLE: Duration = Duration::from_millis(50);

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Plugin(String),
    Config,
    /// Something else in the plugin directory (a symbolic link or a
    /// directory swapped in, as Kubernetes updates a mounted ConfigMap):
    /// every plugin is read again.
    Directory,
    /// The plugin directory itself was created, removed or renamed: it is
    /// watched again, wherever it now is, and every plugin is read again.
    DirectoryItself,
}

/// Watches until dropped.
pub(crate) struct WatchGuard {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

/// Start watching for `reloader`; changes are applied on the current runtime.
/// The plugin directory's parent is watched too, so that a directory removed
/// and made again, or renamed and replaced, is followed.
pub(crate) fn watch(reloader: Arc<Reloader>) -> notify::Result<WatchGuard> {
    let dir = reloader.plugin_dir();
    let config_path = reloader.config_path().map(Path::to_path_buf);
    let (changes, mut incoming) = mpsc::unbounded_channel();
    let classify = classifier(dir.clone(), config_path.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if changes_content(&event.kind) => {
            event.paths.iter().filter_map(&classify).for_each(|change| {
                let _ = changes.send(change);
            })
        }
        Ok(_) => {}
        Err(err) => tracing::error!(%err, "watching the plugin directory failed"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut parents = Vec::new();
    // A config file that is a symbolic link is edited where it points: that directory too.
    let config_target = config_path.as_deref().and_then(|path| path.canonicalize().ok());
    let watched = [Some(dir.as_path()), config_path.as_deref(), config_target.as_deref()];
    for parent in watched.into_iter().flatten().filter_map(parent_of) {
        let canonical = parent.canonicalize().ok();
        if canonical != dir.canonicalize().ok() && !parents.contains(&canonical) {
            watcher.watch(&parent, RecursiveMode::NonRecursive)?;
            parents.push(canonical);
        }
    }
    let watcher = Arc::new(Mutex::new(watcher));
    let rearm = Arc::downgrade(&watcher);
    tokio::spawn(async move {
        while let Some(first) = incoming.recv().await {
            let mut batch = BTreeSet::from([first]);
            while let Ok(Some(change)) = tokio::time::timeout(SETTLE, incoming.recv()).await {
                batch.insert(change);
            }
            if batch.contains(&Change::DirectoryItself)
                && let Some(watcher) = rearm.upgrade()
            {
                watch_again(&watcher, &reloader.plugin_dir());
            }
            let reloader = reloader.clone();
            let applied = tokio::task::spawn_blocking(move || apply(&reloader, batch)).await;
            if let Err(err) = applied {
                tracing::error!(%err, "applying a change panicked");
            }
        }
    });
    Ok(WatchGuard { _watcher: watcher })
}

/// The directory `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?;
    Some(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() })
}

/// Watch plugin directory `dir` again after it was created, removed or
/// renamed: the old watch followed the old directory, wherever it went.
fn watch_again(watcher: &Mutex<RecommendedWatcher>, dir: &Path) {
    let mut watcher = watcher.lock().unwrap_or_else(|poison| poison.into_inner());
    let _not_watched = watcher.unwatch(dir);
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => tracing::info!(dir = %dir.display(), "plugin directory watched again"),
        Err(err) => tracing::debug!(dir = %dir.display(), %err, "plugin directory not there to watch"),
    }
}

/// Whether an event can mean new content: a file created, written, renamed
/// or removed. Opening, reading and closing a file (the host's own reads
/// among them) and changes of its metadata cannot, and are ignored.
fn changes_content(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
    )
}

fn classifier(dir: PathBuf, config_path: Option<PathBuf>) -> impl Fn(&PathBuf) -> Option<Change> {
    // Compared by their directories, resolved once: the plugin directory may come and go.
    let canonical = |path: Option<PathBuf>| path.and_then(|path| path.canonicalize().ok());
    let config = config_path
        .as_ref()
        .map(|path| (canonical(parent_of(path)), path.file_name().map(ToOwned::to_owned)));
    // A config file that is a symbolic link changes when what it points to
    // does: the file it resolves to is edited, or a directory of links is
    // swapped (as in a mounted ConfigMap), so any change beside it may be one.
    let config_target = config_path.clone();
    let config_is_link =
        config_path.as_ref().is_some_and(|path| path.symlink_metadata().is_ok_and(|meta| meta.is_symlink()));
    let dir_at = (canonical(parent_of(&dir)), dir.file_name().map(ToOwned::to_owned));
    move |path: &PathBuf| {
        let at = (canonical(parent_of(path)), path.file_name().map(ToOwned::to_owned));
        // Resolved at each event: a plugin directory that is a symbolic link may be swapped.
        let in_dir = at.0.is_some() && at.0 == dir.canonicalize().ok();
        let plugin_file = crate::plugin::PluginFormat::of(path).is_some();
        let sidecar = path.extension().is_some_and(|ext| ext == "toml");
        let is_config_target = || {
            let target = || config_target.as_ref().and_then(|path| path.canonicalize().ok());
            config_is_link
                && target().is_some_and(|target| path.canonicalize().is_ok_and(|path| path == target))
        };
        match &config {
            Some(config) if *config == at => Some(Change::Config),
            _ if is_config_target() => Some(Change::Config),
            _ if at == dir_at => Some(Change::DirectoryItself),
            _ if in_dir && (plugin_file || sidecar) => Some(Change::Plugin(crate::plugin::plugin_name(path))),
            Some(config) if config_is_link && config.0 == at.0 => Some(Change::Config),
            _ if in_dir => Some(Change::Directory),
            _ => None,
        }
    }
}

fn apply(reloader: &Reloader, batch: BTreeSet<Change>) {
    let everything = batch.contains(&Change::Directory) || batch.contains(&Change::DirectoryItself);
    if everything {
        reloader.sync_all(Retry::Changed);
    }
    for change in batch {
        match change {
            Change::Plugin(name) if !everything => reloader.sync_plugin(&name, Retry::Changed),
            // Refusals are reported as events by reload_config.
            Change::Config => drop(reloader.reload_config(Retry::Changed)),
            Change::Plugin(_) | Change::Directory | Change::DirectoryItself => {}
        }
    }
}
