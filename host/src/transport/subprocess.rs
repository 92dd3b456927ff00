//! The `subprocess` transport: a pool of child processes, each an endpoint, speaking JSON lines.
//!
//! Each message goes to one process's standard input as one JSON line (as the `log` destination prints
//! it), whose `id` is a number unique to this attempt (the message's own identity, for deduplication,
//! is its `x-sy-id` header). The process answers each on standard output, in any order, with one JSON
//! line carrying the same `id`: `{"id": 7}` (taken, no reply), `{"id": 7, "payload": "…", "topic": "…",
//! "headers": [["k", "v"]]}` (a reply; topic and headers optional), or `{"id": 7, "error": "…",
//! "retryable": true}` (not taken; `retryable` false or absent dead-letters it). Its standard error
//! goes to the host's log, a line at a time.
//!
//! A process that exits fails the messages it held (retried as the destination's `idempotent` allows:
//! it may have acted on them) and is started again at the next attempt sent to it, after a backoff
//! that doubles from 100 ms to 10 s while it keeps dying young. Its endpoint is left out meanwhile,
//! like one refusing connections. When the destination goes (a reload without it, a shutdown), each
//! process's standard input is closed so it can finish and exit; one still running 5 s later is killed.

use super::{AttemptFuture, AttemptResult, ProbeFuture, SettingError, Transport, TransportContext};
use crate::config::{DestinationConfig, EndpointConfig, HealthSettings};
use crate::message::Message;
use crate::resilience::{FatalReason, Outcome, RetryReason};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;

/// Longest line read from a process's standard error; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;

/// How long a process may take to exit once its standard input is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// First wait before starting a process again that died young, doubling to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait before starting a process again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A process that ran this long before it exited starts again without waiting.
const LIVED_LONG: Duration = Duration::from_secs(10);

/// `options = {..}` of a `subprocess` destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubprocessOptions {
    /// The program and its arguments, e.g. `["python3", "worker.py"]`.
    pub command: Vec<String>,
    /// Environment variables set for it (on top of the host's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory (the host's when unset).
    pub cwd: Option<PathBuf>,
    /// How many processes run, each an endpoint (1 to 64; default 1).
    #[serde(default = "one")]
    pub processes: usize,
}

fn one() -> usize {
    1
}

impl super::TransportOptions for SubprocessOptions {
    /// One endpoint per process, `PROGRAM#N`: the transport lists none.
    fn endpoints(&self, listed: &[EndpointConfig]) -> Result<Vec<EndpointConfig>, SettingError> {
        let invalid = |field, value: String, problem: &str| {
            Err(SettingError { field, value, problem: problem.to_owned() })
        };
        if let Some(listed) = listed.first() {
            let problem = "the subprocess transport has no endpoints: its processes are (options.processes)";
            return invalid("endpoints", format!("{:?}", listed.address), problem);
        }
        let Some(program) = self.command.first().filter(|program| !program.is_empty()) else {
            return invalid("options", format!("command = {:?}", self.command), "names no program");
        };
        if !(1..=64).contains(&self.processes) {
            return invalid("options", format!("processes = {}", self.processes), "must be 1 to 64");
        }
        let name = |n| EndpointConfig { address: format!("{program}#{n}"), weight: 1 };
        Ok((1..=self.processes).map(name).collect())
    }
}

/// The `subprocess` transport of `destination`; no process starts before its first attempt.
pub(super) fn build(
    options: SubprocessOptions,
    destination: &DestinationConfig,
    _context: &TransportContext,
) -> Arc<dyn Transport> {
    let endpoints = super::TransportOptions::endpoints(&options, &[]).expect("checked options");
    let slots = endpoints.into_iter().map(|endpoint| (endpoint.address, Slot::default())).collect();
    Arc::new(SubprocessTransport { options: Arc::new(options), destination: destination.name.clone(), slots })
}

/// Child processes speaking JSON lines; see the module docs.
#[derive(Debug)]
pub struct SubprocessTransport {
    options: Arc<SubprocessOptions>,
    destination: String,
    /// One per endpoint, by its address.
    slots: HashMap<String, Slot>,
}

/// One endpoint: its process when one runs, and when it may start again.
#[derive(Debug, Default)]
struct Slot(tokio::sync::Mutex<SlotState>);

#[derive(Debug, Default)]
struct SlotState {
    running: Option<Arc<Running>>,
    /// The wait before the next start, after the last process died young.
    backoff: Option<Duration>,
    /// No start before this.
    not_before: Option<Instant>,
}

/// A running process: where messages go, and who waits for which answer.
#[derive(Debug)]
struct Running {
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// Cancelled when the destination goes: the process is asked to exit (its input closed).
    closing: CancellationToken,
    /// The id of the next attempt.
    next_id: AtomicU64,
    /// Attempts waiting for an answer, by message id. `None` once the process exited.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>,
    started: Instant,
}

/// A process's answer to one message.
#[derive(Debug, serde::Deserialize)]
struct Answer {
    id: u64,
    payload: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    error: Option<String>,
    #[serde(default)]
    retryable: bool,
}

impl Running {
    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Answer>>>> {
        self.waiting.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn exited(&self) -> bool {
        self.lock_waiting().is_none()
    }
}

/// Removes an attempt's entry when it ends, answered or not (a deadline drops it).
struct Waiting<'a>(&'a Running, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.0.lock_waiting().as_mut() {
            waiting.remove(&self.1);
        }
    }
}

impl SubprocessTransport {
    /// The process of `address`, started now if none runs and its backoff is over.
    async fn process(&self, address: &str) -> Result<Arc<Running>, String> {
        let slot = self.slots.get(address).ok_or_else(|| format!("no process {address}"))?;
        let mut state = slot.0.lock().await;
        if let Some(running) = state.running.as_ref().filter(|running| !running.exited()) {
            return Ok(running.clone());
        }
        if let Some(ended) = state.running.take() {
            let backoff = match ended.started.elapsed() >= LIVED_LONG {
                true => None,
                false => Some(state.backoff.map_or(FIRST_BACKOFF, |backoff| (backoff * 2).min(MAX_BACKOFF))),
            };
            state.backoff = backoff;
            state.not_before = backoff.map(|backoff| Instant::now() + backoff);
        }
        if let Some(at) = state.not_before.filter(|at| *at > Instant::now()) {
            return Err(format!("exited; starting again in {:?}", at - Instant::now()));
        }
        let running =
            self.spawn(address).map_err(|err| format!("cannot start {:?}: {err}", self.options.command))?;
        state.running = Some(running.clone());
        Ok(running)
    }

    /// Start the process of `address`, and the tasks reading its output and awaiting its exit.
    fn spawn(&self, address: &str) -> std::io::Result<Arc<Running>> {
        let options = &self.options;
        let mut command = Command::new(&options.command[0]);
        command.args(&options.command[1..]).envs(&options.env).kill_on_drop(true);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(cwd) = &options.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn()?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let running = Arc::new(Running {
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            waiting: Mutex::new(Some(HashMap::new())),
            started: Instant::now(),
            closing: CancellationToken::new(),
            next_id: AtomicU64::new(1),
        });
        let (destination, process) = (self.destination.clone(), address.to_owned());
        tracing::info!(%destination, %process, pid = child.id(), "process started");
        if let Some(stderr) = stderr {
            let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(MAX_LOG_LINE));
            let (destination, process) = (destination.clone(), process.clone());
            tokio::spawn(async move {
                while let Some(line) = lines.next().await {
                    let Ok(line) = line else { continue };
                    let line = crate::bounded_text::one_line(&line, MAX_LOG_LINE);
                    tracing::info!(%destination, %process, "stderr: {line}");
                }
            });
        }
        let reader = running.clone();
        tokio::spawn(async move {
            if let Some(stdout) = stdout {
                tokio::select! {
                    () = read_answers(stdout, &reader, &destination, &process) => {}
                    () = reader.closing.cancelled() => {}
                }
            }
            let status = wait_for_exit(child, reader.closing.is_cancelled()).await;
            // Everyone still waiting learns it by their senders dropping.
            reader.lock_waiting().take();
            tracing::warn!(%destination, %process, %status, "process exited");
        });
        Ok(running)
    }

    async fn exchange(&self, address: &str, message: &Message) -> AttemptResult {
        let running =
            self.process(address).await.map_err(|err| (Outcome::Retryable(RetryReason::Connect), err))?;
        let (answer, answered) = oneshot::channel();
        let id = running.next_id.fetch_add(1, Relaxed);
        match running.lock_waiting().as_mut() {
            Some(waiting) => waiting.insert(id, answer),
            None => return Err((Outcome::Retryable(RetryReason::Connect), "the process exited".into())),
        };
        let _waiting = Waiting(&running, id);
        let sent = Message { id, ..message.clone() };
        let mut line = sent.json_line(&self.destination).into_bytes();
        line.push(b'\n');
        let written = match running.stdin.lock().await.as_mut() {
            Some(stdin) => stdin.write_all(&line).await.map_err(|err| err.to_string()),
            None => Err("its standard input is closed".into()),
        };
        written.map_err(|err| {
            (Outcome::Retryable(RetryReason::Reset), format!("writing to the process: {err}"))
        })?;
        let answer = answered.await.map_err(|_| {
            (Outcome::Retryable(RetryReason::Reset), "the process exited before it answered".to_owned())
        })?;
        match answer {
            Answer { error: Some(error), retryable: true, .. } => {
                Err((Outcome::Retryable(RetryReason::Plugin), error))
            }
            Answer { error: Some(error), .. } => Err((Outcome::Fatal(FatalReason::Rejected), error)),
            Answer { payload: None, .. } => Ok(None),
            Answer { payload: Some(payload), topic, headers, .. } => Ok(Some(Message {
                id: message.id,
                topic: topic.unwrap_or_else(|| message.topic.clone()),
                headers,
                payload: payload.into(),
                priority: message.priority,
            })),
        }
    }
}

/// Hand each answer line of `stdout` to the attempt waiting for its id, until the stream ends.
async fn read_answers(
    stdout: tokio::process::ChildStdout,
    running: &Running,
    destination: &str,
    process: &str,
) {
    let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(64 << 20));
    while let Some(line) = lines.next().await {
        let answer = match line.map_err(|err| err.to_string()).and_then(|line| {
            serde_json::from_str::<Answer>(&line)
                .map_err(|err| format!("{err}: {}", crate::bounded_text::one_line(&line, 200)))
        }) {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(%destination, %process, "not an answer line: {err}");
                continue;
            }
        };
        let waiting = running.lock_waiting().as_mut().and_then(|waiting| waiting.remove(&answer.id));
        match waiting {
            Some(waiting) => drop(waiting.send(answer)),
            None => tracing::debug!(%destination, %process, id = answer.id, "an answer nobody waits for"),
        }
    }
}

/// Wait for `child` to exit, once its output ended or it was asked to (`closing`: the destination
/// went and closed its input); asked, it is killed if it still runs [`EXIT_GRACE`] later.
async fn wait_for_exit(mut child: Child, closing: bool) -> String {
    let waited = match closing {
        true => tokio::time::timeout(EXIT_GRACE, child.wait()).await,
        false => Ok(child.wait().await),
    };
    let waited = match waited {
        Ok(waited) => waited,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    waited.map_or_else(|err| format!("unknown status: {err}"), |status| status.to_string())
}

impl Drop for SubprocessTransport {
    /// Close every process's standard input: each may finish and exit (see [`wait_for_exit`]).
    fn drop(&mut self) {
        for slot in self.slots.values() {
            let Ok(state) = slot.0.try_lock() else { continue };
            let Some(running) = &state.running else { continue };
            if let Ok(mut stdin) = running.stdin.try_lock() {
                stdin.take();
            }
            running.closing.cancel();
        }
    }
}

impl Transport for SubprocessTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.exchange(address, message))
    }

    /// The process runs, or can be started now.
    fn probe<'a>(&'a self, address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(async move { self.process(address).await.map(drop) })
    }
}
