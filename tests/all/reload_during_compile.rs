//! Configs and plugin compiles that overlap. A config applied while a plugin compiles: the sync
//! under way loses nothing of what it was for — the compile-cache entry it found bad is told, and
//! an explicit reload still tries a file refused before. A config whose plugins compile, or are
//! still being written: it runs, and is written, only once they serve, and a plugin whose kind it
//! switches never meets a route of the other kind. And the compiles of a start or a deploy: one a
//! core at once.

use crate::support::{MEMORY_OUT, builder, drain_and_account, event_where, next, still_pending, within};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use switchyard::plugin::{CompileObserver, CompileProgress};
use switchyard::{Config, ConfigChange, ConfigError, Host, HostEvent};
use switchyard_plugin_artifacts as artifacts;
use tokio::sync::mpsc;

/// Holds the first compile that starts once armed until let go, and tells that it started: a test
/// applies a config while a plugin compiles, whatever the timing. Compiles after it (those of the
/// config applied meanwhile) run.
struct HeldCompiles {
    armed: AtomicBool,
    held: Mutex<bool>,
    let_go: Condvar,
    started: mpsc::UnboundedSender<()>,
}

impl HeldCompiles {
    fn new() -> (Arc<HeldCompiles>, mpsc::UnboundedReceiver<()>) {
        let (started, told) = mpsc::unbounded_channel();
        let held = HeldCompiles {
            armed: AtomicBool::new(false),
            held: Mutex::new(true),
            let_go: Condvar::new(),
            started,
        };
        (Arc::new(held), told)
    }

    fn observer(self: &Arc<Self>) -> CompileObserver {
        let this = self.clone();
        Arc::new(move |progress| {
            if matches!(progress, CompileProgress::Started { .. }) {
                this.hold_if_armed();
            }
        })
    }

    /// If armed, disarm, tell that the held step started, and wait until let go.
    fn hold_if_armed(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            let _ = self.started.send(());
            let held = self.held.lock().unwrap();
            // A safety net only: a failed test lets its step go rather than hang.
            let patience = crate::support::PATIENCE;
            drop(self.let_go.wait_timeout_while(held, patience, |held| *held).unwrap());
        }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn let_go(&self) {
        *self.held.lock().unwrap() = false;
        self.let_go.notify_all();
    }
}

/// `config` with one more route, `extra`: a change that leaves every plugin's settings as they were.
fn with_extra_route(config: &str) -> Config {
    let route = "[[route]]\nname = \"extra\"\nmatch = { topic = \"extra\" }\nto = \"out\"\n";
    Config::from_toml("test.toml", &format!("{config}{route}")).unwrap()
}

/// Applies a config with an extra route to `host` while the plugin that `reload` reads compiles:
/// waits for the compile to start, then for the config to be current, then lets the compile go.
async fn apply_while_compiling(
    host: &Host,
    config: &str,
    held: &HeldCompiles,
    started: &mut mpsc::UnboundedReceiver<()>,
    reload: tokio::task::JoinHandle<Result<ConfigChange, ConfigError>>,
) {
    let mut events = host.subscribe();
    within(started.recv()).await.unwrap();
    let apply = tokio::spawn({
        let (host, config) = (host.clone(), with_extra_route(config));
        async move { host.apply_config("test.toml", config).await }
    });
    event_where(&mut events, |event| matches!(event, HostEvent::ConfigApplied { .. })).await;
    held.let_go();
    within(reload).await.unwrap().unwrap();
    assert_eq!(within(apply).await.unwrap().unwrap(), ConfigChange::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cache_entry_found_by_a_compile_that_a_config_overtook_is_still_told() {
    let plugins = crate::support::plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let cache = tempfile::tempdir().unwrap();
    let config = MEMORY_OUT.replacen(
        "[host]\n",
        &format!("[host]\nwatch = false\ncache_dir = {:?}\n", cache.path()),
        1,
    );
    let (held, mut started) = HeldCompiles::new();
    let host = builder(plugins.path()).config("test.toml", Config::from_toml("test.toml", &config).unwrap());
    let host = within(host.observe_compiles(held.observer()).build()).await.unwrap();
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    // The entry the start stored is cut short; new settings for `t` (a sidecar) make the reload
    // compile it again, through the cache, which finds the entry bad.
    let mut entries = std::fs::read_dir(cache.path()).unwrap().map(|entry| entry.unwrap().path());
    let entry = entries.find(|path| path.extension().is_some_and(|ext| ext == "cwasm")).unwrap();
    std::fs::write(&entry, b"cut short").unwrap();
    std::fs::write(plugins.path().join("t.toml"), "config = { mode = \"second\" }\n").unwrap();
    held.arm();
    let mut events = host.subscribe();
    let reload = tokio::spawn({
        let host = host.clone();
        async move { host.reload().await }
    });
    apply_while_compiling(&host, &config, &held, &mut started, reload).await;
    let told: Vec<HostEvent> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|event| matches!(event, HostEvent::CacheEntryDiscarded { .. }))
        .collect();
    assert_eq!(host.event_counts().cache_entries_discarded, 1, "the discarded entry was not told: {told:?}");
    let [HostEvent::CacheEntryDiscarded { name, reason }] = &told[..] else { panic!("{told:?}") };
    assert_eq!(name, "t");
    assert!(reason.ends_with("shorter than its seal; discarded"), "{reason}");
    let t = host.plugins().into_iter().find(|plugin| plugin.name == "t").unwrap();
    assert_eq!(t.settings.config.config.get("mode").map(String::as_str), Some("second"));
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_reload_that_a_config_overtook_still_tries_a_file_refused_before() {
    // `t` is refused at start: the directory it is granted does not exist. Made, an explicit
    // reload tries `t` again, with a config applied while it compiles.
    let plugins = crate::support::plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let data_root = tempfile::tempdir().unwrap();
    let data = data_root.path().join("data");
    let config = MEMORY_OUT.replacen("[host]\n", "[host]\nwatch = false\ncache_dir = \"\"\n", 1)
        + &format!("[[plugin]]\nname = \"t\"\ndirs = {{ \"/data\" = {:?} }}\n", data.display().to_string());
    let (held, mut started) = HeldCompiles::new();
    let host = builder(plugins.path()).config("test.toml", Config::from_toml("test.toml", &config).unwrap());
    let host = within(host.observe_compiles(held.observer()).build()).await.unwrap();
    assert!(matches!(host.load_errors(), [switchyard::LoadError::Grant { .. }]), "{:?}", host.load_errors());
    std::fs::create_dir(&data).unwrap();
    held.arm();
    let reload = tokio::spawn({
        let host = host.clone();
        async move { host.reload().await }
    });
    apply_while_compiling(&host, &config, &held, &mut started, reload).await;
    let names: Vec<String> = host.plugins().iter().map(|plugin| plugin.name.clone()).collect();
    assert_eq!(names, ["t"], "the explicit reload did not try the refused file again");
    assert!(host.last_rejections().is_empty(), "{:?}", host.last_rejections());
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_config_is_written_once_it_runs_with_its_plugins() {
    // The file holds what runs. The replacement's plugins compile before it runs: meanwhile the
    // old config runs and the file holds it (a stop then refuses the replacement, and a restart
    // runs what ran); once it runs, the file holds it before the answer says so.
    let plugins = crate::support::plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let path = plugins.path().join("switchyard.toml");
    let host_keys = format!("[host]\nplugin_dir = {:?}\nwatch = false\ncache_dir = \"\"\n", plugins.path());
    let config = |mode: &str| {
        MEMORY_OUT.replacen("[host]\n", &host_keys, 1)
            + &format!("[[plugin]]\nname = \"t\"\nconfig = {{ mode = \"{mode}\" }}\n")
    };
    let running_mode = |host: &Host| {
        let config = host.config();
        let t = config.plugins.iter().find(|plugin| plugin.name == "t").unwrap();
        t.config.get("mode").cloned()
    };
    std::fs::write(&path, config("first")).unwrap();
    let (held, mut started) = HeldCompiles::new();
    let host = Host::builder().config_file(&path).unwrap().state_dir(plugins.path().join(".switchyard"));
    let host = within(host.observe_compiles(held.observer()).build()).await.unwrap();
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    held.arm();
    let replace = tokio::spawn({
        let (host, text) = (host.clone(), config("second"));
        async move { host.replace_config(&text).await }
    });
    within(started.recv()).await.unwrap();
    let (written, running) = (std::fs::read_to_string(&path).unwrap(), running_mode(&host));
    held.let_go();
    assert_eq!((written, running.as_deref()), (config("first"), Some("first")), "while `t` compiles");
    let change = within(replace).await.unwrap().unwrap().change;
    assert_eq!(change, ConfigChange::Applied);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), config("second"));
    assert_eq!(running_mode(&host).as_deref(), Some("second"));
    let t = host.plugins().into_iter().find(|plugin| plugin.name == "t").unwrap();
    assert_eq!(t.settings.config.config.get("mode").map(String::as_str), Some("second"));
    drain_and_account(&host).await;
}

/// Which of the memory destinations `out`, `filtered` and `dead` the next message reaches first.
async fn arrival(
    out: &flume::Receiver<switchyard::Message>,
    filtered: &flume::Receiver<switchyard::Message>,
    dead: &flume::Receiver<switchyard::Message>,
) -> &'static str {
    tokio::select! {
        _ = out.recv_async() => "out",
        _ = filtered.recv_async() => "filtered",
        _ = dead.recv_async() => "dead",
    }
}

/// Where a message on topic `a` that filter `x` drops, sent while `x` compiles as part of a deploy
/// of `x.wasm` with a config whose route `a` first runs it (and delivers to `filtered` instead of
/// `out`), went: `out`, `filtered` or `dead`. `on_error` is route `a`'s failure policy in the
/// new config. After the deploy, the filter drops such a message and keeps one it requires.
async fn where_a_message_sent_while_deploying_a_filter_went(on_error: &str) -> &'static str {
    let plugins = crate::support::plugin_dir(&[]);
    let destinations = MEMORY_OUT.replacen("[host]\n", "[host]\nwatch = false\ncache_dir = \"\"\n", 1)
        + "[[destination]]\nname = \"filtered\"\ntransport = \"memory\"\n";
    let before =
        format!("{destinations}[[route]]\nname = \"a\"\nmatch = {{ topic = \"a\" }}\nto = \"out\"\n");
    let after = format!(
        "{destinations}[[plugin]]\nname = \"x\"\nconfig = {{ require_header = \"keep\" }}\n\
         [[route]]\nname = \"a\"\nmatch = {{ topic = \"a\" }}\nstages = [\"filter:x\"]\nto = \"filtered\"\n\
         on_error = \"{on_error}\"\n"
    );
    let (held, mut started) = HeldCompiles::new();
    let host = builder(plugins.path()).config("test.toml", Config::from_toml("test.toml", &before).unwrap());
    let host = within(host.observe_compiles(held.observer()).build()).await.unwrap();
    let (out, filtered, dead) =
        (host.memory("out").unwrap(), host.memory("filtered").unwrap(), host.memory("dead").unwrap());
    // One deploy: the plugin file, then the config that uses it.
    std::fs::copy(artifacts::HEADER_FILTER, plugins.path().join("x.wasm")).unwrap();
    held.arm();
    let deploy = tokio::spawn({
        let (host, config) = (host.clone(), Config::from_toml("test.toml", &after).unwrap());
        async move { host.apply_config("test.toml", config).await }
    });
    within(started.recv()).await.unwrap();
    host.send(switchyard::Message::new("a", "sent while x compiles")).await.unwrap();
    let went = within(arrival(&out, &filtered, &dead)).await;
    held.let_go();
    assert_eq!(within(deploy).await.unwrap().unwrap(), ConfigChange::Applied);
    host.send(switchyard::Message::new("a", "dropped")).await.unwrap();
    host.send(switchyard::Message::new("a", "kept").with_header("keep", "yes")).await.unwrap();
    assert_eq!(next(&filtered).await.payload, b"kept".as_slice(), "the deployed filter runs");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.filtered, 1, "{stats:?}");
    went
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_deployed_with_its_plugin_dead_letters_nothing_while_the_plugin_compiles() {
    // The config was made current before its plugins compiled: a message sent meanwhile met route
    // `a` with no `x` loaded, and was dead-lettered `stage-unavailable`.
    let went = where_a_message_sent_while_deploying_a_filter_went("fail-closed").await;
    assert_eq!(went, "out", "the old route did not take the message sent while x compiled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_route_deployed_with_its_filter_never_runs_without_it() {
    // Under fail-open, the new route skipped the filter it could not find: the message it would
    // have dropped was delivered.
    let went = where_a_message_sent_while_deploying_a_filter_went("fail-open").await;
    assert_eq!(went, "out", "the new route ran without its filter while x compiled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_open_route_deployed_while_its_filter_is_written_never_runs_without_it() {
    // `x.wasm` still held open by its writer (a copy under way) was left for its close, and the
    // config naming it applied at once: route `a` ran without `x`, and under fail-open delivered
    // what `x` drops.
    let plugins = crate::support::plugin_dir(&[]);
    let destinations =
        MEMORY_OUT.to_owned() + "[[destination]]\nname = \"filtered\"\ntransport = \"memory\"\n";
    let before =
        format!("{destinations}[[route]]\nname = \"a\"\nmatch = {{ topic = \"a\" }}\nto = \"out\"\n");
    let after = format!(
        "{destinations}[[plugin]]\nname = \"x\"\nconfig = {{ require_header = \"keep\" }}\n\
         [[route]]\nname = \"a\"\nmatch = {{ topic = \"a\" }}\nstages = [\"filter:x\"]\nto = \"filtered\"\n\
         on_error = \"fail-open\"\n"
    );
    let host = builder(plugins.path()).config("test.toml", Config::from_toml("test.toml", &before).unwrap());
    let host = within(host.build()).await.unwrap();
    let (out, filtered, dead) =
        (host.memory("out").unwrap(), host.memory("filtered").unwrap(), host.memory("dead").unwrap());
    let mut events = host.subscribe();
    let whole = std::fs::read(artifacts::HEADER_FILTER).unwrap();
    let (head, rest) = whole.split_at(whole.len() / 2);
    let (more, rest) = rest.split_at(rest.len() / 2);
    let mut writer = std::fs::File::create(plugins.path().join("x.wasm")).unwrap();
    writer.write_all(head).unwrap();
    // The watcher knows that the file is held open; the writer goes on.
    crate::reload_once::caught_up(&mut events, plugins.path()).await;
    writer.write_all(more).unwrap();
    let mut deploy = tokio::spawn({
        let (host, config) = (host.clone(), Config::from_toml("test.toml", &after).unwrap());
        async move { host.apply_config("test.toml", config).await }
    });
    let waited = still_pending(&mut deploy).await;
    host.send(switchyard::Message::new("a", "sent while x is written")).await.unwrap();
    let went = within(arrival(&out, &filtered, &dead)).await;
    assert_eq!(went, "out", "route a ran without its filter x while x.wasm was written");
    assert!(waited, "the config did not wait for x.wasm's writer");
    writer.write_all(rest).unwrap();
    drop(writer);
    assert_eq!(within(deploy).await.unwrap().unwrap(), ConfigChange::Applied);
    host.send(switchyard::Message::new("a", "dropped")).await.unwrap();
    host.send(switchyard::Message::new("a", "kept").with_header("keep", "yes")).await.unwrap();
    assert_eq!(next(&filtered).await.payload, b"kept".as_slice(), "the deployed filter runs");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.filtered, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_whose_plugin_is_still_written_after_the_wait_for_its_writer_is_refused_naming_it() {
    // A writer that goes on writing `x.wasm` past the wait for it (a slow copy): the config that
    // runs `x` is refused, and the running one keeps serving.
    let plugins = crate::support::plugin_dir(&[]);
    let before = MEMORY_OUT.to_owned() + "[[route]]\nname = \"a\"\nmatch = { topic = \"a\" }\nto = \"out\"\n";
    let after = MEMORY_OUT.to_owned()
        + "[[route]]\nname = \"a\"\nmatch = { topic = \"a\" }\nstages = [\"filter:x\"]\nto = \"out\"\n\
           on_error = \"fail-open\"\n";
    let host = builder(plugins.path()).config("test.toml", Config::from_toml("test.toml", &before).unwrap());
    let host = within(host.build()).await.unwrap();
    let mut events = host.subscribe();
    let copy = SlowCopy::half_written(plugins.path());
    crate::reload_once::caught_up(&mut events, plugins.path()).await;
    let copy = copy.trickle();
    let refused =
        within(host.apply_config("test.toml", Config::from_toml("test.toml", &after).unwrap())).await;
    drop(copy.stop());
    let Err(ConfigError::PluginUnsettled { plugin, .. }) = &refused else { panic!("{refused:?}") };
    assert_eq!(plugin, "x");
    let routes = host.config();
    assert!(routes.routes[0].stages.is_empty(), "the running config changed: {:?}", routes.routes);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_refused_while_its_plugin_is_written_is_applied_once_the_plugin_is_closed() {
    // The config file, changed to run `filter:x` while `x.wasm` was still copied past the wait for
    // its writer, was refused; the copy's close then read `x` alone, and the old config ran for
    // good although the new one was on disk, until the file was touched again.
    let plugins = crate::support::plugin_dir(&[]);
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("switchyard.toml");
    let host_keys = format!("[host]\nplugin_dir = {:?}\n", plugins.path());
    let route = "[[route]]\nname = \"a\"\nmatch = { topic = \"a\" }\nto = \"out\"\n";
    let before = MEMORY_OUT.replacen("[host]\n", &host_keys, 1) + route;
    let after = MEMORY_OUT.replacen("[host]\n", &host_keys, 1)
        + "[[plugin]]\nname = \"x\"\nconfig = { require_header = \"keep\" }\n"
        + &route.replace("to =", "stages = [\"filter:x\"]\nto =");
    std::fs::write(&path, &before).unwrap();
    let host = Host::builder().config_file(&path).unwrap().state_dir(state.path().join(".switchyard"));
    let host = within(host.build()).await.unwrap();
    let mut events = host.subscribe();
    let copy = SlowCopy::half_written(plugins.path());
    crate::reload_once::caught_up(&mut events, plugins.path()).await;
    let copy = copy.trickle();
    crate::support::replace_file(&path, after.as_bytes());
    let refused = event_where(&mut events, |event| matches!(event, HostEvent::ConfigRejected { .. })).await;
    let HostEvent::ConfigRejected { reason, .. } = &refused else { unreachable!() };
    assert!(reason.contains("plugin \"x\", which it runs, is still being written"), "{reason}");
    assert!(host.config().routes[0].stages.is_empty(), "refused, yet applied");
    let SlowCopy { mut writer, rest } = copy.stop();
    writer.write_all(&rest).unwrap();
    drop(writer);
    // Nothing touches the config file again: the close of `x.wasm` alone brings it in.
    let applied = within(async {
        while host.config().routes[0].stages.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    applied.await;
    host.send(switchyard::Message::new("a", "dropped")).await.unwrap();
    host.send(switchyard::Message::new("a", "kept").with_header("keep", "yes")).await.unwrap();
    let out = host.memory("out").unwrap();
    assert_eq!(next(&out).await.payload, b"kept".as_slice(), "the new route runs x");
    // Quiet afterwards: a further watcher batch applies nothing again.
    crate::reload_once::caught_up(&mut events, plugins.path()).await;
    assert_eq!(host.event_counts().configs_applied, 1);
    assert_eq!(host.event_counts().configs_rejected, 1);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.filtered, 1, "{stats:?}");
}

/// `x.wasm` being copied into a plugin directory slowly: its writer holds it open, with what is
/// left of the header filter to write.
struct SlowCopy {
    writer: std::fs::File,
    rest: Vec<u8>,
}

/// A [`SlowCopy`] writing a byte every 100 ms, never quiet for as long as a writer is waited for.
struct Trickling {
    done: Arc<AtomicBool>,
    copy: std::thread::JoinHandle<SlowCopy>,
}

impl SlowCopy {
    /// `x.wasm` made in `plugins` with the first half of the header filter, and held open.
    fn half_written(plugins: &std::path::Path) -> SlowCopy {
        let whole = std::fs::read(artifacts::HEADER_FILTER).unwrap();
        let mut writer = std::fs::File::create(plugins.join("x.wasm")).unwrap();
        writer.write_all(&whole[..whole.len() / 2]).unwrap();
        SlowCopy { writer, rest: whole[whole.len() / 2..].to_vec() }
    }

    /// Go on writing, a byte every 100 ms, until stopped or done.
    fn trickle(mut self) -> Trickling {
        let done = Arc::new(AtomicBool::new(false));
        let copy = std::thread::spawn({
            let done = done.clone();
            move || {
                let mut written = 0;
                while written < self.rest.len() && !done.load(Ordering::SeqCst) {
                    self.writer.write_all(&self.rest[written..=written]).unwrap();
                    written += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                self.rest.drain(..written);
                self
            }
        });
        Trickling { done, copy }
    }
}

impl Trickling {
    /// Stop writing: the copy, its file still open, with what it has not written.
    fn stop(self) -> SlowCopy {
        self.done.store(true, Ordering::SeqCst);
        self.copy.join().unwrap()
    }
}

/// Counts the compiles under way and the most at once. A compile, once started, waits until
/// `enough` have started, or for `watched`: a host compiling one a core at once never starts more
/// than the cores, and one compiling one at a time never a second while the first waits.
struct CountedCompiles {
    /// Under way, the most at once, started.
    counts: Mutex<(usize, usize, usize)>,
    started: Condvar,
    enough: usize,
    watched: std::time::Duration,
}

impl CountedCompiles {
    fn new(enough: usize, watched: std::time::Duration) -> Arc<CountedCompiles> {
        let (counts, started) = (Mutex::default(), Condvar::new());
        Arc::new(CountedCompiles { counts, started, enough, watched })
    }

    fn observer(self: &Arc<Self>) -> CompileObserver {
        let this = self.clone();
        Arc::new(move |progress| {
            let mut counts = this.counts.lock().unwrap();
            match progress {
                CompileProgress::Started { .. } => {
                    let (under_way, most, started) = &mut *counts;
                    *under_way += 1;
                    *most = (*most).max(*under_way);
                    *started += 1;
                    this.started.notify_all();
                    let too_few = |counts: &mut (usize, usize, usize)| counts.2 < this.enough;
                    drop(this.started.wait_timeout_while(counts, this.watched, too_few).unwrap());
                }
                CompileProgress::Finished { .. } => counts.0 -= 1,
            }
        })
    }
}

/// Plugin files of `n` plugins `p0`, `p1`... (at most 6), each of another component.
fn many_plugins(n: usize) -> Vec<(String, &'static str)> {
    let components = [
        artifacts::HEADER_FILTER,
        artifacts::REDACT_TRANSFORM,
        artifacts::STAMP_TRANSFORM,
        artifacts::ANNOTATE_MIDDLEWARE,
        artifacts::LEAST_LOADED_BALANCER,
        artifacts::REDIS_TRANSPORT,
    ];
    assert!(n <= components.len(), "{n} plugins of {} components", components.len());
    (0..n).map(|n| format!("p{n}")).zip(components).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_starting_compiles_its_plugins_one_a_core_at_once() {
    // Each compile takes memory of its own (hundreds of MiB for a large component): a start with
    // many plugins compiled every one at once, one thread each.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let files = many_plugins(cores + 1);
    let files: Vec<(&str, &str)> = files.iter().map(|(name, file)| (name.as_str(), *file)).collect();
    let plugins = crate::support::plugin_dir(&files);
    // Each compile waits for all to start, two seconds at most: only how long the test watches.
    let counted = CountedCompiles::new(files.len(), std::time::Duration::from_secs(2));
    // No compile cache: each is compiled.
    let config = MEMORY_OUT.replacen("[host]\n", "[host]\ncache_dir = \"\"\n", 1);
    let config = Config::from_toml("test.toml", &config).unwrap();
    let host = builder(plugins.path()).config("test.toml", config).observe_compiles(counted.observer());
    let host = within(host.build()).await.unwrap();
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    let (under_way, most, started) = *counted.counts.lock().unwrap();
    assert_eq!((under_way, started), (0, files.len()), "every plugin compiled");
    assert!(most <= cores, "{most} compiles at once on {cores} cores");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_compiles_its_plugins_one_a_core_at_once() {
    // A config deployed with its plugins compiled them one after another, and ran only once the
    // last was done: held back for the sum of their compile times.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let files = many_plugins(cores + 1);
    let plugins = crate::support::plugin_dir(&[]);
    // Each compile waits for as many as there are cores to start: one at a time, the first waited
    // for the whole watch. Half the safety net, so that this shows, not the deploy's time-out.
    let counted = CountedCompiles::new(cores, crate::support::PATIENCE / 2);
    let config = MEMORY_OUT.replacen("[host]\n", "[host]\nwatch = false\ncache_dir = \"\"\n", 1);
    let host = builder(plugins.path())
        .config("test.toml", Config::from_toml("test.toml", &config).unwrap())
        .observe_compiles(counted.observer());
    let host = within(host.build()).await.unwrap();
    for (name, file) in &files {
        std::fs::copy(file, plugins.path().join(format!("{name}.wasm"))).unwrap();
    }
    let change = within(host.apply_config("test.toml", with_extra_route(&config))).await.unwrap();
    assert_eq!(change, ConfigChange::Applied);
    let (under_way, most, started) = *counted.counts.lock().unwrap();
    assert_eq!((under_way, started), (0, files.len()), "every plugin compiled");
    assert_eq!(most, cores, "compiles at once on {cores} cores");
    let names: Vec<String> = host.plugins().iter().map(|plugin| plugin.name.clone()).collect();
    assert_eq!(names, files.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(), "every plugin serves");
    assert!(host.last_rejections().is_empty(), "{:?}", host.last_rejections());
    drain_and_account(&host).await;
}

/// A destination registered in code whose builds a test can hold: every topology a config makes
/// asks it [`may_answer_retryable`](switchyard::Destination::may_answer_retryable), after the
/// plugins that config brings serve and before its routes are current. Once armed, the next ask
/// tells that it came and waits until let go.
struct HeldTopologyBuild {
    held: Arc<HeldCompiles>,
}

impl switchyard::Destination for HeldTopologyBuild {
    fn deliver(&self, _message: switchyard::Message) -> switchyard::destination::DeliveryFuture<'_> {
        Box::pin(async { Ok(None) })
    }

    fn may_answer_retryable(&self) -> bool {
        self.held.hold_if_armed();
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_switch_deployed_with_its_config_never_meets_the_old_route_with_the_new_kind() {
    // Transform `x` becomes filter `x`, with a config whose route `a` runs `filter:x` instead of
    // `transform:x`. The new `x` served before the new routes were current: a message routed by the
    // old route in between met `transform:x` as a filter, and was dead-lettered `stage-unavailable`.
    let plugins = crate::support::plugin_dir(&[("x", artifacts::STAMP_TRANSFORM)]);
    let destinations = MEMORY_OUT.replacen("[host]\n", "[host]\nwatch = false\ncache_dir = \"\"\n", 1)
        + "[[destination]]\nname = \"filtered\"\ntransport = \"memory\"\n";
    let before = format!(
        "{destinations}[[route]]\nname = \"a\"\nmatch = {{ topic = \"a\" }}\nstages = [\"transform:x\"]\nto = \"out\"\n"
    );
    let after = format!(
        "{destinations}[[plugin]]\nname = \"x\"\nconfig = {{ require_header = \"keep\" }}\n\
         [[route]]\nname = \"a\"\nmatch = {{ topic = \"a\" }}\nstages = [\"filter:x\"]\nto = \"filtered\"\n"
    );
    let (held, mut building) = HeldCompiles::new();
    let host = builder(plugins.path())
        .config("test.toml", Config::from_toml("test.toml", &before).unwrap())
        .destination("held", HeldTopologyBuild { held: held.clone() });
    let host = within(host.build()).await.unwrap();
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    // One deploy: the plugin file, then the config that uses it as its new kind.
    std::fs::copy(artifacts::HEADER_FILTER, plugins.path().join("x.wasm")).unwrap();
    held.arm();
    let deploy = tokio::spawn({
        let (host, config) = (host.clone(), Config::from_toml("test.toml", &after).unwrap());
        async move { host.apply_config("test.toml", config).await }
    });
    within(building.recv()).await.unwrap();
    host.send(switchyard::Message::new("a", "sent while the new routes are built")).await.unwrap();
    let went = within(async {
        tokio::select! {
            message = out.recv_async() => Ok(message.unwrap()),
            letter = dead.recv_async() => Err(letter.unwrap()),
        }
    })
    .await;
    held.let_go();
    assert_eq!(within(deploy).await.unwrap().unwrap(), ConfigChange::Applied);
    let sent = went.unwrap_or_else(|letter| panic!("dead-lettered: {:?}", letter.headers));
    assert_eq!(sent.header("x-stamp"), Some("stamp-transform"), "the old route ran its transform");
    host.send(switchyard::Message::new("a", "dropped")).await.unwrap();
    host.send(switchyard::Message::new("a", "kept").with_header("keep", "yes")).await.unwrap();
    let filtered = host.memory("filtered").unwrap();
    assert_eq!(next(&filtered).await.payload, b"kept".as_slice(), "the deployed filter runs");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.filtered, stats.dead_lettered), (1, 0), "{stats:?}");
}
