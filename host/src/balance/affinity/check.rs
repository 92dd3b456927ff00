//! The consistency check of a [`StreamTable`]: what is wrong with it, repaired, and a report of it.

use std::collections::HashSet;
use std::sync::Arc;

use super::super::view::EndpointView;
use super::table::{MigrationReason, StreamTable, position, serving};

/// A stream found where it should not be.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Misplaced {
    /// The stream's key.
    pub stream: String,
    /// The id of the endpoint it was found on.
    pub endpoint: u64,
}

/// An endpoint holding more streams than its capacity.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OverCapacity {
    /// The endpoint's id.
    pub endpoint: u64,
    /// Streams on it.
    pub streams: usize,
}

/// What [`StreamTable::verify`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsistencyReport {
    /// Streams recorded when the check began.
    pub streams: usize,
    /// Streams on an endpoint that is ineligible or no longer among the endpoints, while some endpoint
    /// serves: each was moved to where a new stream would go. (While none serves, such streams wait
    /// where they are by design, and are not counted.)
    pub orphans: Vec<Misplaced>,
    /// Extra listings of a stream under an endpoint it is not on (or twice under one, or of a stream
    /// that ended): each was removed.
    pub duplicates: Vec<Misplaced>,
    /// Streams missing from their endpoint's list: each was listed again.
    pub unlisted: Vec<Misplaced>,
    /// The capacity of each endpoint that serves after the repairs.
    pub capacity: usize,
    /// Endpoints that serve above `capacity` after the repairs. They are not emptied at once: the
    /// gradual migration moves their excess at `migrate_per_s`.
    pub over_capacity: Vec<OverCapacity>,
    /// Orphans moved, duplicates removed and streams listed again.
    pub repaired: usize,
}

impl ConsistencyReport {
    /// Whether the check found nothing wrong (endpoints over capacity aside).
    pub fn is_consistent(&self) -> bool {
        self.orphans.is_empty() && self.duplicates.is_empty() && self.unlisted.is_empty()
    }
}

impl StreamTable {
    /// Checks the table against itself and `endpoints`, repairs what it can and reports it: extra
    /// listings are removed, lost ones restored, and streams of dead or removed endpoints moved at once
    /// (their [`Migration`](super::Migration)s say [`MigrationReason::Repair`]), each on its new
    /// endpoint since `now`.
    pub fn verify(&mut self, endpoints: &[EndpointView], now: super::Duration) -> ConsistencyReport {
        let mut report = ConsistencyReport { streams: self.streams.len(), ..ConsistencyReport::default() };
        let mut listed: HashSet<Arc<str>> = HashSet::with_capacity(self.streams.len());
        for (&id, keys) in &mut self.members {
            let mut kept = Vec::with_capacity(keys.len());
            for key in keys.drain(..) {
                match self.streams.get_mut(&key) {
                    Some(stream) if stream.endpoint == id && !listed.contains(&key) => {
                        stream.slot = kept.len();
                        listed.insert(key.clone());
                        kept.push(key);
                    }
                    _ => report.duplicates.push(Misplaced { stream: key.to_string(), endpoint: id }),
                }
            }
            *keys = kept;
        }
        self.members.retain(|_, keys| !keys.is_empty());
        let mut unlisted: Vec<(Arc<str>, u64)> = (self.streams.iter())
            .filter(|(key, _)| !listed.contains(*key))
            .map(|(key, stream)| (key.clone(), stream.endpoint))
            .collect();
        unlisted.sort();
        for (key, endpoint) in unlisted {
            report.unlisted.push(Misplaced { stream: key.to_string(), endpoint });
            self.list(key, endpoint);
        }
        report.repaired = report.duplicates.len() + report.unlisted.len();
        // While no endpoint serves, streams on dead endpoints wait there by design (see `evacuate`).
        let serves = serving(endpoints).next().is_some();
        let mut orphans: Vec<(Arc<str>, u64)> = (self.streams.iter())
            .filter(|_| serves)
            .filter(|(_, stream)| {
                position(endpoints, stream.endpoint).is_none_or(|index| !endpoints[index].eligible)
            })
            .map(|(key, stream)| (key.clone(), stream.endpoint))
            .collect();
        orphans.sort();
        for (key, endpoint) in orphans {
            report.orphans.push(Misplaced { stream: key.to_string(), endpoint });
            if self.relocate(&key, endpoints, MigrationReason::Repair, now) {
                report.repaired += 1;
            }
        }
        report.capacity = self.capacity(endpoints);
        report.over_capacity = serving(endpoints)
            .map(|index| endpoints[index].id)
            .map(|endpoint| OverCapacity { endpoint, streams: self.load(endpoint) })
            .filter(|load| load.streams > report.capacity)
            .collect();
        self.stats.orphans_found += report.orphans.len() as u64;
        self.stats.duplicates_found += (report.duplicates.len() + report.unlisted.len()) as u64;
        report
    }

    /// Records stream `key` on endpoint `endpoint` as the table never would on its own: for tests of
    /// the check.
    #[cfg(test)]
    pub(super) fn inject(&mut self, key: &str, endpoint: u64, now: super::Duration) {
        let key: Arc<str> = Arc::from(key);
        let stream =
            super::Stream { endpoint, since: now, messages: 0, last_seen: now, held: 0, slot: 0, filed: now };
        self.streams.insert(key.clone(), stream);
        self.by_sight.insert((now, key.clone()));
        self.list(key, endpoint);
    }

    /// Lists stream `key` under `endpoint` too, leaving it where it is: for tests of the check.
    #[cfg(test)]
    pub(super) fn inject_listing(&mut self, key: &str, endpoint: u64) {
        self.members.entry(endpoint).or_default().push(Arc::from(key));
    }
}
