//! A test plugin: a transform whose answer (the WIT `transformed`) names a
//! failed input wrongly for a message carrying the header named by config key
//! `trigger`, in the way the header's value names: `twice` reports its error
//! twice, anything else reports it by its position counted from 1 (as a
//! hand-written plugin in a language that counts from 1 might), so the last
//! message of a batch names an input that does not exist. Either way the
//! message makes no output. Other messages pass unchanged. With config key
//! `fault` set, every message (the load trial's sample too) is named wrongly
//! in the way it names, whatever its headers. Built with `wit-bindgen`
//! directly: the SDK only writes well-formed answers.

mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "transform-plugin" });
}

use bindings::exports::switchyard::plugin::{format, transform};
use bindings::switchyard::plugin::host;
use bindings::switchyard::plugin::types::Error;
use switchyard_wire::{Head, Payload, write_message};

struct FaultyErrors;

impl format::Guest for FaultyErrors {
    fn version() -> u32 {
        switchyard_wire::FORMAT_VERSION
    }
}

impl transform::Guest for FaultyErrors {
    fn transform(messages: Vec<u8>) -> transform::Transformed {
        let (trigger, fault) = (host::config("trigger").unwrap_or_default(), host::config("fault"));
        let (mut outputs, mut errors) = (Vec::new(), Vec::new());
        for (index, message) in (0u32..).zip(switchyard_wire::decode(&messages)) {
            let Ok(message) = message else { break };
            let rejected = || Error::Rejected("poison".into());
            match fault.as_deref().or(message.header(&trigger)) {
                Some("twice") => errors.extend([(index, rejected()), (index, rejected())]),
                Some(_) => errors.push((index + 1, rejected())),
                None => {
                    let head = Head {
                        id: message.id,
                        source: index,
                        priority: message.priority,
                        topic: message.topic,
                    };
                    let payload = Payload::Bytes(message.payload.unwrap_or_default());
                    write_message(&mut outputs, &head, message.headers().collect::<Vec<_>>(), payload);
                }
            }
        }
        transform::Transformed { messages: outputs, errors }
    }
}

// Export names such as `switchyard:plugin/transform@0.1.0#transform` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{FaultyErrors, bindings};

    bindings::export!(FaultyErrors with_types_in bindings);
}
