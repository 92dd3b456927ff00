//! Every plugin under `plugins/`, built as a `wasm32-wasip2` component for tests.
//!
//! This crate's build script (wasmtime's `test-programs/artifacts` pattern)
//! finds the crates `plugins/*/Cargo.toml`, builds them all with one nested
//! `cargo build --profile plugin --target wasm32-wasip2` into its own
//! `OUT_DIR` (never the outer target dir), and generates:
//!
//! - one `pub const NAME: &str` per plugin: the absolute path of its `.wasm`
//!   file, `NAME` being the crate name in SCREAMING_SNAKE_CASE
//!   (`HEADER_FILTER` for `header-filter`);
//! - [`ALL`]: every plugin as `(crate name, path)`, sorted by name;
//! - [`native`]: the same constants for the plugins also built as native
//!   libraries (`cdylib`s for the host target, with `--profile
//!   plugin-native`, which unwinds on panic);
//! - [`foreach_plugin!`]: `foreach_plugin!(m)` expands to `m!(header_filter);`
//!   and so on for every plugin, so a test suite can make an untested plugin
//!   a compile error.
//!
//! ```
//! assert!(switchyard_plugin_artifacts::ALL.iter().any(|(name, _)| *name == "header-filter"));
//! assert!(std::path::Path::new(switchyard_plugin_artifacts::HEADER_FILTER).is_file());
//! ```
//!
//! The Python and JavaScript plugins (a `plugins/*` directory with a
//! `pyproject.toml` or `package.json` naming a `world`) are built beside them
//! by componentize-py and componentize-js when those are installed; when one
//! is not, the build warns and [`UNBUILT`] lists the plugin with the command
//! that installs the tool, which [`require`] turns into the failing test's
//! message.
//!
//! Building needs the `wasm32-wasip2` target: `rustup target add wasm32-wasip2`.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

/// `path`, a component constant of this crate, once it is known to be built.
///
/// # Panics
/// When the component was not built because a tool is missing, saying which
/// and how to install it: a test needing it fails rather than passing silently.
pub fn require(path: &'static str) -> &'static str {
    if let Some((_, hint)) = UNBUILT.iter().find(|(unbuilt, _)| *unbuilt == path) {
        panic!("{path} was not built: {hint}");
    }
    path
}
