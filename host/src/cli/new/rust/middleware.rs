//! {{name}}: a Switchyard middleware plugin.
//!
//! Answers a request carrying the header `x-ping` itself (a reply `pong`);
//! forwards the others, tagging them `x-seen-by: {{name}}`; passes replies back.

use switchyard_plugin::{Action, Error, Message, Middleware, OwnedMessage, export_middleware};

struct Plugin;

impl Middleware for Plugin {
    fn on_request(request: &Message<'_>) -> Result<Action, Error> {
        if request.header("x-ping").is_some() {
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
    use switchyard_plugin::testing::TestMessage;
    use switchyard_plugin::{Action, Middleware, OwnedMessage};

    use super::Plugin;

    #[test]
    fn a_ping_is_answered_and_anything_else_forwarded_tagged() {
        let ping = TestMessage::full(&OwnedMessage::new("t").with_header("x-ping", "1"));
        let Ok(Action::Respond(reply)) = Plugin::on_request(&ping.message()) else { panic!("not answered") };
        assert_eq!(reply.payload(), b"pong");
        let other = TestMessage::full(&OwnedMessage::new("t"));
        let Ok(Action::Forward(Some(forwarded))) = Plugin::on_request(&other.message()) else { panic!("not forwarded") };
        assert_eq!(forwarded.header("x-seen-by"), Some("{{name}}"));
    }
}
