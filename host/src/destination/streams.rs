//! What the admin API and the metrics show of the streams of an `affinity:header:KEY` destination.

use crate::balance::AffinityStats;

/// The summary of a destination's stream table, in `GET /v1/destinations`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StreamsSummary {
    /// Streams recorded now.
    pub active: usize,
    /// The most streams an endpoint alive now may hold.
    pub capacity: usize,
    /// Streams on each endpoint, in the destination's order.
    pub endpoints: Vec<EndpointStreams>,
    /// Moves, findings of the consistency check, idle ends and untracked picks so far.
    pub counts: AffinityStats,
}

/// Streams on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStreams {
    /// The endpoint's address.
    pub endpoint: String,
    /// Streams on it.
    pub streams: usize,
}

/// One row of `GET /v1/destinations/{name}/streams`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamStatus {
    /// The stream's key (the header's value).
    pub stream: String,
    /// The endpoint it is on.
    pub endpoint: String,
    /// How long it has been on that endpoint, milliseconds.
    pub on_endpoint_ms: u64,
    /// Its messages so far, each counted once however many attempts it took.
    pub messages: u64,
    /// How long since its last message, milliseconds.
    pub idle_ms: u64,
}

/// A stream the consistency check found where it should not be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamFinding {
    /// The stream's key.
    pub stream: String,
    /// The endpoint it was found on (its address, or its id in hex when no longer configured).
    pub endpoint: String,
}

/// What `POST /v1/destinations/{name}/streams/verify` answers: the consistency check's report
/// (see [`ConsistencyReport`](crate::balance::ConsistencyReport)) with endpoints named by address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StreamCheck {
    /// Streams recorded when the check began.
    pub streams: usize,
    /// Streams on dead or removed endpoints, moved.
    pub orphans: Vec<StreamFinding>,
    /// Extra listings of streams, removed.
    pub duplicates: Vec<StreamFinding>,
    /// Streams missing from their endpoint's list, listed again.
    pub unlisted: Vec<StreamFinding>,
    /// The capacity of each endpoint alive.
    pub capacity: usize,
    /// Endpoints above it, left to the gradual migration.
    pub over_capacity: Vec<EndpointStreams>,
    /// Findings repaired.
    pub repaired: usize,
}
