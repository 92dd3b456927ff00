//! Watching the plugin directory and the config file: file-system events are
//! gathered until things are quiet for a moment, then applied.

use super::reloader::Reloader;
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
}

/// Watches until dropped.
pub(crate) struct WatchGuard {
    _watcher: RecommendedWatcher,
}

/// Start watching for `reloader`; changes are applied on the current runtime.
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
    if let Some(parent) = config_path.as_deref().and_then(Path::parent) {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if parent.canonicalize().ok() != dir.canonicalize().ok() {
            watcher.watch(parent, RecursiveMode::NonRecursive)?;
        }
    }
    tokio::spawn(async move {
        while let Some(first) = incoming.recv().await {
            let mut batch = BTreeSet::from([first]);
            while let Ok(Some(change)) = tokio::time::timeout(SETTLE, incoming.recv()).await {
                batch.insert(change);
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
    let config_name = config_path.as_ref().and_then(|path| path.file_name().map(|name| name.to_owned()));
    move |path: &PathBuf| {
        if config_name.is_some() && path.file_name().map(|name| name.to_owned()) == config_name {
            return Some(Change::Config);
        }
        let in_dir = path.parent().and_then(|parent| parent.canonicalize().ok()) == dir.canonicalize().ok();
        let plugin_file = crate::plugin::PluginFormat::of(path).is_some();
        let sidecar = path.extension().is_some_and(|ext| ext == "toml");
        (in_dir && (plugin_file || sidecar)).then(|| Change::Plugin(crate::plugin::plugin_name(path)))
    }
}

fn apply(reloader: &Reloader, batch: BTreeSet<Change>) {
    for change in batch {
        match change {
            Change::Plugin(name) => reloader.sync_plugin(&name),
            // Refusals are reported as events by reload_config.
            Change::Config => drop(reloader.reload_config()),
        }
    }
}
