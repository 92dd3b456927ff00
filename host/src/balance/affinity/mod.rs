//! Stream affinity: each stream (the messages sharing a key) stays on one endpoint, under a bound on
//! every endpoint's share of the streams.
//!
//! The [`StreamTable`] is the whole algorithm and nothing else: pure and deterministic, it reads no
//! clock (the caller passes `now`, a [`Duration`] since an origin of its choosing), does no I/O and
//! takes no lock, so a simulation can drive it through hours of joins, deaths and idle streams in
//! milliseconds. The destination core wraps it in a lock, feeds it the time and turns the
//! [`Migration`]s it records into events.
//!
//! How a stream finds its endpoint: consistent hashing with bounded loads (Mirrokni, Thorup and
//! Zadimoghaddam, 2017; HAProxy's `hash-balance-factor`, Vimeo's use of it). The hash orders the
//! endpoints for each key (rendezvous hashing: the endpoint with the highest `hash(key, endpoint)`
//! first, so that an endpoint leaving or joining changes the order of no other pair), and a new
//! stream takes the first endpoint in that order still below its capacity,
//! `min(ceil(balance_factor × average), max_streams)`, where the average counts the new stream.
//! Once placed, a stream is recorded and keeps its endpoint while that endpoint stays eligible: a
//! later change of capacities or endpoints moves it only through the rules below.
//!
//! Streams are placed on and moved to endpoints that serve ([`Standing::Serving`]) only: an eligible
//! endpoint that is only being tried (half-open, or admitted by panic mode or the ejection cap,
//! [`Standing::Forced`]) keeps the streams it has.
//!
//! - An endpoint that dies (turns ineligible: health, breaker) or is removed: each of its streams is
//!   placed again at once, as a new stream would be ([`MigrationReason::EndpointDown`]). While no
//!   endpoint serves, they stay where they are; a message of such a stream probes an endpoint on trial
//!   ([`Standing::OnTrial`]) or forced, the stream moving there, and once the probe is out the
//!   others wait for its verdict. A full outage moves one stream per probe, not every stream.
//! - An endpoint on trial while others serve: the next message of a stream of theirs is its probe
//!   (the stream moves there as a rebalance, within `migrate_per_s`); once it serves, the rules
//!   below bring it its share. A forced endpoint takes no stream while others serve: no message
//!   there would find out whether it is back.
//! - An endpoint joins or returns, or the spread passes the bound (an endpoint above its capacity, or
//!   one below `floor(average / balance_factor)` while another has more than that plus one): streams
//!   move one at a time from the most loaded endpoint to the least loaded, at most `migrate_per_s` in
//!   any second, until neither holds ([`MigrationReason::Rebalance`]). Meanwhile new streams go to the
//!   least loaded endpoint rather than their hash order's first with room.
//! - A stream unseen for `idle_timeout` ends and leaves the table (at most 1/16 of the timeout late),
//!   unless a message of it is under way ([`StreamTable::hold`]): then it is seen when that ends.
//! - The table holds at most `max_streams_tracked` streams; a stream beyond them is not recorded and
//!   goes to its hash order's first endpoint that serves (while none does, the first eligible one),
//!   without a bound (counted as `untracked`).
//!
//! [`StreamTable::verify`] checks the table against itself and the endpoints: streams on dead or
//! removed endpoints while another serves (orphans), streams listed under two endpoints
//! (duplicates), streams the per-endpoint index lost, and endpoints over capacity. It repairs what
//! it finds and says so in a [`ConsistencyReport`]; [`StreamTable::verify_some`] does the same a chunk
//! at a time, so that the caller can let the table go between chunks.
//!
//! [`Standing::Serving`]: super::Standing::Serving
//! [`Standing::OnTrial`]: super::Standing::OnTrial
//! [`Standing::Forced`]: super::Standing::Forced

mod check;
mod policy;
mod recent;
mod table;

#[cfg(test)]
mod tests;

pub use check::{ConsistencyCheck, ConsistencyReport, Misplaced, OverCapacity};
pub use policy::{AffinityPolicy, DEFAULT_BALANCE_FACTOR};
pub use recent::RecentStream;
pub use table::{AffinityStats, Migration, MigrationReason, Stream, StreamTable};

use std::time::Duration;
