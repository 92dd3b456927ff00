//! What a route's counters hold at one moment, for the admin API's history
//! to turn into rates (without encoding and parsing the exposition).

use super::{HistogramTotals, Metrics, RouteName, RouteOutcome};

/// A route's counters read at one moment; all zero when metrics are off.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RouteTotals {
    /// Messages matched to the route.
    pub(crate) accepted: u64,
    /// Messages settled: delivered, filtered or responded.
    pub(crate) settled: u64,
    /// Admission-to-settlement latencies.
    pub(crate) latency: HistogramTotals,
}

impl Metrics {
    /// The counters of `route` now.
    pub(crate) fn route_totals(&self, route: &str) -> RouteTotals {
        if !self.enabled {
            return RouteTotals::default();
        }
        let outcome = |outcome: &str| {
            let labels = RouteOutcome { route: route.into(), outcome: outcome.into() };
            self.route_messages.get(&labels).map_or(0, |counter| counter.get())
        };
        let name = RouteName { route: route.into() };
        RouteTotals {
            accepted: self.route_accepted.get(&name).map_or(0, |counter| counter.get()),
            settled: ["delivered", "filtered", "responded"].map(outcome).iter().sum(),
            latency: self.route_latency.get(&name).map(|histogram| histogram.totals()).unwrap_or_default(),
        }
    }
}
