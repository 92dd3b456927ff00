//! Reading metric values inside the host, without encoding the exposition: what alert rules
//! watch. Each readable metric is named as in `/metrics` without the `switchyard_` prefix and the
//! `_total` suffix, and selected by equality on its labels.

use super::Metrics;

/// A metric alert rules may watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable {
    /// Its name, e.g. `dead_letters`.
    pub name: &'static str,
    /// The labels that select its series.
    pub labels: &'static [&'static str],
    /// Whether it only counts up (so `rate(..)` applies to it).
    pub counter: bool,
}

/// Every metric alert rules may watch.
pub const READABLE: [Readable; 9] = [
    Readable { name: "dead_letters", labels: &["route", "reason"], counter: true },
    Readable { name: "dead_letters_lost", labels: &[], counter: true },
    Readable { name: "messages_accepted", labels: &[], counter: true },
    Readable { name: "plugin_faults", labels: &["plugin"], counter: true },
    Readable { name: "destination_queued", labels: &["destination"], counter: false },
    Readable { name: "endpoint_serving", labels: &["destination", "endpoint"], counter: false },
    Readable { name: "endpoint_down", labels: &["destination", "endpoint"], counter: false },
    Readable { name: "spool_depth", labels: &[], counter: false },
    Readable { name: "spool_oldest_age_seconds", labels: &[], counter: false },
];

/// What the spool holds now: messages, and the age of the oldest in milliseconds (`None` with
/// `durability = "memory"`).
pub(crate) type SpoolSource = Box<dyn Fn() -> Option<(u64, Option<u64>)> + Send + Sync>;

/// One series: its labels (name, value) and its value.
type Series = (Vec<(&'static str, String)>, f64);

impl Metrics {
    /// The sum of the series of `metric` whose labels equal all of `selector` (pairs of label
    /// name and value), now. A counter reads 0 before its first count; a gauge reads `None` when
    /// no series matches (an unknown destination, the spool with `durability = "memory"`), as
    /// does a metric not in [`READABLE`].
    pub fn read(&self, metric: &str, selector: &[(String, String)]) -> Option<f64> {
        let readable = READABLE.iter().find(|readable| readable.name == metric)?;
        let matching: Vec<f64> = self
            .series(metric)
            .into_iter()
            .filter(|(labels, _)| {
                selector.iter().all(|(name, value)| labels.iter().any(|(n, v)| n == name && v == value))
            })
            .map(|(_, value)| value)
            .collect();
        match (matching.is_empty(), readable.counter) {
            (true, true) => Some(0.0),
            (true, false) => None,
            (false, _) => Some(matching.iter().sum()),
        }
    }

    /// Read the spool's depth and oldest age from `source` (once).
    pub(crate) fn watch_spool(&self, source: SpoolSource) {
        let _ = self.spool_source.set(source);
    }

    /// Every series of `metric` now.
    fn series(&self, metric: &str) -> Vec<Series> {
        let destinations = || self.gauges.0.get().map(|source| source()).unwrap_or_default();
        let endpoints = |serving: f64| -> Vec<Series> {
            let all = destinations().into_iter().flat_map(|destination| {
                let name = destination.destination;
                destination.endpoints.into_iter().map(move |endpoint| {
                    let labels = vec![("destination", name.clone()), ("endpoint", endpoint.endpoint)];
                    (labels, if endpoint.serving { serving } else { 1.0 - serving })
                })
            });
            all.collect()
        };
        let spool = || self.spool_source.get().and_then(|source| source());
        match metric {
            "dead_letters" => {
                let read = self.read_dead_letters.lock().unwrap_or_else(|poison| poison.into_inner());
                let series = read.iter().map(|(labels, count)| {
                    let pairs = vec![("route", labels.route.clone()), ("reason", labels.reason.clone())];
                    (pairs, *count as f64)
                });
                let retired = self.retired_dead_letters.lock().unwrap_or_else(|poison| poison.into_inner());
                let retired =
                    retired.iter().map(|(reason, count)| (vec![("reason", reason.clone())], *count as f64));
                series.chain(retired).collect()
            }
            "messages_accepted" => vec![(vec![], self.accepted.get() as f64)],
            "dead_letters_lost" => vec![(vec![], self.dead_letters_lost.get() as f64)],
            "plugin_faults" => {
                let faulted: Vec<String> = self
                    .last_faults
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                let series = faulted.into_iter().map(|plugin| {
                    let faults = self.plugin_counts(&plugin).faults() as f64;
                    (vec![("plugin", plugin)], faults)
                });
                let forgotten = self.forgotten_plugin_faults.load(std::sync::atomic::Ordering::Relaxed);
                series.chain([(vec![], forgotten as f64)]).collect()
            }
            "destination_queued" => destinations()
                .into_iter()
                .filter_map(|d| Some((vec![("destination", d.destination)], d.queued? as f64)))
                .collect(),
            "endpoint_serving" => endpoints(1.0),
            "endpoint_down" => endpoints(0.0),
            "spool_depth" => spool().map(|(depth, _)| (vec![], depth as f64)).into_iter().collect(),
            "spool_oldest_age_seconds" => {
                let age = spool().map(|(_, age)| age.map_or(0.0, |ms| ms as f64 / 1000.0));
                age.map(|age| (vec![], age)).into_iter().collect()
            }
            _ => vec![],
        }
    }

    /// Count an alert message the host's queue refused (it was full, or the host shutting down).
    pub(crate) fn alert_message_refused(&self) {
        self.alert_messages_refused.inc();
    }

    /// Alert messages the host's queue refused so far.
    pub fn alert_messages_refused(&self) -> u64 {
        self.alert_messages_refused.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{DestinationGauges, EndpointGauges};

    #[test]
    fn counters_read_zero_before_their_first_count_and_sum_the_selected_series() {
        let metrics = Metrics::new(true);
        assert_eq!(metrics.read("dead_letters", &[]), Some(0.0));
        metrics.dead_letter(Some("orders"), "no-route", false);
        metrics.dead_letter(Some("orders"), "rejected", false);
        metrics.dead_letter(Some("audit"), "rejected", false);
        assert_eq!(metrics.read("dead_letters", &[]), Some(3.0));
        let orders = [("route".to_owned(), "orders".to_owned())];
        assert_eq!(metrics.read("dead_letters", &orders), Some(2.0));
        let unknown = [("route".to_owned(), "nowhere".to_owned())];
        assert_eq!(metrics.read("dead_letters", &unknown), Some(0.0));
        assert_eq!(metrics.read("no_such_metric", &[]), None);
    }

    #[test]
    fn an_alert_message_s_dead_letters_count_in_the_exposition_but_not_where_alert_rules_read() {
        let metrics = std::sync::Arc::new(Metrics::new(true));
        let alerts = metrics.route("alerts");
        metrics.dead_letter(Some("alerts"), "delivery-failed", true);
        metrics.dead_letter(Some("alerts"), "delivery-failed", false);
        metrics.dead_letter(Some("alerts"), "no-route", true);
        let exposition = metrics.encode();
        let failed = "switchyard_dead_letters_total{route=\"alerts\",reason=\"delivery-failed\"} 2";
        assert!(exposition.contains(failed), "{exposition}");
        assert_eq!(metrics.read("dead_letters", &[]), Some(1.0));
        let no_route = [("reason".into(), "no-route".into())];
        assert_eq!(metrics.read("dead_letters", &no_route), Some(0.0));
        drop(alerts);
        assert!(!metrics.encode().contains("route=\"alerts\""), "{}", metrics.encode());
        assert_eq!(
            metrics.read("dead_letters", &[]),
            Some(1.0),
            "a removed route's letters as they were read"
        );
    }

    #[test]
    fn a_removed_route_s_dead_letters_leave_the_exposition_but_not_the_sum_alert_rules_read() {
        let metrics = std::sync::Arc::new(Metrics::new(true));
        let orders = metrics.route("orders");
        metrics.dead_letter(Some("orders"), "rejected", false);
        metrics.dead_letter(Some("audit"), "rejected", false);
        drop(orders);
        assert!(!metrics.encode().contains("route=\"orders\""), "{}", metrics.encode());
        assert_eq!(metrics.read("dead_letters", &[]), Some(2.0));
        assert_eq!(metrics.read("dead_letters", &[("reason".into(), "rejected".into())]), Some(2.0));
        assert_eq!(metrics.read("dead_letters", &[("route".into(), "orders".into())]), Some(0.0));
    }

    #[test]
    fn gauges_read_none_without_a_series_and_endpoints_down_count_the_not_serving() {
        let metrics = Metrics::new(true);
        assert_eq!(metrics.read("endpoint_down", &[]), None);
        assert_eq!(metrics.read("spool_oldest_age_seconds", &[]), None);
        metrics.watch_destinations(Box::new(|| {
            let endpoint = |endpoint: &str, serving| EndpointGauges {
                endpoint: endpoint.into(),
                in_flight: 0,
                serving,
                pool: None,
            };
            vec![DestinationGauges {
                destination: "api".into(),
                queued: Some(7),
                endpoints: vec![endpoint("a:1", true), endpoint("b:1", false), endpoint("c:1", false)],
                streams: None,
            }]
        }));
        metrics.watch_spool(Box::new(|| Some((4, Some(2500)))));
        assert_eq!(metrics.read("endpoint_down", &[]), Some(2.0));
        assert_eq!(metrics.read("endpoint_serving", &[("destination".into(), "api".into())]), Some(1.0));
        assert_eq!(metrics.read("destination_queued", &[]), Some(7.0));
        assert_eq!(metrics.read("destination_queued", &[("destination".into(), "x".into())]), None);
        assert_eq!(metrics.read("spool_oldest_age_seconds", &[]), Some(2.5));
        assert_eq!(metrics.read("spool_depth", &[]), Some(4.0));
    }
}
