//! A change is applied once and the host is quiet afterwards: the host's own
//! reads of a file are not changes, a config equal to the running one is no
//! event, and a config file caught empty, half-written or changing start-only
//! keys is refused while the running one keeps serving.

use crate::reload::replaced;
use crate::support::{
    MEMORY_OUT, drain_and_account, event_where, next, plugin_dir, replace_file, still_pending, within,
};
use notify::event::AccessKind;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard::{ConfigChange, Host, HostEvent, Message};
use switchyard_plugin_artifacts as artifacts;
use tempfile::TempDir;
use tokio::sync::broadcast;

/// How long a host must stay quiet after a change: the window over which the
/// absence of events is measured, not a wait for something to happen.
const QUIET: Duration = Duration::from_secs(2);

/// The names of the events `events` receives over the next [`QUIET`] period.
async fn events_over_quiet_period(events: &mut broadcast::Receiver<HostEvent>) -> Vec<String> {
    tokio::time::sleep(QUIET).await;
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => seen.push(event.name().to_owned()),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => seen.push(format!("{missed} missed")),
            Err(_) => return seen,
        }
    }
}

/// A config file (in a directory of its own) over plugin directory `plugins`,
/// with one route per topic of `topics`, each through `transform:t` to `out`.
struct ConfigFile {
    _dir: TempDir,
    path: PathBuf,
    plugins: PathBuf,
}

impl ConfigFile {
    fn new(plugins: &Path, topics: &[&str]) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        let file = ConfigFile { _dir: dir, path, plugins: plugins.to_owned() };
        std::fs::write(&file.path, file.text(topics)).unwrap();
        file
    }

    fn text(&self, topics: &[&str]) -> String {
        let mut text = MEMORY_OUT.replacen("[host]", &format!("[host]\nplugin_dir = {:?}", self.plugins), 1);
        for topic in topics {
            text += &format!(
                "[[route]]\nname = \"{topic}\"\nmatch = {{ topic = \"{topic}\" }}\nstages = [\"transform:t\"]\nto = \"out\"\n"
            );
        }
        text
    }

    async fn host(&self) -> Host {
        let host = Host::builder().config_file(&self.path).unwrap();
        host.state_dir(self._dir.path().join(".switchyard")).build().await.unwrap()
    }
}

fn config_applied(event: &HostEvent) -> bool {
    matches!(event, HostEvent::ConfigApplied { .. })
}

fn config_rejected(event: &HostEvent) -> Option<String> {
    match event {
        HostEvent::ConfigRejected { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}

async fn next_rejection(events: &mut broadcast::Receiver<HostEvent>) -> String {
    config_rejected(&event_where(events, |event| config_rejected(event).is_some()).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_config_edit_is_applied_once_and_the_host_is_quiet_afterwards() {
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let host = file.host().await;
    let mut events = host.subscribe();
    replace_file(&file.path, file.text(&["a", "b"]).as_bytes());
    event_where(&mut events, config_applied).await;
    let reads = OpenCounter::new(file.path.clone());
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(reads.count(), 0, "the host kept re-reading its config");
    assert_eq!(host.event_counts().configs_applied, 1);
    host.send(Message::new("b", "{}")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.topic, "b", "the new route serves");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_written_in_two_steps_is_read_once_its_writer_closes_it() {
    // A writer that writes, pauses and writes more, holding the file open: once the file had been
    // quiet for 50 ms its first part was read, and as it ended after a complete route it was
    // applied: routes b and c served nothing until the rest came.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a", "b"]);
    let host = file.host().await;
    let mut events = host.subscribe();
    let full = file.text(&["a", "b", "c"]);
    let cut = full.find("[[route]]\nname = \"b\"").unwrap();
    let mut writer = std::fs::File::create(&file.path).unwrap();
    writer.write_all(&full.as_bytes()[..cut]).unwrap();
    caught_up(&mut events, plugins.path()).await;
    assert_eq!(route_names(&host), ["a", "b"], "the first part, route a alone, was applied");
    writer.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(writer);
    event_where(&mut events, config_applied).await;
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(host.event_counts().configs_applied, 1);
    assert_eq!(route_names(&host), ["a", "b", "c"]);
    host.send(Message::new("c", "{}")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.topic, "c", "the new route serves");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_reload_while_the_config_s_writer_holds_it_open_waits_for_the_close() {
    // It was refused "changed while it was read", which an explicit reload that came right after
    // a writer closed the file, before the watcher heard of the close, was told too.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let host = file.host().await;
    let mut events = host.subscribe();
    let mut writer = std::fs::File::create(&file.path).unwrap();
    writer.write_all(file.text(&["a", "b"]).as_bytes()).unwrap();
    caught_up(&mut events, plugins.path()).await;
    let mut reload = Box::pin(host.reload());
    assert!(still_pending(&mut reload).await, "the reload waits for the writer");
    drop(writer);
    let change = within(reload).await;
    assert!(change.is_ok(), "{change:?}");
    assert_eq!(route_names(&host), ["a", "b"]);
    drain_and_account(&host).await;
}

/// The names of the routes `host` runs.
fn route_names(host: &Host) -> Vec<String> {
    host.config().routes.iter().map(|route| route.name.clone()).collect()
}

/// Move a plugin `caught-up` into `dir` and wait until it is loaded, then remove it and wait until
/// it is removed: the watcher has then handled every file event made before, and applied what they
/// changed (the batch that loaded it, which may hold earlier changes, ended before the removal's).
pub async fn caught_up(events: &mut broadcast::Receiver<HostEvent>, dir: &Path) {
    let staging = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    std::fs::copy(artifacts::HEADER_FILTER, staging.path().join("caught-up.wasm")).unwrap();
    std::fs::rename(staging.path().join("caught-up.wasm"), dir.join("caught-up.wasm")).unwrap();
    event_where(events, |event| matches!(event, HostEvent::PluginLoaded { name, .. } if name == "caught-up"))
        .await;
    std::fs::remove_file(dir.join("caught-up.wasm")).unwrap();
    event_where(
        events,
        |event| matches!(event, HostEvent::PluginRemoved { name, .. } if name == "caught-up"),
    )
    .await;
}

/// Write plugin file `file` of `host`'s plugin directory `dir` in place with the bytes of
/// `artifact` in two steps, holding it open between them, and check that it is read once, when
/// its writer closes it: its first half is neither refused nor loaded meanwhile.
pub async fn plugin_written_in_two_steps(host: &Host, dir: &Path, file: &str, artifact: &str) {
    let mut events = host.subscribe();
    let serving = host.plugins().iter().find(|plugin| plugin.name == "t").unwrap().digest.clone();
    let whole = std::fs::read(artifact).unwrap();
    let mut writer = std::fs::File::create(dir.join(file)).unwrap();
    writer.write_all(&whole[..whole.len() / 2]).unwrap();
    caught_up(&mut events, dir).await;
    assert_eq!(host.event_counts().rejected, 0, "the first half was read: {:?}", host.last_rejections());
    assert_eq!(host.plugins().iter().find(|plugin| plugin.name == "t").unwrap().digest, serving);
    writer.write_all(&whole[whole.len() / 2..]).unwrap();
    drop(writer);
    replaced_with(&mut events, "t", artifact).await;
    assert_eq!((host.event_counts().rejected, host.event_counts().replaced), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_written_in_place_in_two_steps_is_read_once_its_writer_closes_it() {
    // Caught between its writer's two steps, the first half was compiled and refused.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let host = crate::support::host(plugins.path(), MEMORY_OUT).await;
    plugin_written_in_two_steps(&host, plugins.path(), "t.wasm", artifacts::REDACT_TRANSFORM).await;
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_an_unchanged_config_is_no_event_and_the_host_stays_quiet() {
    // What `POST /v1/reload` and SIGHUP do: re-read the config and plugins.
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let host = file.host().await;
    let mut events = host.subscribe();
    assert_eq!(within(host.reload()).await.unwrap(), ConfigChange::Unchanged);
    let reads = OpenCounter::new(file.path.clone());
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(reads.count(), 0, "the host kept re-reading its config");
    std::fs::write(&file.path, file.text(&["a", "b"])).unwrap();
    event_where(&mut events, config_applied).await;
    assert_eq!(within(host.reload()).await.unwrap(), ConfigChange::Unchanged, "the watcher applied it");
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(host.event_counts().configs_applied, 1);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_made_while_the_host_starts_is_applied_once_it_is_up() {
    // Rewritten after the builder read it and before the watcher was there to see it, as a deploy
    // does while the plugins compile: the host came up with the old routes and kept them until
    // the file changed again.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let builder = Host::builder().config_file(&file.path).unwrap();
    std::fs::write(&file.path, file.text(&["a", "b"])).unwrap();
    let host = builder.state_dir(file._dir.path().join(".switchyard")).build().await.unwrap();
    let routes: Vec<String> = host.config().routes.iter().map(|route| route.name.clone()).collect();
    assert_eq!(routes, ["a", "b"], "the file as it is once the host is up");
    assert_eq!(host.event_counts().configs_applied, 1);
    host.send(Message::new("b", "{}")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.topic, "b", "the new route serves");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_refused_while_the_host_starts_is_reported_and_the_file_read_serves() {
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let builder = Host::builder().config_file(&file.path).unwrap();
    std::fs::write(&file.path, file.text(&["a"]).replace("to = \"out\"", "to = \"nowhere\"")).unwrap();
    let host = builder.state_dir(file._dir.path().join(".switchyard")).build().await.unwrap();
    assert_eq!(host.event_counts().configs_rejected, 1);
    assert_eq!(host.event_counts().configs_applied, 0);
    host.send(Message::new("a", "{}")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.topic, "a", "the route read at start serves");
    drain_and_account(&host).await;
}

/// Counts the times `file` is opened, by anyone, while it lives.
pub struct OpenCounter {
    _watcher: RecommendedWatcher,
    opens: Arc<AtomicUsize>,
}

impl OpenCounter {
    pub fn new(file: PathBuf) -> OpenCounter {
        let opens = Arc::new(AtomicUsize::new(0));
        let counted = opens.clone();
        let dir = file.parent().unwrap().to_owned();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let event = event.unwrap();
            if matches!(event.kind, EventKind::Access(AccessKind::Open(_))) && event.paths.contains(&file) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
        watcher.watch(&dir, RecursiveMode::NonRecursive).unwrap();
        OpenCounter { _watcher: watcher, opens }
    }

    pub fn count(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

/// Put `bytes` into `dir` as `t.wasm` the way a deploy does: written
/// elsewhere, then renamed in (so only the host opens it there).
fn move_in(dir: &Path, bytes: &[u8]) {
    let staging = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    std::fs::write(staging.path().join("t.wasm"), bytes).unwrap();
    std::fs::rename(staging.path().join("t.wasm"), dir.join("t.wasm")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_moved_in_once_is_read_once_and_the_host_is_quiet_afterwards() {
    let plugins = plugin_dir(&[]);
    let host = crate::support::host(plugins.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    let opens = OpenCounter::new(plugins.path().join("t.wasm"));
    move_in(plugins.path(), &std::fs::read(artifacts::REDACT_TRANSFORM).unwrap());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginLoaded { name, .. } if name == "t"))
        .await;
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(opens.count(), 1, "the host read the plugin file more than once");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_whose_permissions_change_is_read_again_once_and_the_host_stays_quiet() {
    // A file the host could not read, made readable (chmod, chown), changes only its metadata: that
    // went unseen, and the file stayed refused until its content changed or an explicit reload.
    // The tests run as root, who reads any file: the change is seen as the host reading it again.
    use std::os::unix::fs::PermissionsExt;
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let host = crate::support::host(plugins.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    let file = plugins.path().join("t.wasm");
    let opens = OpenCounter::new(file.clone());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    crate::support::eventually(|| match opens.count() {
        0 => Err("not read again"),
        _ => Ok(()),
    });
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(opens.count(), 1, "the host's own read made it read the file again");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_atomically_beside_the_plugins_reads_none_of_them_again() {
    // A temporary file renamed over a note, as an agent writes its status: the temporary name is
    // gone when its events are seen, and a name gone had every plugin read and hashed again.
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let host = crate::support::host(plugins.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    let opens = OpenCounter::new(plugins.path().join("t.wasm"));
    let (temporary, note) = (plugins.path().join("notes.json.tmp"), plugins.path().join("notes.json"));
    for write in 0..10 {
        std::fs::write(&temporary, format!("{{\"write\": {write}}}")).unwrap();
        std::fs::rename(&temporary, &note).unwrap();
    }
    caught_up(&mut events, plugins.path()).await;
    assert_eq!(opens.count(), 0, "the host read every plugin again for a note written beside them");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_plugin_is_rejected_once_and_the_host_is_quiet_afterwards() {
    let plugins = plugin_dir(&[]);
    let host = crate::support::host(plugins.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    move_in(plugins.path(), b"\0asm but not really");
    event_where(&mut events, |event| matches!(event, HostEvent::PluginRejected { name, .. } if name == "t"))
        .await;
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(host.event_counts().rejected, 1);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_file_is_not_read_again_on_a_config_change_and_its_refusal_goes_with_it() {
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    std::fs::write(plugins.path().join("bad.wasm"), b"\0asm but not really").unwrap();
    let config = ConfigFile::new(plugins.path(), &["a"]);
    let host = config.host().await;
    assert!(host.last_rejections().contains_key("bad"), "{:?}", host.last_rejections());
    let mut events = host.subscribe();
    replace_file(&config.path, config.text(&["a", "b"]).as_bytes());
    event_where(&mut events, config_applied).await;
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new(), "not refused again");
    assert_eq!(host.event_counts().rejected, 1);
    // Its file goes: so does its refusal.
    std::fs::remove_file(plugins.path().join("bad.wasm")).unwrap();
    crate::support::eventually(|| match host.last_rejections() {
        rejections if rejections.is_empty() => Ok(()),
        rejections => Err(rejections),
    });
    // A serving plugin's file refused, then put back as it was: the refusal is over.
    let serving = std::fs::read(artifacts::STAMP_TRANSFORM).unwrap();
    replace_file(&plugins.path().join("t.wasm"), b"not a component");
    event_where(&mut events, |event| matches!(event, HostEvent::PluginRejected { name, .. } if name == "t"))
        .await;
    std::fs::write(plugins.path().join("t.wasm.new"), &serving).unwrap();
    std::fs::rename(plugins.path().join("t.wasm.new"), plugins.path().join("t.wasm")).unwrap();
    crate::support::eventually(|| match host.last_rejections() {
        rejections if rejections.is_empty() => Ok(()),
        rejections => Err(rejections),
    });
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_another_kind_does_not_replace_a_plugin_a_route_uses_as_its_kind() {
    // Route `a` runs `transform:t`; t.wasm becomes a filter: refused, the transform keeps serving.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let config = ConfigFile::new(plugins.path(), &["a"]);
    let host = config.host().await;
    let serving = host.plugins()[0].digest.clone();
    let mut events = host.subscribe();
    move_in(plugins.path(), &std::fs::read(artifacts::HEADER_FILTER).unwrap());
    let rejected = event_where(
        &mut events,
        |event| matches!(event, HostEvent::PluginRejected { name, .. } if name == "t"),
    )
    .await;
    let HostEvent::PluginRejected { reason, .. } = rejected else { unreachable!() };
    assert_eq!(
        reason,
        "plugin \"t\": the new file is a filter, but route \"a\" (stage transform:t) uses the serving transform: the serving version keeps serving"
    );
    assert_eq!(host.plugins()[0].digest, serving);
    assert!(host.unready().is_empty(), "{:?}", host.unready());
    host.send(Message::new("a", "{}")).await.unwrap();
    assert!(
        next(&host.memory("out").unwrap()).await.header("x-stamp").is_some(),
        "stamped by the serving version"
    );
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_refused_for_its_kind_serves_once_the_config_uses_the_plugin_as_that_kind() {
    // Before, the refusal stood until the file changed or an explicit reload, and a reload that
    // applied a changed config did not try it either: route `a` then named filter:t while the
    // transform served, and every message was dead-lettered stage-unavailable.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let config = ConfigFile::new(plugins.path(), &["a"]);
    let host = config.host().await;
    let mut events = host.subscribe();
    move_in(plugins.path(), &std::fs::read(artifacts::HEADER_FILTER).unwrap());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginRejected { name, .. } if name == "t"))
        .await;
    let as_filter = config.text(&["a"]).replace("transform:t", "filter:t");
    replace_file(&config.path, as_filter.as_bytes());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "t"))
        .await;
    host.send(Message::new("a", "{}")).await.unwrap();
    let kept = next(&host.memory("out").unwrap()).await;
    assert!(kept.header("x-stamp").is_none(), "kept by the filter, not stamped: {:?}", kept.headers);
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(drain_and_account(&host).await.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_refused_a_granted_directory_not_made_yet_serves_once_it_is_made_and_the_config_changes() {
    // Before, the refusal stood until the file changed or an explicit reload: the config change
    // skipped the file as refused before, and route `a` dead-lettered every message
    // stage-unavailable. A name of `allow_net` that did not resolve at start stood the same way.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let config = ConfigFile::new(plugins.path(), &["a"]);
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data").display().to_string();
    let granted = |topics: &[&str]| {
        config.text(topics) + &format!("[[plugin]]\nname = \"t\"\ndirs = {{ \"/data\" = {data:?} }}\n")
    };
    replace_file(&config.path, granted(&["a"]).as_bytes());
    let host = config.host().await;
    let [switchyard::LoadError::Grant { name, .. }] = host.load_errors() else {
        panic!("one grant refused: {:?}", host.load_errors());
    };
    assert_eq!(name, "t");
    let mut events = host.subscribe();
    std::fs::create_dir(&data).unwrap();
    replace_file(&config.path, granted(&["a", "b"]).as_bytes());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginLoaded { name, .. } if name == "t"))
        .await;
    host.send(Message::new("a", "{}")).await.unwrap();
    assert!(next(&host.memory("out").unwrap()).await.header("x-stamp").is_some(), "stamped by t");
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(host.event_counts().rejected, 1, "refused once, at start");
    assert_eq!(drain_and_account(&host).await.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_directory_removed_and_made_again_is_followed_and_the_host_is_quiet_afterwards() {
    let root = tempfile::tempdir().unwrap();
    let plugins = root.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(artifacts::STAMP_TRANSFORM, plugins.join("t.wasm")).unwrap();
    let host = crate::support::host(&plugins, MEMORY_OUT).await;
    assert_eq!(host.plugins().len(), 1);
    let mut events = host.subscribe();
    std::fs::remove_dir_all(&plugins).unwrap();
    event_where(&mut events, |event| matches!(event, HostEvent::PluginRemoved { name, .. } if name == "t"))
        .await;
    std::fs::create_dir(&plugins).unwrap();
    move_in(&plugins, &std::fs::read(artifacts::REDACT_TRANSFORM).unwrap());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginLoaded { name, .. } if name == "t"))
        .await;
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    // Watched again: a change in the new directory is followed too.
    move_in(&plugins, &std::fs::read(artifacts::STAMP_TRANSFORM).unwrap());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "t"))
        .await;
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_behind_a_swapped_link_is_followed_as_a_mounted_config_map_updates() {
    // Kubernetes' layout: t.wasm -> ..data/t.wasm, ..data -> ..v1; an update
    // writes ..v2 and swaps ..data to it in one rename.
    let plugins = plugin_dir(&[]);
    let dir = plugins.path();
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::copy(artifacts::STAMP_TRANSFORM, dir.join("..v1/t.wasm")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/t.wasm", dir.join("t.wasm")).unwrap();
    let host = crate::support::host(dir, MEMORY_OUT).await;
    let first = host.plugins()[0].digest.clone();
    let mut events = host.subscribe();
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::copy(artifacts::REDACT_TRANSFORM, dir.join("..v2/t.wasm")).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let swapped = event_where(&mut events, replaced("t")).await;
    assert!(matches!(swapped, HostEvent::PluginReplaced { old_version, .. } if old_version == first));
    // The kubelet then removes the old version's directory: nothing serves from it any more.
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    // A file of the new version's directory edited where it is is followed too.
    std::fs::write(dir.join("..v2/t.wasm"), std::fs::read(artifacts::STAMP_TRANSFORM).unwrap()).unwrap();
    replaced_with(&mut events, "t", artifacts::STAMP_TRANSFORM).await;
    drain_and_account(&host).await;
}

/// Wait for plugin `name` to be replaced with the file `artifact`, then for the host to stay quiet.
async fn replaced_with(events: &mut broadcast::Receiver<HostEvent>, name: &str, artifact: &str) {
    let event = event_where(events, replaced(name)).await;
    let expected = host_digest(artifact);
    assert!(matches!(&event, HostEvent::PluginReplaced { version, .. } if *version == expected), "{event:?}");
    assert_eq!(events_over_quiet_period(events).await, Vec::<String>::new());
}

/// The versions plugins `names` are replaced with, by name, in the next events.
async fn replacements(events: &mut broadcast::Receiver<HostEvent>, names: &[&str]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < names.len() {
        let wanted = |event: &HostEvent| names.iter().any(|name| replaced(name)(event));
        if let HostEvent::PluginReplaced { name, version, .. } = event_where(events, wanted).await {
            seen.push((name, version));
        }
    }
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_linked_to_another_plugins_file_is_replaced_with_it() {
    // b.wasm -> a.wasm: a.wasm rewritten in place is b's new version too.
    let plugins = plugin_dir(&[("a", artifacts::STAMP_TRANSFORM)]);
    let dir = plugins.path();
    std::os::unix::fs::symlink("a.wasm", dir.join("b.wasm")).unwrap();
    let host = crate::support::host(dir, MEMORY_OUT).await;
    assert_eq!(host.plugins().len(), 2);
    let mut events = host.subscribe();
    std::fs::write(dir.join("a.wasm"), std::fs::read(artifacts::REDACT_TRANSFORM).unwrap()).unwrap();
    let version = host_digest(artifacts::REDACT_TRANSFORM);
    let expected = [("a".to_owned(), version.clone()), ("b".to_owned(), version)];
    assert_eq!(replacements(&mut events, &["a", "b"]).await, expected);
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_linked_into_a_subdirectory_follows_its_file_rewritten_or_replaced_there() {
    let plugins = plugin_dir(&[]);
    let dir = plugins.path();
    std::fs::create_dir(dir.join("versions")).unwrap();
    let file = dir.join("versions/t.wasm");
    std::fs::copy(artifacts::STAMP_TRANSFORM, &file).unwrap();
    std::os::unix::fs::symlink("versions/t.wasm", dir.join("t.wasm")).unwrap();
    let host = crate::support::host(dir, MEMORY_OUT).await;
    let mut events = host.subscribe();
    std::fs::write(&file, std::fs::read(artifacts::REDACT_TRANSFORM).unwrap()).unwrap();
    replaced_with(&mut events, "t", artifacts::REDACT_TRANSFORM).await;
    replace_file(&file, &std::fs::read(artifacts::STAMP_TRANSFORM).unwrap());
    replaced_with(&mut events, "t", artifacts::STAMP_TRANSFORM).await;
    drain_and_account(&host).await;
}

/// A plugin's version as the host names it: the SHA-256 of its file, hex.
fn host_digest(artifact: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(artifact).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_half_written_config_is_refused_and_the_running_routes_keep_serving() {
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let host = file.host().await;
    let mut events = host.subscribe();
    let out = host.memory("out").unwrap();
    let full = file.text(&["a", "b"]);
    let half = &full[..full.find("[[route]]").unwrap()];
    for (case, text) in [("empty", ""), ("half-written", half)] {
        std::fs::write(&file.path, text).unwrap();
        let reason = next_rejection(&mut events).await;
        assert!(reason.contains("no [[route]]: refused, it would replace the 1 serving"), "{case}: {reason}");
        host.send(Message::new("a", "{}")).await.unwrap();
        assert_eq!(next(&out).await.topic, "a", "{case}: the running route still serves");
    }
    assert_eq!(host.event_counts().configs_applied, 0);
    // Said explicitly, no routes is a config like any other.
    std::fs::write(&file.path, format!("route = []\n{half}")).unwrap();
    event_where(&mut events, config_applied).await;
    host.send(Message::new("a", "now")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("no-route"));
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_start_only_keys_is_refused_naming_them() {
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let host = file.host().await;
    let text = file.text(&["a", "b"]).replacen("[host]", "[host]\nworkers = 3\nbatch_size = 7", 1);
    replace_file(&file.path, text.as_bytes());
    let refused = within(host.reload()).await.unwrap_err().to_string();
    assert!(
        refused.ends_with(
            "host.workers, host.batch_size take effect only at start: restart the host to change them (nothing was applied)"
        ),
        "{refused}"
    );
    assert_eq!(host.config().routes.len(), 1, "nothing of it applied");
    assert_eq!(host.event_counts().configs_applied, 0);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_reload_whose_config_is_refused_still_tries_the_refused_plugins_again() {
    // The refused config returned the reload before the plugins were read: the plugin fixed in its
    // place (not watched: only an explicit reload reads it) stayed refused.
    let plugins = plugin_dir(&[]);
    std::fs::write(plugins.path().join("t.wasm"), b"not a component").unwrap();
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let unwatched = file.text(&["a"]).replacen("[host]", "[host]\nwatch = false", 1);
    replace_file(&file.path, unwatched.as_bytes());
    let host = file.host().await;
    assert!(host.plugins().is_empty(), "the corrupt file is refused");
    std::fs::copy(artifacts::STAMP_TRANSFORM, plugins.path().join("t.wasm")).unwrap();
    let restart = unwatched.replacen("[host]", "[host]\nworkers = 3", 1);
    replace_file(&file.path, restart.as_bytes());
    let refused = within(host.reload()).await.unwrap_err().to_string();
    assert!(refused.contains("host.workers take effect only at start"), "{refused}");
    assert_eq!(
        host.plugins().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["t"],
        "the fixed file serves"
    );
    host.send(Message::new("a", "{}")).await.unwrap();
    assert!(next(&host.memory("out").unwrap()).await.header("x-stamp").is_some(), "stamped by it");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_config_is_followed_where_it_points_and_writes_beside_the_link_repeat_no_refusal() {
    // switchyard.toml -> (another directory)/switchyard.toml, edited where it points.
    let plugins = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let file = ConfigFile::new(plugins.path(), &["a"]);
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("switchyard.toml");
    std::os::unix::fs::symlink(&file.path, &link).unwrap();
    let host = Host::builder().config_file(&link).unwrap();
    let host = host.state_dir(links.path().join(".switchyard")).build().await.unwrap();
    let mut events = host.subscribe();
    replace_file(&file.path, file.text(&["a", "b"]).as_bytes());
    event_where(&mut events, config_applied).await;
    std::fs::write(&file.path, "not = [toml").unwrap();
    assert!(next_rejection(&mut events).await.contains("switchyard.toml"));
    // A log beside the link (as `switchyard run 2>> host.log` there writes each refusal) is no edit.
    for line in 0..5 {
        let mut log =
            std::fs::OpenOptions::new().create(true).append(true).open(links.path().join("host.log"));
        std::io::Write::write_all(log.as_mut().unwrap(), format!("line {line}\n").as_bytes()).unwrap();
    }
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    assert_eq!(host.event_counts().configs_rejected, 1);
    host.send(Message::new("b", "{}")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.topic, "b", "the applied edit serves");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_put_back_after_a_good_one_is_refused_and_shown_again() {
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let host = crate::support::host(plugins.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    let path = plugins.path().join("t.wasm");
    let rejected = |event: &HostEvent| matches!(event, HostEvent::PluginRejected { name, .. } if name == "t");
    replace_file(&path, b"\0asm cut short");
    event_where(&mut events, rejected).await;
    replace_file(&path, &std::fs::read(artifacts::REDACT_TRANSFORM).unwrap());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "t"))
        .await;
    assert!(host.last_rejections().is_empty(), "{:?}", host.last_rejections());
    // The same bad bytes again: refused again, and shown, though they were refused before.
    replace_file(&path, b"\0asm cut short");
    event_where(&mut events, rejected).await;
    assert!(host.last_rejections().contains_key("t"), "{:?}", host.last_rejections());
    assert_eq!(host.event_counts().rejected, 2);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_added_while_the_host_compiles_at_start_is_loaded() {
    // The watcher starts once the plugins are compiled: what changed before is read then.
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let dir = plugins.path().to_owned();
    let added = std::sync::Once::new();
    let observer: switchyard::plugin::CompileObserver = Arc::new(move |_| {
        added.call_once(|| {
            replace_file(&dir.join("late.wasm"), &std::fs::read(artifacts::HEADER_FILTER).unwrap())
        })
    });
    let config = MEMORY_OUT.replacen("[host]", "[host]\ncache_dir = \"\"", 1);
    let config = switchyard::Config::from_toml("test.toml", &config).unwrap();
    let host = crate::support::builder(plugins.path()).config("test.toml", config).observe_compiles(observer);
    let host = within(host.build()).await.unwrap();
    let mut names: Vec<String> = host.plugins().iter().map(|plugin| plugin.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["late", "t"]);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_directory_that_is_a_swapped_link_is_still_watched_after_the_swap() {
    // plugins -> v1, then plugins -> v2 in one rename; then a change inside v2.
    let root = tempfile::tempdir().unwrap();
    for (version, plugin) in [("v1", artifacts::STAMP_TRANSFORM), ("v2", artifacts::REDACT_TRANSFORM)] {
        std::fs::create_dir(root.path().join(version)).unwrap();
        std::fs::copy(plugin, root.path().join(version).join("t.wasm")).unwrap();
    }
    let link = root.path().join("plugins");
    std::os::unix::fs::symlink("v1", &link).unwrap();
    let config = switchyard::Config::from_toml("test.toml", MEMORY_OUT).unwrap();
    let host =
        Host::builder().config("test.toml", config).plugin_dir(&link).state_dir(root.path().join("state"));
    let host = host.build().await.unwrap();
    let mut events = host.subscribe();
    let replaced = |event: &HostEvent| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "t");
    std::os::unix::fs::symlink("v2", root.path().join("plugins.new")).unwrap();
    std::fs::rename(root.path().join("plugins.new"), &link).unwrap();
    event_where(&mut events, replaced).await;
    replace_file(&root.path().join("v2/t.wasm"), &std::fs::read(artifacts::STAMP_TRANSFORM).unwrap());
    event_where(&mut events, replaced).await;
    assert_eq!(events_over_quiet_period(&mut events).await, Vec::<String>::new());
    drain_and_account(&host).await;
}
