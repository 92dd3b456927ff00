//! The wire format check: a component must export `switchyard:plugin/format`
//! and answer this host's [`FORMAT_VERSION`], or it would misread messages.
//!
//! Checked in two steps at load: the export's presence when the component is
//! compiled (before its world is type-checked, so a plugin built before wire
//! format versions is told so, not that its world does not match), and its
//! answer once, in the trial instantiation. A native library carries no such
//! export: its ABI version ([`switchyard_wire::native::ABI_VERSION`]) fixes
//! the wire format it speaks.

use super::error::LoadError;
use switchyard_wire::FORMAT_VERSION;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The export every plugin world has, naming its wire format version.
const FORMAT_EXPORT: &str = "switchyard:plugin/format@0.1.0";

/// Refuse a component that does not export its wire format version.
pub(crate) fn check_exported(engine: &Engine, component: &Component, name: &str) -> Result<(), LoadError> {
    let component_type = component.component_type();
    if component_type.exports(engine).any(|(export, _)| export == FORMAT_EXPORT) {
        Ok(())
    } else {
        Err(mismatch(name, 0))
    }
}

/// Refuse a plugin whose exported version `found` is not this host's.
pub(crate) fn check_version(name: &str, found: u32) -> Result<(), LoadError> {
    if found == FORMAT_VERSION { Ok(()) } else { Err(mismatch(name, found)) }
}

fn mismatch(name: &str, found: u32) -> LoadError {
    LoadError::WireFormat { name: name.to_owned(), found, expected: FORMAT_VERSION }
}
