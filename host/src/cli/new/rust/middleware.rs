//! {{name}}: a Switchyard middleware plugin.
//!
//! Answers a request carrying the header `x-ping` itself (a reply `pong`);
//! forwards the others, tagging them `x-seen-by: {{name}}`; passes replies back.

use switchyard_plugin::{Action, Error, Message, Middleware, OwnedMessage, export_middleware};

struct Plugin;

/// Whether the middleware answers a request itself, given its `x-ping` header.
fn answers_itself(ping: Option<&str>) -> bool {
    ping.is_some()
}

impl Middleware for Plugin {
    fn on_request(request: &Message<'_>) -> Result<Action, Error> {
        if answers_itself(request.header("x-ping")) {
            return Ok(Action::Respond(OwnedMessage::reply_to(request).with_payload(&b"pong"[..])));
        }
        Ok(Action::Forward(Some(OwnedMessage::from(request).with_header("x-seen-by", "{{name}}"))))
    }

    fn on_reply(_request: &Message<'_>, reply: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        Ok(Some(OwnedMessage::from(reply)))
    }
}

export_middleware!(Plugin);

#[cfg(test)]
mod tests {
    use super::answers_itself;

    #[test]
    fn only_a_ping_is_answered_by_the_middleware() {
        assert!(answers_itself(Some("1")));
        assert!(!answers_itself(None));
    }
}
