//! A middleware that annotates requests and replies, and answers requests
//! itself when asked to.
//!
//! Config keys (all optional):
//! - `header`: the header added to every forwarded request (default
//!   `x-annotated-by`).
//! - `value`: that header's value (default `annotate-middleware`).
//! - `reply_headers`: a number of headers `x-pad-N: 1` added to every reply
//!   it makes or passes back (default 0), to try the host's output limits.
//! - `reply_spin`: when `true`, passing a reply back never returns: it loops
//!   until the host's deadline interrupts it (a slow reply middleware).
//!
//! A request carrying the header `x-short-circuit` is not delivered: the
//! caller gets a reply with the request's topic, payload
//! `{"short_circuit":true}` and header `x-replied-by: annotate-middleware`.
//! Every delivered reply gets the header `x-reply-annotated: true`.

use std::sync::LazyLock;

use switchyard_plugin::{Action, Error, Message, Middleware, OwnedMessage, config, export_middleware};

struct AnnotateMiddleware;

/// `(header, value)` added to requests, read once per instance.
static ANNOTATION: LazyLock<(String, String)> = LazyLock::new(|| {
    let header = config("header").unwrap_or_else(|| "x-annotated-by".to_owned());
    let value = config("value").unwrap_or_else(|| "annotate-middleware".to_owned());
    (header, value)
});

/// How many padding headers go on every reply, read once per instance.
static REPLY_HEADERS: LazyLock<usize> =
    LazyLock::new(|| config("reply_headers").and_then(|count| count.parse().ok()).unwrap_or(0));

/// Whether passing a reply back spins until the host's deadline, read once per instance.
static REPLY_SPIN: LazyLock<bool> = LazyLock::new(|| config("reply_spin").is_some_and(|spin| spin == "true"));

/// `reply` with the configured padding headers.
fn padded(reply: OwnedMessage) -> OwnedMessage {
    (0..*REPLY_HEADERS).fold(reply, |reply, n| reply.with_header(format!("x-pad-{n}"), "1"))
}

impl Middleware for AnnotateMiddleware {
    fn on_request(request: &Message<'_>) -> Result<Action, Error> {
        if request.header("x-short-circuit").is_some() {
            let reply = OwnedMessage::reply_to(request)
                .with_header("x-replied-by", "annotate-middleware")
                .with_payload(&br#"{"short_circuit":true}"#[..]);
            return Ok(Action::Respond(padded(reply)));
        }
        let (header, value) = &*ANNOTATION;
        Ok(Action::Forward(Some(OwnedMessage::from(request).with_header(header, value))))
    }

    fn on_reply(_request: &Message<'_>, reply: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        if *REPLY_SPIN {
            loop {
                std::hint::spin_loop();
            }
        }
        Ok(Some(padded(OwnedMessage::from(reply).with_header("x-reply-annotated", "true"))))
    }
}

export_middleware!(AnnotateMiddleware);
