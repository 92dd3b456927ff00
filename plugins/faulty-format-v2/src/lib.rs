//! A test plugin: a filter of the real world that exports wire format version
//! 2, as a plugin built by a future SDK would; built with `wit-bindgen`
//! directly, since the SDK always exports its own version. The host must
//! refuse it at load, naming both versions. No config keys.

mod bindings {
    wit_bindgen::generate!({ path: "../../wit", world: "filter-plugin" });
}

use bindings::exports::switchyard::plugin::{filter, format};

struct FutureFilter;

impl format::Guest for FutureFilter {
    fn version() -> u32 {
        2
    }
}

impl filter::Guest for FutureFilter {
    fn filter(_: Vec<u8>) -> Vec<u8> {
        // The host refuses this plugin at load, before any call.
        Vec::new()
    }
}

// Export names such as `switchyard:plugin/filter@0.1.0#filter` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{FutureFilter, bindings};

    bindings::export!(FutureFilter with_types_in bindings);
}
