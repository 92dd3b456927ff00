//! A destination that writes each message as one JSON line on standard output.

use super::{DeliveryFuture, Destination};
use crate::message::Message;
use std::io::Write;

/// Prints `{"destination":…,"id":…,"topic":…,"headers":[[k,v],…],"payload":…}`
/// lines; the payload is shown as UTF-8 (lossy). Gives no reply.
#[derive(Debug, Clone)]
pub struct LogDestination {
    name: String,
}

impl LogDestination {
    /// A log destination reporting itself as `name`.
    pub fn new(name: impl Into<String>) -> LogDestination {
        LogDestination { name: name.into() }
    }
}

impl Destination for LogDestination {
    fn deliver(&self, message: Message) -> DeliveryFuture<'_> {
        let line = serde_json::json!({
            "destination": self.name,
            "id": message.id,
            "topic": message.topic,
            "priority": message.priority,
            "headers": message.headers,
            "payload": String::from_utf8_lossy(&message.payload),
        });
        let mut stdout = std::io::stdout().lock();
        let written = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
        let result = written.map(|()| None).map_err(|err| super::DeliveryError::Retryable(err.to_string()));
        Box::pin(std::future::ready(result))
    }
}
