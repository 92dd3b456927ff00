//! Gauges of the running host's destinations, read when `/metrics` is
//! scraped (queue depths, requests in flight, endpoints serving, pooled
//! connections, streams on each endpoint): the message path pays nothing for them.
//! Counters are not read here: a reload that rebuilds a destination would
//! start them again at 0 (see [`super::destination`]).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::OnceLock;

/// What a scrape shows of one destination.
pub(crate) struct DestinationGauges {
    pub(crate) destination: String,
    /// Messages waiting in its queue (network destinations).
    pub(crate) queued: Option<usize>,
    pub(crate) endpoints: Vec<EndpointGauges>,
    /// Its stream table (`affinity:header:KEY` destinations).
    pub(crate) streams: Option<crate::destination::StreamsSummary>,
}

/// What a scrape shows of one endpoint.
pub(crate) struct EndpointGauges {
    pub(crate) endpoint: String,
    pub(crate) in_flight: u32,
    /// Neither down by health checks nor ejected by its breaker.
    pub(crate) serving: bool,
    /// Its pool: connections open and idle.
    pub(crate) pool: Option<(usize, usize)>,
}

/// Reads the gauges of the host's destinations now.
pub(crate) type GaugeSource = Box<dyn Fn() -> Vec<DestinationGauges> + Send + Sync>;

/// The collector registered with the host's registry; its source is set
/// once the host is built.
#[derive(Default)]
pub(crate) struct ScrapeGauges(pub(crate) OnceLock<GaugeSource>);

impl std::fmt::Debug for ScrapeGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeGauges").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Destination {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Endpoint {
    destination: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    destination: String,
    endpoint: String,
    state: String,
}

impl Collector for ScrapeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.0.get() else { return Ok(()) };
        let queued = Family::<Destination, Gauge>::default();
        let (in_flight, serving) =
            (Family::<Endpoint, Gauge>::default(), Family::<Endpoint, Gauge>::default());
        let connections = Family::<PoolState, Gauge>::default();
        let streams = Family::<Endpoint, Gauge>::default();
        for destination in source() {
            if let Some(summary) = &destination.streams {
                for on in &summary.endpoints {
                    let labels = Endpoint {
                        destination: destination.destination.clone(),
                        endpoint: on.endpoint.clone(),
                    };
                    streams.get_or_create(&labels).set(on.streams as i64);
                }
            }
            if let Some(depth) = destination.queued {
                queued
                    .get_or_create(&Destination { destination: destination.destination.clone() })
                    .set(depth as i64);
            }
            for gauges in destination.endpoints {
                let labels =
                    Endpoint { destination: destination.destination.clone(), endpoint: gauges.endpoint };
                in_flight.get_or_create(&labels).set(gauges.in_flight.into());
                serving.get_or_create(&labels).set(i64::from(gauges.serving));
                let Some((open, idle)) = gauges.pool else { continue };
                for (state, count) in [("open", open), ("idle", idle)] {
                    let Endpoint { destination, endpoint } = labels.clone();
                    let state = PoolState { destination, endpoint, state: state.into() };
                    connections.get_or_create(&state).set(count as i64);
                }
            }
        }
        let families: [(&str, &str, &dyn EncodeMetric); 5] = [
            ("endpoint_streams", "Streams on an endpoint (affinity balancer)", &streams),
            ("destination_queued", "Messages waiting in a destination's queue", &queued),
            ("endpoint_in_flight", "Requests in flight to an endpoint", &in_flight),
            ("endpoint_serving", "1 while an endpoint is neither down nor ejected", &serving),
            (
                "endpoint_pool_connections",
                "Pooled connections to an endpoint, by state (open, idle)",
                &connections,
            ),
        ];
        for (name, help, family) in families {
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        Ok(())
    }
}
