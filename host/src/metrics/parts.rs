//! The series labelled by a part of the configuration — a route, a destination, an endpoint of
//! one, the transport of one — live while an instance of that part does. Each instance a topology
//! builds holds its part's series ([`HeldSeries`], taken before it makes the handles that count
//! into them), and they are removed with the last holder: once the part has left the configuration
//! and its last instance has retired, that instance's deliveries ended and counted. So `/metrics`
//! does not keep the series of every endpoint address a configuration ever listed. A reload builds
//! the new instance of a part it keeps while the old instance still holds the series: they count
//! on, never reset.

use super::{
    ATTEMPT_OUTCOMES, BREAKER_STATES, DELIVERY_RESULTS, DestinationName, DestinationResult, EndpointOutcome,
    EndpointTransition, Metrics, RouteName, RouteOutcome, SETTLED, TransportDestination, TransportOutcome,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// A part of the configuration that series are labelled by.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) enum Part {
    Route(String),
    Destination(String),
    /// An endpoint (its address) of a destination.
    Endpoint {
        destination: String,
        endpoint: String,
    },
    /// The transport (its name as configured) of a destination.
    Transport {
        transport: String,
        destination: String,
    },
}

/// How many holders the series of each part have now.
pub(super) type Holders = Mutex<HashMap<Part, usize>>;

/// Keeps the series of one part while it, or a clone of it, lives: it travels with the handles
/// that count into them.
#[derive(Clone, Debug)]
pub(crate) struct HeldSeries(#[expect(dead_code, reason = "held for its drop")] Arc<Holder>);

#[derive(Debug)]
struct Holder {
    part: Part,
    metrics: Weak<Metrics>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics.upgrade() {
            metrics.release(&self.part);
        }
    }
}

impl Metrics {
    /// Hold the series of `part`, before making the handles that count into them: were the last
    /// holder dropped in between, those handles would count into series no scrape shows.
    pub(super) fn hold(self: &Arc<Self>, part: Part) -> HeldSeries {
        let mut holders = self.part_holders.lock().unwrap_or_else(|poison| poison.into_inner());
        *holders.entry(part.clone()).or_default() += 1;
        HeldSeries(Arc::new(Holder { part, metrics: Arc::downgrade(self) }))
    }

    /// Hold the series of `destination`, as its instance does before making their handles
    /// ([`Metrics::retries`], [`Metrics::streams`]).
    pub(crate) fn hold_destination(self: &Arc<Self>, destination: &str) -> HeldSeries {
        self.hold(Part::Destination(destination.to_owned()))
    }

    /// A holder of `part`'s series is gone: the last one removes them. Under the lock, so that a
    /// holder taken meanwhile makes its handles after the removal, into new series.
    fn release(&self, part: &Part) {
        let mut holders = self.part_holders.lock().unwrap_or_else(|poison| poison.into_inner());
        let Some(held) = holders.get_mut(part) else { return };
        *held -= 1;
        if *held == 0 {
            holders.remove(part);
            self.remove_series(part);
        }
    }

    /// Remove every series labelled by `part`.
    fn remove_series(&self, part: &Part) {
        match part {
            Part::Route(route) => {
                let name = RouteName { route: route.clone() };
                self.route_accepted.remove(&name);
                self.route_latency.remove(&name);
                for outcome in SETTLED {
                    self.route_messages
                        .remove(&RouteOutcome { route: route.clone(), outcome: outcome.into() });
                }
                self.remove_dead_letters(route);
            }
            Part::Destination(destination) => {
                for result in DELIVERY_RESULTS {
                    let labels =
                        DestinationResult { destination: destination.clone(), result: result.into() };
                    self.deliveries.remove(&labels);
                }
                let name = DestinationName { destination: destination.clone() };
                self.retries.remove(&name);
                self.fallbacks.remove(&name);
                self.destination_counters.remove_destination(destination);
            }
            Part::Endpoint { destination, endpoint } => {
                for outcome in ATTEMPT_OUTCOMES {
                    self.attempts.remove(&EndpointOutcome {
                        destination: destination.clone(),
                        endpoint: endpoint.clone(),
                        outcome: outcome.into(),
                    });
                }
                for to in BREAKER_STATES {
                    self.breaker_transitions.remove(&EndpointTransition {
                        destination: destination.clone(),
                        endpoint: endpoint.clone(),
                        to: to.into(),
                    });
                }
                self.destination_counters.remove_endpoint(destination, endpoint);
            }
            Part::Transport { transport, destination } => {
                for outcome in ATTEMPT_OUTCOMES {
                    self.transport_attempts.remove(&TransportOutcome {
                        transport: transport.clone(),
                        destination: destination.clone(),
                        outcome: outcome.into(),
                    });
                }
                let labels =
                    TransportDestination { transport: transport.clone(), destination: destination.clone() };
                self.transport_latency.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_s_series_go_with_its_last_holder_and_a_holder_taken_before_keeps_them() {
        let metrics = Arc::new(Metrics::new(true));
        let first = metrics.endpoint("api", "a:1");
        first.attempts[0].inc();
        let rebuilt = metrics.endpoint("api", "a:1");
        drop(first);
        rebuilt.attempts[0].inc();
        let shown = |metrics: &Metrics| metrics.encode().contains("endpoint=\"a:1\"");
        assert!(shown(&metrics), "kept by the instance rebuilt");
        assert!(metrics.encode().contains("endpoint=\"a:1\",outcome=\"ok\"} 2"), "counting on");
        drop(rebuilt);
        assert!(!shown(&metrics), "gone with the last holder");
        assert!(metrics.part_holders.lock().unwrap().is_empty());
    }
}
