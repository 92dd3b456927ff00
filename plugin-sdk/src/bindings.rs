//! Every `wit_bindgen::generate!` of the SDK: one per plugin kind, and one for
//! the `format` export they all share.
//!
//! The first world generates the shared `types` and `host` interfaces; the
//! others reuse them through `with:`, so one WIT type is one Rust type. With
//! `pub_export_macro` each world's export section is emitted by its `export!`
//! macro in the plugin crate, so a plugin only claims the world it exports.
//!
//! The kind worlds of `wit/worlds.wit` all export `format`, and wit-bindgen
//! names an export's glue macro after its interface alone: generated in five
//! worlds of one crate, the five would clash. So the SDK generates each kind
//! from a world of its own holding the kind's export (and the host import),
//! and `format` once from another; the export macros invoke both, and the
//! component built from the two halves implements the kind's world whole.

#![expect(missing_docs, reason = "generated modules and items carry no docs")]

/// The `format` export alone.
pub mod format {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package switchyard:sdk;

            world format-export {
                export switchyard:plugin/format@0.1.0;
            }
        ",
        world: "format-export",
        pub_export_macro: true,
        runtime_path: "::switchyard_plugin::__private::wit_bindgen::rt",
    });
}

/// The `filter-plugin` world but `format`; also home of the shared `types` and `host`.
pub mod filter {
    wit_bindgen::generate!({
        path: "../wit",
        inline: "
            package switchyard:sdk;

            world filter-export {
                import switchyard:plugin/host@0.1.0;
                export switchyard:plugin/filter@0.1.0;
            }
        ",
        world: "filter-export",
        pub_export_macro: true,
        runtime_path: "::switchyard_plugin::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
        generate_all,
    });
}

pub use filter::switchyard::plugin::{host, types};

/// Generates one more kind's world, but `format`, reusing the shared interfaces.
macro_rules! world {
    ($module:ident, $world:literal, $inline:literal) => {
        #[doc = concat!("The `", $world, "` world but `format`.")]
        pub mod $module {
            wit_bindgen::generate!({
                path: "../wit",
                inline: $inline,
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

world!(
    transform,
    "transform-export",
    "
    package switchyard:sdk;

    world transform-export {
        import switchyard:plugin/host@0.1.0;
        export switchyard:plugin/transform@0.1.0;
    }
"
);
world!(
    middleware,
    "middleware-export",
    "
    package switchyard:sdk;

    world middleware-export {
        import switchyard:plugin/host@0.1.0;
        export switchyard:plugin/middleware@0.1.0;
    }
"
);
world!(
    balancer,
    "balancer-export",
    "
    package switchyard:sdk;

    world balancer-export {
        import switchyard:plugin/host@0.1.0;
        export switchyard:plugin/balancer@0.1.0;
    }
"
);
world!(
    transport,
    "transport-export",
    "
    package switchyard:sdk;

    world transport-export {
        import switchyard:plugin/host@0.1.0;
        export switchyard:plugin/transport@0.1.0;
    }
"
);
