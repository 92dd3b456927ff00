//! Counters of what happened to accepted messages: the delivery oracle.

use crate::metrics::ShardedCounter;

/// Live counters, bumped by the pipeline; sharded by thread, so senders and
/// workers never contend for them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: ShardedCounter,
    pub(crate) created: ShardedCounter,
    pub(crate) delivered: ShardedCounter,
    pub(crate) filtered: ShardedCounter,
    pub(crate) responded: ShardedCounter,
    pub(crate) dead_lettered: ShardedCounter,
    pub(crate) handed_back: ShardedCounter,
    pub(crate) skipped_stages: ShardedCounter,
    pub(crate) dead_letter_failures: ShardedCounter,
}

/// A snapshot of a host's message counters.
///
/// Every accepted message ends one way: once all work is done, and unless
/// dead letters were lost (`dead_letter_failures`),
/// `accepted + created == delivered + filtered + responded + dead_lettered + handed_back`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Messages admitted by `send`, `request` or an ingress.
    pub accepted: u64,
    /// Extra messages made inside the host: transform splits and fan-out copies.
    pub created: u64,
    /// Messages a destination took.
    pub delivered: u64,
    /// Messages a filter or transform dropped (a decision, not a loss).
    pub filtered: u64,
    /// Requests a middleware answered itself.
    pub responded: u64,
    /// Dead letters a dead-letter destination took, or the dead-letter file
    /// (fsync'd) when none would; counted once, not again when re-delivered.
    pub dead_lettered: u64,
    /// Messages a shutdown gave up on (past its grace period) that were handed back to the source
    /// that keeps them (a JetStream stream), to be delivered again by another host, rather than
    /// dead-lettered.
    pub handed_back: u64,
    /// Stages skipped under a fail-open policy.
    pub skipped_stages: u64,
    /// Dead letters lost: no dead-letter destination took them and the
    /// dead-letter file could not be written (not counted as dead-lettered).
    pub dead_letter_failures: u64,
}

impl Stats {
    /// Messages accounted for (delivered, filtered, answered, dead-lettered or handed back).
    pub fn settled(&self) -> u64 {
        self.delivered + self.filtered + self.responded + self.dead_lettered + self.handed_back
    }

    /// Messages that exist but are not settled yet.
    pub fn in_flight(&self) -> u64 {
        (self.accepted + self.created).saturating_sub(self.settled())
    }
}

impl Counters {
    /// Counters counting admissions on `accepted` (shared with the metrics).
    pub(crate) fn new(accepted: ShardedCounter) -> Counters {
        Counters { accepted, ..Counters::default() }
    }

    pub(crate) fn bump(counter: &ShardedCounter, by: u64) {
        counter.add(by);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            accepted: self.accepted.get(),
            created: self.created.get(),
            delivered: self.delivered.get(),
            filtered: self.filtered.get(),
            responded: self.responded.get(),
            dead_lettered: self.dead_lettered.get(),
            handed_back: self.handed_back.get(),
            skipped_stages: self.skipped_stages.get(),
            dead_letter_failures: self.dead_letter_failures.get(),
        }
    }
}
