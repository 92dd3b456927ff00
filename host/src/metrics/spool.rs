//! What the metrics show of the durable spool: messages written, how long each group commit's
//! write and fsync took, and messages recovered at start.

use super::LatencyHistogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The spool's metric families (registered whatever the durability; they stay at zero in memory mode).
#[derive(Clone, Debug, Default)]
pub(crate) struct SpoolMetrics {
    writes: Counter,
    commits: LatencyHistogram,
    recovered: Counter,
}

impl SpoolMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        let help = "Messages written to the spool (each fsync'd before it was acknowledged)";
        registry.register("spool_writes", help, self.writes.clone());
        let help = "Seconds per spool group commit (one write and one fsync for every message it carries)";
        registry.register("spool_commit_seconds", help, self.commits.clone());
        let help = "Messages recovered from the spool at start and delivered again";
        registry.register("spool_recovered", help, self.recovered.clone());
    }

    /// A group commit of `messages` took `took` (write and fsync).
    pub(crate) fn committed(&self, messages: usize, took: Duration) {
        self.writes.inc_by(messages as u64);
        self.commits.observe(took);
    }

    /// `messages` were recovered at start.
    pub(crate) fn recovered(&self, messages: usize) {
        self.recovered.inc_by(messages as u64);
    }
}
