//! The `subprocess` transport against a real child process (`tests/subprocess/worker.py`): replies
//! matched by id across a pool of processes, a process that dies restarted with nothing lost, one
//! that stops reading its input (or closes its output, or reads it but answers nothing) killed,
//! with what it started, and restarted but one slow to start left to start, error answers classified, and processes stopped when their
//! destination goes.

use crate::support::{builder, drain_and_account, next, plugin_dir, until_ended, within};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use switchyard::{Config, Host, Message, RequestError};

/// The test worker, or a failure saying how to get Python.
fn worker() -> PathBuf {
    let found =
        std::process::Command::new("python3").arg("--version").output().is_ok_and(|out| out.status.success());
    assert!(found, "python3 is needed to run the subprocess worker: apt-get install python3");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/subprocess/worker.py")
}

fn config(options: &str, extra: &str) -> String {
    format!(
        "[host]\nworkers = 2\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"workers\"\ntransport = \"subprocess\"\n\
         options = {{ command = [\"python3\", {:?}]{options} }}\n\
         retry = {{ attempts = 3, base_ms = 1, max_ms = 5 }}\n{extra}\n\
         [[route]]\nname = \"all\"\nto = \"workers\"\n",
        worker().display().to_string()
    )
}

async fn start(config: &str) -> Host {
    let dir = plugin_dir(&[]);
    let config = Config::from_toml("test.toml", config).unwrap_or_else(|err| panic!("{err}"));
    builder(dir.path()).config("test.toml", config).build().await.unwrap()
}

/// Request `count` messages at once; each reply's pid.
async fn request_all(host: &Host, count: usize) -> Vec<String> {
    let requests = (0..count).map(|n| async move {
        let reply = host.request(Message::new("jobs", format!("job {n}"))).await.unwrap().expect("a reply");
        assert_eq!(&reply.payload[..], format!("JOB {n}").as_bytes(), "the answer to its own message");
        reply.header("x-pid").expect("the worker's pid").to_owned()
    });
    within(futures_util::future::join_all(requests)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_back_matched_to_their_messages_across_a_pool_of_processes() {
    let host = start(&config(", processes = 2", "balancer = \"round-robin\"")).await;
    let pids: HashSet<String> = request_all(&host, 200).await.into_iter().collect();
    assert_eq!(pids.len(), 2, "two processes shared the work: {pids:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (200, 0));
}

/// Send `count` messages one at a time to an idempotent destination whose processes (started with
/// `options`) each exit on their `exit_after`th message: every message is delivered, by at least
/// `count / exit_after` processes in turn.
async fn each_delivered_across_restarts(options: &str, exit_after: usize, count: usize) {
    let host = start(&config(options, "idempotent = true\nbreaker = { open_ms = 10 }")).await;
    let mut pids = HashSet::new();
    for _ in 0..count {
        pids.extend(request_all(&host, 1).await);
    }
    let restarted = count / exit_after;
    assert!(pids.len() >= restarted, "each process exits on its {exit_after}th message: {pids:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (count as u64, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_dies_holding_a_message_is_restarted_and_the_message_retried() {
    each_delivered_across_restarts(", processes = 2, env = { EXIT_AFTER = \"10\" }", 10, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_while_a_process_it_started_holds_its_output_is_restarted() {
    // The process's end was seen only when its output closed: one whose child kept the pipe open
    // was never taken for exited, nor restarted, and what it held waited for answers for ever.
    let children = tempfile::NamedTempFile::new().unwrap();
    let env = format!(
        "EXIT_AFTER = \"3\", LEAVE_CHILD = \"1\", CHILD_SECONDS = \"600\", CHILD_PIDS = {:?}",
        children.path()
    );
    each_delivered_across_restarts(&format!(", env = {{ {env} }}"), 3, 6).await;
    // What each process that exited started went with it: its group is killed whole. The previous
    // main killed a group only while its leader ran, so these lived on past the host, under init.
    let pids = std::fs::read_to_string(children.path()).unwrap();
    let pairs: Vec<(&str, &str)> = pids.lines().filter_map(|line| line.split_once(' ')).collect();
    let exited = |pid: &str| !Path::new(&format!("/proc/{pid}")).exists();
    let orphans: Vec<&str> =
        pairs.iter().filter(|(leader, _)| exited(leader)).map(|(_, child)| *child).collect();
    assert!(orphans.len() >= 2, "two processes exited, each leaving its child: {pids}");
    for child in orphans {
        until_ended(child, "the child of a process that exited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_by_a_dying_process_is_uncertain_unless_the_destination_is_idempotent() {
    let host = start(&config(", env = { EXIT_AFTER = \"1\" }", "")).await;
    let answer = within(host.request(Message::new("jobs", "first"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-uncertain"));
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains("the process exited before it answered"), "{error}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_dead_lettered_with_its_text_and_a_retryable_one_is_retried() {
    let host = start(&config("", "")).await;
    for (payload, code, attempts, text) in [
        ("reject", "delivery-failed", "1", "rejected by the worker"),
        ("busy", "delivery-failed", "3", "busy"),
    ] {
        let answer = within(host.request(Message::new("jobs", payload))).await;
        assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
        let letter = next(&host.memory("dead").unwrap()).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some(code), "{payload}");
        assert_eq!(letter.header("x-sy-attempts"), Some(attempts), "{payload}");
        assert!(letter.header("x-sy-last-error").unwrap().contains(text), "{letter:?}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_kept_as_one_line_of_bounded_length() {
    // Its text went whole, newline and all, into the log, the dead letter and the caller's error.
    let host = start(&config("", "")).await;
    let answer = within(host.request(Message::new("jobs", "reject-long"))).await;
    let Err(RequestError::DeadLettered(reason)) = answer else { panic!("dead-lettered: {answer:?}") };
    let reason = reason.to_string();
    assert!(reason.contains(r"rejected\nERROR forged xxx"), "{reason:.200}");
    assert!(!reason.contains('\n'), "{reason:.200}");
    assert!(reason.len() < 2048, "{} bytes", reason.len());
    let letter = next(&host.memory("dead").unwrap()).await;
    assert!(!letter.header("x-sy-last-error").unwrap().contains('\n'), "{letter:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_destination_stops_its_processes() {
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    let text = config(", processes = 2", "balancer = \"round-robin\"");
    std::fs::write(&config_path, &text).unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let host = builder(plugins.path()).config_file(&config_path).unwrap().build().await.unwrap();
    let pids: HashSet<String> = request_all(&host, 10).await.into_iter().collect();
    assert_eq!(pids.len(), 2);
    let without = text.replace("to = \"workers\"", "to = \"dead\"");
    // A memory destination of the same name, with none of the network settings it would refuse.
    let without = without.replace("transport = \"subprocess\"", "transport = \"memory\"").replace(
        &format!(
            "options = {{ command = [\"python3\", {:?}], processes = 2 }}\n\
             retry = {{ attempts = 3, base_ms = 1, max_ms = 5 }}\nbalancer = \"round-robin\"\n",
            worker().display().to_string()
        ),
        "",
    );
    std::fs::write(&config_path, without).unwrap();
    within(host.reload()).await.unwrap();
    for pid in &pids {
        until_ended(pid, "process");
    }
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_while_its_line_is_written_leaves_the_line_whole() {
    // One slow process, lines larger than a pipe holds, attempts cut at 1 s: some are cut
    // while their line waits in the pipe. Every line the process reads must still be JSON (a
    // half line run on into the next would end it), so one process answers all it answers.
    let options = ", processes = 1, env = { SLOW_MS = \"400\" }";
    let host = start(&config(options, "timeout_ms = 1000")).await;
    // The process that answers a small request (under load, after some attempts cut at 1 s).
    let answering = || {
        within(async {
            loop {
                if let Ok(Some(reply)) = host.request(Message::new("jobs", "small")).await {
                    return reply.header("x-pid").unwrap().to_owned();
                }
            }
        })
    };
    let first = answering().await;
    let big = "x".repeat(300 * 1024);
    let requests = (0..8).map(|_| host.request(Message::new("jobs", big.clone())));
    let answers = within(futures_util::future::join_all(requests)).await;
    for answer in &answers {
        match answer {
            Ok(reply) => assert_eq!(reply.as_ref().unwrap().header("x-pid"), Some(first.as_str())),
            Err(RequestError::DeadLettered(reason)) => {
                assert_eq!(reason.code(), "delivery-uncertain", "{reason}")
            }
            Err(other) => panic!("{other}"),
        }
    }
    // Once it has worked through the lines written, the same process answers: it never read a
    // broken line, so it was never restarted. (Under load every big request may be cut: the
    // process is known from before them, not from their answers.)
    assert_eq!(answering().await, first, "the process was restarted");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered + stats.dead_lettered, stats.accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_line_too_long_or_not_utf8_is_skipped_and_the_process_keeps_serving() {
    // The reader of standard error ended at its first bad line and closed the pipe: the process's
    // next line to it (one per message) failed, and it died holding that message.
    let host = start(&config("", "")).await;
    for noise in ["stderr-long", "stderr-bytes"] {
        let noisy = within(host.request(Message::new("jobs", noise))).await.unwrap().expect("a reply");
        let pid = noisy.header("x-pid").expect("the worker's pid").to_owned();
        assert_eq!(request_all(&host, 1).await, [pid], "after {noise}, the same process answers");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_line_not_utf8_refuses_its_reply_and_the_process_keeps_serving() {
    // The reader of standard output ended at the bad line: the message waited for its answer until
    // its deadline, and the process, its output closed, died at its next answer.
    let host = start(&config("", "timeout_ms = 2000")).await;
    let first = request_all(&host, 1).await;
    let answer = within(host.request(Message::new("jobs", "not-utf8"))).await;
    let Err(RequestError::ReplyRefused { problem, .. }) = answer else {
        panic!("delivered, its reply refused: {answer:?}")
    };
    assert!(problem.contains("a malformed answer"), "{problem}");
    assert_eq!(request_all(&host, 1).await, first, "the same process answers");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_past_max_message_bytes_is_refused_and_the_process_keeps_serving() {
    // Answer lines were read up to 64 MiB whatever the host's limit, and a reply past it delivered.
    let text = config("", "timeout_ms = 2000").replacen("[host]\n", "[host]\nmax_message_bytes = 4096\n", 1);
    let host = start(&text).await;
    let first = request_all(&host, 1).await;
    // Within the limit (its topic, headers and payload): taken, though its answer line (each byte
    // escaped to six) is six times as long.
    let reply = within(host.request(Message::new("jobs", "grow:4000"))).await.unwrap().expect("a reply");
    assert_eq!(reply.payload.len(), 4000);
    // Past it; and so far past it that the answer line is cut, read no further than its start.
    for payload in ["grow:4097", "grow:1000000"] {
        let answer = within(host.request(Message::new("jobs", payload))).await;
        let Err(RequestError::ReplyRefused { problem, .. }) = answer else {
            let size = answer.map(|reply| reply.map(|reply| reply.payload.len()));
            panic!("{payload}: delivered, its reply refused: {size:?}")
        };
        assert!(problem.contains("more than 4096 bytes"), "{payload}: {problem}");
    }
    assert_eq!(request_all(&host, 1).await, first, "the same process answers");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (5, 0));
}

/// The config of workers (started by `command`, the worker's path after it) that each answer
/// their first message, then live on reading nothing.
fn wedging(command: &str) -> String {
    // (The deadline leaves a loaded machine's Python time to start and answer the first.)
    let text = config(", env = { WEDGE_AFTER = \"1\" }", "timeout_ms = 2000");
    text.replace("command = [\"python3\", ", &format!("command = [{command}, "))
}

/// Wedge the worker that answers first, with a line larger than a pipe holds: it is killed and
/// another answers; the worker's own process (`x-pid`) is gone.
async fn a_wedged_worker_is_killed_and_replaced(config: &str) {
    let host = start(config).await;
    let wedged = request_all(&host, 1).await;
    let big = "x".repeat(256 * 1024);
    let answer = within(host.request(Message::new("jobs", big))).await;
    let Err(RequestError::DeadLettered(reason)) = answer else {
        panic!("part of it was written: {answer:?}")
    };
    assert_eq!(reason.code(), "delivery-uncertain", "part of it was written: {reason}");
    // Nothing of the next one was written to the wedged process: it goes to the next process.
    let replaced = request_all(&host, 1).await;
    assert_ne!(replaced, wedged, "the wedged process still serves");
    until_ended(&wedged[0], "the wedged process");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_stops_reading_its_input_is_killed_and_started_again() {
    // A line larger than a pipe holds waited part-written for ever, holding the process's input:
    // every later message waited behind it until its deadline and was dead-lettered "no answer",
    // its writer left waiting too, and the process was never replaced.
    a_wedged_worker_is_killed_and_replaced(&wedging("\"python3\"")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_worker_started_by_a_wrapper_is_killed_with_it() {
    // The worker runs under a shell that waits for it (as `uv run` or `npm start` do): only the
    // shell was killed, and the wedged worker lived on beside its replacement.
    a_wedged_worker_is_killed_and_replaced(&wedging(r#""sh", "-c", 'python3 "$0"; exit $?'"#)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_closes_its_output_is_killed_and_started_again() {
    // Its output ended while it ran on: it was waited for without end, never killed, its
    // endpoint never restarted, and every message sent to it waited for an answer until its
    // deadline.
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let closing = r#""sh", "-c", 'echo $$ >> "$0"; exec >&-; exec sleep 100000'"#;
    let text = config("", "timeout_ms = 2000").replace(
        &format!("[\"python3\", {:?}]", worker().display().to_string()),
        &format!("[{closing}, {:?}]", pids.display().to_string()),
    );
    let host = start(&text).await;
    let started = || std::fs::read_to_string(&pids).unwrap_or_default().lines().map(str::to_owned).collect();
    let answer = within(host.request(Message::new("jobs", "first"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let first: Vec<String> = started();
    until_ended(&first[0], "the process whose output closed");
    // Its endpoint is started again (once its backoff is over).
    within(async {
        while started().len() < 2 {
            let answer = host.request(Message::new("jobs", "next")).await;
            assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
        }
    })
    .await;
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_slow_to_start_is_not_taken_for_wedged() {
    // It reads nothing for 2 s after it starts, past four attempt deadlines, while lines larger
    // than a pipe holds wait for it: it is given until its start grace is over (or it answers),
    // not killed at an attempt's deadline and started again, slow again, for ever.
    let options = ", env = { START_MS = \"2000\" }";
    let extra = "timeout_ms = 500\nidempotent = true\nbreaker = { consecutive_failures = 1000 }";
    let host = start(&config(options, extra).replace("attempts = 3", "attempts = 100")).await;
    let big = "x".repeat(256 * 1024);
    let requests = (0..2).map(|_| async {
        let reply = host.request(Message::new("jobs", big.clone())).await.unwrap().expect("a reply");
        assert_eq!(reply.payload.len(), big.len());
        reply.header("x-pid").expect("the worker's pid").to_owned()
    });
    let pids: HashSet<String> = within(futures_util::future::join_all(requests)).await.into_iter().collect();
    assert_eq!(pids.len(), 1, "one process answered both, never restarted: {pids:?}");
    assert_eq!(request_all(&host, 1).await, Vec::from_iter(pids), "the same process answers");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_reads_its_input_but_answers_nothing_is_killed_and_started_again() {
    // It reads every line (so it is never taken for wedged) and answers none after its first:
    // every attempt went to it and was cut at its deadline, and the message was dead-lettered.
    let options = ", env = { MUTE_AFTER = \"1\" }";
    let extra = "timeout_ms = 1000\nidempotent = true\nbreaker = { consecutive_failures = 1000 }";
    let host = start(&config(options, extra).replace("attempts = 3", "attempts = 5")).await;
    let stuck = request_all(&host, 1).await;
    let reply = within(host.request(Message::new("jobs", "job"))).await.unwrap().expect("a reply");
    assert_eq!(&reply.payload[..], b"JOB");
    assert_ne!(
        reply.header("x-pid"),
        Some(stuck[0].as_str()),
        "answered by the process that answers nothing"
    );
    until_ended(&stuck[0], "the process that answers nothing");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_slow_to_start_is_not_taken_for_stuck() {
    // It reads nothing for 2 s after it starts, past four attempt deadlines, while the lines
    // written to it wait whole in the pipe: though it answers nothing in time, it is given until
    // its start grace is over (or it answers), not killed and started again, slow again, for ever.
    let options = ", env = { START_MS = \"2000\" }";
    let extra = "timeout_ms = 500\nidempotent = true\nbreaker = { consecutive_failures = 1000 }";
    let host = start(&config(options, extra).replace("attempts = 3", "attempts = 100")).await;
    let first = request_all(&host, 1).await;
    assert_eq!(request_all(&host, 1).await, first, "the same process answers");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_while_its_process_is_busy_says_so_not_that_no_connection_was_free() {
    // One process that reads nothing for its first 8 s: a line larger than a pipe holds is cut
    // part-written, its writer holding the process's input; the next message's attempts wait for
    // their turn at it, sending nothing, until its queue timeout. Their error said "no connection
    // free", though a subprocess destination has no connections.
    let options = ", processes = 1, env = { START_MS = \"8000\" }";
    let host = start(&config(options, "timeout_ms = 300\nqueue = { timeout_ms = 1000 }")).await;
    let big = "x".repeat(256 * 1024);
    let Err(RequestError::DeadLettered(cut)) = within(host.request(Message::new("jobs", big))).await else {
        panic!("the large line was answered");
    };
    assert_eq!(cut.code(), "delivery-uncertain", "part of it was written: {cut}");
    let Err(RequestError::DeadLettered(waited)) = within(host.request(Message::new("jobs", "small"))).await
    else {
        panic!("the small line was answered");
    };
    let reason = waited.to_string();
    assert_eq!(waited.code(), "queue-timeout", "{reason}");
    assert!(reason.contains("its process took none of it within the attempt's 300ms"), "{reason}");
    drain_and_account(&host).await;
}
