//! The consistency check of a [`StreamTable`]: what is wrong with it, repaired, and a report of it,
//! a chunk of the table at a time.

use std::mem;
use std::ops::Bound;
use std::sync::Arc;

use super::super::view::EndpointView;
use super::Duration;
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

/// A consistency check of a [`StreamTable`] under way, a chunk at a time
/// ([`StreamTable::verify_some`]): how far it got and what it found so far. `default()` begins one.
#[derive(Clone, Debug, Default)]
pub struct ConsistencyCheck {
    stage: Stage,
    report: ConsistencyReport,
}

/// How far a [`ConsistencyCheck`] got.
#[derive(Clone, Debug, Default)]
enum Stage {
    /// Not begun.
    #[default]
    Begun,
    /// At the endpoints' lists of streams: the listing at this endpoint id and position is next.
    Listings(u64, usize),
    /// At the streams, in the order `by_sight` files them: the one after this is next (`None`: the
    /// first).
    Streams(Option<(Duration, Arc<str>)>),
}

impl StreamTable {
    /// Checks the table against itself and `endpoints`, repairs what it can and reports it: extra
    /// listings are removed, lost ones restored, and streams of dead or removed endpoints moved at once
    /// (their [`Migration`](super::Migration)s say [`MigrationReason::Repair`]), each on its new
    /// endpoint since `now`. The whole table at once: [`verify_some`](Self::verify_some) checks it a
    /// chunk at a time.
    pub fn verify(&mut self, endpoints: &[EndpointView], now: Duration) -> ConsistencyReport {
        let mut check = ConsistencyCheck::default();
        self.verify_some(&mut check, endpoints, now, usize::MAX).expect("a check without a limit ends")
    }

    /// Takes `check` on by at most `limit` listings and streams (at least one), repairing what it
    /// finds as [`verify`](Self::verify) does, so that a caller can let the table go between two
    /// chunks; the report once the whole table is checked (and `check` is then begun afresh).
    ///
    /// The table may change between two calls (picks, moves, idle streams ending): what is sound
    /// when the check looks at it is not reported, and every stream recorded throughout the check
    /// is looked at. A listing the table moved behind the check meanwhile (an endpoint's last,
    /// moved into the place of one that left) is looked at by the next check.
    pub fn verify_some(
        &mut self,
        check: &mut ConsistencyCheck,
        endpoints: &[EndpointView],
        now: Duration,
        limit: usize,
    ) -> Option<ConsistencyReport> {
        let mut budget = limit.max(1);
        loop {
            check.stage = match &mut check.stage {
                Stage::Begun => {
                    check.report.streams = self.streams.len();
                    Stage::Listings(0, 0)
                }
                Stage::Listings(id, at) => {
                    match self.check_listings((id, at), &mut check.report, &mut budget) {
                        true => Stage::Streams(None),
                        false => return None,
                    }
                }
                Stage::Streams(after) => {
                    match self.check_streams(after, endpoints, now, &mut check.report, &mut budget) {
                        true => break,
                        false => return None,
                    }
                }
            };
        }
        let mut report = mem::take(check).report;
        let by_stream = |a: &Misplaced, b: &Misplaced| (&a.stream, a.endpoint).cmp(&(&b.stream, b.endpoint));
        report.orphans.sort_by(by_stream);
        report.unlisted.sort_by(by_stream);
        report.capacity = self.capacity(endpoints);
        report.over_capacity = serving(endpoints)
            .map(|index| endpoints[index].id)
            .map(|endpoint| OverCapacity { endpoint, streams: self.load(endpoint) })
            .filter(|load| load.streams > report.capacity)
            .collect();
        Some(report)
    }

    /// Checks the endpoints' lists from the listing at `at` (an endpoint id, a position) on while
    /// `budget` lasts, removing the listings of a stream that ended or is on another endpoint, and
    /// any listing of a stream under its endpoint but the one its slot points at (or the first, when
    /// the slot points at none: the slot is mended). Whether every list is checked.
    fn check_listings(
        &mut self,
        at: (&mut u64, &mut usize),
        report: &mut ConsistencyReport,
        budget: &mut usize,
    ) -> bool {
        let (id, position) = at;
        loop {
            let Some((&listed_under, keys)) = self.members.range(*id..).next() else { return true };
            if listed_under != *id {
                (*id, *position) = (listed_under, 0);
            }
            let Some(key) = keys.get(*position).cloned() else {
                match id.checked_add(1) {
                    Some(next) => (*id, *position) = (next, 0),
                    None => return true,
                }
                continue;
            };
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            let slot =
                self.streams.get(&key).filter(|stream| stream.endpoint == *id).map(|stream| stream.slot);
            let its = slot.is_some_and(|slot| slot == *position || keys.get(slot) != Some(&key));
            match self.streams.get_mut(&key).filter(|_| its) {
                Some(stream) => {
                    stream.slot = *position;
                    *position += 1;
                }
                None => {
                    report.duplicates.push(Misplaced { stream: key.to_string(), endpoint: *id });
                    report.repaired += 1;
                    self.stats.duplicates_found += 1;
                    // The last listing moves into its place: it is looked at next.
                    self.unlist(&key, *id, *position);
                }
            }
        }
    }

    /// Checks the streams `by_sight` files after `after` while `budget` lasts: one missing from
    /// its endpoint's list is listed again, and one on an endpoint that is ineligible or gone while
    /// another serves moves where a new stream would go. Whether every stream is checked.
    fn check_streams(
        &mut self,
        after: &mut Option<(Duration, Arc<str>)>,
        endpoints: &[EndpointView],
        now: Duration,
        report: &mut ConsistencyReport,
        budget: &mut usize,
    ) -> bool {
        let rest = match after.as_ref() {
            Some(after) => self.by_sight.range((Bound::Excluded(after), Bound::Unbounded)),
            None => self.by_sight.range::<(Duration, Arc<str>), _>(..),
        };
        let chunk: Vec<(Duration, Arc<str>)> = rest.take(*budget).cloned().collect();
        *budget -= chunk.len();
        // While no endpoint serves, streams on dead endpoints wait there by design (see `evacuate`).
        let serves = serving(endpoints).next().is_some();
        for (_, key) in &chunk {
            let Some(stream) = self.streams.get(key) else { continue };
            let (endpoint, slot) = (stream.endpoint, stream.slot);
            if self.members.get(&endpoint).and_then(|keys| keys.get(slot)) != Some(key) {
                report.unlisted.push(Misplaced { stream: key.to_string(), endpoint });
                report.repaired += 1;
                self.stats.duplicates_found += 1;
                self.list(key.clone(), endpoint);
            }
            if serves && position(endpoints, endpoint).is_none_or(|index| !endpoints[index].eligible) {
                report.orphans.push(Misplaced { stream: key.to_string(), endpoint });
                self.stats.orphans_found += 1;
                if self.relocate(key, endpoints, MigrationReason::Repair, now) {
                    report.repaired += 1;
                }
            }
        }
        let done = *budget > 0;
        if let Some(last) = chunk.into_iter().next_back() {
            *after = Some(last);
        }
        done
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
