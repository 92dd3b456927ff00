//! The host's alerts: a task evaluates the `[[alert]]` rules every second (tokio time), and each
//! transition becomes a host event and a message `switchyard.alert.NAME` through the router,
//! so a route can send it to any destination.

use super::{Host, HostInner};
use crate::alert::{AckError, AlertStatus, EVALUATION_INTERVAL, Transition};
use crate::message::Message;
use crate::reload::HostEvent;
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::{Instant, MissedTickBehavior};

/// The topic of an alert's messages, before the rule's name.
pub const ALERT_TOPIC_PREFIX: &str = "switchyard.alert.";

impl Host {
    /// Every alert rule of the current config and where it stands, in config order.
    pub fn alerts(&self) -> Vec<AlertStatus> {
        self.sync_alerts();
        self.inner.alerts.statuses()
    }

    /// Acknowledge the firing alert `id` (its rule's name); its status. The flag is cleared
    /// when the alert resolves.
    pub fn acknowledge_alert(&self, id: &str) -> Result<AlertStatus, AckError> {
        self.sync_alerts();
        self.inner.alerts.acknowledge(id)
    }

    /// Make the current config's rules the book's (unchanged rules keep their state).
    fn sync_alerts(&self) {
        self.inner.alerts.sync(&self.config().alerts);
    }

    /// Evaluate every rule now; tell each transition.
    async fn evaluate_alerts(&self) {
        self.sync_alerts();
        let metrics = self.metrics();
        let read = |metric: &str, labels: &[(String, String)]| metrics.read(metric, labels);
        for transition in self.inner.alerts.evaluate(Instant::now(), SystemTime::now(), read) {
            self.inner.reloader.events.emit(HostEvent::Alert(transition.clone()));
            self.route_alert(&transition).await;
        }
    }

    /// Admit `transition` as a message when a route takes its topic. A refused one (the queue
    /// full, the host shutting down) is counted and logged: the transition is still in the event
    /// stream and `GET /v1/alerts`.
    async fn route_alert(&self, transition: &Transition) {
        let message = alert_message(transition);
        if self.inner.reloader.pipeline.topology.load().routes.route(&message).is_none() {
            return;
        }
        if let Err(error) = self.try_send(message).await {
            self.metrics().alert_message_refused();
            let (rule, state) = (&transition.rule, transition.state.name());
            tracing::error!(rule, state, %error, "alert message refused: the transition is in the event stream only");
        }
    }
}

/// The message telling `transition`: JSON with the rule, state, previous state, value, severity,
/// condition, summary, `seq` (its number: workers deliver in parallel, so messages may arrive out
/// of order) and `at` (Unix milliseconds), and headers naming the rule, state and severity.
pub(crate) fn alert_message(transition: &Transition) -> Message {
    let mut payload = serde_json::to_value(transition).expect("a transition serializes");
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |at| at.as_millis() as u64);
    let fields = payload.as_object_mut().expect("a transition is an object");
    fields.insert("at".into(), at.into());
    let severity = serde_json::to_value(transition.severity).expect("a severity serializes");
    Message::new(format!("{ALERT_TOPIC_PREFIX}{}", transition.rule), payload.to_string())
        .with_header("content-type", "application/json")
        .with_header("x-sy-alert", transition.rule.clone())
        .with_header("x-sy-alert-state", transition.state.name())
        .with_header("x-sy-alert-severity", severity.as_str().unwrap_or_default())
}

/// Start evaluating `host`'s alert rules every [`EVALUATION_INTERVAL`], until shutdown or the
/// last clone of the host is dropped.
pub(super) fn start(host: &Host) {
    let weak: Weak<HostInner> = Arc::downgrade(&host.inner);
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(EVALUATION_INTERVAL);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            Host { inner }.evaluate_alerts().await;
        }
    });
    *host.inner.alerting.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(task.abort_handle());
}
