//! The registry of plugin versions: an atomically swapped snapshot, so a
//! message pins the versions it started with and a swap never blocks it.

use super::answers::{check_decisions, check_transformed, read_forward, read_reply};
use super::compiled::{CompiledPlugin, PluginKind};
use super::engine::PluginEngine;
use super::error::{LoadError, PluginFault};
use super::instance::{MiddlewareAction, PluginInstance, StartFailure};
use super::sandbox::{PluginSettings, StoreState};
use crate::config::PluginConfig;
use crate::regular_file::{self, Links};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One immutable set of plugin versions, by name (iterated in name order).
pub type PluginSet = BTreeMap<String, Arc<CompiledPlugin>>;

/// The current [`PluginSet`], swapped whole on change.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    current: ArcSwap<PluginSet>,
}

impl PluginRegistry {
    /// The current set; hold the `Arc` to pin its versions.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    /// Make `set` current.
    pub fn replace(&self, set: PluginSet) {
        self.current.store(Arc::new(set));
    }

    /// Make current a copy of the current set changed by `change`. Callers
    /// serialize their updates; readers never wait.
    pub fn update(&self, change: impl FnOnce(&mut PluginSet)) {
        let mut set = PluginSet::clone(&self.current.load());
        change(&mut set);
        self.replace(set);
    }
}

/// What a plugin file holds, told by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginFormat {
    /// A WebAssembly component (`.wasm`): sandboxed.
    Wasm,
    /// A native library (`.so`, `.dylib` or `.dll`, as the platform names
    /// them): trusted code, loaded only when `host.native_plugins` is set.
    Native,
}

impl PluginFormat {
    /// The format of `path`, if it is a plugin file at all.
    pub fn of(path: &Path) -> Option<PluginFormat> {
        let extension = path.extension()?;
        if extension == "wasm" {
            Some(PluginFormat::Wasm)
        } else if extension == std::env::consts::DLL_EXTENSION {
            Some(PluginFormat::Native)
        } else {
            None
        }
    }

    /// The file extension of this format on this platform.
    pub fn extension(self) -> &'static str {
        match self {
            PluginFormat::Wasm => "wasm",
            PluginFormat::Native => std::env::consts::DLL_EXTENSION,
        }
    }
}

/// Load one plugin file, named by its stem, with `config` (defaults when
/// none), its trial's answer checked at the host's default limits. A native
/// library named here is loaded: naming it is trusting it.
pub fn load_file(
    engine: &PluginEngine,
    path: &Path,
    config: Option<&PluginConfig>,
) -> Result<Arc<CompiledPlugin>, LoadError> {
    let name = plugin_name(path);
    let read_error = |error| LoadError::Read { name: name.clone(), path: path.display().to_string(), error };
    let defaults = crate::config::HostSection::default();
    let bytes = regular_file::read(path, defaults.max_plugin_bytes, Links::Anywhere).map_err(read_error)?;
    let unsettled = || std::io::Error::other("it changed while it was read");
    let bytes = bytes.ok_or_else(unsettled).map_err(read_error)?;
    let config = config.cloned().unwrap_or_else(|| PluginConfig { name, ..PluginConfig::default() });
    let format = PluginFormat::of(path).unwrap_or(PluginFormat::Wasm);
    load_bytes(engine, format, &bytes, config, defaults.max_message_bytes)
}

/// Compile (or, native, load) `bytes` as the plugin `config.name`, then
/// instantiate it once and try it, its answer checked as a host whose
/// `host.max_message_bytes` is `max_message_bytes` checks it.
pub fn load_bytes(
    engine: &PluginEngine,
    format: PluginFormat,
    bytes: &[u8],
    config: PluginConfig,
    max_message_bytes: usize,
) -> Result<Arc<CompiledPlugin>, LoadError> {
    let plugin = compile_bytes(engine, format, bytes, config)?;
    trial_instantiation(engine, &plugin, max_message_bytes)?;
    Ok(plugin)
}

/// The first half of [`load_bytes`]: `bytes` compiled (or, native, loaded) as the plugin
/// `config.name`, not tried yet; what the compile cache had for it is known from here.
pub(crate) fn compile_bytes(
    engine: &PluginEngine,
    format: PluginFormat,
    bytes: &[u8],
    config: PluginConfig,
) -> Result<Arc<CompiledPlugin>, LoadError> {
    let settings = Arc::new(PluginSettings::new(config)?);
    Ok(Arc::new(match format {
        PluginFormat::Wasm => CompiledPlugin::compile(engine, bytes, settings)?,
        PluginFormat::Native => CompiledPlugin::load_native(bytes, settings)?,
    }))
}

/// Instantiate once before serving, ask a component its wire format version,
/// and give a filter, transform or middleware one sample message: this runs start-up code,
/// type-checks every export against the world, and makes a first call, all
/// under the plugin's limits. The plugin may answer with an error; it must not
/// trap, time out, exceed its memory cap, exit or answer malformed (a message
/// larger than `max_message_bytes` among them).
pub(crate) fn trial_instantiation(
    engine: &PluginEngine,
    plugin: &Arc<CompiledPlugin>,
    max_message_bytes: usize,
) -> Result<(), LoadError> {
    // A grant that cannot be honoured (a granted directory that does not exist) is refused as such.
    let state = StoreState::new(plugin.settings.clone())?;
    let trial = trial_run(engine, plugin, state, max_message_bytes);
    // The trial is not traffic: it must not show in the plugin's counters.
    plugin.settings.forget_counts();
    trial
}

/// The trial of [`trial_instantiation`] in `state`, each failure told as what it is: a plugin
/// whose exports do not match its world, one that fails as it starts, one whose first calls fail.
fn trial_run(
    engine: &PluginEngine,
    plugin: &Arc<CompiledPlugin>,
    state: StoreState,
    max_message_bytes: usize,
) -> Result<(), LoadError> {
    let name = || plugin.name.clone();
    let mut instance =
        PluginInstance::in_state(engine, plugin.clone(), Ok(state)).map_err(|failure| match failure {
            StartFailure::WrongWorld(reason) => {
                LoadError::WrongWorld { name: name(), world: plugin.kind.as_str(), reason }
            }
            StartFailure::Fault(fault) => LoadError::StartUp { name: name(), fault },
        })?;
    let failed = |fault| LoadError::Instantiate { name: name(), fault };
    if let Some(found) = instance.wire_format().map_err(failed)? {
        super::format::check_version(&plugin.name, found)?;
    }
    sample_call(&mut instance, max_message_bytes).map_err(failed)
}

/// Give a filter, transform or middleware one sample message (other kinds need a peer), and
/// check its answer as the pipeline does, with messages of at most `max_message_bytes`: one the
/// pipeline would refuse is a fault.
fn sample_call(instance: &mut PluginInstance, max_message_bytes: usize) -> Result<(), PluginFault> {
    let mut sample = Vec::new();
    let head = switchyard_wire::Head { id: 0, source: 0, priority: 0, topic: "switchyard.trial" };
    let payload = match instance.plugin.kind {
        PluginKind::Filter => switchyard_wire::Payload::Omitted(2),
        _ => switchyard_wire::Payload::Bytes(b"{}"),
    };
    switchyard_wire::write_message(&mut sample, &head, [], payload);
    match instance.plugin.kind {
        PluginKind::Filter => check_decisions(&instance.filter(&sample)?, 1),
        PluginKind::Transform => {
            let out = instance.transform(&sample)?;
            check_transformed(&out.messages, &out.errors, 1, max_message_bytes).map(drop)
        }
        PluginKind::Middleware => match instance.on_request(&sample)? {
            Ok(MiddlewareAction::Forward(batch)) => read_forward(&batch, max_message_bytes).map(drop),
            Ok(MiddlewareAction::Respond(batch)) => read_reply(&batch, max_message_bytes).map(drop),
            Err(_) => Ok(()),
        },
        PluginKind::Balancer | PluginKind::Transport => Ok(()),
    }
}

/// The plugin name of a file: its stem, each of its bytes that are not UTF-8 shown as U+FFFD.
/// A host refuses such a file as it reads it ([`LoadError::NameNotUtf8`]).
pub fn plugin_name(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}

/// The plugin entries of `dir` (components and native libraries), sorted,
/// whatever they are (one that is not a regular file is refused with its
/// reason when read); a missing directory is created.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if PluginFormat::of(&path).is_some() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_a_component_a_native_library_or_no_plugin_by_its_extension() {
        let native = format!("f.{}", std::env::consts::DLL_EXTENSION);
        assert_eq!(PluginFormat::of(Path::new("dir/f.wasm")), Some(PluginFormat::Wasm));
        assert_eq!(PluginFormat::of(Path::new(&native)), Some(PluginFormat::Native));
        assert_eq!(PluginFormat::of(Path::new("f.toml")), None);
        assert_eq!(PluginFormat::of(Path::new("wasm")), None);
    }
}
