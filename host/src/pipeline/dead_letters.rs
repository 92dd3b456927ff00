//! The dead-letter path: a dead letter goes to its dead-letter destination,
//! retried with backoff, then in turn to that destination's own dead letter
//! and the host's; when none takes it, into the dead-letter file, from which
//! a background task re-delivers it once one does. A letter counts as
//! dead-lettered only once a destination or the file has it.

use super::fallback::hand_off_ends;
use super::item::Item;
use super::{Counters, Pipeline, Topology};
use crate::dead_letter::{Batch, DeadLetterFile, DeadLetterReason, DeadLetterRecord, FileError, Position};
use crate::destination::DeliveryError;
use crate::host::RequestError;
use crate::message::Message;
use crate::metrics::{RouteMetrics, Settled};
use crate::resilience::RetryPolicy;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Attempts per dead-letter destination before the next one is tried, and
/// the backoff between them.
const RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    base: Duration::from_millis(25),
    max: Duration::from_millis(250),
    jitter: 1.0,
};

/// The backoff of the re-delivery task between passes while some letter's
/// dead-letter destinations all stay down.
const REDELIVERY_BACKOFF: RetryPolicy = RetryPolicy {
    attempts: u32::MAX,
    base: Duration::from_millis(50),
    max: Duration::from_secs(2),
    jitter: 0.5,
};

/// Letters read from the file per re-delivery pass.
const PASS: usize = 256;

/// How long a dead-letter destination delivered to in place (`memory`, `log`, one registered in
/// code) may keep an attempt waiting, for room or for its answer: a network destination's attempt
/// deadline by default (`timeout_ms`). A network one's own deadlines bound its attempts.
const IN_PLACE_WAIT: Duration = Duration::from_millis(crate::config::default_timeout_ms());

/// The dead-letter file and the signal that it was written to.
pub(crate) struct DeadLetters {
    pub(crate) file: Arc<DeadLetterFile>,
    /// Wakes the re-delivery task.
    written: Notify,
    /// The letters in the file that every dead-letter destination of theirs
    /// refused for good (a 4xx, a plugin's `rejected`, or an attempt that went
    /// out unanswered to one that is not idempotent, or to one delivered to in
    /// place within [`IN_PLACE_WAIT`], which never sends twice):
    /// they stay in the file, are not sent again in this run, and hold up no
    /// other letter.
    refused: Mutex<Refused>,
}

/// The letters refused for good, known by key, and how many by the dead-letter destination they
/// were meant for: the file's letters for a destination that wait to be sent are those it holds
/// but these.
#[derive(Default)]
struct Refused {
    letters: Tally,
    by_destination: HashMap<String, usize>,
}

/// What a letter in the file is known by: the SHA-256 of its record, as written. Its message's
/// unique id is not enough, nor with the dead-letter destination beside it: the copies of a message
/// fanned out share the id, and their letters may share the destination (`host.dead_letter`); a
/// letter of one copy, taken or refused, was taken for the letter of another (which was then
/// removed from the file unsent, or never sent in this run). The letters of the copies differ in
/// their reason, which names the destination that failed. Letters alike in every byte, the
/// millisecond they were written included, share a key: they are counted ([`Tally`]).
type LetterKey = [u8; 32];

/// Letters of the file, counted by key. Letters alike in every byte (the copies of a message fanned
/// out to two destinations that share a fallback, refused by it alike in one millisecond) share a
/// key, and any of them stands for any other: what tells them apart is how many there are. Known
/// as one, the letter of one copy taken and left in the file had the other's removed unsent.
#[derive(Default)]
struct Tally(HashMap<LetterKey, usize>);

impl Tally {
    fn add(&mut self, key: LetterKey) {
        *self.0.entry(key).or_default() += 1;
    }

    fn count(&self, key: &LetterKey) -> usize {
        self.0.get(key).copied().unwrap_or(0)
    }
}

/// The key of `letter`.
fn letter_key(letter: &DeadLetterRecord) -> LetterKey {
    let mut digest = Sha256::new();
    serde_json::to_writer(&mut digest, letter).expect("a record serializes");
    digest.finalize().into()
}

impl DeadLetters {
    pub(crate) fn new(file: DeadLetterFile) -> DeadLetters {
        DeadLetters { file: Arc::new(file), written: Notify::new(), refused: Mutex::default() }
    }

    /// Note that `letter` was refused for good.
    fn refused_for_good(&self, letter: &DeadLetterRecord) {
        tracing::warn!(
            id = letter.id,
            destination = letter.destination,
            "no dead-letter destination took this dead letter, and none will: each refused it for good, or took it without answering (not idempotent, it is not sent twice); it stays in the dead-letter file, not sent again in this run"
        );
        let mut refused = lock(&self.refused);
        refused.letters.add(letter_key(letter));
        *refused.by_destination.entry(letter.destination.clone()).or_default() += 1;
    }

    /// Whether the file holds letters waiting to be sent to dead-letter destination
    /// `destination`: its path is down. A letter refused for good is not sent again in this run:
    /// it tells nothing of the path. Counted for the run, the refused letters of a file taken
    /// away may count against letters of the one put in place: one of those is then passed by,
    /// not held up.
    fn waiting_for(&self, destination: &str) -> bool {
        let refused = lock(&self.refused).by_destination.get(destination).copied().unwrap_or(0);
        self.file.held_for(destination) > refused
    }

    /// Whether the file holds letters waiting to be sent to a dead-letter destination not in
    /// `down` ([`waiting_for`](DeadLetters::waiting_for)). The letters refused for good are not:
    /// a pass that reads on for them only reads to the end of the file, skipping them.
    fn waits_for_any_but(&self, down: &[String]) -> bool {
        let destinations = self.file.destinations();
        destinations.iter().any(|destination| !down.contains(destination) && self.waiting_for(destination))
    }

    /// The oldest `PASS` letters from byte `from` of the file, but those
    /// refused for good and those for a dead-letter destination in `down`.
    /// Whether a letter is refused is asked as it is read, under the file's
    /// lock: a letter is noted refused before it is appended, so one read is
    /// one already noted (a copy of the set taken before the read missed the
    /// letters appended meanwhile, and they were sent again). `passed_over`
    /// counts the refused letters the pass read so far: of letters alike, as
    /// many are passed over as were refused.
    fn to_redeliver(
        &self,
        from: Position,
        down: &[String],
        passed_over: &mut Tally,
    ) -> Result<Batch, FileError> {
        let skipped = |record: &DeadLetterRecord| {
            down.contains(&record.destination) || {
                // Digested only if some letter is refused: most passes have none.
                let refused = lock(&self.refused);
                !refused.letters.0.is_empty() && {
                    let key = letter_key(record);
                    let passed = refused.letters.count(&key) > passed_over.count(&key);
                    if passed {
                        passed_over.add(key);
                    }
                    passed
                }
            }
        };
        self.file.read(from, PASS, skipped)
    }
}

fn lock(refused: &Mutex<Refused>) -> std::sync::MutexGuard<'_, Refused> {
    refused.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// How handing a letter along its dead-letter chain went.
enum Along<'t> {
    /// This destination took it.
    Taken(&'t str),
    /// Every destination of the chain refused it for good.
    Refused,
    /// Some destination could not take it now.
    NotNow,
}

/// What a re-delivery pass did.
#[derive(PartialEq)]
enum Pass {
    /// It re-delivered what it read (or there was nothing to): the next pass may go at once.
    Done,
    /// Some letter found its dead-letter destinations down, or the letters re-delivered could not
    /// be cut out of the file: back off.
    Down,
    /// It sent nothing: every letter is refused for good. Wait for new ones.
    OnlyRefused,
}

/// Where a dead letter went.
enum Reached<'t> {
    Destination(&'t str),
    File,
}

impl Pipeline {
    /// Dead-letter `item` for `reason`; counted, and its caller answered,
    /// once a dead-letter destination or the dead-letter file has it.
    pub(crate) async fn dead_letter(
        &self,
        topology: &Topology,
        item: Item,
        reason: DeadLetterReason,
        route: Option<&RouteMetrics>,
    ) {
        let Item { message, reply, accepted, .. } = item;
        let route_name = route.map(|metrics| &*metrics.route);
        let (id, topic, code) = (message.id, message.topic.clone(), reason.code());
        let letter = reason.label(message, route_name);
        let reached = self.post_letter(topology, topology.dead_letter_for(&reason), letter).await;
        let answer = match &reached {
            Ok(_) => RequestError::DeadLettered(reason.clone()),
            Err(_) => RequestError::Lost(reason.clone()),
        };
        match reached {
            Ok(reached) => {
                Counters::bump(&self.counters.dead_lettered, 1);
                self.metrics.dead_letter(route_name, code, accepted.alert_message);
                if let Some(metrics) = route {
                    metrics.settled(Settled::DeadLettered, accepted.at, Instant::now());
                }
                accepted.settle();
                let to = match reached {
                    Reached::Destination(name) => name,
                    Reached::File => "the dead-letter file",
                };
                tracing::warn!(id, topic, route = route_name, code, %reason, to, "dead-lettered");
            }
            Err(error) => {
                // Left unsettled: with the spool, not lost after all, the next start delivers it again.
                Counters::bump(&self.counters.dead_letter_failures, 1);
                self.metrics.dead_letter_lost();
                if let Some(metrics) = route {
                    metrics.settled(Settled::Lost, accepted.at, Instant::now());
                }
                tracing::error!(id, topic, route = route_name, code, %reason, %error, "dead letter lost: no dead-letter destination took it and the dead-letter file cannot be written");
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err(answer));
        }
    }

    /// Hand `letter` to the dead-letter destinations starting at `first`,
    /// else write it to the file. While the file holds letters waiting for
    /// `first`, its path is down: the letter goes straight to the file behind them.
    async fn post_letter<'t>(
        &self,
        topology: &'t Topology,
        first: &'t str,
        letter: Message,
    ) -> Result<Reached<'t>, FileError> {
        let mut refused = false;
        if !self.dead_letters.waiting_for(first) {
            let chain = topology.dead_letter_chain(first);
            match send_along(topology, &chain, &letter, RETRY, &self.dispatch.letters_cut).await {
                Along::Taken(name) => return Ok(Reached::Destination(name)),
                Along::Refused => refused = true,
                Along::NotNow => tracing::warn!(
                    id = letter.id,
                    ?chain,
                    "no dead-letter destination takes letters; keeping them in the dead-letter file"
                ),
            }
        }
        let (file, record) = (self.dead_letters.file.clone(), DeadLetterRecord::new(&letter, first));
        if refused {
            self.dead_letters.refused_for_good(&record);
        }
        tokio::task::spawn_blocking(move || file.append(&record)).await.expect("appending does not panic")?;
        self.dead_letters.written.notify_one();
        Ok(Reached::File)
    }

    /// One re-delivery pass over the file, `PASS` letters at a time, and
    /// what it did. Letters for a dead-letter destination found down are
    /// passed over for the rest of the pass: they hold up no other.
    async fn redeliver(&self) -> Pass {
        let topology = self.topology.load_full();
        let (mut from, mut down, mut sent) = (Position::HEAD, Vec::new(), 0);
        let mut passed_over = Tally::default();
        loop {
            let (dead_letters, skipped) = (self.dead_letters.clone(), down.clone());
            let read = tokio::task::spawn_blocking(move || {
                let batch = dead_letters.to_redeliver(from, &skipped, &mut passed_over);
                (batch, passed_over)
            });
            let (read, passed) = read.await.expect("no panic");
            passed_over = passed;
            let batch = match read {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "cannot read the dead-letter file");
                    return Pass::Down;
                }
            };
            let (mut delivered, mut redelivered) = (vec![false; batch.letters.len()], 0);
            for (record, delivered) in batch.letters.iter().zip(&mut delivered) {
                if down.contains(&record.destination) {
                    continue;
                }
                sent += 1;
                let letter =
                    record.to_message().expect("the file reads only letters whose message it can make");
                let chain = topology.dead_letter_chain(&record.destination);
                match send_along(&topology, &chain, &letter, ONCE, &self.dispatch.letters_cut).await {
                    Along::Taken(_) => (*delivered, redelivered) = (true, redelivered + 1),
                    Along::Refused => self.dead_letters.refused_for_good(record),
                    Along::NotNow => down.push(record.destination.clone()),
                }
            }
            // Counted once taken, whether or not the file can be rewritten.
            self.metrics.dead_letters_redelivered(redelivered);
            let last = batch.letters.is_empty();
            let file = self.dead_letters.file.clone();
            let removed = tokio::task::spawn_blocking(move || file.remove(&batch, &delivered));
            match removed.await.expect("removing does not panic") {
                Ok(end) => from = end,
                Err(error) => return cannot_rewrite(&error),
            }
            if last || !self.dead_letters.waits_for_any_but(&down) {
                break;
            }
        }
        let file = self.dead_letters.file.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || file.compact()).await.expect("no panic") {
            return cannot_rewrite(&error);
        }
        match (down.is_empty(), sent) {
            (false, _) => Pass::Down,
            (true, 0) => Pass::OnlyRefused,
            (true, _) => Pass::Done,
        }
    }
}

/// A pass whose letters re-delivered cannot be cut out of the file (a full disk): they stay in
/// it, removed (neither read nor sent again), to be cut out by the next pass, after a backoff.
fn cannot_rewrite(error: &FileError) -> Pass {
    tracing::error!(%error, "cannot cut re-delivered letters out of the dead-letter file; they stay in it, not sent again in this run");
    Pass::Down
}

/// One attempt per destination: re-delivery passes back off themselves.
const ONCE: RetryPolicy = RetryPolicy { attempts: 1, ..RETRY };

/// Deliver `letter` to the first of `chain` that takes it, trying each
/// `policy.attempts` times with backoff unless it refuses the letter for
/// good (a 4xx, a plugin's `rejected`: trying again would get the same). One
/// that is not idempotent and answers a failure worth a retry (a 5xx, a 408)
/// did not take it, and does not retry it: the next is tried, else the letter
/// waits in the file, re-delivered from there.
/// One delivered to in place keeps an attempt waiting at most [`IN_PLACE_WAIT`]
/// (a reader that stopped reading, a destination that hangs), and is not tried
/// again for the letter: one with no room for it did not take it, the next
/// goes on; one that did not answer may have, and never gets it twice. A
/// delivery still waiting when `cut` comes, after a shutdown's grace period,
/// is given up.
async fn send_along<'t>(
    topology: &'t Topology,
    chain: &[&'t str],
    letter: &Message,
    policy: RetryPolicy,
    cut: &CancellationToken,
) -> Along<'t> {
    let mut all_refused = true;
    for &name in chain {
        let Some(target) = topology.destinations.get(name) else {
            // Gone with a reload: one may come back.
            all_refused = false;
            continue;
        };
        let wait = target.queue.is_none().then_some(IN_PLACE_WAIT);
        for attempt in 1..=policy.attempts {
            let delivered = match target.sink.destination.as_memory() {
                // Cut while it waits for room, a memory destination tells whether it took the
                // letter: one it did not stays in the file, one it did does not. It waits only
                // for room.
                Some(memory) => match memory.send(letter.clone(), cut_off_or_no_room(cut, wait)).await {
                    Ok(()) => Ok(None),
                    Err((DeliveryError::Shutdown, _)) => return Along::NotNow,
                    Err((error, _)) => Err(error),
                },
                None => tokio::select! {
                    biased;
                    delivered = target.sink.deliver(letter.clone()) => delivered,
                    () = cut.cancelled() => return Along::NotNow,
                    waited_ms = hand_off_ends(wait) => Err(DeliveryError::NotAnswered { waited_ms }),
                },
            };
            let error = match delivered {
                // A dead letter's reply is nobody's: one refused was taken all the same.
                Ok(_) | Err(DeliveryError::ReplyRefused(_)) => {
                    // Counted as its deliveries are (switchyard_destination_deliveries_total).
                    target.sink.count(true);
                    return Along::Taken(name);
                }
                Err(error) => error,
            };
            tracing::debug!(destination = name, attempt, %error, "dead-letter destination failed");
            match error {
                // Refused for good, or it may have taken the letter (not sent twice): the next one.
                DeliveryError::Fatal(_)
                | DeliveryError::Attempts { refused: true, .. }
                | DeliveryError::Attempts { fatal: true, maybe_delivered: true, .. }
                | DeliveryError::NotAnswered { .. } => break,
                // Not taken, but room may come; or not taken, with an answer worth a retry that
                // one not idempotent does not make (a 5xx, a 408): the next one, else the file,
                // re-delivered from.
                DeliveryError::NoRoom { .. } | DeliveryError::Attempts { fatal: true, .. } => {
                    all_refused = false;
                    break;
                }
                _ if attempt == policy.attempts => all_refused = false,
                _ => {
                    let delay = policy.backoff(attempt, &mut rand::rng());
                    tokio::time::sleep(delay).await;
                }
            }
        }
        target.sink.count(false);
    }
    match all_refused && !chain.is_empty() {
        true => Along::Refused,
        false => Along::NotNow,
    }
}

/// Resolves once `cut` is cancelled, as the shutdown it comes with, or once a hand-off's `wait`
/// passed, as no room.
async fn cut_off_or_no_room(cut: &CancellationToken, wait: Option<Duration>) -> DeliveryError {
    tokio::select! {
        biased;
        () = cut.cancelled() => DeliveryError::Shutdown,
        waited_ms = hand_off_ends(wait) => DeliveryError::NoRoom { waited_ms },
    }
}

/// The background task re-delivering from the dead-letter file; stops when
/// dropped or [`stop`](Redelivery::stop)ped.
pub(crate) struct Redelivery {
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl Redelivery {
    /// Start re-delivering `pipeline`'s dead-letter file on `runtime`:
    /// whatever a previous run left in it at once, then whenever letters
    /// are written, backing off while their destinations stay down.
    pub(crate) fn start(pipeline: &Arc<Pipeline>, runtime: &Handle) -> Redelivery {
        let stop = CancellationToken::new();
        let task = runtime.spawn(redeliver_until(Arc::downgrade(pipeline), stop.clone()));
        Redelivery { stop: stop.drop_guard(), task }
    }

    /// Stop after the pass under way, if any: the file is left whole.
    pub(crate) async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

async fn redeliver_until(pipeline: Weak<Pipeline>, stop: CancellationToken) {
    let Some(dead_letters) = pipeline.upgrade().map(|pipeline| pipeline.dead_letters.clone()) else { return };
    let (mut failed_passes, mut pass) = (0, Pass::Done);
    loop {
        // Nothing to send until a new letter comes (after a pass that went down, one may have
        // letters to cut out of the file).
        if pass != Pass::Down && (pass == Pass::OnlyRefused || dead_letters.file.letters() == 0) {
            failed_passes = 0;
            tokio::select! {
                () = dead_letters.written.notified() => {}
                () = stop.cancelled() => return,
            }
        }
        let Some(pipeline) = pipeline.upgrade() else { return };
        pass = pipeline.redeliver().await;
        drop(pipeline);
        if pass == Pass::OnlyRefused {
            continue;
        }
        failed_passes = if pass == Pass::Done { 0 } else { failed_passes + 1 };
        let delay = match failed_passes {
            0 => Duration::ZERO,
            n => REDELIVERY_BACKOFF.backoff(n, &mut rand::rng()),
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}
