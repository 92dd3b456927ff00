//! The host's alerts: a task evaluates the `[[alert]]` rules every second (tokio time), and each
//! transition becomes a host event and a message `switchyard.alert.NAME` through the router,
//! so a route can send it to any destination. Evaluation never waits for a message's admission (a
//! spool commit on a hung disk): a task of their own admits the messages, in order.

use super::{Host, HostInner};
use crate::alert::{AckError, AlertStatus, EVALUATION_INTERVAL, Transition};
use crate::message::Message;
use crate::reload::HostEvent;
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

/// The topic of an alert's messages, before the rule's name.
pub const ALERT_TOPIC_PREFIX: &str = "switchyard.alert.";

/// Alert messages waiting for their admission, at most: a transition's message past them (the
/// spool has hung on the ones before) is refused, counted and logged rather than waited for.
const WAITING_ALERT_MESSAGES: usize = 1024;

/// A transition and its message, on their way to admission.
type AlertMessage = (Transition, Message);

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

    /// Evaluate every rule now; tell each transition: its event at once, its message handed to
    /// `admission`.
    fn evaluate_alerts(&self, admission: &mpsc::Sender<AlertMessage>) {
        self.sync_alerts();
        let metrics = self.metrics();
        let read = |metric: &str, labels: &[(String, String)]| metrics.read(metric, labels);
        for transition in self.inner.alerts.evaluate(Instant::now(), SystemTime::now(), read) {
            self.inner.reloader.events.emit(HostEvent::Alert(transition.clone()));
            self.route_alert(transition, admission);
        }
    }

    /// Hand `transition`'s message to `admission` when a route takes its topic, without waiting:
    /// with [`WAITING_ALERT_MESSAGES`] waiting already it is refused.
    fn route_alert(&self, transition: Transition, admission: &mpsc::Sender<AlertMessage>) {
        let message = alert_message(&transition);
        if self.inner.reloader.pipeline.topology.load().routes.route(&message).is_none() {
            return;
        }
        match admission.try_send((transition, message)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((transition, _))) => {
                let waiting = WAITING_ALERT_MESSAGES;
                self.refuse_alert(
                    &transition,
                    &format!("{waiting} alert messages wait for admission already"),
                );
            }
            Err(mpsc::error::TrySendError::Closed((transition, _))) => {
                self.refuse_alert(&transition, &"alert messages are no longer admitted");
            }
        }
    }

    /// Count and log that `transition`'s message was refused (for `why`): the transition is still
    /// in the event stream and `GET /v1/alerts`.
    fn refuse_alert(&self, transition: &Transition, why: &dyn std::fmt::Display) {
        self.metrics().alert_message_refused();
        let (rule, state) = (&transition.rule, transition.state.name());
        tracing::error!(rule, state, error = %why, "alert message refused: the transition is in the event stream only");
    }
}

/// Admit each alert message of `admission`, in order, once the one before was admitted or
/// refused (the queue full, the spool refusing it, the host shutting down: counted and logged),
/// until every sender is gone; the messages of a host dropped meanwhile are dropped with it.
async fn admit_alert_messages(host: Weak<HostInner>, mut admission: mpsc::Receiver<AlertMessage>) {
    while let Some((transition, message)) = admission.recv().await {
        let Some(inner) = host.upgrade() else { return };
        let host = Host { inner };
        if let Err(error) = host.try_accept(message, true).await {
            host.refuse_alert(&transition, &error);
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
/// last clone of the host is dropped, and admitting their messages until the evaluation stopped
/// and those handed over before are admitted (or refused).
pub(super) fn start(host: &Host) {
    let weak: Weak<HostInner> = Arc::downgrade(&host.inner);
    let (admission, waiting) = mpsc::channel(WAITING_ALERT_MESSAGES);
    tokio::spawn(admit_alert_messages(weak.clone(), waiting));
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(EVALUATION_INTERVAL);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            Host { inner }.evaluate_alerts(&admission);
        }
    });
    *host.inner.alerting.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(task.abort_handle());
}
