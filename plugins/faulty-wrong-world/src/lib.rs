//! A test plugin that exports an interface named `switchyard:plugin/filter`
//! with the wrong signature (`filter: func(topic: string) -> bool`), built
//! with `wit-bindgen` directly rather than the SDK. The host must refuse to
//! load it. No config keys.

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "filter-plugin" });
}

use bindings::exports::switchyard::plugin::{filter, format};

struct WrongWorld;

impl format::Guest for WrongWorld {
    fn version() -> u32 {
        1
    }
}

impl filter::Guest for WrongWorld {
    fn filter(topic: String) -> bool {
        topic.starts_with("orders.")
    }
}

// Export names such as `switchyard:plugin/filter@0.1.0#filter` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{WrongWorld, bindings};

    bindings::export!(WrongWorld with_types_in bindings);
}
