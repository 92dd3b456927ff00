//! Watching the plugin directory and the config file: file-system events are
//! gathered until things are quiet for a moment (or for a second at most, so a
//! file written without pause delays the rest by no more), then applied. A file
//! its writer still holds open is read once it is closed ([`OpenWrites`]).

use super::config_change::ConfigChange;
use super::links::{LinkTargets, names_a_plugin};
use super::open_writes::OpenWrites;
use super::reloader::{Reloader, Retry};
use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the directory must be quiet before changes are applied: editors'
/// atomic renames and `cp` of a file arrive as bursts of events.
pub const SETTLE: Duration = Duration::from_millis(50);

/// The longest changes are gathered before they are applied, quiet or not: a file in the plugin
/// directory written every few milliseconds (a sidecar rewritten by a tool, say) held every other
/// change, the config's too, for as long as it went on.
const GATHER_AT_MOST: Duration = Duration::from_secs(1);

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
/// and made again, or renamed and replaced, is followed; and so are the
/// directories its plugins' links lead into ([`LinkTargets`]), as they are
/// at the start and after each change.
pub(crate) fn watch(reloader: Arc<Reloader>) -> notify::Result<WatchGuard> {
    let dir = reloader.plugin_dir();
    let config_path = reloader.config_path().map(Path::to_path_buf);
    let (changes, mut incoming) = mpsc::unbounded_channel();
    let classify = Arc::new(classifier(dir.clone(), config_path.clone()));
    let links = Arc::new(ArcSwap::from_pointee(LinkTargets::default()));
    let (classify_seen, links_seen, writes) = (classify.clone(), links.clone(), reloader.writes.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            // Noted before its changes are sent: a read they lead to knows of it.
            writes.note(&event);
            changes_of(&event, &*classify_seen, &links_seen.load()).into_iter().for_each(|change| {
                let _ = changes.send(change);
            })
        }
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
    // Watched already, whatever links lead there: a second watch of one directory, by another
    // path, would take the first one's events, and dropping it would drop both.
    let watched_already: Vec<PathBuf> = parents.into_iter().flatten().collect();
    let watcher = Arc::new(Mutex::new(watcher));
    follow_links(&watcher, &links, &dir, &watched_already);
    let rearm = Arc::downgrade(&watcher);
    tokio::spawn(async move {
        let changes_at = |path: &Path| changes_at(path, &*classify, &links.load());
        while let Some(first) = next_changes(&mut incoming, &reloader.writes, changes_at).await {
            let batch = gather(first, &mut incoming).await;
            if let Some(watcher) = rearm.upgrade() {
                if batch.contains(&Change::DirectoryItself) {
                    watch_again(&watcher, &reloader.plugin_dir());
                }
                // Before the change is applied, so that what changes after the plugins are read is seen.
                follow_links(&watcher, &links, &reloader.plugin_dir(), &watched_already);
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

/// The changes the next file event tells, or, should none come before, those of the files whose
/// writers held them open past the longest wait for them ([`OpenWrites::wait_out`]): they are read
/// as they are. `None` once the watcher is gone.
async fn next_changes(
    incoming: &mut mpsc::UnboundedReceiver<Change>,
    writes: &OpenWrites,
    changes_at: impl Fn(&Path) -> Vec<Change>,
) -> Option<BTreeSet<Change>> {
    loop {
        let waited_out = match writes.next_wait_end() {
            None => return incoming.recv().await.map(|change| BTreeSet::from([change])),
            Some(end) => match tokio::time::timeout_at(end, incoming.recv()).await {
                Ok(change) => return change.map(|change| BTreeSet::from([change])),
                Err(_) => writes.wait_out(end),
            },
        };
        let changes: BTreeSet<Change> = waited_out.iter().flat_map(|path| changes_at(path)).collect();
        if !changes.is_empty() {
            return Some(changes);
        }
    }
}

/// `first` and the changes that follow it until `incoming` is quiet for [`SETTLE`], or for
/// [`GATHER_AT_MOST`] since `first` came.
async fn gather(first: BTreeSet<Change>, incoming: &mut mpsc::UnboundedReceiver<Change>) -> BTreeSet<Change> {
    let mut batch = first;
    let applied_by = tokio::time::Instant::now() + GATHER_AT_MOST;
    loop {
        let quiet_by = (tokio::time::Instant::now() + SETTLE).min(applied_by);
        match tokio::time::timeout_at(quiet_by, incoming.recv()).await {
            Ok(Some(change)) => drop(batch.insert(change)),
            Ok(None) | Err(_) => return batch,
        }
    }
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

/// Watch the directories the plugin directory `dir`'s links lead into now ([`LinkTargets`]),
/// but for those `watched` already, and no longer those they left. Each is watched again, even
/// if it was: one removed and made again lost its watch.
fn follow_links(
    watcher: &Mutex<RecommendedWatcher>,
    links: &ArcSwap<LinkTargets>,
    dir: &Path,
    watched: &[PathBuf],
) {
    let now = LinkTargets::of(dir);
    let watched: Vec<PathBuf> = watched.iter().cloned().chain(dir.canonicalize().ok()).collect();
    let (before, after) = (links.load().directories(&watched), now.directories(&watched));
    let mut watcher = watcher.lock().unwrap_or_else(|poison| poison.into_inner());
    for left in before.difference(&after) {
        let _gone_already = watcher.unwatch(left);
    }
    for target in &after {
        if let Err(err) = watcher.watch(target, RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %target.display(), %err, "a directory links lead into is not there to watch");
        }
    }
    links.store(Arc::new(now));
}

/// What `event` changed: each path's change, and the plugins whose links lead there. An event
/// that says the kernel's queue of events overflowed (a rescan) stands for changes that were
/// lost, of any plugin and of the config: it had been dropped, and those changes were never
/// applied.
fn changes_of(
    event: &notify::Event,
    classify: impl Fn(&Path, &LinkTargets) -> Option<Change>,
    links: &LinkTargets,
) -> Vec<Change> {
    if event.need_rescan() {
        return vec![Change::Directory, Change::Config];
    }
    if !can_change_what_is_read(&event.kind) {
        return Vec::new();
    }
    event.paths.iter().flat_map(|path| changes_at(path, &classify, links)).collect()
}

/// What a change of the file at `path` changes: its own, and that of the plugins whose links lead
/// there.
fn changes_at(
    path: &Path,
    classify: impl Fn(&Path, &LinkTargets) -> Option<Change>,
    links: &LinkTargets,
) -> Vec<Change> {
    let linked = links.plugins_at(path).map(|name| Change::Plugin(name.clone()));
    classify(path, links).into_iter().chain(linked).collect()
}

/// Whether an event can mean new content, or content readable now: a file created, written,
/// renamed or removed, or its permissions or owner changed (a file the host could not read, made
/// readable), or a file closed by its writer (one it held open is read then: [`OpenWrites`]).
/// Opening a file, reading it and closing it unwritten cannot, and are ignored: the host's own
/// reads would have it read again without end. Those reads change no attribute that is told (an access time a
/// read sets is told as the access, not as a change of metadata).
fn can_change_what_is_read(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(
                ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Metadata(_) | ModifyKind::Any
            )
    )
}

/// What a change at `path` is; `links` says which entries of the plugin directory were links or
/// directories when it was last looked at.
fn classifier(dir: PathBuf, config_path: Option<PathBuf>) -> impl Fn(&Path, &LinkTargets) -> Option<Change> {
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
    move |path: &Path, links: &LinkTargets| {
        let at = (canonical(parent_of(path)), path.file_name().map(ToOwned::to_owned));
        // Resolved at each event: a plugin directory that is a symbolic link may be swapped.
        let in_dir = at.0.is_some() && at.0 == dir.canonicalize().ok();
        let is_config_target = || {
            let target = || config_target.as_ref().and_then(|path| path.canonicalize().ok());
            config_is_link
                && target().is_some_and(|target| path.canonicalize().is_ok_and(|path| path == target))
        };
        match &config {
            Some(config) if *config == at => Some(Change::Config),
            _ if is_config_target() => Some(Change::Config),
            _ if at == dir_at => Some(Change::DirectoryItself),
            _ if in_dir && names_a_plugin(path) => Some(Change::Plugin(crate::plugin::plugin_name(path))),
            Some(config) if config_is_link && config.0 == at.0 => Some(Change::Config),
            _ if in_dir => match path.symlink_metadata() {
                // A file that is no plugin, no sidecar and no link (a log, a note) changes nothing:
                // it had every plugin read again, a file appended to without pause every 50 ms.
                Ok(meta) if meta.is_file() => None,
                Ok(_) => Some(Change::Directory),
                // Gone already: a link or a directory removed or renamed away may have taken what a
                // plugin was read through. Any other name was a file, or came and went unseen (a
                // temporary file renamed over a note, an editor's swap file): it had every plugin
                // read and hashed again at each atomic write beside them.
                Err(_) => links.was_link_or_directory(path).then_some(Change::Directory),
            },
            _ => None,
        }
    }
}

/// Apply what may have changed before the watcher was there to see it (while the plugins compiled
/// at start): the config file, and every plugin.
pub(crate) fn catch_up(reloader: &Reloader) {
    apply(reloader, BTreeSet::from([Change::Config, Change::Directory]));
}

/// Apply `batch`, the config first: the plugins changed with it are read under it, with the kind
/// its routes use each as and the grants it gives. A config applied reads every plugin again, before
/// its routes run. A config file refused as a plugin it runs was still being written is read
/// again with the change that tells that plugin's writer is done with it.
fn apply(reloader: &Reloader, batch: BTreeSet<Change>) {
    let plugin_done = |name: String| {
        let everything = batch.contains(&Change::Directory) || batch.contains(&Change::DirectoryItself);
        everything || batch.contains(&Change::Plugin(name))
    };
    let config_changed =
        batch.contains(&Change::Config) || reloader.config_waits_for().is_some_and(plugin_done);
    // Refusals are reported as events by reload_config.
    let config_applied =
        config_changed && matches!(reloader.reload_config(Retry::Changed), Ok(ConfigChange::Applied));
    if config_applied {
        return;
    }
    if batch.contains(&Change::Directory) || batch.contains(&Change::DirectoryItself) {
        // Refusals are reported as events by each sync.
        reloader.sync_all(Retry::Changed);
        return;
    }
    for change in batch {
        if let Change::Plugin(name) = change {
            reloader.sync_plugin(&name, Retry::Changed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::open_writes::HELD_OPEN_AT_MOST;
    use notify::event::{CreateKind, DataChange, Flag};

    #[tokio::test(start_paused = true)]
    async fn changes_that_never_pause_are_applied_a_second_after_the_first() {
        let (changes, mut incoming) = mpsc::unbounded_channel();
        // A sidecar rewritten every 10 ms, without end.
        let noise = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if changes.send(Change::Plugin("busy".into())).is_err() {
                    return;
                }
            }
        });
        let began = tokio::time::Instant::now();
        let batch = gather(BTreeSet::from([Change::Plugin("t".into())]), &mut incoming).await;
        assert_eq!(began.elapsed(), GATHER_AT_MOST);
        assert_eq!(batch, BTreeSet::from([Change::Plugin("busy".into()), Change::Plugin("t".into())]));
        noise.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_applied_once_quiet_for_the_settling_time() {
        let (changes, mut incoming) = mpsc::unbounded_channel();
        changes.send(Change::Config).unwrap();
        let began = tokio::time::Instant::now();
        let batch = gather(BTreeSet::from([Change::Plugin("t".into())]), &mut incoming).await;
        assert_eq!(began.elapsed(), SETTLE);
        assert_eq!(batch, BTreeSet::from([Change::Plugin("t".into()), Change::Config]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_its_writer_holds_open_is_applied_as_it_is_once_unwritten_for_the_longest_wait() {
        use std::io::Write;
        let (plugins, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let config = |routes: &[&str]| {
            let mut text = format!(
                "[host]\nplugin_dir = {:?}\nwatch = false\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n",
                plugins.path()
            );
            for route in routes {
                text += &format!(
                    "[[route]]\nname = \"{route}\"\nmatch = {{ topic = \"{route}\" }}\nto = \"out\"\n"
                );
            }
            text
        };
        let path = state.path().join("switchyard.toml");
        std::fs::write(&path, config(&["a"])).unwrap();
        let host =
            crate::Host::builder().config_file(&path).unwrap().state_dir(state.path().join(".switchyard"));
        let host = host.build().await.unwrap();
        let mut events = host.subscribe();
        let reloader = host.reloader().clone();
        let apply_now = |batch| {
            let reloader = reloader.clone();
            tokio::task::spawn_blocking(move || apply(&reloader, batch))
        };
        // Written in place, then held open: its writer neither writes more nor closes it.
        let mut writer = std::fs::File::create(&path).unwrap();
        writer.write_all(config(&["a", "b"]).as_bytes()).unwrap();
        let written =
            notify::Event::new(EventKind::Modify(ModifyKind::Data(DataChange::Any))).add_path(path.clone());
        let noted = tokio::time::Instant::now();
        reloader.writes.note(&written);
        let (classify, links) =
            (classifier(plugins.path().to_path_buf(), Some(path.clone())), LinkTargets::default());
        let (_changes, mut incoming) = mpsc::unbounded_channel();
        let batch = BTreeSet::from_iter(changes_of(&written, &classify, &links));
        apply_now(batch).await.unwrap();
        assert_eq!(host.event_counts().configs_applied, 0, "read while its writer holds it open");
        let batch =
            next_changes(&mut incoming, &reloader.writes, |path| changes_at(path, &classify, &links)).await;
        assert_eq!(noted.elapsed(), HELD_OPEN_AT_MOST);
        assert_eq!(batch, Some(BTreeSet::from([Change::Config])));
        apply_now(batch.unwrap()).await.unwrap();
        assert_eq!(events.try_recv().map(|event| event.name()), Ok("config-applied"));
        assert_eq!(host.config().routes.len(), 2, "read as it is");
        drop(writer);
        host.shutdown().await;
    }

    #[test]
    fn an_overflow_of_the_kernels_queue_reads_every_plugin_and_the_config_again() {
        let dir = tempfile::tempdir().unwrap();
        let classify = classifier(dir.path().to_path_buf(), None);
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let links = LinkTargets::default();
        assert_eq!(changes_of(&overflow, &classify, &links), [Change::Directory, Change::Config]);
        let plugin = dir.path().join("t.wasm");
        let created = notify::Event::new(EventKind::Create(CreateKind::File)).add_path(plugin);
        assert_eq!(changes_of(&created, &classify, &links), [Change::Plugin("t".into())]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_config_changed_with_a_plugin_in_one_batch_is_applied_before_the_plugin_is_read() {
        // One deploy turns x.wasm from a transform into a filter and the route from transform:x to
        // filter:x. The plugin was read first, under the old config: refused for its kind (a
        // plugin-rejected event), then compiled again once the config applied.
        use switchyard_plugin_artifacts as artifacts;
        let (plugins, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::copy(artifacts::STAMP_TRANSFORM, plugins.path().join("x.wasm")).unwrap();
        let config = |stage: &str| {
            format!(
                "[host]\nplugin_dir = {:?}\nwatch = false\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
                 [[route]]\nname = \"all\"\nstages = [\"{stage}\"]\nto = \"out\"\n",
                plugins.path()
            )
        };
        let path = state.path().join("switchyard.toml");
        std::fs::write(&path, config("transform:x")).unwrap();
        let host =
            crate::Host::builder().config_file(&path).unwrap().state_dir(state.path().join(".switchyard"));
        let host = host.build().await.unwrap();
        let mut events = host.subscribe();
        std::fs::copy(artifacts::HEADER_FILTER, plugins.path().join("x.wasm")).unwrap();
        std::fs::write(&path, config("filter:x")).unwrap();
        let (reloader, batch) =
            (host.reloader().clone(), BTreeSet::from([Change::Plugin("x".into()), Change::Config]));
        tokio::task::spawn_blocking(move || apply(&reloader, batch)).await.unwrap();
        let seen: Vec<&str> =
            std::iter::from_fn(|| events.try_recv().ok()).map(|event| event.name()).collect();
        assert_eq!(seen, ["config-applied", "plugin-replaced"]);
        host.send(crate::Message::new("a", "{}")).await.unwrap();
        let out = host.memory("out").unwrap();
        let kept = tokio::time::timeout(Duration::from_secs(60), out.recv_async()).await.unwrap().unwrap();
        assert!(kept.header("x-stamp").is_none(), "kept by the filter, not stamped: {:?}", kept.headers);
        host.shutdown().await;
        assert_eq!(host.stats().dead_lettered, 0);
    }

    #[test]
    fn a_file_that_is_no_plugin_no_sidecar_and_no_link_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let classify = classifier(dir.path().to_path_buf(), None);
        let log = dir.path().join("noise.log");
        std::fs::write(&log, "a line\n").unwrap();
        assert_eq!(classify(&log, &LinkTargets::default()), None);
        // A link swapped in, as a mounted ConfigMap is updated: anything may have changed.
        let link = dir.path().join("..data");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        assert_eq!(classify(&link, &LinkTargets::default()), Some(Change::Directory));
    }

    #[test]
    fn a_name_gone_changes_everything_only_if_it_was_a_link_or_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let classify = classifier(dir.path().to_path_buf(), None);
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::fs::create_dir(dir.path().join("..v1")).unwrap();
        let links = LinkTargets::of(dir.path());
        std::fs::remove_file(dir.path().join("..data")).unwrap();
        std::fs::remove_dir(dir.path().join("..v1")).unwrap();
        // Removed or renamed away: what a plugin was read through may have gone with them.
        assert_eq!(classify(&dir.path().join("..data"), &links), Some(Change::Directory));
        assert_eq!(classify(&dir.path().join("..v1"), &links), Some(Change::Directory));
        // A temporary file renamed over a note, an editor's swap file: gone when their events are
        // seen, they were files.
        assert_eq!(classify(&dir.path().join("notes.json.tmp"), &links), None);
        assert_eq!(classify(&dir.path().join("4913"), &links), None);
    }
}
