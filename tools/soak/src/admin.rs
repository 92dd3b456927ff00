//! What the driver reads from the host's admin API.

use crate::client::get;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The priority `GET /v1/routes` shows for the route `name`.
pub async fn route_priority(admin: SocketAddr, name: &str) -> anyhow::Result<Option<u64>> {
    let (status, body) = get(admin, "/v1/routes").await?;
    if !status.is_success() {
        bail!("GET /v1/routes: {status}");
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    let routes = answer["routes"].as_array().context("no routes in /v1/routes")?;
    let route =
        routes.iter().find(|route| route["name"] == name).with_context(|| format!("no route {name}"))?;
    Ok(route["priority"].as_u64())
}

/// Whether `GET /ready` answers 200.
pub async fn ready(admin: SocketAddr) -> bool {
    get(admin, "/ready").await.is_ok_and(|(status, _)| status.is_success())
}

/// `switchyard_host_events_total` by event, from `GET /metrics`.
pub async fn event_counts(admin: SocketAddr) -> anyhow::Result<BTreeMap<String, u64>> {
    let (status, body) = get(admin, "/metrics").await?;
    if !status.is_success() {
        bail!("GET /metrics: {status}");
    }
    Ok(events_in(&String::from_utf8_lossy(&body)))
}

fn events_in(exposition: &str) -> BTreeMap<String, u64> {
    let prefix = "switchyard_host_events_total{event=\"";
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(prefix)?.split_once("\"} "))
        .filter_map(|(event, value)| Some((event.to_owned(), value.trim().parse::<f64>().ok()? as u64)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::events_in;

    #[test]
    fn host_events_are_read_from_the_exposition_and_other_lines_ignored() {
        let text = "# TYPE switchyard_host_events_total counter\n\
                    switchyard_host_events_total{event=\"plugin-replaced\"} 12\n\
                    switchyard_host_events_total{event=\"config-applied\"} 3.0\n\
                    switchyard_messages_accepted_total 7\n";
        let events = events_in(text);
        assert_eq!(events.len(), 2);
        assert_eq!(events["plugin-replaced"], 12);
        assert_eq!(events["config-applied"], 3);
    }
}
