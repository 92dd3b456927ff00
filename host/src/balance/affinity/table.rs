//! The assignment table: which endpoint each active stream is on, and the rules that place and move it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use super::super::hash::{GOLDEN_GAMMA, mix64, stable_hash};
use super::super::view::{EndpointView, Standing};
use super::{AffinityPolicy, Duration};

/// One active stream: where it is and how busy it has been.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The [`id`](EndpointView::id) of the endpoint it is on.
    pub endpoint: u64,
    /// When it came to that endpoint.
    pub since: Duration,
    /// Its messages so far, on any endpoint: each counted once, as it is [`held`](StreamTable::hold),
    /// however many picks its attempts took.
    pub messages: u64,
    /// When its last message was picked for, or ended ([`StreamTable::release`]).
    pub last_seen: Duration,
    /// Its messages under way ([`StreamTable::hold`]): while one is, it does not end.
    pub held: u32,
    /// Its position in its endpoint's list of streams.
    pub(super) slot: usize,
    /// The time it is filed under in the table's index of streams by when they were seen: at most
    /// `last_seen`, and filed again under `last_seen` by a pick or release once that is a sixteenth
    /// of `idle_timeout` later, or by an expiry pass that finds it seen since or held.
    pub(super) filed: Duration,
}

/// Why a stream changed endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MigrationReason {
    /// Its endpoint turned ineligible (health checks, breaker): moved at once.
    EndpointDown,
    /// Its endpoint is no longer among the destination's: moved at once.
    EndpointRemoved,
    /// To even out the load, at most `migrate_per_s` a second.
    Rebalance,
    /// The consistency check found it on a dead or removed endpoint.
    Repair,
}

impl fmt::Display for MigrationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationReason::EndpointDown => "endpoint down",
            MigrationReason::EndpointRemoved => "endpoint removed",
            MigrationReason::Rebalance => "rebalance",
            MigrationReason::Repair => "consistency check",
        })
    }
}

/// A stream that changed endpoint, recorded for the caller to tell ([`StreamTable::take_migrations`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The stream's key.
    pub key: Arc<str>,
    /// The endpoint id it left.
    pub from: u64,
    /// The endpoint id it went to.
    pub to: u64,
    /// Why.
    pub reason: MigrationReason,
}

/// Counts since the table was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AffinityStats {
    /// Streams moved because their endpoint died or was removed.
    pub moved_endpoint_down: u64,
    /// Streams moved to even out the load.
    pub moved_rebalance: u64,
    /// Streams moved by the consistency check.
    pub moved_repair: u64,
    /// Orphans (streams on dead or removed endpoints) the consistency check found.
    pub orphans_found: u64,
    /// Duplicated or unlisted entries the consistency check found.
    pub duplicates_found: u64,
    /// Streams ended by `idle_timeout`.
    pub expired: u64,
    /// Picks for streams the full table could not record.
    pub untracked: u64,
}

/// The assignment of streams to endpoints of one destination: consistent hashing with bounded loads
/// (Mirrokni, Thorup and Zadimoghaddam) places a new stream on the first endpoint of its key's
/// rendezvous-hash order below `min(ceil(balance_factor × average), max_streams)`; a stream then keeps
/// its endpoint while that endpoint is eligible; a dead or removed endpoint's streams move at once to
/// endpoints that serve (while none does, one at a time, each to probe an endpoint on trial), an
/// uneven load evens out at most `migrate_per_s` moves a second, idle streams end, and
/// [`verify`](Self::verify) checks and repairs the table. Pure: no clock, no I/O, no lock.
///
/// Every method takes the endpoints as the caller sees them now, as a slice of [`EndpointView`]s
/// (only `id`, `eligible` and `standing` matter), and the time as a [`Duration`] since the caller's
/// origin, never going backwards.
#[derive(Clone, Debug)]
pub struct StreamTable {
    pub(super) policy: AffinityPolicy,
    pub(super) streams: HashMap<Arc<str>, Stream>,
    /// Each endpoint's streams by key, in the order they came; `Stream::slot` is a key's position.
    /// Ordered by id so that every walk over it is the same in every run.
    pub(super) members: BTreeMap<u64, Vec<Arc<str>>>,
    /// Every stream once, under its `Stream::filed`: the streams that may have been idle for
    /// `idle_timeout` come first, so that an expiry pass looks at those and no others.
    pub(super) by_sight: BTreeSet<(Duration, Arc<str>)>,
    /// A fingerprint of the eligible endpoints' ids at the last look: a change sends the streams
    /// of the endpoints that left elsewhere.
    eligible_print: u64,
    /// Whether streams were left on an ineligible endpoint for want of an eligible one.
    stranded: bool,
    /// When the streams moved to even out the load in the last second moved.
    recent_moves: VecDeque<Duration>,
    /// Moves earned by the time passed (`migrate_per_s` a second), spent one per move.
    credit: f64,
    last_rebalance: Duration,
    next_expiry: Duration,
    migrations: Vec<Migration>,
    pub(super) stats: AffinityStats,
    /// Streams the expiry passes looked at: for tests of what a pass costs.
    #[cfg(test)]
    pub(super) expiry_looks: usize,
}

impl StreamTable {
    /// An empty table.
    pub fn new(policy: AffinityPolicy) -> StreamTable {
        StreamTable {
            policy,
            streams: HashMap::new(),
            members: BTreeMap::new(),
            by_sight: BTreeSet::new(),
            eligible_print: 0,
            stranded: false,
            recent_moves: VecDeque::new(),
            credit: 0.0,
            last_rebalance: Duration::ZERO,
            next_expiry: Duration::ZERO,
            migrations: Vec::new(),
            stats: AffinityStats::default(),
            #[cfg(test)]
            expiry_looks: 0,
        }
    }

    /// The table's settings.
    pub fn policy(&self) -> &AffinityPolicy {
        &self.policy
    }

    /// Go on under `policy`: a reload changed the destination's settings.
    pub fn set_policy(&mut self, policy: AffinityPolicy) {
        self.policy = policy;
    }

    /// The endpoint for a message of stream `key`: a position in `endpoints`, always an eligible one,
    /// or `None` when none is, or when the stream's endpoint is dead, none serves and none is free to
    /// try ([`Standing::OnTrial`], [`Standing::Forced`]). Called before each attempt of a message (a
    /// message is counted by [`hold`](Self::hold)); first does what time and the endpoints' changes
    /// call for ([`maintain`](Self::maintain)).
    pub fn pick(&mut self, key: &str, endpoints: &[EndpointView], now: Duration) -> Option<usize> {
        self.maintain(endpoints, now);
        if let Some(stream) = self.streams.get(key) {
            let (from, slot) = (stream.endpoint, stream.slot);
            let at = position(endpoints, from).filter(|&index| endpoints[index].eligible);
            let index = match at {
                // On an endpoint that serves: unless it probes one on trial.
                Some(index) if endpoints[index].standing == Standing::Serving => {
                    self.probe_while_serving(key, endpoints, now).unwrap_or(index)
                }
                Some(index) => index,
                // Its endpoint is dead and none serves (`maintain` moved it otherwise): it probes
                // an endpoint on trial or forced, if one is.
                None => {
                    let index = first_by_hash(stable_hash(key), endpoints, triable)?;
                    let key = self.streams.get_key_value(key).map(|(key, _)| key.clone())?;
                    self.unlist(&key, from, slot);
                    self.move_to(&key, from, endpoints[index].id, MigrationReason::EndpointDown, now);
                    index
                }
            };
            self.seen(key, now);
            return Some(index);
        }
        // While none serves, a new stream goes to an endpoint being tried.
        let eligible = |endpoint: &EndpointView| endpoint.eligible;
        if self.streams.len() >= self.policy.max_streams_tracked {
            self.stats.untracked += 1;
            return first_by_hash(stable_hash(key), endpoints, is_serving)
                .or_else(|| first_by_hash(stable_hash(key), endpoints, eligible));
        }
        let index = (self.place(stable_hash(key), endpoints, self.streams.len() + 1))
            .or_else(|| first_by_hash(stable_hash(key), endpoints, eligible))?;
        let key: Arc<str> = Arc::from(key);
        let stream = Stream {
            endpoint: endpoints[index].id,
            since: now,
            messages: 0,
            last_seen: now,
            held: 0,
            slot: 0,
            filed: now,
        };
        self.streams.insert(key.clone(), stream);
        self.by_sight.insert((now, key.clone()));
        self.list(key, endpoints[index].id);
        Some(index)
    }

    /// Moves stream `key`, on an endpoint that serves, to an endpoint on trial whose share of the
    /// streams (it counted as serving) is below the floor, if one is, within `migrate_per_s`: its
    /// message now is that endpoint's one attempt, and the endpoint is probing once it goes out.
    /// The endpoint's position. The floor is at least 1: with few streams it rounds down to 0, and
    /// an endpoint on trial holding no stream would never be tried again while others serve.
    fn probe_while_serving(&mut self, key: &str, endpoints: &[EndpointView], now: Duration) -> Option<usize> {
        let candidates = serving(endpoints).count() + 1;
        let floor = self.policy.floor(self.streams.len(), candidates).max(1);
        let below = |endpoint: &EndpointView| on_trial(endpoint) && self.load(endpoint.id) < floor;
        let index = first_by_hash(stable_hash(key), endpoints, below)?;
        if self.recent_moves.len() >= self.policy.migrate_per_s.max(1) as usize {
            return None;
        }
        let (key, stream) = self.streams.get_key_value(key)?;
        let (key, from, slot) = (key.clone(), stream.endpoint, stream.slot);
        self.unlist(&key, from, slot);
        self.move_to(&key, from, endpoints[index].id, MigrationReason::Rebalance, now);
        self.recent_moves.push_back(now);
        Some(index)
    }

    /// What the time and the endpoints call for: streams of endpoints that died or left go to
    /// endpoints that serve at once (none serving: they wait), idle streams end, and streams move to
    /// even out the load within `migrate_per_s`.
    /// [`pick`](Self::pick) calls it; call it on a timer too, so that this happens without traffic.
    pub fn maintain(&mut self, endpoints: &[EndpointView], now: Duration) {
        let print = endpoints
            .iter()
            .filter(|endpoint| endpoint.eligible)
            .fold(0u64, |print, endpoint| print.wrapping_add(mix64(endpoint.id ^ GOLDEN_GAMMA)));
        if print != self.eligible_print || self.stranded {
            self.eligible_print = print;
            self.evacuate(endpoints, now);
        }
        if now >= self.next_expiry {
            self.expire(now);
        }
        self.rebalance(endpoints, now);
    }

    /// A message of stream `key` is under way (its attempts and the waits between them): counted
    /// among the stream's messages, and the stream does not end until it is
    /// [`release`](Self::release)d. False, and nothing counted or held, when the stream is not
    /// recorded. Called once per message.
    pub fn hold(&mut self, key: &str) -> bool {
        let Some(stream) = self.streams.get_mut(key) else { return false };
        stream.held += 1;
        stream.messages += 1;
        true
    }

    /// A message of stream `key` that [`hold`](Self::hold) held ended at `now`: the stream ends
    /// `idle_timeout` from then, unless another comes or is under way.
    pub fn release(&mut self, key: &str, now: Duration) {
        if let Some(stream) = self.streams.get_mut(key).filter(|stream| stream.held > 0) {
            stream.held -= 1;
            self.seen(key, now);
        }
    }

    /// Stream `key` was seen at `now` (kept as its `last_seen` unless that is later: a caller may
    /// have read the clock a little before another). Filed again under it in `by_sight` when filed
    /// a sixteenth of `idle_timeout` or more before: a stream in use is filed again at most that
    /// often, and is not among those an expiry pass looks at.
    fn seen(&mut self, key: &str, now: Duration) {
        let every = self.expiry_step();
        let Some(stream) = self.streams.get_mut(key) else { return };
        stream.last_seen = stream.last_seen.max(now);
        if stream.last_seen.saturating_sub(stream.filed) < every {
            return;
        }
        let (was, filed) = (stream.filed, stream.last_seen);
        stream.filed = filed;
        let Some((key, _)) = self.streams.get_key_value(key) else { return };
        let key = key.clone();
        self.by_sight.remove(&(was, key.clone()));
        self.by_sight.insert((filed, key));
    }

    /// How late a stream may end, and so how often an expiry pass runs at most: a sixteenth of
    /// `idle_timeout`, at least 1 ms.
    fn expiry_step(&self) -> Duration {
        (self.policy.idle_timeout / 16).max(Duration::from_millis(1))
    }

    /// Releases every held stream at `now`: for a copy of the table that will not hear of the
    /// ends of the messages under way (the copy a reload hands to a destination's new instance).
    pub fn release_all(&mut self, now: Duration) {
        for stream in self.streams.values_mut().filter(|stream| stream.held > 0) {
            stream.held = 0;
            stream.last_seen = stream.last_seen.max(now);
        }
    }

    /// The migrations since the last call, oldest first. Drain them after every call that may move
    /// streams ([`pick`](Self::pick), [`maintain`](Self::maintain), [`verify`](Self::verify)).
    pub fn take_migrations(&mut self) -> Vec<Migration> {
        std::mem::take(&mut self.migrations)
    }

    /// The stream recorded under `key`.
    pub fn stream(&self, key: &str) -> Option<&Stream> {
        self.streams.get(key)
    }

    /// Every recorded stream, in no particular order.
    pub fn streams(&self) -> impl Iterator<Item = (&str, &Stream)> {
        self.streams.iter().map(|(key, stream)| (&**key, stream))
    }

    /// How many streams are recorded.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is recorded.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Streams on the endpoint of id `endpoint`.
    pub fn load(&self, endpoint: u64) -> usize {
        self.members.get(&endpoint).map_or(0, Vec::len)
    }

    /// The most streams an endpoint that serves may hold now, among `endpoints`.
    pub fn capacity(&self, endpoints: &[EndpointView]) -> usize {
        self.policy.capacity(self.streams.len(), serving(endpoints).count())
    }

    /// Counts since the table was made.
    pub fn stats(&self) -> AffinityStats {
        self.stats
    }

    /// Where a stream whose key hashes to `hash` goes, the table holding `streams` streams with it:
    /// the least loaded endpoint that serves while the load is uneven, otherwise the first one that
    /// serves in the key's hash order below capacity (the least loaded when none is); `None` when
    /// none serves.
    pub(super) fn place(&self, hash: u64, endpoints: &[EndpointView], streams: usize) -> Option<usize> {
        let count = serving(endpoints).count();
        let capacity = self.policy.capacity(streams, count);
        let uneven = self.spread(endpoints).is_some_and(|spread| spread.uneven(&self.policy, streams, count));
        let fits = |endpoint: &EndpointView| is_serving(endpoint) && self.load(endpoint.id) < capacity;
        let roomy = (!uneven).then(|| first_by_hash(hash, endpoints, fits));
        roomy.flatten().or_else(|| self.least_loaded(endpoints))
    }

    fn least_loaded(&self, endpoints: &[EndpointView]) -> Option<usize> {
        serving(endpoints).min_by_key(|&index| self.load(endpoints[index].id))
    }

    /// The most and least loaded endpoints that serve, first in `endpoints` order among equals.
    fn spread(&self, endpoints: &[EndpointView]) -> Option<Spread> {
        let mut spread: Option<Spread> = None;
        for index in serving(endpoints) {
            let load = self.load(endpoints[index].id);
            let entry = spread.get_or_insert(Spread { most: (index, load), least: (index, load) });
            if load > entry.most.1 {
                entry.most = (index, load);
            }
            if load < entry.least.1 {
                entry.least = (index, load);
            }
        }
        spread
    }

    /// Sends every stream of an endpoint not eligible among `endpoints` to endpoints that serve, at
    /// once; while none serves, they stay (stranded) and each probes an endpoint on trial at its next
    /// message ([`pick`](Self::pick)): moved between dead endpoints, a stream gets nowhere.
    fn evacuate(&mut self, endpoints: &[EndpointView], now: Duration) {
        self.stranded = false;
        let gone: Vec<(u64, MigrationReason)> = self
            .members
            .iter()
            .filter(|(_, keys)| !keys.is_empty())
            .filter_map(|(&id, _)| match position(endpoints, id) {
                None => Some((id, MigrationReason::EndpointRemoved)),
                Some(index) if !endpoints[index].eligible => Some((id, MigrationReason::EndpointDown)),
                Some(_) => None,
            })
            .collect();
        if !gone.is_empty() && serving(endpoints).next().is_none() {
            self.stranded = true;
            return;
        }
        for (id, reason) in gone {
            let keys = self.members.get(&id).cloned().unwrap_or_default();
            for key in keys {
                if !self.relocate(&key, endpoints, reason, now) {
                    self.stranded = true;
                    return;
                }
            }
        }
    }

    /// Moves stream `key` to where a new stream would go, at `now`; false when no endpoint serves.
    pub(super) fn relocate(
        &mut self,
        key: &Arc<str>,
        endpoints: &[EndpointView],
        reason: MigrationReason,
        now: Duration,
    ) -> bool {
        let Some(stream) = self.streams.get(key) else { return true };
        let (from, slot) = (stream.endpoint, stream.slot);
        self.unlist(key, from, slot);
        let Some(index) = self.place(stable_hash(key), endpoints, self.streams.len()) else {
            self.list(key.clone(), from);
            return false;
        };
        self.move_to(key, from, endpoints[index].id, reason, now);
        true
    }

    /// Records that `key`, already off its old endpoint's list, is now on `to`, since `now`.
    fn move_to(&mut self, key: &Arc<str>, from: u64, to: u64, reason: MigrationReason, now: Duration) {
        self.list(key.clone(), to);
        if let Some(stream) = self.streams.get_mut(key) {
            stream.since = now;
        }
        let counter = match reason {
            MigrationReason::EndpointDown | MigrationReason::EndpointRemoved => {
                &mut self.stats.moved_endpoint_down
            }
            MigrationReason::Rebalance => &mut self.stats.moved_rebalance,
            MigrationReason::Repair => &mut self.stats.moved_repair,
        };
        *counter += 1;
        self.migrations.push(Migration { key: key.clone(), from, to, reason });
    }

    /// Ends every stream idle for `idle_timeout` with no message under way. The next look is when the
    /// first stream filed in `by_sight` would end unless seen since, but no sooner than a sixteenth
    /// of the timeout from now (so a stream ends at most that late). Looks only at the streams
    /// filed under a time `idle_timeout` or more ago, each at most once: those that end, and those
    /// held or seen since they were filed, filed again under when they were seen last.
    fn expire(&mut self, now: Duration) {
        let timeout = self.policy.idle_timeout;
        let mut kept = Vec::new();
        while let Some((filed, _)) = self.by_sight.first()
            && now.saturating_sub(*filed) >= timeout
        {
            let (_, key) = self.by_sight.pop_first().expect("a first entry");
            #[cfg(test)]
            {
                self.expiry_looks += 1;
            }
            let Some(stream) = self.streams.get_mut(&key) else { continue };
            if stream.held == 0 && now.saturating_sub(stream.last_seen) >= timeout {
                let (endpoint, slot) = (stream.endpoint, stream.slot);
                self.streams.remove(&key);
                self.unlist(&key, endpoint, slot);
                self.stats.expired += 1;
            } else {
                stream.filed = stream.last_seen;
                kept.push((stream.filed, key));
            }
        }
        self.by_sight.extend(kept);
        let oldest = self.by_sight.first().map_or(now, |(filed, _)| *filed);
        self.next_expiry = (oldest + timeout).max(now + self.expiry_step());
    }

    /// Moves streams from the most to the least loaded endpoint while the load is uneven, as many
    /// as the time passed earns and at most `migrate_per_s` in any second.
    fn rebalance(&mut self, endpoints: &[EndpointView], now: Duration) {
        let rate = f64::from(self.policy.migrate_per_s.max(1));
        let elapsed = now.saturating_sub(self.last_rebalance).as_secs_f64();
        self.last_rebalance = now;
        self.credit = (self.credit + rate * elapsed).min(rate);
        // The window is the last second, (now - 1 s, now]. Callers read the clock before they take
        // the table's lock, so `now` may be a little earlier than a move another caller recorded.
        let window = Duration::from_secs(1);
        while self.recent_moves.front().is_some_and(|&moved| now.saturating_sub(moved) >= window) {
            self.recent_moves.pop_front();
        }
        let count = serving(endpoints).count();
        while self.credit >= 1.0 && (self.recent_moves.len() as f64) < rate {
            let streams = self.streams.len();
            let Some(spread) = self.spread(endpoints) else { return };
            let (donor, most) = spread.most;
            let (receiver, least) = spread.least;
            let balanced = !spread.uneven(&self.policy, streams, count)
                || most <= least + 1
                || least >= self.policy.capacity(streams, count);
            if balanced {
                self.credit = 0.0;
                return;
            }
            let (from, to) = (endpoints[donor].id, endpoints[receiver].id);
            let key = self.members[&from].last().cloned().expect("the most loaded endpoint has streams");
            let slot = self.streams.get(&key).map_or(most - 1, |stream| stream.slot);
            self.unlist(&key, from, slot);
            self.move_to(&key, from, to, MigrationReason::Rebalance, now);
            self.credit -= 1.0;
            self.recent_moves.push_back(now);
        }
    }

    /// Appends `key` to `endpoint`'s list and points the stream there.
    pub(super) fn list(&mut self, key: Arc<str>, endpoint: u64) {
        let keys = self.members.entry(endpoint).or_default();
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.endpoint = endpoint;
            stream.slot = keys.len();
        }
        keys.push(key);
    }

    /// Takes `key` off `endpoint`'s list, where it sits at `slot` (looked for when it does not).
    pub(super) fn unlist(&mut self, key: &Arc<str>, endpoint: u64, slot: usize) {
        let Some(keys) = self.members.get_mut(&endpoint) else { return };
        let slot = match keys.get(slot) == Some(key) {
            true => slot,
            false => match keys.iter().position(|listed| listed == key) {
                Some(slot) => slot,
                None => return,
            },
        };
        keys.swap_remove(slot);
        let moved = keys.get(slot).and_then(|moved| self.streams.get_mut(moved));
        if let Some(stream) = moved.filter(|stream| stream.endpoint == endpoint) {
            stream.slot = slot;
        }
        if keys.is_empty() {
            self.members.remove(&endpoint);
        }
    }
}

/// The most and least loaded eligible endpoints: (position, streams).
struct Spread {
    most: (usize, usize),
    least: (usize, usize),
}

impl Spread {
    /// Whether the load passes the bound: an endpoint above capacity, or one below the floor while
    /// another has more than the floor plus one.
    fn uneven(&self, policy: &AffinityPolicy, streams: usize, endpoints: usize) -> bool {
        let floor = policy.floor(streams, endpoints);
        self.most.1 > policy.capacity(streams, endpoints) || (self.least.1 < floor && self.most.1 > floor + 1)
    }
}

/// Position in `endpoints` of the endpoint of id `id`.
pub(super) fn position(endpoints: &[EndpointView], id: u64) -> Option<usize> {
    endpoints.iter().position(|endpoint| endpoint.id == id)
}

/// Whether `endpoint` is eligible and takes traffic.
fn is_serving(endpoint: &EndpointView) -> bool {
    endpoint.eligible && endpoint.standing == Standing::Serving
}

/// Whether `endpoint` is eligible for one attempt that finds out whether it takes traffic again.
fn on_trial(endpoint: &EndpointView) -> bool {
    endpoint.eligible && endpoint.standing == Standing::OnTrial
}

/// Whether a stream may try `endpoint` while no endpoint serves: it is on trial, or admitted by
/// panic mode or the ejection cap.
fn triable(endpoint: &EndpointView) -> bool {
    endpoint.eligible && matches!(endpoint.standing, Standing::OnTrial | Standing::Forced)
}

/// Positions of the endpoints that take traffic.
pub(super) fn serving(endpoints: &[EndpointView]) -> impl Iterator<Item = usize> + '_ {
    endpoints.iter().enumerate().filter(|(_, endpoint)| is_serving(endpoint)).map(|(index, _)| index)
}

/// The endpoint that `fits` with the highest rendezvous score for a key hashing to `hash`.
fn first_by_hash(
    hash: u64,
    endpoints: &[EndpointView],
    fits: impl Fn(&EndpointView) -> bool,
) -> Option<usize> {
    (0..endpoints.len())
        .filter(|&index| fits(&endpoints[index]))
        .max_by_key(|&index| mix64(hash ^ endpoints[index].id.wrapping_mul(GOLDEN_GAMMA)))
}
