//! The wire format version: a component built for a layout other than the
//! host's is refused at load with both versions named (every other test loads
//! plugins built by this SDK, which pass).

use crate::support::plugin_dir;
use switchyard::LoadError;
use switchyard::plugin::{PluginEngine, load_file};
use switchyard_plugin_artifacts as artifacts;

/// Load `path` alone, as `switchyard check` does.
fn load(path: &str) -> Result<std::sync::Arc<switchyard::CompiledPlugin>, LoadError> {
    load_file(&PluginEngine::new(None).unwrap(), std::path::Path::new(path), None)
}

#[test]
pub fn faulty_format_v2() {
    let dir = plugin_dir(&[("future", artifacts::FAULTY_FORMAT_V2)]);
    let refused = load(dir.path().join("future.wasm").to_str().unwrap()).unwrap_err();
    assert!(matches!(refused, LoadError::WireFormat { found: 2, expected: 1, .. }), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "plugin \"future\": built for wire format 2; this host speaks wire format 1"
    );
}

#[test]
pub fn faulty_format_v0() {
    let dir = plugin_dir(&[("old", artifacts::FAULTY_FORMAT_V0)]);
    let refused = load(dir.path().join("old.wasm").to_str().unwrap()).unwrap_err();
    assert!(matches!(refused, LoadError::WireFormat { found: 0, expected: 1, .. }), "{refused:?}");
    assert_eq!(
        refused.to_string(),
        "plugin \"old\": built before wire format versions (v0: it exports no switchyard:plugin/format); \
         this host speaks wire format 1"
    );
}
