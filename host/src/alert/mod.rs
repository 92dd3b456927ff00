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
