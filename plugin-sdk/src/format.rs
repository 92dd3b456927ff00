//! The `switchyard:plugin/format` export: the wire layout version a plugin was
//! built for, exported by every `export_*!` macro so that authors never write it.

use crate::bindings::format::exports::switchyard::plugin::format::Guest;

/// Glue of the `format` export, the same for every kind.
#[doc(hidden)]
pub struct FormatExport;

impl Guest for FormatExport {
    fn version() -> u32 {
        switchyard_wire::FORMAT_VERSION
    }
}

/// Export `switchyard:plugin/format` (used inside the `export_*!` macros, for wasm only).
#[doc(hidden)]
#[macro_export]
macro_rules! __format_export {
    () => {
        const _: () = {
            type SwitchyardFormatExport = $crate::__private::FormatExport;
            $crate::__private::format::export!(SwitchyardFormatExport with_types_in $crate::__private::format);
        };
    };
}
