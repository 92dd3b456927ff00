//! The `subprocess` transport: a pool of child processes, each an endpoint, speaking JSON lines.
//!
//! Each message goes to one process's standard input as one JSON line (as the `log` destination prints
//! it), whose `id` is a number unique to this attempt (the message's own identity, for deduplication,
//! is its `x-sy-id` header). The process answers each on standard output, in any order, with one JSON
//! line carrying the same `id` (the format: [`answers`](super::answers)). Its standard error goes to
//! the host's log, a line at a time (one longer than 4 KiB cut, one not UTF-8 with its bad bytes
//! replaced). An answer line that cannot be read refuses the reply of the message it names (it was
//! taken), or is logged when it names none (that message's attempt meets its deadline); either way
//! the process keeps serving. A reply larger than `host.max_message_bytes` (its topic, headers and
//! payload) is refused, as the other transports refuse one: its answer line is read only as far as
//! the JSON of a reply within the limit can take ([`largest_json`]).
//!
//! A process inherits the host's environment, `options.env` set on top of it, but for the admin
//! token ([`ADMIN_TOKEN_ENV`]), which it gets only when `options.env` names it.
//!
//! A process that exits fails the messages it held (retried as the destination's `idempotent` allows:
//! it may have acted on them) and is started again at the next attempt sent to it, after a backoff
//! ([`restart`](super::restart)); its endpoint is left out meanwhile, like one refusing connections.
//! When the destination goes (a reload without it, a shutdown), each process's standard input is
//! closed so it can finish and exit; one still running 5 s later is killed. A process that exits
//! has exited, even when a process it started still holds its output open: what it answered is
//! read, and the rest of what it held fails. One that closes its output answers nothing more: it
//! is given a second to exit, then killed, and started again at the next attempt.
//!
//! Each process runs in a process group of its own, and is killed with its group: a command that
//! is a wrapper (`sh -c`, `uv run`, `npm start`) runs the worker as a process it started, which is
//! killed with it. (So the terminal's Ctrl-C does not reach the processes: the host ends them, at
//! once when it must exit without stopping: see [`process_group`](super::process_group).)
//!
//! A process that stops reading its input (alive, but wedged) is killed, and so started again: each
//! line must go into its input whole within the destination's `timeout_ms` from when its turn
//! to be written came (the lines go one at a time), or, while the process has not answered
//! anything yet, by the end of its start grace when that is later ([`START_GRACE`]: an
//! interpreter may take a while before its first read). A line none of which went sent nothing:
//! an attempt cut at its deadline while waiting for its turn, or for the process to take the line's
//! first byte, is no attempt and goes again ([`write_line`]), even for a destination that is not
//! `idempotent`; one cut with the line part-written may have delivered it. The messages the killed
//! process held fail as those of one that exits.
//!
//! A process that reads its input but answers nothing (its handler stuck) is killed too, and so
//! started again: a message whose attempt `timeout_ms` cuts as it waits for its answer, the process
//! having answered nothing at all since the attempt began, retires it (see
//! [`Awaited`](super::pending::Awaited)): it takes no new message, the next attempt starts another
//! process, and it is killed, with its group, once no message it holds waits any more (those
//! still get their answers if they come). Answers come in any order, so one slow message while
//! others are answered retires nothing; nor does one of a process that has not answered anything
//! yet, within its start grace.

use super::answers::{Answer, read_answer};
use super::lines::{Line, LineCodec, Written, write_line};
use super::pending::Pending;
use super::process_group::{ProcessGroup, ProcessGroups};
use super::restart::{Peer, Restarting};
use super::{
    AttemptFuture, AttemptProgress, AttemptResult, ProbeFuture, SettingError, Step, Transport,
    TransportContext, Wait, reply_within,
};
use crate::config::{ADMIN_TOKEN_ENV, DestinationConfig, EndpointConfig, HealthSettings};
use crate::message::{Message, largest_json};
use crate::resilience::{Outcome, RetryReason};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;
use tokio::process::{ChildStdin, Command};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Longest line read from a process's standard error; longer ones are cut.
const MAX_LOG_LINE: usize = 4096;

/// How much of a longer answer line is read, to find which message it answers.
const ANSWER_HEAD: usize = 1024;

/// How long a process may take to exit once its standard input is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long a process whose output ended may take to exit before it is killed.
const OUTPUT_END_GRACE: Duration = Duration::from_secs(1);

/// How long the answers a process wrote before it exited are read, when its output stays open
/// after it (a process it started holds it): they are in the pipe already.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Until it first answers, how long from its start a process has to take each line written to
/// it, when that is longer than the destination's `timeout_ms`, and may leave a message it took
/// unanswered past its attempt's deadline: an interpreter slow to start (loading what it imports
/// before its first read) is not taken for a process wedged, nor stuck.
const START_GRACE: Duration = Duration::from_secs(10);

/// `options = {..}` of a `subprocess` destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubprocessOptions {
    /// The program and its arguments, e.g. `["python3", "worker.py"]`.
    pub command: Vec<String>,
    /// Environment variables set for it, on top of the host's environment, which it inherits but
    /// for the admin token ([`ADMIN_TOKEN_ENV`](crate::config::ADMIN_TOKEN_ENV)): a worker gets
    /// that only when named here.
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
            return invalid("endpoints", format!("{:?}", crate::config::shown(&listed.address)), problem);
        }
        let Some(program) = self.command.first().filter(|program| !program.is_empty()) else {
            let command = crate::config::inline_value("command", &self.command.clone().into());
            return invalid("options", format!("command = {command}"), "names no program");
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
    context: &TransportContext,
) -> Arc<dyn Transport> {
    let endpoints = super::TransportOptions::endpoints(&options, &[]).expect("checked options");
    let slots = endpoints.into_iter().map(|endpoint| (endpoint.address, Restarting::default())).collect();
    Arc::new(SubprocessTransport {
        options: Arc::new(options),
        destination: destination.name.clone(),
        slots,
        groups: context.process_groups.clone(),
        max_reply_bytes: context.max_message_bytes,
        line_timeout: Duration::from_millis(destination.timeout_ms),
    })
}

/// Child processes speaking JSON lines; see the module docs.
#[derive(Debug)]
pub struct SubprocessTransport {
    options: Arc<SubprocessOptions>,
    destination: String,
    /// One process per endpoint, by its address.
    slots: HashMap<String, Restarting<Running>>,
    /// Where the host registers the process groups it started.
    groups: Arc<ProcessGroups>,
    /// The largest reply payload taken (`host.max_message_bytes`).
    max_reply_bytes: usize,
    /// How long a line may take to go into a process's input (the destination's `timeout_ms`, an
    /// attempt's deadline) before the process is taken for wedged.
    line_timeout: Duration,
}

/// A running process: where messages go, and who waits for which answer.
#[derive(Debug)]
struct Running {
    /// Its input, written a line at a time; `None` once closed (the destination went, or the
    /// process was killed as wedged). Owned guards, so a line is written by a task of its own.
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    /// Cancelled when the destination goes: the process is asked to exit (its input closed).
    closing: CancellationToken,
    /// Cancelled to kill the process: a line did not go into its input in time (wedged), or it was
    /// retired as stuck and no message waits on it any more.
    killing: CancellationToken,
    /// Messages sent and not answered yet; closed once the process exited.
    pending: Arc<Pending<Answer>>,
    /// When it started, for its start grace.
    started: Instant,
    /// Set at its first line of output: it reads its input, its start grace is over.
    answered: Arc<AtomicBool>,
}

impl Peer for Running {
    fn ended(&self) -> bool {
        self.pending.is_closed()
    }
}

impl SubprocessTransport {
    /// The process of `address`, started now if none runs and its backoff is over.
    async fn process(&self, address: &str) -> Result<Arc<Running>, String> {
        let slot = self.slots.get(address).ok_or_else(|| format!("no process {address}"))?;
        let start = || async {
            self.spawn(address).map_err(|err| format!("cannot start {:?}: {err}", self.options.command))
        };
        slot.get(start).await.map_err(|err| err.to_string())
    }

    /// Start the process of `address`, and the tasks reading its output and awaiting its exit.
    fn spawn(&self, address: &str) -> std::io::Result<Running> {
        let options = &self.options;
        let mut command = Command::new(&options.command[0]);
        // The admin token guards the admin API: a worker needs it no more than a plugin does.
        command.args(&options.command[1..]).env_remove(ADMIN_TOKEN_ENV).envs(&options.env);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(cwd) = &options.cwd {
            command.current_dir(cwd);
        }
        let mut group = self.groups.spawn(&mut command)?;
        let (stdout, stderr) = (group.child.stdout.take(), group.child.stderr.take());
        let (closing, killing) = (CancellationToken::new(), CancellationToken::new());
        let (pending, answered) = (Arc::new(Pending::default()), Arc::new(AtomicBool::new(false)));
        let running = Running {
            stdin: Arc::new(Mutex::new(group.child.stdin.take())),
            closing: closing.clone(),
            killing: killing.clone(),
            pending: pending.clone(),
            started: Instant::now(),
            answered: answered.clone(),
        };
        let (destination, process) = (self.destination.clone(), address.to_owned());
        let max_reply_bytes = self.max_reply_bytes;
        tracing::info!(%destination, %process, pid = group.child.id(), "process started");
        if let Some(stderr) = stderr {
            let mut lines = FramedRead::new(stderr, LineCodec::new(MAX_LOG_LINE, MAX_LOG_LINE));
            let (destination, process) = (destination.clone(), process.clone());
            tokio::spawn(async move {
                while let Some(Ok(line)) = lines.next().await {
                    let text = String::from_utf8_lossy(&line.bytes);
                    let text = crate::bounded_text::one_line(&text, MAX_LOG_LINE);
                    let cut = match line.is_cut() {
                        true => format!(" [cut: a line of {} bytes]", line.length),
                        false => String::new(),
                    };
                    tracing::info!(%destination, %process, "stderr: {text}{cut}");
                }
            });
        }
        tokio::spawn(async move {
            let mut reading = std::pin::pin!(async {
                if let Some(stdout) = stdout {
                    read_answers(stdout, &pending, &answered, &destination, &process, max_reply_bytes).await;
                }
            });
            let status = tokio::select! {
                // Its output ended: it answers nothing more, running or not.
                () = &mut reading => {
                    pending.stop_taking();
                    wait_for_exit(group, OUTPUT_END_GRACE).await
                }
                () = closing.cancelled() => wait_for_exit(group, EXIT_GRACE).await,
                () = killing.cancelled() => {
                    let why = "killed as wedged (a line not taken into its input in time) or stuck \
                        (nothing answered in time)";
                    tracing::warn!(%destination, %process, "{why}");
                    wait_for_exit(group, Duration::ZERO).await
                }
                // Exited with its output still open (a process it started holds it): the answers
                // it wrote are in the pipe and read, then none is waited for.
                exited = group.wait() => {
                    pending.stop_taking();
                    let _ = tokio::time::timeout(DRAIN_GRACE, reading).await;
                    status_text(exited)
                }
            };
            // Everyone still waiting learns it.
            pending.close();
            tracing::warn!(%destination, %process, %status, "process exited");
        });
        Ok(running)
    }

    async fn exchange(&self, address: &str, message: &Message) -> AttemptResult {
        let refused = |err| (Outcome::Retryable(RetryReason::Connect), err);
        // Nothing is sent before the first byte of its line goes (see `write_line`).
        AttemptProgress::mark_current(Step::Waiting(Wait::Process));
        let running = self.process(address).await.map_err(refused)?;
        let young_until = Some(running.started + START_GRACE);
        let awaited = running.pending.await_answer(&running.killing, young_until);
        let awaited = awaited.ok_or_else(|| refused("the process exited".into()))?;
        let sent = Message { id: awaited.id(), ..message.clone() };
        let mut line = sent.json_line(&self.destination).into_bytes();
        line.push(b'\n');
        // Its turn: the line before it written whole.
        let stdin = running.stdin.clone().lock_owned().await;
        // Written whole by a task of its own: an attempt cut at its deadline part-way through
        // would leave half a line in the pipe, and the next message's line run on from it.
        let writing = running.clone().write(stdin, line, self.line_timeout, AttemptProgress::current());
        tokio::spawn(writing).await.expect("writing a line does not panic")?;
        let reset = |problem: String| (Outcome::Retryable(RetryReason::Reset), problem);
        let answer = awaited.answer().await;
        let reply = answer.ok_or_else(|| reset("the process exited before it answered".into()))?;
        // It answered: it took the message, whatever becomes of its reply.
        reply_within(reply.into_result(message)?, self.max_reply_bytes)
    }
}

impl Running {
    /// Write `line` into the process's input (`stdin`, its turn taken) whole, for the attempt of
    /// `progress`, by the end of `timeout` from now (or of the start grace, while the process has
    /// not answered yet, when later); past that, the process is killed as wedged. Failing, the
    /// attempt was not taken when none of the line went (retried as a refused connection is), and
    /// is a reset when part of it did.
    async fn write(
        self: Arc<Self>,
        mut stdin: OwnedMutexGuard<Option<ChildStdin>>,
        line: Vec<u8>,
        timeout: Duration,
        progress: Option<AttemptProgress>,
    ) -> Result<(), (Outcome, String)> {
        let not_taken = |problem| (Outcome::Retryable(RetryReason::Connect), problem);
        let Some(input) = stdin.as_mut() else {
            return Err(not_taken("its standard input is closed: the process is stopping".into()));
        };
        let start = Instant::now();
        let mut deadline = start + timeout;
        if !self.answered.load(Relaxed) {
            deadline = deadline.max(self.started + START_GRACE);
        }
        let mut written = 0;
        let writing = write_line(input, &line, &mut written, progress.as_ref());
        let problem = match tokio::time::timeout_at(deadline, writing).await {
            Ok(Ok(Written::Whole)) => return Ok(()),
            Ok(Ok(Written::Abandoned)) => "its attempt ended before it was written".to_owned(),
            Ok(Err(err)) => format!("writing to the process: {err}"),
            Err(_) => {
                stdin.take();
                self.pending.stop_taking();
                self.killing.cancel();
                format!(
                    "the process took {written} of the {} bytes of its line in {:?}: killed as wedged",
                    line.len(),
                    deadline - start
                )
            }
        };
        match written {
            0 => Err(not_taken(problem)),
            _ => Err((Outcome::Retryable(RetryReason::Reset), problem)),
        }
    }
}

/// Hand each answer line of `stdout` to the attempt waiting for its id, until the stream ends;
/// `answered` is set at the first line (the process reads its input).
async fn read_answers(
    stdout: tokio::process::ChildStdout,
    pending: &Pending<Answer>,
    answered: &AtomicBool,
    destination: &str,
    process: &str,
    max_reply_bytes: usize,
) {
    let codec = LineCodec::new(largest_json(max_reply_bytes), ANSWER_HEAD);
    let mut lines = FramedRead::new(stdout, codec);
    while let Some(line) = lines.next().await {
        answered.store(true, Relaxed);
        let answer = line
            .map_err(|err| format!("reading it: {err}"))
            .and_then(|line| answer_of(&line, max_reply_bytes));
        match answer.map(|answer| pending.answer(answer.id, answer)) {
            Ok(true) => {}
            Ok(false) => tracing::debug!(%destination, %process, "an answer nobody waits for"),
            Err(err) => tracing::warn!(%destination, %process, "not an answer line: {err}"),
        }
    }
}

/// The answer `line` gives: the one it holds, or when it cannot be read, a refused reply to the
/// message it names (a line cut: a reply past `max_reply_bytes`); `Err` when it names none.
fn answer_of(line: &Line, max_reply_bytes: usize) -> Result<Answer, String> {
    let cut = line.is_cut().then(|| {
        format!("a reply of more than {max_reply_bytes} bytes (an answer line of {} bytes)", line.length)
    });
    read_answer(&line.bytes, cut)
}

/// Wait for the process leading `group` to exit, once its output ended ([`OUTPUT_END_GRACE`]) or
/// it was asked to (the destination went and closed its input: [`EXIT_GRACE`]; it was wedged or
/// stuck: none); its group is killed if it still runs `grace` later.
async fn wait_for_exit(mut group: ProcessGroup, grace: Duration) -> String {
    let waited = match tokio::time::timeout(grace, group.wait()).await {
        Ok(waited) => waited,
        Err(_) => {
            group.kill();
            group.wait().await
        }
    };
    status_text(waited)
}

fn status_text(waited: std::io::Result<std::process::ExitStatus>) -> String {
    waited.map_or_else(|err| format!("unknown status: {err}"), |status| status.to_string())
}

impl Drop for SubprocessTransport {
    /// Close every process's standard input: each may finish and exit, or is killed 5 s later.
    fn drop(&mut self) {
        for running in self.slots.values().filter_map(Restarting::running) {
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
