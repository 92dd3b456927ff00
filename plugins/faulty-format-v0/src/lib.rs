//! A test plugin: a filter as plugins were built before wire format versions
//! existed, exporting `switchyard:plugin/filter` but no `switchyard:plugin/format`;
//! built with `wit-bindgen` directly. The host must refuse it at load, saying
//! it predates wire format versions. No config keys.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package fixture:format-v0;

            world filter-plugin-v0 {
                import switchyard:plugin/host@0.1.0;
                export switchyard:plugin/filter@0.1.0;
            }
        ",
        world: "filter-plugin-v0",
        generate_all,
    });
}

use bindings::exports::switchyard::plugin::filter;

struct UnversionedFilter;

impl filter::Guest for UnversionedFilter {
    fn filter(_: Vec<u8>) -> Vec<u8> {
        // The host refuses this plugin at load, before any call.
        Vec::new()
    }
}

// Export names such as `switchyard:plugin/filter@0.1.0#filter` only link for wasm.
#[cfg(target_family = "wasm")]
#[expect(unsafe_code, reason = "wit-bindgen's export glue expands in this crate")]
mod export {
    use super::{UnversionedFilter, bindings};

    bindings::export!(UnversionedFilter with_types_in bindings);
}
