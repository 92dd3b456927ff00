//! A test plugin: a filter whose answer (the WIT `decisions`) is malformed
//! for a message carrying the header named by config key `trigger`, in the
//! way the header's value names: `missing` leaves out its decision, `extra`
//! gives it two, `bad-counter-name` adds a count whose name is not UTF-8,
//! anything else gives it an unknown verdict byte. Other messages are kept. With config key
//! `fault` set, every message (the load trial's sample too) is malformed in the way it names,
//! whatever its headers. Built with `wit-bindgen` directly: the SDK only writes well-formed answers.

mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "filter-plugin" });
}

use bindings::exports::switchyard::plugin::{filter, format};
use bindings::switchyard::plugin::host;

struct FaultyDecisions;

impl format::Guest for FaultyDecisions {
    fn version() -> u32 {
        switchyard_wire::FORMAT_VERSION
    }
}

impl filter::Guest for FaultyDecisions {
    fn filter(messages: Vec<u8>) -> Vec<u8> {
        let (trigger, fault) = (host::config("trigger").unwrap_or_default(), host::config("fault"));
        let (mut decided, mut decisions, mut counts) = (0u32, Vec::new(), Vec::new());
        for message in switchyard_wire::decode(&messages) {
            let poison = fault
                .clone()
                .or_else(|| message.ok().and_then(|message| message.header(&trigger).map(str::to_owned)));
            match poison.as_deref() {
                None => decisions.extend_from_slice(&[3, 1]),
                Some("missing") => continue,
                Some("extra") => {
                    decisions.extend_from_slice(&[3, 1, 3, 1]);
                    decided += 1;
                }
                Some("bad-counter-name") => {
                    decisions.extend_from_slice(&[3, 1]);
                    counts.extend_from_slice(&1u32.to_le_bytes());
                    counts.push(0xff);
                    counts.extend_from_slice(&1u64.to_le_bytes());
                }
                Some(_) => decisions.extend_from_slice(&[3, 7]),
            }
            decided += 1;
        }
        [&decided.to_le_bytes()[..], &decisions, &counts].concat()
    }
}

// Export names such as `switchyard:plugin/filter@0.1.0#filter` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{FaultyDecisions, bindings};

    bindings::export!(FaultyDecisions with_types_in bindings);
}
