//! Misbehaving plugins: each is isolated with its specific error, its message
//! is dead-lettered with that reason, and the host keeps serving.

use crate::support::{
    MEMORY_OUT, PATIENCE, builder, drain_and_account, host, mkfifo, next, open_descriptors, plugin_dir,
};
use switchyard::{Host, LoadError, Message};
use switchyard_plugin_artifacts as artifacts;

/// A host with route `risky` (topic `risky.*`) through `filter:bad`, with the
/// given plugin limits, and route `safe` with no stages. The faulty plugins
/// misbehave only on messages carrying the header `x-poison` (so they pass
/// their trial run at load, as a poison-message bug would); `faulty-sleep`
/// sleeps [`asleep_past_patience`] on them.
async fn host_with_filter(artifact: &str, limits: &str, on_error: &str) -> (tempfile::TempDir, Host) {
    let dir = plugin_dir(&[("bad", artifact)]);
    let sleep_ms = asleep_past_patience();
    let config = format!(
        r#"{MEMORY_OUT}
[[plugin]]
name = "bad"
limits = {limits}
config = {{ trigger = "x-poison", sleep_ms = "{sleep_ms}" }}
[[route]]
name = "risky"
match = {{ topic = "risky.*" }}
stages = ["filter:bad"]
to = "out"
on_error = "{on_error}"
[[route]]
name = "safe"
to = "out"
"#
    );
    let host = host(dir.path(), &config).await;
    (dir, host)
}

/// The `sleep_ms` of `faulty-sleep` in these tests: ten times [`PATIENCE`]. Its call ends in time
/// only if the deadline cuts it inside WASI: were the sleep left to end, epoch interruption would
/// stop the plugin as it ran on, as late as that.
fn asleep_past_patience() -> u128 {
    (PATIENCE * 10).as_millis()
}

/// Send two poison messages, a clean one on the same route and one on
/// another route; both poison ones must be dead-lettered with `code` and a
/// reason containing `reason`, the others delivered, nothing lost.
pub async fn assert_isolated(host: &Host, code: &str, reason: &str) {
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    for n in 0..2 {
        let poison = Message::new("risky.job", format!("job {n}")).with_header("x-poison", "1");
        let id = host.send(poison).await.unwrap();
        let letter = next(&dead).await;
        assert_eq!(letter.id, id);
        assert_eq!(letter.payload, format!("job {n}"), "the dead letter carries the original message");
        assert_eq!(letter.header("x-sy-dead-letter"), Some(code), "{letter:?}");
        let text = letter.header("x-sy-dead-letter-reason").unwrap();
        assert!(text.contains("plugin \"bad\"") && text.contains(reason), "{text}");
        assert_eq!(letter.header("x-sy-route"), Some("risky"));
    }
    let id = host.send(Message::new("risky.job", "clean")).await.unwrap();
    assert_eq!(next(&out).await.id, id, "the same plugin still serves clean messages");
    let id = host.send(Message::new("safe", "still serving")).await.unwrap();
    assert_eq!(next(&out).await.id, id);
    let stats = drain_and_account(host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (4, 2, 2));
}

#[tokio::test]
pub async fn faulty_trap() {
    let (_dir, host) = host_with_filter(artifacts::FAULTY_TRAP, "{}", "fail-closed").await;
    // The SDK's panic hook logs the panic through the host: its message
    // reaches the dead letter, not only the trap it became.
    let reason = "trapped: wasm trap: wasm `unreachable` instruction executed; it logged: panicked at ";
    assert_isolated(&host, "plugin-trapped", reason).await;
    let (_dir, host) = host_with_filter(artifacts::FAULTY_TRAP, "{}", "fail-closed").await;
    assert_isolated(&host, "plugin-trapped", ": faulty-trap traps on message ").await;
}

/// A batch, as a filter is called with, of one message of topic `risky.job` with header `name: value`.
fn batch_of_one(name: &str, value: &str) -> Vec<u8> {
    use switchyard_wire::{Head, Payload, write_message};
    let mut batch = Vec::new();
    let head = Head { id: 1, source: 0, priority: 0, topic: "risky.job" };
    write_message(&mut batch, &head, [(name, value)], Payload::Omitted(0));
    batch
}

/// A call that survived a refused memory grow (the plugin asked with `try_reserve` and went on)
/// leaves no mark on its instance: a later trap of the same instance is a trap, not a memory-cap
/// fault.
#[test]
fn a_trap_after_a_refused_grow_the_plugin_survived_is_a_trap_not_a_memory_cap_fault() {
    use switchyard::plugin::{PluginEngine, PluginInstance, load_file};
    let engine = PluginEngine::new(None).unwrap();
    let config = [("trigger".to_owned(), "x-poison".to_owned())].into();
    let config = switchyard::config::PluginConfig { name: "bad".into(), config, ..Default::default() };
    let plugin = load_file(&engine, std::path::Path::new(artifacts::FAULTY_TRAP), Some(&config)).unwrap();
    let mut instance = PluginInstance::new(&engine, plugin.clone()).unwrap();
    let kept = instance.filter(&batch_of_one("x-reserve", "1")).unwrap();
    assert_eq!(kept, [Ok(switchyard::Verdict::Keep)]);
    instance.commit_counts();
    assert_eq!(plugin.settings.counters().get("refused_reserves"), Some(&1), "the grow was refused");
    match instance.filter(&batch_of_one("x-poison", "1")) {
        Err(switchyard::PluginFault::Trapped(trap)) => assert!(trap.contains("faulty-trap traps"), "{trap}"),
        other => panic!("expected a trap: {other:?}"),
    }
}

#[tokio::test]
pub async fn faulty_spin() {
    // 500 ms, not less: the deadline is wall time, and a loaded machine may deschedule the load
    // trial's call (of a clean message) for tens of milliseconds.
    let limits = "{ timeout_ms = 500 }";
    let (_dir, host) = host_with_filter(artifacts::FAULTY_SPIN, limits, "fail-closed").await;
    assert_isolated(&host, "plugin-timed-out", "timed out after 500ms").await;
}

#[tokio::test]
pub async fn faulty_sleep() {
    // Asleep inside WASI past PATIENCE: cut at the 100 ms deadline like a spin.
    let limits = "{ timeout_ms = 100 }";
    let (_dir, host) = host_with_filter(artifacts::FAULTY_SLEEP, limits, "fail-closed").await;
    assert_isolated(&host, "plugin-timed-out", "timed out after 100ms").await;
}

/// A host whose route `risky` (topic `risky.*`) goes through fs-probe granted `data` as `/data`
/// (`access`: `ro` or `rw`), and route `safe` with no stages.
async fn host_with_fs_probe(data: &std::path::Path, access: &str) -> (tempfile::TempDir, Host) {
    let dir = plugin_dir(&[("bad", artifacts::FS_PROBE)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"bad\"\ndirs = {{ \"/data\" = \"{}:{access}\" }}\n\
         [[route]]\nname = \"risky\"\nmatch = {{ topic = \"risky.*\" }}\nstages = [\"filter:bad\"]\nto = \"out\"\n\
         [[route]]\nname = \"safe\"\nto = \"out\"\n",
        data.display()
    );
    let host = host(dir.path(), &config).await;
    (dir, host)
}

/// A message of route `risky` asking fs-probe to open `path`, as `header` (`x-open`: for reading,
/// `x-open-write`: for writing) says.
fn fs_probe_open(header: &str, path: &str) -> Message {
    Message::new("risky.job", path.to_owned()).with_header(header, path)
}

/// Send `message` and await its dead letter, which must be `plugin-rejected`: its reason. A safety
/// net shorter than PATIENCE: an open that waits never answers at all.
async fn fs_probe_rejection(host: &Host, message: Message) -> String {
    let id = host.send(message).await.unwrap();
    let dead = host.memory("dead").unwrap();
    let letter = tokio::time::timeout(std::time::Duration::from_secs(20), dead.recv_async()).await;
    let letter = letter.expect("the open answered (timed out: it waits)").unwrap();
    assert_eq!(letter.id, id);
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-rejected"), "{letter:?}");
    letter.header("x-sy-dead-letter-reason").unwrap().to_owned()
}

/// A plugin granted a directory opens its regular files, but a FIFO there (or anything but a
/// regular file or a directory) is refused at once, `not-permitted`, and the host keeps serving.
/// The open waited for a writer inside a WASI host call, where the call's deadline cannot reach:
/// with none, it held its worker for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn fs_probe() {
    let data = tempfile::tempdir().unwrap();
    mkfifo(&data.path().join("fifo"));
    std::fs::write(data.path().join("file"), "regular").unwrap();
    let (_dir, host) = host_with_fs_probe(data.path(), "ro").await;
    let reason = fs_probe_rejection(&host, fs_probe_open("x-open", "/data/fifo")).await;
    assert!(reason.ends_with("/data/fifo: Operation not permitted (os error 63)"), "{reason}");
    let file = host.send(fs_probe_open("x-open", "/data/file")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, file, "a regular file of the grant opens");
    let id = host.send(Message::new("safe", "still serving")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, id);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (3, 2, 1));
}

/// Each file a plugin opens under its grant is a descriptor of the host's: one instance keeping
/// 1000 open took most of a 1024 soft limit (ingress accepts, spool and dead-letter writes then
/// fail). An instance holds at most 128 open; the next open is refused and the host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_keeps_opening_files_is_refused_past_its_cap_and_keeps_few_open() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), "regular").unwrap();
    let (_dir, host) = host_with_fs_probe(data.path(), "ro").await;
    let before = open_descriptors();
    let hoarding = fs_probe_open("x-open", "/data/file").with_header("x-hold", "1000");
    let reason = fs_probe_rejection(&host, hoarding).await;
    assert!(reason.ends_with("/data/file: I/O error (os error 29) (128 held)"), "{reason}");
    let kept = open_descriptors().saturating_sub(before);
    assert!(kept < 1000, "the instance keeps {kept} more descriptors open");
    let id = host.send(Message::new("safe", "still serving")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, id);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (2, 1, 1));
}

/// What the grant refuses it never opens: opening a FIFO, a socket or a device can act (a tape
/// rewinds, a FIFO's reader sees a writer come and go) or fail with the kernel's own error (a
/// socket: "no such device or address"). A FIFO with a reader waiting, opened for writing, and a
/// socket are both refused `not-permitted`, and the reader never saw a writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_socket_in_a_granted_directory_is_refused_unopened() {
    use rustix::event::{PollFd, PollFlags, poll};
    use std::os::unix::fs::OpenOptionsExt;
    let data = tempfile::tempdir().unwrap();
    mkfifo(&data.path().join("fifo"));
    let mut reader = std::fs::OpenOptions::new();
    let reader = reader.read(true).custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    let reader = reader.open(data.path().join("fifo")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(data.path().join("socket")).unwrap();
    let (_dir, host) = host_with_fs_probe(data.path(), "rw").await;
    let reason = fs_probe_rejection(&host, fs_probe_open("x-open-write", "/data/fifo")).await;
    assert!(reason.ends_with("/data/fifo: Operation not permitted (os error 63)"), "{reason}");
    // A FIFO's reader is told of a hang-up once a writer opened it and left.
    let mut waiting = [PollFd::new(&reader, PollFlags::IN)];
    poll(&mut waiting, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap();
    assert!(!waiting[0].revents().contains(PollFlags::HUP), "the FIFO was opened for writing, then refused");
    let reason = fs_probe_rejection(&host, fs_probe_open("x-open", "/data/socket")).await;
    assert!(reason.ends_with("/data/socket: Operation not permitted (os error 63)"), "{reason}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (2, 0, 2));
}

/// A plugin's filesystem call is cut at its deadline, however long the host takes to answer it (an
/// fsync on a slow device, any call on a hung network or FUSE mount): it runs on a thread of WASI's
/// blocking pool, which nothing interrupts. Here that pool's one thread is held by a job of the
/// test's, so each call waits behind it as behind a call that never returns; each is a timeout at
/// the deadline. A sync waited for good. Once the pool is free, the same calls answer.
#[test]
fn a_filesystem_call_that_does_not_return_is_cut_at_the_plugins_deadline() {
    use std::time::Duration;
    use switchyard::plugin::{PluginEngine, PluginInstance, load_file};
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), "regular").unwrap();
    let engine = PluginEngine::new(None).unwrap();
    let dirs = [("/data".to_owned(), format!("{}:rw", data.path().display()))].into();
    // 500 ms, not less: the calls that answer must do so within it on a loaded machine.
    let limits = switchyard::config::PluginLimits { timeout_ms: 500, ..Default::default() };
    let config =
        switchyard::config::PluginConfig { name: "probe".into(), dirs, limits, ..Default::default() };
    let plugin = load_file(&engine, std::path::Path::new(artifacts::FS_PROBE), Some(&config)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Held until `release` is dropped: after the timeouts, or when an assertion fails.
    let (release, held) = std::sync::mpsc::channel::<()>();
    runtime.spawn_blocking(move || held.recv());
    let probes =
        [("x-sync", "/data/file"), ("x-list", "/data"), ("x-stat", "/data/file"), ("x-open", "/data/file")];
    for (header, path) in probes {
        let mut instance = PluginInstance::new(&engine, plugin.clone()).unwrap();
        let (answer, answered) = std::sync::mpsc::channel();
        let in_runtime = runtime.handle().clone();
        std::thread::spawn(move || {
            let _entered = in_runtime.enter();
            answer.send(instance.filter(&batch_of_one(header, path)))
        });
        // A safety net: without the deadline, the call answers only once the pool's thread is freed.
        let answer = answered.recv_timeout(Duration::from_secs(20));
        assert!(
            matches!(answer, Ok(Err(switchyard::PluginFault::TimedOut(limit))) if limit == Duration::from_millis(500)),
            "{header} {path}: {answer:?}"
        );
    }
    drop(release);
    let _entered = runtime.enter();
    for (header, path) in probes {
        let mut instance = PluginInstance::new(&engine, plugin.clone()).unwrap();
        let kept = instance.filter(&batch_of_one(header, path));
        assert_eq!(kept, Ok(vec![Ok(switchyard::Verdict::Keep)]), "{header} {path}");
    }
    let mut instance = PluginInstance::new(&engine, plugin).unwrap();
    let missing = instance.filter(&batch_of_one("x-stat", "/data/missing")).unwrap();
    let rejected = "/data/missing: No such file or directory (os error 44)".to_owned();
    assert_eq!(missing, [Err(switchyard::PluginError::Rejected(rejected))]);
}

#[tokio::test]
pub async fn faulty_decisions() {
    let (_dir, host) = host_with_filter(artifacts::FAULTY_DECISIONS, "{}", "fail-closed").await;
    assert_isolated(&host, "plugin-malformed", "returned a malformed answer: unknown verdict at byte 6")
        .await;
}

/// Send a `risky.job` whose payload and `x-poison` header are `poison`, take its dead letter, which
/// must be `plugin-malformed`, and return its reason.
async fn malformed_reason(host: &Host, poison: &'static str) -> String {
    let id = host.send(Message::new("risky.job", poison).with_header("x-poison", poison)).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!((letter.id, letter.header("x-sy-dead-letter")), (id, Some("plugin-malformed")), "{letter:?}");
    letter.header("x-sy-dead-letter-reason").unwrap().to_owned()
}

#[tokio::test]
async fn a_filter_answer_short_of_decisions_or_with_a_bad_count_is_malformed_and_says_how() {
    let (_dir, host) = host_with_filter(artifacts::FAULTY_DECISIONS, "{}", "fail-closed").await;
    for (poison, problem) in [
        ("missing", "0 decisions for 1 messages"),
        ("extra", "2 decisions for 1 messages"),
        ("bad-counter-name", "string is not UTF-8 at byte 6"),
    ] {
        let text = malformed_reason(&host, poison).await;
        assert!(text.contains(&format!("returned a malformed answer: {problem}")), "{text}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (3, 0, 3));
}

#[tokio::test]
async fn a_plugin_asleep_in_its_load_trial_is_refused_at_its_deadline() {
    // Untriggered, it sleeps on every message, the trial's sample too: past PATIENCE, uncut.
    let dir = plugin_dir(&[("sleepy", artifacts::FAULTY_SLEEP)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"sleepy\"\nlimits = {{ timeout_ms = 100 }}\n\
         config = {{ sleep_ms = \"{}\" }}\n",
        asleep_past_patience()
    );
    let config = switchyard::Config::from_toml("test.toml", &config).unwrap();
    let host = crate::support::within(builder(dir.path()).config("test.toml", config).build());
    let host = host.await.unwrap();
    let errors: Vec<String> = host.load_errors().iter().map(ToString::to_string).collect();
    assert_eq!(errors, ["plugin \"sleepy\": failed its trial run: timed out after 100ms"]);
    drain_and_account(&host).await;
}

#[tokio::test]
async fn a_plugin_whose_trial_answer_is_malformed_is_refused_at_load_naming_the_fault() {
    // Its trial's answer was dropped unread: each of these loaded and would have served.
    let plugins = [
        ("decisions", artifacts::FAULTY_DECISIONS, "missing", "0 decisions for 1 messages"),
        ("errors", artifacts::FAULTY_ERRORS, "one-based", "an error names input 1 of 1"),
        ("middleware", artifacts::FAULTY_MIDDLEWARE, "forward-two", "expected exactly one message"),
        ("responder", artifacts::FAULTY_MIDDLEWARE, "respond-heads", "a message without its payload"),
    ];
    let dir = plugin_dir(&plugins.map(|(name, artifact, ..)| (name, artifact)));
    let entries = plugins.map(|(name, _, fault, _)| {
        format!("[[plugin]]\nname = \"{name}\"\nconfig = {{ fault = \"{fault}\" }}\n")
    });
    let config = switchyard::Config::from_toml("test.toml", &format!("{MEMORY_OUT}{}", entries.concat()));
    let host = builder(dir.path()).config("test.toml", config.unwrap()).build();
    let host = crate::support::within(host).await.unwrap();
    let mut errors: Vec<String> = host.load_errors().iter().map(ToString::to_string).collect();
    errors.sort();
    let mut expected = plugins.map(|(name, _, _, problem)| {
        format!("plugin \"{name}\": failed its trial run: returned a malformed answer: {problem}")
    });
    expected.sort();
    assert_eq!(errors, expected);
    assert!(host.plugins().is_empty(), "none serves");
    drain_and_account(&host).await;
}

/// The load errors of a host whose `host.max_message_bytes` is `max`, over `faulty-flood` making of
/// every message (its trial's sample too) one copy, `pad` bytes longer.
async fn flood_trial_errors(max: usize, pad: usize) -> Vec<String> {
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD)]);
    let config = MEMORY_OUT.replacen("[host]\n", &format!("[host]\nmax_message_bytes = {max}\n"), 1)
        + &format!("[[plugin]]\nname = \"flood\"\nconfig = {{ copies = \"1\", pad = \"{pad}\" }}\n");
    let config = switchyard::Config::from_toml("test.toml", &config).unwrap();
    let host = builder(dir.path()).config("test.toml", config).build();
    let host = crate::support::within(host).await.unwrap();
    let errors = host.load_errors().iter().map(ToString::to_string).collect();
    drain_and_account(&host).await;
    errors
}

#[tokio::test]
async fn a_trial_answer_within_the_configured_max_message_bytes_obeyed() {
    // Past the default 1 MiB, within the 2 MiB configured: the pipeline takes such an answer.
    assert_eq!(flood_trial_errors(2 << 20, (1 << 20) + 1).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_trial_answer_past_the_configured_max_message_bytes_violated() {
    // Topic "switchyard.trial", payload "{}" and the pad: within the default 1 MiB, not the 1 KiB.
    let errors = flood_trial_errors(1024, 1024).await;
    let [error] = &errors[..] else { panic!("{errors:?}") };
    assert!(error.starts_with("plugin \"flood\": failed its trial run: "), "{error}");
    assert!(error.ends_with("a message of 1042 bytes, over host.max_message_bytes (1024)"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_asleep_on_both_workers_are_cut_and_the_workers_serve_other_routes() {
    let (_dir, host) = host_with_filter(artifacts::FAULTY_SLEEP, "{ timeout_ms = 100 }", "fail-closed").await;
    assert!(host.config().host.workers == 0 && std::thread::available_parallelism().unwrap().get() >= 2);
    let dead = host.memory("dead").unwrap();
    // One batch per worker: each waits on its own sleeping instance.
    let poison = |n: u32| Message::new("risky.job", format!("{n}")).with_header("x-poison", "1");
    let (first, second) = tokio::join!(host.send(poison(1)), host.send(poison(2)));
    let (first, second) = (first.unwrap(), second.unwrap());
    let id = host.send(Message::new("safe", "still serving")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, id);
    let mut letters = [next(&dead).await, next(&dead).await];
    letters.sort_by_key(|letter| letter.id);
    assert_eq!(
        letters.iter().map(|letter| letter.id).collect::<Vec<_>>(),
        [first.min(second), first.max(second)]
    );
    assert!(letters.iter().all(|letter| letter.header("x-sy-dead-letter") == Some("plugin-timed-out")));
    drain_and_account(&host).await;
}

/// The dead-letter reason of a poison message through `faulty-flood` with
/// plugin config `settings`, which must make it an output-limit fault. Its deadline is 5 s, not
/// the default 100 ms: padding a message to 2 MiB took longer than that on a loaded machine, and
/// the message was dead-lettered plugin-timed-out.
async fn output_limit_reason(settings: &str) -> String {
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"flood\"\nlimits = {{ timeout_ms = 5000 }}\n\
         config = {{ trigger = \"x-poison\", {settings} }}\n\
         [[route]]\nname = \"risky\"\nstages = [\"transform:flood\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    host.send(Message::new("risky.job", "1").with_header("x-poison", "1")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-output-limit"), "{letter:?}");
    drain_and_account(&host).await;
    letter.header("x-sy-dead-letter-reason").unwrap().to_owned()
}

#[tokio::test]
async fn a_transform_output_past_max_message_bytes_is_an_output_limit_fault() {
    let reason = output_limit_reason("copies = \"1\", pad = \"2097152\"").await;
    // Topic "risky.job", payload "1" and the pad, header x-poison: 1.
    let expected = "a message of 2097171 bytes, over host.max_message_bytes (1048576)";
    assert!(reason.ends_with(expected), "{reason}");
}

#[tokio::test]
async fn a_transform_output_with_too_many_headers_is_an_output_limit_fault() {
    let reason = output_limit_reason("copies = \"1\", headers = \"1100\"").await;
    let expected = "a message with more than 1024 headers besides x-sy-id and x-sy-stream-seq";
    assert!(reason.ends_with(expected), "{reason}");
}

#[tokio::test]
pub async fn faulty_errors() {
    // A transform's error naming an input its batch does not have was ignored, and the message it
    // made nothing of counted filtered; an input named twice failed as one of the errors said.
    let dir = plugin_dir(&[("bad", artifacts::FAULTY_ERRORS)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"bad\"\nconfig = {{ trigger = \"x-poison\" }}\n\
         [[route]]\nname = \"risky\"\nstages = [\"transform:bad\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    // Each poison alone in its batch (its dead letter awaited before the next is sent): in one
    // batch with others, "input 1" would name another message that is there.
    for (poison, problem) in
        [("one-based", "an error names input 1 of 1"), ("twice", "errors name input 0 twice")]
    {
        let text = malformed_reason(&host, poison).await;
        let said = format!("returned a malformed answer: {problem}");
        assert!(text.contains("plugin \"bad\"") && text.ends_with(&said), "{text}");
    }
    let clean = host.send(Message::new("risky.job", "clean")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, clean, "the plugin still serves clean messages");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.filtered, stats.dead_lettered), (3, 1, 0, 2));
}

#[tokio::test]
pub async fn faulty_middleware() {
    // A forward must be one message, and a reply one whole message: the host does not guess which.
    let dir = plugin_dir(&[("bad", artifacts::FAULTY_MIDDLEWARE)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"bad\"\nconfig = {{ trigger = \"x-poison\" }}\n\
         [[route]]\nname = \"risky\"\nstages = [\"middleware:bad\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    for (poison, problem) in [
        ("forward-none", "expected exactly one message"),
        ("forward-two", "expected exactly one message"),
        ("respond-heads", "a message without its payload"),
    ] {
        let text = malformed_reason(&host, poison).await;
        assert!(text.ends_with(&format!("returned a malformed answer: {problem}")), "{text}");
    }
    let id = host.send(Message::new("risky.job", "clean")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, id, "the plugin still serves clean messages");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (4, 1, 3));
}

#[tokio::test]
pub async fn faulty_memory_hog() {
    // Its deadline a safety net: on a loaded machine, filling 16 MiB can take longer than the
    // default 100 ms, and the call would be cut for its time, not its memory.
    let limits = "{ memory_mb = 16, timeout_ms = 10000 }";
    let (_dir, host) = host_with_filter(artifacts::FAULTY_MEMORY_HOG, limits, "fail-closed").await;
    assert_isolated(&host, "plugin-memory-cap", "hit its memory cap of 16 MiB").await;
}

#[tokio::test]
async fn a_plugin_that_leaks_is_renewed_between_calls_before_its_memory_cap_and_loses_nothing() {
    // 1 MiB kept for good per message under a 16 MiB cap: without renewal, the
    // instance fails a call at its cap within sixteen messages.
    let dir = plugin_dir(&[("leaky", artifacts::FAULTY_MEMORY_HOG)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"leaky\"\nlimits = {{ memory_mb = 16 }}\n\
         config = {{ trigger = \"x-poison\", leak_kib = \"1024\" }}\n\
         [[route]]\nname = \"all\"\nstages = [\"filter:leaky\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let out = host.memory("out").unwrap();
    for n in 0..48 {
        let id = host.send(Message::new("leak", format!("message {n}"))).await.unwrap();
        assert_eq!(next(&out).await.id, id, "message {n}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (48, 0));
    let counts = host.metrics().plugin_counts("leaky");
    assert_eq!(counts.faults(), 0, "no call failed at the cap: {counts:?}");
    let renewed = host.metrics().plugin_renewals("leaky");
    assert!((3..48).contains(&renewed), "renewed every few messages, not on every call: {renewed}");
}

#[tokio::test]
pub async fn faulty_wrong_world() {
    let dir = plugin_dir(&[("wrong", artifacts::FAULTY_WRONG_WORLD), ("good", artifacts::HEADER_FILTER)]);
    let config = switchyard::Config::from_toml(
        "t",
        "[host]\ndead_letter = \"dead\"\n[[destination]]\nname = \"dead\"\ntransport = \"memory\"",
    )
    .unwrap();
    let host = builder(dir.path())
        .config("t", config)
        .route(switchyard::RouteConfig::new("r", ">", "log").stage("filter:wrong"))
        .build()
        .await
        .unwrap();
    let [LoadError::WrongWorld { name, world, reason }] = host.load_errors() else {
        panic!("expected one wrong-world error, got {:?}", host.load_errors());
    };
    assert_eq!((name.as_str(), *world), ("wrong", "filter"));
    assert!(reason.contains("type mismatch"), "{reason}");
    assert_eq!(host.plugins().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
    host.send(Message::new("any", "x")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("stage-unavailable"));
    assert_eq!(
        letter.header("x-sy-dead-letter-reason"),
        Some("stage \"filter:wrong\" is unavailable: no plugin \"wrong\" is loaded (loaded: good)")
    );
    drain_and_account(&host).await;
}

#[tokio::test]
async fn limits_obeyed_by_a_well_behaved_plugin_under_the_same_caps() {
    let limits = "{ memory_mb = 16, timeout_ms = 500 }";
    let (_dir, host) = host_with_filter(artifacts::HEADER_FILTER, limits, "fail-closed").await;
    let out = host.memory("out").unwrap();
    for n in 0..100 {
        let id = host.send(Message::new("risky.job", "x".repeat(n * 100))).await.unwrap();
        assert_eq!(next(&out).await.id, id);
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (100, 0));
}

#[tokio::test]
async fn fail_open_route_skips_a_trapping_stage() {
    let (_dir, host) = host_with_filter(artifacts::FAULTY_TRAP, "{}", "fail-open").await;
    let out = host.memory("out").unwrap();
    let id = host.send(Message::new("risky.job", "go on").with_header("x-poison", "1")).await.unwrap();
    assert_eq!(next(&out).await.id, id);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered, stats.skipped_stages), (1, 0, 1));
}

#[tokio::test]
async fn one_poison_message_in_a_batch_fails_only_itself() {
    // Messages sent back to back reach the plugin in batches; a fault on a
    // batch is retried message by message, so each is dead-lettered under
    // its own id and with its own reason, none twice and none lost.
    let (_dir, host) = host_with_filter(artifacts::FAULTY_TRAP, "{}", "fail-closed").await;
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    let mut poison_ids = Vec::new();
    let mut clean_ids = Vec::new();
    for n in 0..40 {
        let message = Message::new("risky.job", format!("{n}"));
        match n % 4 {
            0 => poison_ids.push(host.send(message.with_header("x-poison", "1")).await.unwrap()),
            _ => clean_ids.push(host.send(message).await.unwrap()),
        }
    }
    let mut lettered: Vec<u64> = Vec::new();
    for _ in 0..poison_ids.len() {
        lettered.push(next(&dead).await.id);
    }
    let mut delivered: Vec<u64> = Vec::new();
    for _ in 0..clean_ids.len() {
        delivered.push(next(&out).await.id);
    }
    lettered.sort();
    delivered.sort();
    assert_eq!((lettered, delivered), (poison_ids, clean_ids));
    drain_and_account(&host).await;
}

#[tokio::test]
pub async fn faulty_flood() {
    // A million messages out of one: the call is a fault, its message is
    // dead-lettered and nothing of the flood is taken.
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD)]);
    let config = format!(
        r#"{MEMORY_OUT}
[[plugin]]
name = "flood"
limits = {{ memory_mb = 256, timeout_ms = 10000 }}
config = {{ trigger = "x-poison" }}
[[route]]
name = "risky"
stages = ["transform:flood"]
to = "out"
"#
    );
    let host = host(dir.path(), &config).await;
    host.send(Message::new("risky.job", "1").with_header("x-poison", "1")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-output-limit"), "{letter:?}");
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.ends_with("went past its output limit: more than 1024 messages out of one"), "{reason}");
    let id = host.send(Message::new("risky.job", "clean")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, id, "the plugin still serves clean messages");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created, stats.delivered, stats.dead_lettered), (2, 0, 1, 1));
}

/// A host whose route `risky` runs `faulty-flood` (plugin config `settings`, flooding messages
/// carrying `x-poison`) `stages` times in a row, with `[host]` settings `host_settings` added.
async fn host_with_floods(stages: usize, host_settings: &str, settings: &str) -> (tempfile::TempDir, Host) {
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD)]);
    let stages = vec!["\"transform:flood\""; stages].join(", ");
    let config = MEMORY_OUT.replacen("[host]\n", &format!("[host]\n{host_settings}"), 1)
        + &format!(
            "[[plugin]]\nname = \"flood\"\nconfig = {{ trigger = \"x-poison\", {settings} }}\n\
             [[route]]\nname = \"risky\"\nstages = [{stages}]\nto = \"out\"\n"
        );
    let host = host(dir.path(), &config).await;
    (dir, host)
}

#[tokio::test]
async fn messages_made_of_one_message_at_one_stage_obeyed() {
    // 32 of one, then 32 of each: 1024 of one accepted message, as many as one transform call
    // may make of one input.
    let (_dir, host) = host_with_floods(2, "", "copies = \"32\"").await;
    host.send(Message::new("risky.job", "1").with_header("x-poison", "1")).await.unwrap();
    let out = host.memory("out").unwrap();
    for _ in 0..1024 {
        assert_eq!(next(&out).await.payload, "1");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created, stats.delivered, stats.dead_lettered), (1, 1023, 1024, 0));
    assert!(out.is_empty() && host.memory("dead").unwrap().is_empty());
}

#[tokio::test]
async fn messages_made_of_one_message_at_one_stage_violated() {
    // Each call may make 1024 messages of one input, so two transforms in a row made 1024 × 1024
    // of one accepted message (three, 10^9), all held by the worker before any was queued. Now a
    // stage makes at most 1024 of one accepted message over all its pieces: the first piece's
    // 1024 go on, and each piece that would make more is dead-lettered whole, none of its outputs
    // kept, as a message a call makes too many of is.
    let (_dir, host) = host_with_floods(2, "", "copies = \"1024\"").await;
    host.send(Message::new("risky.job", "1").with_header("x-poison", "1")).await.unwrap();
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    for _ in 0..1024 {
        next(&out).await;
    }
    // Both stages ran before anything was delivered: this is all they made.
    assert_eq!(host.stats().created, 1023 + 1023, "messages made of one: {:?}", host.stats());
    for _ in 0..1023 {
        let letter = next(&dead).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-output-limit"), "{letter:?}");
        let reason = letter.header("x-sy-dead-letter-reason").unwrap();
        let limit =
            "went past its output limit: more than 1024 messages made of one accepted message at one stage";
        assert!(reason.starts_with("plugin \"flood\"") && reason.ends_with(limit), "{reason}");
        assert_eq!(letter.payload, "1", "a piece is dead-lettered as it came to the stage");
    }
    // Quiet, and still serving.
    let id = host.send(Message::new("risky.job", "clean")).await.unwrap();
    assert_eq!(next(&out).await.id, id);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created, stats.delivered, stats.dead_lettered), (2, 2046, 1025, 1023));
    assert!(out.is_empty() && dead.is_empty());
}

#[tokio::test]
async fn bytes_made_of_one_message_at_one_stage_violated() {
    // A stage may make of one accepted message host.queue_bytes / host.batch_size bytes (here
    // 131072 / 64 = 2048): so a batch's outputs hold about what the intake queue may, where
    // 64 inputs of 64 KiB, each in a call of its own answering up to its memory cap, made GiBs.
    let settings = "max_message_bytes = 1024\nqueue_bytes = 131072\nbatch_size = 64\n";
    // Each copy 719 bytes (topic, payload and pad, headers but `x-sy-id`): two are within 2048,
    // three past it.
    let (_dir, host) = host_with_floods(1, settings, "copies = \"3\", pad = \"700\"").await;
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    host.send(Message::new("risky.job", "1").with_header("x-poison", "1")).await.unwrap();
    let landed = crate::support::within(async {
        tokio::select! {
            letter = dead.recv_async() => Ok(letter.unwrap()),
            delivered = out.recv_async() => Err(delivered.unwrap()),
        }
    })
    .await;
    let letter = landed.expect("dead-lettered, not delivered");
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-output-limit"), "{letter:?}");
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.ends_with("more than 2048 bytes made of one accepted message at one stage"), "{reason}");
    assert_eq!(letter.payload, "1", "the accepted message, as it came to the stage");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created, stats.delivered, stats.dead_lettered), (1, 0, 0, 1));
}

/// A filter component in WAT, for faults no toolchain builds on purpose: it answers every call
/// with a fixed decision (keep one message, at byte 24), after running `on_call`, which is given
/// the batch's address; `extra` is added to its core module (start code, memories, tables). Both
/// may call `$exit`, WASI's `exit` (0 for success, 1 for a failure). The host compiles WAT text as
/// it does a binary, so the text is a plugin file as it is.
fn filter_component(on_call: &str, extra: &str) -> String {
    format!(
        r#"(component
  (import "wasi:cli/exit@0.2.0" (instance $cli (export "exit" (func (param "status" (result))))))
  (core func $exit (canon lower (func $cli "exit")))
  (core instance $wasi (export "exit" (func $exit)))
  (core module $filter
    (import "wasi" "exit" (func $exit (param i32)))
    (memory (export "memory") 1)
    (data (i32.const 16) "\18\00\00\00\06\00\00\00\01\00\00\00\03\01")
    (func (export "version") (result i32) (i32.const 1))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "filter") (param $batch i32) (param i32) (result i32) {on_call} (i32.const 16))
    {extra})
  (core instance $core (instantiate $filter (with "wasi" (instance $wasi))))
  (func $version (result u32) (canon lift (core func $core "version")))
  (func $filter (param "messages" (list u8)) (result (list u8))
    (canon lift (core func $core "filter") (memory (core memory $core "memory"))
      (realloc (core func $core "realloc"))))
  (instance $format (export "version" (func $version)))
  (instance $filters (export "filter" (func $filter)))
  (export "switchyard:plugin/format@0.1.0" (instance $format))
  (export "switchyard:plugin/filter@0.1.0" (instance $filters)))"#
    )
}

#[tokio::test]
async fn a_plugin_that_fails_as_it_starts_is_refused_for_what_it_did_not_as_of_another_world() {
    // Each is of the filter world; each fails as it is instantiated, or (the last) in its trial
    // call. None of them would be mended by a rebuild with this host's SDK.
    let dir = plugin_dir(&[("good", artifacts::HEADER_FILTER)]);
    let exit = "(call $exit (i32.const 1))";
    let plugins = [
        ("exits", filter_component("", &format!("(func $start {exit}) (start $start)"))),
        // 65 MiB under the default cap of 64 MiB.
        ("huge", filter_component("", "(memory 1040)")),
        ("memories", filter_component("", &"(memory 0)".repeat(16))),
        // 80 MB of table elements (8 bytes each) under the same cap.
        ("table", filter_component("", "(table 10000000 funcref)")),
        ("trial-exits", filter_component(exit, "")),
    ];
    for (name, component) in &plugins {
        std::fs::write(dir.path().join(format!("{name}.wasm")), component).unwrap();
    }
    let config = switchyard::Config::from_toml("test.toml", MEMORY_OUT).unwrap();
    let host = crate::support::within(builder(dir.path()).config("test.toml", config).build());
    let host = host.await.unwrap();
    let errors: Vec<String> = host.load_errors().iter().map(ToString::to_string).collect();
    let at_start = "failed to start (instantiating it, before any call)";
    let expected = [
        format!("plugin \"exits\": {at_start}: exited with status 1"),
        format!("plugin \"huge\": {at_start}: hit its memory cap of 64 MiB"),
        format!(
            "plugin \"memories\": {at_start}: cannot run: resource limit exceeded: memory count too high at 17"
        ),
        format!("plugin \"table\": {at_start}: hit its memory cap of 64 MiB"),
        "plugin \"trial-exits\": failed its trial run: exited with status 1".to_owned(),
    ];
    assert_eq!(errors, expected);
    assert_eq!(host.plugins().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
    drain_and_account(&host).await;
}

#[tokio::test]
async fn a_plugin_that_exits_in_a_call_is_a_fault_told_as_an_exit() {
    // It exits when the batch's topic (at byte 18 of the wire layout) begins with "e".
    let dir = plugin_dir(&[]);
    let on_call = "(if (i32.eq (i32.load8_u offset=18 (local.get $batch)) (i32.const 101)) \
                   (then (call $exit (i32.const 1))))";
    std::fs::write(dir.path().join("bad.wasm"), filter_component(on_call, "")).unwrap();
    let config = format!("{MEMORY_OUT}[[route]]\nname = \"r\"\nstages = [\"filter:bad\"]\nto = \"out\"\n");
    let host = host(dir.path(), &config).await;
    let id = host.send(Message::new("exits", "1")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!((letter.id, letter.header("x-sy-dead-letter")), (id, Some("plugin-exited")), "{letter:?}");
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.ends_with("exited with status 1"), "{reason}");
    let id = host.send(Message::new("keeps", "2")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.id, id, "a new instance serves");
    let counts = host.metrics().plugin_counts("bad");
    assert_eq!((counts.problems["exited"], counts.faults()), (1, 1), "{counts:?}");
    assert_eq!(host.metrics().last_fault("bad").unwrap().kind, "exited");
    drain_and_account(&host).await;
}

/// One worker, filter `artifact` (faulty-sleep or faulty-spin) that runs on each of ten messages
/// until its 10 s deadline, a grace period of 200 ms: the stop cuts the call under way at the
/// grace's end, and neither runs the rest through the filter nor gives up on them (a stop gives
/// up two seconds past its grace): each is dead-lettered `shutdown`, none is left in flight.
async fn assert_a_stop_past_its_grace_dead_letters_what_the_stage_holds(artifact: &str) {
    let dir = plugin_dir(&[("slow", artifact)]);
    let config = format!(
        "{}[[plugin]]\nname = \"slow\"\nlimits = {{ timeout_ms = 10000 }}\n\
         config = {{ trigger = \"x-poison\", sleep_ms = \"{}\" }}\n\
         [[route]]\nname = \"slow\"\nstages = [\"filter:slow\"]\nto = \"out\"\n",
        MEMORY_OUT.replacen("[host]\n", "[host]\nworkers = 1\nshutdown_grace_ms = 200\n", 1),
        asleep_past_patience()
    );
    let host = host(dir.path(), &config).await;
    let mut sent = Vec::new();
    for n in 0..10 {
        let message = Message::new("slow.job", format!("{n}")).with_header("x-poison", "1");
        sent.push(host.send(message).await.unwrap());
    }
    sent.sort();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.dead_lettered, stats.in_flight()), (10, 10, 0), "{stats:?}");
    let mut letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    letters.sort_by_key(|letter| letter.id);
    assert_eq!(letters.iter().map(|letter| letter.id).collect::<Vec<_>>(), sent);
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("shutdown"), "{letter:?}");
        assert_eq!(letter.header("x-sy-route"), Some("slow"), "{letter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_dead_letters_what_a_stage_asleep_past_the_grace_period_holds() {
    // Asleep inside WASI: the wait is cut.
    assert_a_stop_past_its_grace_dead_letters_what_the_stage_holds(artifacts::FAULTY_SLEEP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_dead_letters_what_a_stage_spinning_past_the_grace_period_holds() {
    // Spinning in plugin code: the epoch deadline callback sees the cut.
    assert_a_stop_past_its_grace_dead_letters_what_the_stage_holds(artifacts::FAULTY_SPIN).await;
}
