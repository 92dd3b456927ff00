//! A test plugin: a transport whose reply is other than the host takes, in the way the message's
//! header `x-reply` names: `two` replies with the message twice, `trailing` with the message and
//! bytes past it that are no message, `big` with the message 1 MiB longer (past the host's default
//! `max_message_bytes`). Without the header, the reply is the message itself, once. It reaches no endpoint: a connection opens to nowhere and a send answers at once.
//! Built with `wit-bindgen` directly: the SDK only writes well-formed replies.

mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "transport-plugin" });
}

use bindings::exports::switchyard::plugin::format;
use bindings::exports::switchyard::plugin::transport::{Connection, Guest, GuestConnection};
use bindings::switchyard::plugin::types::Error;
use switchyard_wire::{Head, Payload, write_message};

struct FaultyTransportReply;

impl format::Guest for FaultyTransportReply {
    fn version() -> u32 {
        switchyard_wire::FORMAT_VERSION
    }
}

impl Guest for FaultyTransportReply {
    type Connection = Nowhere;

    fn probe(_: String) -> Result<(), Error> {
        Ok(())
    }
}

/// A connection that reaches nothing.
struct Nowhere;

impl GuestConnection for Nowhere {
    fn open(_: String) -> Result<Connection, Error> {
        Ok(Connection::new(Nowhere))
    }

    fn send(&self, message: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
        let Some(Ok(request)) = switchyard_wire::decode(&message).next() else {
            return Err(Error::Failed("no message".into()));
        };
        Ok(Some(match request.header("x-reply") {
            Some("two") => [&message[..], &message[..]].concat(),
            Some("trailing") => [&message[..], &[0xff; 3][..]].concat(),
            Some("big") => {
                let head =
                    Head { id: request.id, source: 0, priority: request.priority, topic: request.topic };
                let payload = [request.payload.unwrap_or_default(), &vec![b'x'; 1 << 20]].concat();
                let mut reply = Vec::new();
                write_message(
                    &mut reply,
                    &head,
                    request.headers().collect::<Vec<_>>(),
                    Payload::Bytes(&payload),
                );
                reply
            }
            _ => message,
        }))
    }
}

// Export names such as `switchyard:plugin/transport@0.1.0#probe` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{FaultyTransportReply, bindings};

    bindings::export!(FaultyTransportReply with_types_in bindings);
}
