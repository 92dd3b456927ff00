//! The `file` transport: whole JSON lines, one file per topic when the path names it, rotation that
//! splits only between lines, and a missing directory or a topic that would escape it handled without
//! losing a message.

use crate::cli::Running;
use crate::support::{drain_and_account, eventually, host, mkfifo, next, plugin_dir, post, within};
use std::collections::HashSet;
use std::path::Path;
use switchyard::{Host, Message, RequestError};

fn config(path: &Path, extra: &str) -> String {
    format!(
        "[host]\nworkers = 2\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"files\"\ntransport = \"file\"\n\
         options = {{ path = {:?}{extra} }}\n\
         [[route]]\nname = \"all\"\nto = \"files\"\n",
        format!("{}/{{topic}}.jsonl", path.display())
    )
}

/// Every line of `path`, each parsed as the JSON object the transport wrote.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert!(text.is_empty() || text.ends_with('\n'), "{}: ends mid-line", path.display());
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// The payload of every line of `path`.
fn payloads(path: &Path) -> Vec<String> {
    lines(path).iter().map(|line| line["payload"].as_str().unwrap().to_owned()).collect()
}

async fn send_all(host: &Host, topics: &[&str], count: usize) {
    let sends = (0..count).map(|n| host.send(Message::new(topics[n % topics.len()], format!("message {n}"))));
    for sent in futures_util::future::join_all(sends).await {
        sent.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_one_whole_json_line_in_its_topics_file() {
    let out = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(out.path(), "")).await;
    send_all(&host, &["orders.eu", "orders.us"], 1000).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1000, 0));
    let mut payloads = HashSet::new();
    for topic in ["orders.eu", "orders.us"] {
        let lines = lines(&out.path().join(format!("{topic}.jsonl")));
        assert_eq!(lines.len(), 500, "{topic}");
        for line in lines {
            assert_eq!(line["topic"], topic);
            assert_eq!(line["destination"], "files");
            assert!(payloads.insert(line["payload"].as_str().unwrap().to_owned()), "written twice: {line}");
        }
    }
    assert_eq!(payloads.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_destination_in_the_hosts_state_directory_is_refused_at_build_and_at_reload() {
    // Nothing kept a file destination out of the host's own directories: it wrote over the
    // dead letters, the spool, the lock.
    let (dir, out, state) = (plugin_dir(&[]), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let state = state.path();
    let config =
        |files: &Path| config(files, "").replacen("[host]\n", &format!("[host]\nstate_dir = {state:?}\n"), 1);
    let refusal = format!(
        "test.toml: destination \"files\".options = {{ path = {:?} }}: what it writes may lie in \
         host.state_dir ({state:?}), the host's own state (dead letters, spool): no destination may write there",
        format!("{}/{{topic}}.jsonl", state.display())
    );
    let inside = switchyard::Config::from_toml("test.toml", &config(state)).unwrap();
    let built = Host::builder().plugin_dir(dir.path()).config("test.toml", inside).build().await;
    assert_eq!(built.map(drop).unwrap_err().to_string(), refusal);
    let host = host(dir.path(), &config(out.path())).await;
    let reloaded = within(host.replace_config(&config(state))).await;
    assert_eq!(reloaded.map(drop).unwrap_err().to_string(), refusal);
    // The running config serves on.
    within(host.send(Message::new("t", "kept"))).await.unwrap();
    drain_and_account(&host).await;
    assert_eq!(payloads(&out.path().join("t.jsonl")), ["kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_size_splits_only_between_lines_and_loses_none() {
    let out = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(out.path(), ", max_bytes = 4096, fsync = \"never\"")).await;
    send_all(&host, &["logs"], 600).await;
    drain_and_account(&host).await;
    let mut files = vec![out.path().join("logs.jsonl")];
    files.extend((1..).map(|n| out.path().join(format!("logs.jsonl.{n}"))).take_while(|path| path.exists()));
    assert!(files.len() >= 10, "600 lines of ~200 bytes rotate at 4 KiB: {files:?}");
    let mut total = 0;
    for file in &files {
        assert!(std::fs::metadata(file).unwrap().len() <= 4096, "{}", file.display());
        total += lines(file).len();
    }
    assert_eq!(total, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_holding_a_path_separator_is_dead_lettered_and_writes_nothing() {
    let out = tempfile::tempdir().unwrap();
    let files = out.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&files, "")).await;
    let answer = within(host.request(Message::new("reports/2026", "out"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains("holds a path separator"), "{error}");
    drain_and_account(&host).await;
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1, "only the files directory");
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_making_a_name_too_long_for_a_file_is_dead_lettered_at_once_with_the_error() {
    // Retried, it waited its whole queue timeout for a name that can never be made.
    let out = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[]);
    let config = config(out.path(), "").replace("[[route]]", "queue = { timeout_ms = 600000 }\n[[route]]");
    let host = host(dir.path(), &config).await;
    let topic = format!("t.{}", "x".repeat(300));
    let answer = within(host.request(Message::new(topic, "out"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains("too long"), "{error}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_file_that_cannot_be_opened_dead_letters_its_message_and_holds_back_no_other_topic() {
    // A directory where one topic's file should be is that topic's problem: the destination's one
    // endpoint is not left out for it, and its message does not wait out its queue timeout.
    let out = tempfile::tempdir().unwrap();
    let blocked = out.path().join("blocked.jsonl");
    std::fs::create_dir(&blocked).unwrap();
    let dir = plugin_dir(&[]);
    let config = config(out.path(), "").replace("[[route]]", "queue = { timeout_ms = 600000 }\n[[route]]");
    let host = host(dir.path(), &config).await;
    let (answer, ()) =
        tokio::join!(within(host.request(Message::new("blocked", "x"))), send_all(&host, &["jobs"], 20));
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    assert_eq!(letter.header("x-sy-attempts"), Some("1"));
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains(&format!("{}: Is a directory", blocked.display())), "{error}");
    let files = host.destinations().into_iter().find(|destination| destination.name == "files").unwrap();
    let endpoint = &files.endpoints[0];
    assert_eq!((endpoint.breaker, endpoint.serving()), ("closed", true), "not the endpoint's failure");
    let text = host.metrics().encode();
    let retries = [("destination", "files")];
    let retries = crate::exposition::sample(&text, "switchyard_destination_retries_total", &retries);
    assert_eq!(retries, Some(0.0), "no message waited for the endpoint");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 1));
    assert_eq!(lines(&out.path().join("jobs.jsonl")).len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_place_of_a_topics_file_is_refused_at_once_and_holds_back_no_other_topic() {
    // Opening a FIFO to write waits for a reader: the open waited for good, holding the lock of
    // every topic's files, so each other topic's attempt was cut by timeout_ms and dead-lettered
    // delivery-uncertain, though nothing of it was written.
    let out = tempfile::tempdir().unwrap();
    let stuck = out.path().join("stuck.jsonl");
    mkfifo(&stuck);
    let dir = plugin_dir(&[]);
    let host =
        host(dir.path(), &config(out.path(), "").replace("[[route]]", "timeout_ms = 200\n[[route]]")).await;
    host.send(Message::new("stuck", "x")).await.unwrap();
    within(host.request(Message::new("jobs", "y"))).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains(&format!("{}: not a regular file but a FIFO", stuck.display())), "{error}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));
    assert_eq!(lines(&out.path().join("jobs.jsonl")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_directory_holds_messages_until_it_exists_then_delivers_them_whole() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("later");
    let dir = plugin_dir(&[]);
    let config = config(&missing, "")
        .replace("[[route]]", "breaker = { open_ms = 20 }\nqueue = { timeout_ms = 60000 }\n[[route]]");
    let host = host(dir.path(), &config).await;
    send_all(&host, &["jobs"], 50).await;
    let failed = || {
        let text = host.metrics().encode();
        let labels = [("destination", "files"), ("outcome", "retryable")];
        crate::exposition::sample(&text, "switchyard_transport_attempts_total", &labels)
    };
    crate::support::eventually(|| failed().filter(|failed| *failed > 0.0).ok_or("no failed attempt yet"));
    std::fs::create_dir(&missing).unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (50, 0));
    assert_eq!(lines(&missing.join("jobs.jsonl")).len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_moved_or_removed_by_someone_else_is_opened_again_at_its_path() {
    // As logrotate or an operator does: lines went on into the moved file, or into a removed one,
    // counted delivered and read by nobody.
    let out = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(out.path(), "")).await;
    let path = out.path().join("orders.jsonl");
    let write = |payload: &'static str| within(host.request(Message::new("orders", payload)));
    write("first").await.unwrap();
    std::fs::rename(&path, out.path().join("orders.jsonl.1")).unwrap();
    write("after the move").await.unwrap();
    let payloads = |path: &Path| lines(path).iter().map(|line| line["payload"].clone()).collect::<Vec<_>>();
    assert_eq!(payloads(&out.path().join("orders.jsonl.1")), ["first"]);
    assert_eq!(payloads(&path), ["after the move"]);
    std::fs::remove_file(&path).unwrap();
    write("after the removal").await.unwrap();
    assert_eq!(payloads(&path), ["after the removal"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_in_place_is_rotated_by_what_it_holds_not_by_what_it_held() {
    // logrotate's `copytruncate` (or `: > FILE`) empties the file in place, the same file: the
    // transport went on counting the bytes it had written before, and rotated the file, nearly
    // empty, at the next line.
    let out = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(out.path(), ", max_bytes = 1000, fsync = \"never\"")).await;
    let path = out.path().join("logs.jsonl");
    let write = |n: usize| within(host.request(Message::new("logs", format!("{n:0>300}"))));
    write(1).await.unwrap();
    // Two lines fit in 1000 bytes, four do not.
    let line = std::fs::metadata(&path).unwrap().len();
    assert!((251..=500).contains(&line), "a line of {line} bytes");
    write(2).await.unwrap();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    write(3).await.unwrap();
    write(4).await.unwrap();
    assert!(!out.path().join("logs.jsonl.1").exists(), "the emptied file was rotated");
    assert_eq!(payloads(&path), [format!("{:0>300}", 3), format!("{:0>300}", 4)]);
    drain_and_account(&host).await;
}

#[test]
fn a_line_cut_short_after_the_file_was_emptied_in_place_is_cut_back_to_the_files_new_end() {
    // logrotate's `copytruncate` (or `: > FILE`) empties the file in place, the same file: the
    // transport went on counting the bytes it had written before, and cut a line written in part
    // (the file size limit here, a full disk alike) back to that old length: part of the line
    // stayed (or, with the old length past the new end, the file was padded with zeros up to it).
    let dir = plugin_dir(&[]);
    // Not the plugin directory: a file destination may not write in it.
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let config = "[host]\nwatch = false\nplugin_dir = \"plugins\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n\
                  [[destination]]\nname = \"files\"\ntransport = \"file\"\noptions = { path = \"out.jsonl\" }\n\
                  queue = { timeout_ms = 500 }\nbreaker = { open_ms = 20 }\n\
                  [[route]]\nname = \"all\"\nto = \"files\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    // `ulimit -f 2`: files of at most 1 KiB.
    let mut command = std::process::Command::new("sh");
    command.args([
        "-c",
        "ulimit -f 2 && exec \"$@\"",
        "sh",
        crate::cli::BINARY,
        "run",
        "--config",
        "switchyard.toml",
    ]);
    command.current_dir(dir.path());
    let mut host = Running::spawn(command);
    let ingress = host.address("HTTP ingress listening on http://");
    let path = dir.path().join("out.jsonl");
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"before").0, 204);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    // Two lines of ~700 bytes: the first fits, the second is written up to the limit only.
    let (kept, cut) = ("k".repeat(500), "c".repeat(500));
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], kept.as_bytes()).0, 204);
    let (status, answer) = post(ingress, "/v1/messages/t?wait=true", &[], cut.as_bytes());
    let waited = answer.contains(r#""code":"queue-timeout""#) && answer.contains("File too large");
    assert!(status == 422 && waited, "{answer}");
    assert_eq!(payloads(&path), std::slice::from_ref(&kept));
    // What fits still goes after it.
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"after").0, 204);
    host.stop();
    assert_eq!(payloads(&path), [kept, "after".to_owned()]);
}

/// How many of this process's open file descriptors name a file under `dir` (not `dir` itself,
/// which a sync of the names in it opens for a moment).
fn open_under(dir: &Path) -> usize {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap();
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir) && target != dir)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_per_topic_keeps_a_bounded_number_open_however_many_topics_come() {
    // Each topic's file was kept open for good: enough topics took every descriptor the process
    // may have, and then nothing could open a file or a socket (ingress, destinations, the spool).
    let out = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(out.path(), ", fsync = 1000")).await;
    let topics: Vec<String> = (0..1000).map(|n| format!("t{n}")).collect();
    for round in ["first", "second"] {
        // The second round finds most files closed, and appends to them opened again.
        let requests = topics.iter().map(|topic| host.request(Message::new(topic.as_str(), round)));
        for answer in within(futures_util::future::join_all(requests)).await {
            answer.unwrap();
        }
        let open = open_under(out.path());
        assert!(open <= 64, "{open} files open after the {round} round");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2000, 0));
    for topic in &topics {
        let payloads: Vec<_> = lines(&out.path().join(format!("{topic}.jsonl")))
            .iter()
            .map(|line| line["payload"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(payloads, ["first", "second"], "{topic}");
    }
}

/// `strace` traced `calls` (as `-e trace=` names them) of every thread of the process `pid`, into
/// `dir/trace`: each call with the paths of its descriptors (`-y`) and its thread's name (`-Y`), as
/// `PID<NAME> call(…)`; returned once it attached.
fn traced(pid: u32, calls: &str, dir: &Path) -> (std::process::Child, std::path::PathBuf) {
    // Its own notes (a thread attached) go to a file: into a pipe nobody reads, a write would end it.
    let (trace, notes) = (dir.join("trace"), dir.join("strace-notes"));
    let strace = std::process::Command::new("strace")
        .args(["-f", "-y", "-Y", "-e", &format!("trace={calls}"), "-o"])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stderr(std::fs::File::create(&notes).unwrap())
        .spawn()
        .expect("strace (apt-get install strace)");
    eventually(|| match std::fs::read_to_string(&notes).unwrap() {
        notes if notes.contains("attached") => Ok(()),
        notes => Err(notes),
    });
    (strace, trace)
}

#[test]
fn on_an_interval_a_new_file_s_name_is_synced_with_its_lines() {
    // With `fsync = N` a new file's lines were fdatasync'd on the beat but its directory never
    // was: after a crash, lines synced long before could be in a file no directory names.
    let dir = plugin_dir(&[]);
    // Not the plugin directory: a file destination may not write in it.
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let config = "[host]\nwatch = false\nplugin_dir = \"plugins\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n\
                  [[destination]]\nname = \"files\"\ntransport = \"file\"\n\
                  options = { path = \"out/{topic}.jsonl\", fsync = 20 }\n[[route]]\nname = \"all\"\nto = \"files\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    // `fsync(5</…/out>)`, `fdatasync(7</…/out/t.jsonl>)`: every thread's syncs, with the paths.
    let (mut strace, trace) = traced(host.pid(), "fsync,fdatasync", dir.path());
    let (file, directory) = (format!("{}>", out.join("t.jsonl").display()), format!("{}>", out.display()));
    let data_syncs = |count: usize| {
        eventually(|| {
            let calls = std::fs::read_to_string(&trace).unwrap();
            match calls.lines().filter(|call| call.contains("fdatasync(") && call.contains(&file)).count() {
                seen if seen >= count => Ok(calls),
                _ => Err(calls),
            }
        })
    };
    // The second line's sync comes after the first's has ended, the directory's included.
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"first").0, 204);
    data_syncs(1);
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"second").0, 204);
    let calls = data_syncs(2);
    let calls: Vec<&str> = calls.lines().collect();
    let data = calls.iter().position(|call| call.contains(&file)).unwrap();
    let name = calls.iter().position(|call| call.contains("fsync(") && call.contains(&directory));
    assert!(name.is_some_and(|name| name > data), "the directory is synced with the file: {calls:#?}");
    host.stop();
    strace.wait().unwrap();
}

#[test]
fn on_an_interval_the_lines_written_before_a_reload_removes_the_destination_are_synced() {
    // With `fsync = N` the lines written since the last beat were never synced by the host once a
    // reload rebuilt or removed the destination: the beat stopped with it, and its files were
    // closed as they were, though "within N ms" was promised.
    let dir = plugin_dir(&[]);
    // Not the plugin directory: a file destination may not write in it.
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let head = "[host]\nwatch = false\nplugin_dir = \"plugins\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n";
    // A beat of an hour: none comes in the test.
    let files = "[[destination]]\nname = \"files\"\ntransport = \"file\"\n\
                 options = { path = \"out/{topic}.jsonl\", fsync = 3600000 }\n\
                 [[route]]\nname = \"all\"\nto = \"files\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), format!("{head}{files}")).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let (mut strace, trace) = traced(host.pid(), "fsync,fdatasync", dir.path());
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"line").0, 204);
    let without = "[[route]]\nname = \"all\"\nto = \"log\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), format!("{head}{without}")).unwrap();
    crate::cli::signal(&host, "-HUP");
    assert_eq!(host.line_where(|line| line.starts_with("switchyard: reload")), "switchyard: reloaded");
    // The file's lines, and its name (a new file's) with them, on a blocking thread.
    let (file, directory) = (format!("{}>", out.join("t.jsonl").display()), format!("{}>", out.display()));
    let syncs = eventually(|| {
        let calls = std::fs::read_to_string(&trace).unwrap();
        let of = |call: &str, what: &str| -> Vec<String> {
            calls
                .lines()
                .filter(|line| line.contains(call) && line.contains(what))
                .map(str::to_owned)
                .collect()
        };
        match (of("fdatasync(", &file), of("fsync(", &directory)) {
            (data, name) if !data.is_empty() && !name.is_empty() => Ok([data, name].concat()),
            _ => Err(calls),
        }
    });
    host.stop();
    strace.wait().unwrap();
    assert!(syncs.iter().all(|call| call.contains("<switchyard-bloc> ")), "{syncs:#?}");
}

#[test]
fn the_health_check_and_a_failed_lines_look_at_names_stat_on_blocking_threads_never_the_runtimes() {
    // Both ran `stat` on a runtime thread: on a hung mount (hard NFS, FUSE) it never returned, and
    // `health.timeout_ms` could not cut it. That thread, one a core, was gone for good, with the
    // destination's health checks; two such destinations and ingress, admin and every delivery
    // stood still.
    let dir = plugin_dir(&[]);
    // Not the plugin directory: a file destination may not write in it.
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("blocked.jsonl")).unwrap();
    let config = "[host]\nwatch = false\nplugin_dir = \"plugins\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n\
                  [[destination]]\nname = \"files\"\ntransport = \"file\"\n\
                  options = { path = \"out/{topic}.jsonl\" }\nhealth = { interval_ms = 20 }\n\
                  [[route]]\nname = \"all\"\nto = \"files\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let (mut strace, trace) = traced(host.pid(), "%%stat", dir.path());
    // The health check stats the template's directory; a line whose file could not be opened (a
    // directory in its place), what its topic names, to tell whose error it is.
    let (checked, failed) = (r#""out","#, r#""out/blocked.jsonl","#);
    let stats_of = |names: &[&str]| {
        eventually(|| {
            let calls = std::fs::read_to_string(&trace).unwrap();
            match names.iter().all(|name| calls.contains(name)) {
                true => Ok(calls),
                false => Err(calls),
            }
        })
    };
    stats_of(&[checked]);
    let (status, answer) = post(ingress, "/v1/messages/blocked?wait=true", &[], b"x");
    assert!(status == 422 && answer.contains("Is a directory"), "{status} {answer}");
    let calls = stats_of(&[checked, failed]);
    host.stop();
    strace.wait().unwrap();
    // The kernel keeps a thread's name to 15 bytes: `switchyard-blocking` is `switchyard-bloc`.
    let on_the_runtime: Vec<&str> = calls
        .lines()
        .filter(|call| call.contains(checked) || call.contains(failed))
        .filter(|call| !call.contains("<switchyard-bloc> "))
        .collect();
    assert!(on_the_runtime.is_empty(), "stats made on no blocking thread: {on_the_runtime:#?}");
}
