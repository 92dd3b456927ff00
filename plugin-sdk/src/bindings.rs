//! Every `wit_bindgen::generate!` of the SDK: one per world.
//!
//! The first world generates the shared `types` and `host` interfaces; the
//! others reuse them through `with:`, so one WIT type is one Rust type. With
//! `pub_export_macro` each world's export section is emitted by its `export!`
//! macro in the plugin crate, so a plugin only claims the world it exports.

#![expect(missing_docs, reason = "generated modules and items carry no docs")]

/// The `filter-plugin` world; also home of the shared `types` and `host`.
pub mod filter {
    wit_bindgen::generate!({
        path: "../wit",
        world: "filter-plugin",
        pub_export_macro: true,
        runtime_path: "::switchyard_plugin::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

pub use filter::switchyard::plugin::{host, types};

/// Generates one more world, reusing the shared interfaces.
macro_rules! world {
    ($module:ident, $world:tt) => {
        #[doc = concat!("The `", $world, "` world.")]
        pub mod $module {
            wit_bindgen::generate!({
                path: "../wit",
                world: $world,
                pub_export_macro: true,
                runtime_path: "::switchyard_plugin::__private::wit_bindgen::rt",
                with: {
                    "switchyard:plugin/types@0.1.0": crate::bindings::types,
                    "switchyard:plugin/host@0.1.0": crate::bindings::host,
                },
            });
        }
    };
}

world!(transform, "transform-plugin");
world!(middleware, "middleware-plugin");
world!(balancer, "balancer-plugin");
world!(transport, "transport-plugin");
