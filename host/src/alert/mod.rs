//! Alerts: rules from `[[alert]]` evaluated in the host, each a small state machine
//! (inactive → pending → firing → resolved, and firing again) stepped by explicit observations,
//! so tests drive it with a paused clock.
//!
//! The [`AlertBook`] holds the rules and their states; the host evaluates it every second,
//! emits each [`Transition`] as a host event and routes it as a message. Firing alerts are kept
//! in the state directory across restarts (`saved`).

mod book;
mod rule;
mod saved;

pub use book::{AckError, AlertBook};
pub use rule::Transition;

use crate::config::Severity;

/// How often the host evaluates its alert rules.
pub const EVALUATION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an alert taken up firing after a restart fires on whatever the host reads: what it
/// reads right after a start is not yet evidence (an endpoint not health-checked yet reads up,
/// a breaker that would eject it has seen no traffic). The longest any of `destinations`' health
/// checks take to find an endpoint down (`fall` checks, `interval_ms` apart, the last within its
/// `timeout_ms`), and two evaluations at least.
pub fn settling_time(destinations: &[crate::config::DestinationConfig]) -> std::time::Duration {
    let checks = destinations.iter().filter_map(|destination| destination.health.as_ref());
    let detection = checks.map(|health| {
        let interval = std::time::Duration::from_millis(health.interval_ms);
        interval * health.fall + std::time::Duration::from_millis(health.timeout_ms)
    });
    detection.fold(EVALUATION_INTERVAL * 2, std::time::Duration::max)
}

/// Where an alert rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Its condition does not hold (or it never held).
    Inactive,
    /// Its condition holds, not yet for `for_s`.
    Pending,
    /// Its condition has held for `for_s`.
    Firing,
    /// It fired, and its condition no longer holds.
    Resolved,
}

impl AlertState {
    /// Its lowercase name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// What `GET /v1/alerts` shows of one rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlertStatus {
    /// Its id (its name: unique, URL- and topic-safe).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its condition, as written.
    pub when: String,
    /// Seconds the condition must hold before it fires.
    pub for_s: u64,
    /// How bad it is.
    pub severity: Severity,
    /// Where it stands.
    pub state: AlertState,
    /// When it entered that state: milliseconds since the Unix epoch (`None` while inactive since
    /// the rule was loaded).
    pub since: Option<u64>,
    /// The value read at the last evaluation (`None` before the first, or when nothing could be
    /// read: a gauge with no series, a rate without two samples yet).
    pub value: Option<f64>,
    /// Whether someone acknowledged it while firing (cleared when it resolves).
    pub acknowledged: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn settling_takes_as_long_as_the_slowest_health_checks_take_to_find_an_endpoint_down() {
        let config = |health: &str| {
            let text = format!(
                "[[destination]]\nname = \"a\"\ntransport = \"http\"\nendpoints = [\"127.0.0.1:1\"]\n{health}\n\
                 [[destination]]\nname = \"b\"\ntransport = \"memory\"\n"
            );
            Config::from_toml("t", &text).unwrap()
        };
        assert_eq!(settling_time(&config("").destinations), EVALUATION_INTERVAL * 2);
        let checked = config("health = { interval_ms = 2000, timeout_ms = 700, fall = 4 }");
        assert_eq!(settling_time(&checked.destinations), Duration::from_millis(8_700));
    }
}
