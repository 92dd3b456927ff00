//! The dead-letter path: a dead letter goes to its dead-letter destination,
//! retried with backoff, then in turn to that destination's own dead letter
//! and the host's; when none takes it, into the dead-letter file, from which
//! a background task re-delivers it once one does. A letter counts as
//! dead-lettered only once a destination or the file has it.

use super::item::Item;
use super::{Counters, Pipeline, Topology};
use crate::dead_letter::{DeadLetterFile, DeadLetterReason, DeadLetterRecord, FileError};
use crate::host::RequestError;
use crate::message::Message;
use crate::metrics::{RouteMetrics, Settled};
use crate::resilience::RetryPolicy;
use std::sync::{Arc, Weak};
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

/// The dead-letter file and the signal that it was written to.
pub(crate) struct DeadLetters {
    pub(crate) file: Arc<DeadLetterFile>,
    /// Wakes the re-delivery task.
    written: Notify,
}

impl DeadLetters {
    pub(crate) fn new(file: DeadLetterFile) -> DeadLetters {
        DeadLetters { file: Arc::new(file), written: Notify::new() }
    }
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
        match reached {
            Ok(reached) => {
                Counters::bump(&self.counters.dead_lettered, 1);
                self.metrics.dead_letter(route_name, code);
                if let Some(metrics) = route {
                    metrics.settled(Settled::DeadLettered, accepted.at, Instant::now());
                }
                let to = match reached {
                    Reached::Destination(name) => name,
                    Reached::File => "the dead-letter file",
                };
                tracing::warn!(id, topic, route = route_name, code, %reason, to, "dead-lettered");
            }
            Err(error) => {
                // With the spool, not lost after all: the next start delivers it again.
                accepted.keep_unsettled();
                Counters::bump(&self.counters.dead_letter_failures, 1);
                tracing::error!(id, topic, route = route_name, code, %reason, %error, "dead letter lost: no dead-letter destination took it and the dead-letter file cannot be written");
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err(RequestError::DeadLettered(reason)));
        }
    }

    /// Hand `letter` to the dead-letter destinations starting at `first`,
    /// else write it to the file. While the file holds letters for `first`,
    /// its path is down: the letter goes straight to the file behind them.
    async fn post_letter<'t>(
        &self,
        topology: &'t Topology,
        first: &'t str,
        letter: Message,
    ) -> Result<Reached<'t>, FileError> {
        if !self.dead_letters.file.holds_for(first) {
            let chain = topology.dead_letter_chain(first);
            let past_grace = &self.dispatch.past_grace;
            if let Some(name) = send_along(topology, &chain, &letter, RETRY, past_grace).await {
                return Ok(Reached::Destination(name));
            }
            tracing::warn!(
                id = letter.id,
                ?chain,
                "no dead-letter destination takes letters; keeping them in the dead-letter file"
            );
        }
        let (file, record) = (self.dead_letters.file.clone(), DeadLetterRecord::new(&letter, first));
        tokio::task::spawn_blocking(move || file.append(&record)).await.expect("appending does not panic")?;
        self.dead_letters.written.notify_one();
        Ok(Reached::File)
    }

    /// One re-delivery pass over the oldest letters of the file; `false`
    /// when some letter found all its dead-letter destinations down.
    async fn redeliver(&self) -> bool {
        let file = self.dead_letters.file.clone();
        let batch = match tokio::task::spawn_blocking(move || file.read(PASS)).await.expect("no panic") {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "cannot read the dead-letter file");
                return false;
            }
        };
        let topology = self.topology.load_full();
        let (mut delivered, mut down) = (vec![false; batch.letters.len()], Vec::new());
        for (record, delivered) in batch.letters.iter().zip(&mut delivered) {
            if down.contains(&&*record.destination) {
                continue;
            }
            let letter = match record.to_message() {
                Ok(letter) => letter,
                Err(error) => {
                    tracing::error!(id = record.id, %error, "unreadable dead letter dropped from the file");
                    *delivered = true;
                    continue;
                }
            };
            let chain = topology.dead_letter_chain(&record.destination);
            match send_along(&topology, &chain, &letter, ONCE, &self.dispatch.past_grace).await {
                Some(_) => *delivered = true,
                None => down.push(&*record.destination),
            }
        }
        let all_taken = down.is_empty();
        let redelivered = delivered.iter().filter(|delivered| **delivered).count();
        let file = self.dead_letters.file.clone();
        let removed = tokio::task::spawn_blocking(move || file.remove(&batch, &delivered));
        if let Err(error) = removed.await.expect("removing does not panic") {
            tracing::error!(%error, "cannot remove re-delivered letters from the dead-letter file; they will be sent again");
            return false;
        }
        self.metrics.dead_letters_redelivered(redelivered);
        all_taken
    }
}

/// One attempt per destination: re-delivery passes back off themselves.
const ONCE: RetryPolicy = RetryPolicy { attempts: 1, ..RETRY };

/// Deliver `letter` to the first of `chain` that takes it, trying each
/// `policy.attempts` times with backoff; the name of the one that took it.
/// A delivery still waiting when a shutdown's grace period ends (`past_grace`:
/// a reader that stopped reading, a destination that hangs) is given up.
async fn send_along<'t>(
    topology: &'t Topology,
    chain: &[&'t str],
    letter: &Message,
    policy: RetryPolicy,
    past_grace: &CancellationToken,
) -> Option<&'t str> {
    for &name in chain {
        let Some(target) = topology.destinations.get(name) else { continue };
        for attempt in 1..=policy.attempts {
            let delivered = tokio::select! {
                biased;
                delivered = target.sink.deliver(letter.clone()) => delivered,
                () = past_grace.cancelled() => return None,
            };
            match delivered {
                Ok(_) => return Some(name),
                Err(error) => {
                    tracing::debug!(destination = name, attempt, %error, "dead-letter destination failed")
                }
            }
            if attempt < policy.attempts {
                let delay = policy.backoff(attempt, &mut rand::rng());
                tokio::time::sleep(delay).await;
            }
        }
    }
    None
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
    let mut failed_passes = 0;
    loop {
        if dead_letters.file.letters() == 0 {
            failed_passes = 0;
            tokio::select! {
                () = dead_letters.written.notified() => continue,
                () = stop.cancelled() => return,
            }
        }
        let Some(pipeline) = pipeline.upgrade() else { return };
        let all_taken = pipeline.redeliver().await;
        drop(pipeline);
        failed_passes = if all_taken { 0 } else { failed_passes + 1 };
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
