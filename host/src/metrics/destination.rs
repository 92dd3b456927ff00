//! Counters of the parts of a network destination that a change to it builds anew: the connection
//! pools of its transport and its stream table. They count into series kept here, not in those
//! parts, so that a rebuilt destination counts on from where the old one was: a count that fell back
//! to 0 would read to Prometheus as a counter reset. They go when the destination, or the
//! endpoint, has left the configuration and its last instance has retired (see [`super::parts`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why a stream moved, as `switchyard_destination_stream_migrations_total` labels it.
const MIGRATION_REASONS: [&str; 3] = ["endpoint-down", "rebalance", "consistency-check"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    destination: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationReason {
    destination: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Destination {
    destination: String,
}

/// The families of pool waits and stream moves, every destination's.
#[derive(Clone, Debug, Default)]
pub(crate) struct DestinationCounters {
    pool_waits: Family<Endpoint, Counter>,
    stream_migrations: Family<MigrationReason, Counter>,
    stream_orphans: Family<Destination, Counter>,
}

impl DestinationCounters {
    pub(super) fn register(&self, registry: &mut Registry) {
        let help = "Connection acquisitions that waited for a free slot";
        registry.register("endpoint_pool_waits", help, self.pool_waits.clone());
        let help = "Streams moved to another endpoint, by reason";
        registry.register("destination_stream_migrations", help, self.stream_migrations.clone());
        let help = "Orphaned streams the consistency check found";
        registry.register("destination_stream_orphans_found", help, self.stream_orphans.clone());
    }

    /// The pool waits of `destination`'s endpoints.
    pub(super) fn pool_waits(&self, destination: &str) -> PoolWaits {
        PoolWaits { destination: destination.to_owned(), by_endpoint: self.pool_waits.clone() }
    }

    /// The stream counters of `destination`, its series made now (at 0).
    pub(super) fn streams(&self, destination: &str) -> StreamCounters {
        let moved = |reason: &str| {
            let labels = MigrationReason { destination: destination.into(), reason: reason.into() };
            self.stream_migrations.get_or_create_owned(&labels)
        };
        let orphans = Destination { destination: destination.into() };
        let [moved_endpoint_down, moved_rebalance, moved_repair] = MIGRATION_REASONS.map(moved);
        StreamCounters {
            moved_endpoint_down,
            moved_rebalance,
            moved_repair,
            orphans_found: self.stream_orphans.get_or_create_owned(&orphans),
        }
    }

    /// Remove the stream series of `destination` (see [`super::parts`]).
    pub(super) fn remove_destination(&self, destination: &str) {
        for reason in MIGRATION_REASONS {
            let labels = MigrationReason { destination: destination.into(), reason: reason.into() };
            self.stream_migrations.remove(&labels);
        }
        self.stream_orphans.remove(&Destination { destination: destination.into() });
    }

    /// Remove the pool waits series of `endpoint` of `destination` (see [`super::parts`]).
    pub(super) fn remove_endpoint(&self, destination: &str, endpoint: &str) {
        self.pool_waits.remove(&Endpoint { destination: destination.into(), endpoint: endpoint.into() });
    }
}

/// Where the connection pools of one destination count the acquisitions that waited for a free
/// slot (`switchyard_endpoint_pool_waits_total`): give it to [`Pools::count_waits`] when building
/// a transport.
///
/// [`Pools::count_waits`]: crate::transport::Pools::count_waits
#[derive(Clone, Debug)]
pub struct PoolWaits {
    destination: String,
    by_endpoint: Family<Endpoint, Counter>,
}

impl PoolWaits {
    /// The counter of the pool to `endpoint` (its address).
    pub(crate) fn endpoint(&self, endpoint: &str) -> Counter {
        let labels = Endpoint { destination: self.destination.clone(), endpoint: endpoint.to_owned() };
        self.by_endpoint.get_or_create_owned(&labels)
    }
}

/// The stream counters of one `affinity:header:KEY` destination.
#[derive(Clone, Debug)]
pub(crate) struct StreamCounters {
    /// Streams moved because their endpoint died or was removed.
    pub(crate) moved_endpoint_down: Counter,
    /// Streams moved to even out the load.
    pub(crate) moved_rebalance: Counter,
    /// Streams moved by the consistency check.
    pub(crate) moved_repair: Counter,
    /// Orphans (streams on dead or removed endpoints) the consistency check found.
    pub(crate) orphans_found: Counter,
}
