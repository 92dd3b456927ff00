//! Why a message was dead-lettered, and the headers that say so.

use crate::destination::DeliveryError;
use crate::message::Message;
use crate::plugin::{PluginError, PluginFault};

/// Header naming the dead-letter reason's stable code, e.g. `plugin-trapped`.
pub const REASON_CODE_HEADER: &str = "x-sy-dead-letter";
/// Header carrying the full human-readable reason.
pub const REASON_HEADER: &str = "x-sy-dead-letter-reason";
/// Header naming the route the message was on, when it had one.
pub const ROUTE_HEADER: &str = "x-sy-route";
/// Header counting the attempts a network destination made before it gave up (`delivery-failed`).
pub const ATTEMPTS_HEADER: &str = "x-sy-attempts";
/// Header carrying the last attempt's error, after its endpoint's address (`delivery-failed`).
pub const LAST_ERROR_HEADER: &str = "x-sy-last-error";

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// No route matched the message.
    #[error("no route matches topic \"{topic}\"")]
    NoRoute {
        /// The message's topic.
        topic: String,
    },
    /// A plugin answered with an error for this message.
    #[error("plugin \"{plugin}\" ({version}) {error}")]
    PluginError {
        /// Plugin name.
        plugin: String,
        /// Plugin version (short digest), or `native`.
        version: String,
        /// Its answer.
        error: PluginError,
    },
    /// A plugin misbehaved while handling the message.
    #[error("plugin \"{plugin}\" ({version}) {fault}")]
    PluginFault {
        /// Plugin name.
        plugin: String,
        /// Plugin version (short digest).
        version: String,
        /// What it did.
        fault: PluginFault,
    },
    /// A route names a stage that is not available.
    #[error("stage \"{stage}\" is unavailable: {problem}")]
    StageUnavailable {
        /// The stage as written in the route.
        stage: String,
        /// Why it cannot run.
        problem: String,
    },
    /// A stage written in Rust panicked on the message.
    #[error("stage \"{stage}\" panicked: {panic}")]
    StagePanicked {
        /// The stage as written in the route.
        stage: String,
        /// The panic's message.
        panic: String,
    },
    /// The host's stop passed its grace period before the message's route had run its stages
    /// (a stage too slow, or a backlog behind one): the rest are not run.
    #[error("the host shut down before its route's stages were done with it (past host.shutdown_grace_ms)")]
    Shutdown,
    /// The destination refused or failed.
    #[error("destination \"{destination}\": {error}")]
    Delivery {
        /// Destination name.
        destination: String,
        /// Its error.
        error: DeliveryError,
    },
}

impl DeadLetterReason {
    /// A stable, machine-readable code for the reason.
    pub fn code(&self) -> &'static str {
        match self {
            DeadLetterReason::NoRoute { .. } => "no-route",
            DeadLetterReason::PluginError { error, .. } => match error {
                PluginError::Rejected(_) => "plugin-rejected",
                PluginError::Retryable(_) => "plugin-retryable",
                PluginError::Failed(_) => "plugin-failed",
            },
            DeadLetterReason::PluginFault { fault, .. } => match fault {
                PluginFault::Trapped(_) => "plugin-trapped",
                PluginFault::TimedOut(_) => "plugin-timed-out",
                PluginFault::MemoryCap(_) => "plugin-memory-cap",
                PluginFault::Malformed(_) => "plugin-malformed",
                PluginFault::OutputLimit(_) => "plugin-output-limit",
                PluginFault::Unusable(_) => "plugin-unusable",
                PluginFault::Exited(_) => "plugin-exited",
            },
            DeadLetterReason::StageUnavailable { .. } => "stage-unavailable",
            DeadLetterReason::Shutdown => "shutdown",
            DeadLetterReason::StagePanicked { .. }
            | DeadLetterReason::Delivery { error: DeliveryError::Panicked(_), .. } => "host-panic",
            DeadLetterReason::Delivery {
                error:
                    DeliveryError::QueueTimeout { .. }
                    | DeliveryError::TurnTimeout { .. }
                    | DeliveryError::NoRoom { .. },
                ..
            } => "queue-timeout",
            DeadLetterReason::Delivery { error: DeliveryError::Retired, .. } => "destination-removed",
            DeadLetterReason::Delivery {
                error: DeliveryError::Shutdown | DeliveryError::ShutdownInFlight,
                ..
            } => "shutdown",
            DeadLetterReason::Delivery {
                error:
                    DeliveryError::Attempts { maybe_delivered: true, .. } | DeliveryError::NotAnswered { .. },
                ..
            } => "delivery-uncertain",
            DeadLetterReason::Delivery { .. } => "delivery-failed",
        }
    }

    /// `message` labelled with this reason (and `route`), ready for the
    /// dead-letter destination; a network destination's delivery failure also
    /// with [`ATTEMPTS_HEADER`] and [`LAST_ERROR_HEADER`]. The values come
    /// from plugins and peers, so each is [`header_value`]-sanitised. A label
    /// this reason does not give is taken off (one an earlier dead-lettering gave).
    pub fn label(&self, mut message: Message, route: Option<&str>) -> Message {
        let labels = [ROUTE_HEADER, ATTEMPTS_HEADER, LAST_ERROR_HEADER];
        message.headers.retain(|(name, _)| !labels.iter().any(|label| name.eq_ignore_ascii_case(label)));
        message.set_header(REASON_CODE_HEADER, self.code());
        message.set_header(REASON_HEADER, header_value(&self.to_string()));
        if let Some(route) = route {
            message.set_header(ROUTE_HEADER, header_value(route));
        }
        if let DeadLetterReason::Delivery {
            error: DeliveryError::Attempts { attempts, last_error, .. },
            ..
        } = self
        {
            message.set_header(ATTEMPTS_HEADER, attempts.to_string());
            message.set_header(LAST_ERROR_HEADER, header_value(last_error));
        }
        message
    }
}

/// Longest header value the host writes, in bytes (before `...`).
pub const MAX_HEADER_VALUE: usize = 1024;

/// `text` fit for a header value every transport takes: control characters
/// escaped (`\n`, `\r`, `\t`, `\u{1b}`), cut to [`MAX_HEADER_VALUE`] bytes
/// at a character boundary and ended with `...` when longer.
pub fn header_value(text: &str) -> String {
    crate::bounded_text::one_line(text, MAX_HEADER_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_have_control_characters_escaped() {
        assert_eq!(header_value("one\ntwo\r\tthree\u{1b}[0m"), "one\\ntwo\\r\\tthree\\u{1b}[0m");
        assert_eq!(header_value("plain, ünïcode"), "plain, ünïcode");
    }

    #[test]
    fn header_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_HEADER_VALUE);
        let value = header_value(&long);
        assert!(value.len() <= MAX_HEADER_VALUE + 3, "{}", value.len());
        assert!(value.ends_with("...") && value.starts_with("éé"));
        let fits = "x".repeat(MAX_HEADER_VALUE);
        assert_eq!(header_value(&fits), fits);
    }

    #[test]
    fn labels_carry_sanitised_reasons() {
        let reason = DeadLetterReason::StageUnavailable { stage: "filter:x".into(), problem: "a\nb".into() };
        let letter = reason.label(Message::new("t", "p"), Some("r\n"));
        assert_eq!(letter.header(REASON_HEADER), Some("stage \"filter:x\" is unavailable: a\\nb"));
        assert_eq!(letter.header(ROUTE_HEADER), Some("r\\n"));
    }

    #[test]
    fn a_label_this_reason_does_not_give_is_taken_off() {
        // A message dead-lettered before (or carrying such headers) kept its old attempts and
        // last error on a later letter whose reason has none.
        let earlier = Message::new("t", "p")
            .with_header(ROUTE_HEADER, "old-route")
            .with_header(ATTEMPTS_HEADER, "3")
            .with_header("X-SY-LAST-ERROR", "connection refused");
        let reason = DeadLetterReason::StageUnavailable { stage: "filter:x".into(), problem: "gone".into() };
        let letter = reason.label(earlier.clone(), None);
        assert_eq!(letter.header(ROUTE_HEADER), None, "{letter:?}");
        assert_eq!(letter.header(ATTEMPTS_HEADER), None, "{letter:?}");
        assert_eq!(letter.header(LAST_ERROR_HEADER), None, "{letter:?}");
        assert_eq!(reason.label(earlier, Some("now")).header(ROUTE_HEADER), Some("now"));
    }
}
