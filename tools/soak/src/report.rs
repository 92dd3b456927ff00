//! What a soak run found: every accepted id reconciled against what the
//! sinks received, the faults injected, and the host's memory and CPU time.

use crate::process::Usage;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// The host's usage at one moment of the run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `start`, `minute N` (or `sample N`), `drained`.
    pub label: String,
    /// Since the load started.
    pub at: Duration,
    /// Memory and CPU time.
    pub usage: Usage,
    /// Messages accepted by then.
    pub accepted: u64,
    /// Distinct ids delivered or dead-lettered by then.
    pub settled: u64,
}

/// Message counts, reconciled id by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Answered 202.
    pub accepted: u64,
    /// Accepted ids that reached a delivery sink.
    pub delivered: u64,
    /// Delivered ids that arrived more than once.
    pub duplicated: u64,
    /// The extra copies of those.
    pub extra_copies: u64,
    /// Accepted ids that reached the dead-letter sink.
    pub dead_lettered: u64,
    /// Accepted ids found both delivered and dead-lettered.
    pub delivered_and_dead_lettered: u64,
    /// Accepted ids found nowhere.
    pub lost: u64,
    /// Ids at the sinks that no 202 answered.
    pub unexpected: u64,
}

impl Reconciliation {
    /// Reconciles `accepted` against the ids (with arrival counts) at the
    /// delivery sinks and at the dead-letter sink.
    pub fn of(
        accepted: &[String],
        delivered: &HashMap<String, u32>,
        dead: &HashMap<String, u32>,
    ) -> Reconciliation {
        let ids: HashSet<&str> = accepted.iter().map(String::as_str).collect();
        let found = |id: &str| delivered.contains_key(id) || dead.contains_key(id);
        let repeated = delivered.values().filter(|&&count| count > 1);
        Reconciliation {
            accepted: accepted.len() as u64,
            delivered: delivered.keys().filter(|id| ids.contains(id.as_str())).count() as u64,
            duplicated: repeated.clone().count() as u64,
            extra_copies: repeated.map(|&count| u64::from(count - 1)).sum(),
            dead_lettered: dead.keys().filter(|id| ids.contains(id.as_str())).count() as u64,
            delivered_and_dead_lettered: dead.keys().filter(|id| delivered.contains_key(*id)).count() as u64,
            lost: ids.iter().filter(|id| !found(id)).count() as u64,
            unexpected: delivered.keys().chain(dead.keys()).filter(|id| !ids.contains(id.as_str())).count()
                as u64,
        }
    }
}

/// The whole outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The settings, in words.
    pub scenario: String,
    /// The counts.
    pub messages: Reconciliation,
    /// Non-202 answers by status.
    pub refused: BTreeMap<String, u64>,
    /// Dead letters by their `x-sy-dead-letter` code.
    pub dead_letter_codes: BTreeMap<String, u64>,
    /// Deliveries by the plugin version that transformed them.
    pub transformed_by: BTreeMap<String, u64>,
    /// Plugin file swaps made.
    pub swaps: u64,
    /// Config rewrites made, and how many of them `/v1/routes` showed applied.
    pub reloads: (u64, u64),
    /// Endpoint kills (each followed by a restart).
    pub kills: u64,
    /// `switchyard_host_events_total` at the end.
    pub events: BTreeMap<String, u64>,
    /// Host log lines by level.
    pub log_levels: BTreeMap<String, u64>,
    /// Usage at the start, each sample period, and once drained.
    pub samples: Vec<Sample>,
    /// How long the host took to settle every accepted message after the
    /// load stopped (`None`: it had not within the drain timeout).
    pub drained_in: Option<Duration>,
    /// The host's `switchyard: stopped; {stats}` line.
    pub stopped: String,
}

impl Report {
    /// Relative RSS change from the second periodic sample (past the
    /// warm-up) to the last (from the start when there were fewer than
    /// three), as `(from label, to label, change)`.
    pub fn rss_change(&self) -> Option<(&str, &str, f64)> {
        // The first sample is `start`, the last `drained`.
        let periods = self.samples.get(1..self.samples.len().saturating_sub(1))?;
        let from = if periods.len() >= 3 { &periods[1] } else { self.samples.first()? };
        let to = periods.last()?;
        let change = (to.usage.rss_kib as f64 - from.usage.rss_kib as f64) / from.usage.rss_kib as f64;
        Some((&from.label, &to.label, change))
    }

    /// Host CPU time per delivered message over the load (start to drained).
    pub fn cpu_per_message(&self) -> Option<Duration> {
        let (first, last) = (self.samples.first()?, self.samples.last()?);
        let settled = self.messages.delivered + self.messages.dead_lettered;
        (settled > 0).then(|| (last.usage.cpu.saturating_sub(first.usage.cpu)).div_f64(settled as f64))
    }
}

fn listing(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts.iter().map(|(what, n)| format!("{what}: {n}")).collect::<Vec<_>>().join(", ")
}

fn mib(usage: &Usage) -> f64 {
    usage.rss_kib as f64 / 1024.0
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.messages;
        let event = |name: &str| self.events.get(name).copied().unwrap_or(0);
        writeln!(f, "soak: {}", self.scenario)?;
        writeln!(f, "  accepted        {:>10}   (202 answers)", m.accepted)?;
        writeln!(f, "  delivered       {:>10}   (distinct accepted ids at the endpoints)", m.delivered)?;
        writeln!(
            f,
            "  duplicated      {:>10}   (ids delivered more than once; {} extra copies)",
            m.duplicated, m.extra_copies
        )?;
        writeln!(f, "  dead-lettered   {:>10}   ({})", m.dead_lettered, listing(&self.dead_letter_codes))?;
        writeln!(
            f,
            "  both            {:>10}   (ids delivered and dead-lettered)",
            m.delivered_and_dead_lettered
        )?;
        writeln!(f, "  lost            {:>10}   (accepted, found nowhere)", m.lost)?;
        writeln!(f, "  unexpected      {:>10}   (ids at the sinks that no 202 answered)", m.unexpected)?;
        writeln!(
            f,
            "  refused         {:>10}   ({})",
            self.refused.values().sum::<u64>(),
            listing(&self.refused)
        )?;
        writeln!(f, "  transformed by  {}", listing(&self.transformed_by))?;
        writeln!(
            f,
            "  plugin swaps    {:>10}   (plugin-replaced events: {})",
            self.swaps,
            event("plugin-replaced")
        )?;
        let (reloads, seen) = self.reloads;
        writeln!(
            f,
            "  config reloads  {reloads:>10}   ({seen} seen applied in /v1/routes; config-applied events: {})",
            event("config-applied")
        )?;
        writeln!(
            f,
            "  endpoint kills  {:>10}   (endpoint-down events: {}, endpoint-up: {})",
            self.kills,
            event("endpoint-down"),
            event("endpoint-up")
        )?;
        match self.drained_in {
            Some(took) => {
                writeln!(f, "  drained in      {:>9.1}s   (after the load stopped)", took.as_secs_f64())?
            }
            None => writeln!(f, "  drained in      not within the drain timeout")?,
        }
        writeln!(f, "  host log lines  {}", listing(&self.log_levels))?;
        writeln!(f, "  host usage       at       accepted    settled    RSS MiB   CPU s")?;
        for s in &self.samples {
            writeln!(
                f,
                "    {:<12} {:>6.0}s {:>12} {:>10} {:>10.1} {:>7.1}",
                s.label,
                s.at.as_secs_f64(),
                s.accepted,
                s.settled,
                mib(&s.usage),
                s.usage.cpu.as_secs_f64()
            )?;
        }
        if let Some((from, to, change)) = self.rss_change() {
            writeln!(f, "  RSS {from} -> {to}: {:+.1} %", change * 100.0)?;
        }
        if let Some(cpu) = self.cpu_per_message() {
            writeln!(f, "  host CPU per settled message: {:.1} us", cpu.as_secs_f64() * 1e6)?;
        }
        writeln!(f, "  {}", self.stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::Reconciliation;
    use std::collections::HashMap;

    fn arrivals(ids: &[(&str, u32)]) -> HashMap<String, u32> {
        ids.iter().map(|&(id, n)| (id.to_owned(), n)).collect()
    }

    #[test]
    fn every_accepted_id_is_delivered_dead_lettered_or_counted_lost() {
        let accepted: Vec<String> = ["a", "b", "c", "d", "e"].map(str::to_owned).to_vec();
        let delivered = arrivals(&[("a", 1), ("b", 3), ("e", 1), ("stray", 1)]);
        let dead = arrivals(&[("c", 1), ("e", 1)]);
        let counts = Reconciliation::of(&accepted, &delivered, &dead);
        assert_eq!(
            counts,
            Reconciliation {
                accepted: 5,
                delivered: 3,
                duplicated: 1,
                extra_copies: 2,
                dead_lettered: 2,
                delivered_and_dead_lettered: 1,
                lost: 1,
                unexpected: 1,
            }
        );
    }
}
