//! A test plugin: a middleware whose action carries other than one whole
//! message for a request carrying the header named by config key `trigger`,
//! in the way the header's value names: `forward-none` forwards no message,
//! `forward-two` forwards the request twice, anything else responds with the
//! request's head, without its payload. Other requests are forwarded
//! unchanged, and replies passed back unchanged. With config key `fault`
//! set, every request (the load trial's sample too) is answered in the way it
//! names, whatever its headers. Built with `wit-bindgen` directly: the SDK
//! only writes well-formed answers.

mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "middleware-plugin" });
}

use bindings::exports::switchyard::plugin::format;
use bindings::exports::switchyard::plugin::middleware::{Action, Guest};
use bindings::switchyard::plugin::host;
use bindings::switchyard::plugin::types::Error;
use switchyard_wire::{Head, Payload, write_message};

struct FaultyMiddleware;

impl format::Guest for FaultyMiddleware {
    fn version() -> u32 {
        switchyard_wire::FORMAT_VERSION
    }
}

impl Guest for FaultyMiddleware {
    fn on_request(request: Vec<u8>) -> Result<Action, Error> {
        let (trigger, fault) = (host::config("trigger").unwrap_or_default(), host::config("fault"));
        let Some(Ok(message)) = switchyard_wire::decode(&request).next() else {
            return Err(Error::Failed("no request".into()));
        };
        Ok(match fault.as_deref().or(message.header(&trigger)) {
            None => Action::Forward(request),
            Some("forward-none") => Action::Forward(Vec::new()),
            Some("forward-two") => Action::Forward([&request[..], &request[..]].concat()),
            Some(_) => {
                let head =
                    Head { id: message.id, source: 0, priority: message.priority, topic: message.topic };
                let mut reply = Vec::new();
                let headers = message.headers().collect::<Vec<_>>();
                write_message(&mut reply, &head, headers, Payload::Omitted(message.payload_len));
                Action::Respond(reply)
            }
        })
    }

    fn on_reply(_: Vec<u8>, reply: Vec<u8>) -> Result<Vec<u8>, Error> {
        Ok(reply)
    }
}

// Export names such as `switchyard:plugin/middleware@0.1.0#on-request` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{FaultyMiddleware, bindings};

    bindings::export!(FaultyMiddleware with_types_in bindings);
}
