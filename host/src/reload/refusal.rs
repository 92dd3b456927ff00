//! A plugin file refused, as it was: it is not read into a plugin, nor reported, again until it
//! changes (or its refusal may have passed), and what it left open is what a retry starts from.

use crate::config::PluginConfig;
use crate::plugin::{CompiledPlugin, LoadError, NativeRefusal};
use std::sync::Arc;

/// A plugin file's digest and the settings it was read with.
pub(super) type FileRead = Box<(String, PluginConfig)>;

/// A plugin file refused, as it was.
pub(super) struct Refusal {
    /// Its digest and settings, when it could be read.
    pub(super) file: Option<FileRead>,
    pub(super) reason: String,
    /// Refused for a reason outside the file, one that may pass while the file stays as it is:
    /// its kind against where the config uses the plugin (a changed config, which re-reads every
    /// plugin, may use it as that kind), or a grant the host could not give then (a name of
    /// `allow_net` that did not resolve, a granted directory not made yet, or one whose mount did
    /// not answer in time). Every sync tries the file again; the same refusal is still reported
    /// once.
    pub(super) may_pass: bool,
    /// The native library the file opened, which a retry of the same file starts from.
    pub(super) opened: Opened,
}

impl Refusal {
    /// Whether `other` refuses the same file for the same reason: it is not reported again.
    pub(super) fn tells_as(&self, other: &Refusal) -> bool {
        (&self.file, &self.reason, self.may_pass) == (&other.file, &other.reason, other.may_pass)
    }
}

/// What a refused file left open. A native library is never closed: each opening maps one more
/// copy of it for the life of the process, so a file that stays as it is is opened once.
pub(super) enum Opened {
    /// Nothing: a component, or a library refused before it was opened (or that could not be).
    Nothing,
    /// A library refused once opened, for what its bytes say (its ABI, its symbols): the same
    /// file is refused again as it was, unopened, even by an explicit reload.
    Refused,
    /// A library loaded, then refused (by its trial, for its kind where the config uses it, a
    /// grant): the same file is tried again from it, not opened again.
    Loaded(Arc<CompiledPlugin>),
}

impl Opened {
    /// What `error`, refusing a file, says it left open; `loaded` is the plugin it made, if any.
    pub(super) fn by(error: &LoadError, loaded: Option<Arc<CompiledPlugin>>) -> Opened {
        match (error, loaded) {
            (_, Some(plugin)) if plugin.is_native() => Opened::Loaded(plugin),
            (LoadError::NativeRefused { refusal, .. }, _) if refusal.once_opened() => Opened::Refused,
            _ => Opened::Nothing,
        }
    }
}

/// A native library refused unopened (`host.native_plugins` off) is not read either: it is known by
/// its size and modification time, so that another library put in its place is reported again.
pub(super) fn unread_library(error: &LoadError) -> Option<FileRead> {
    let LoadError::NativeRefused { refusal: NativeRefusal::Disabled { file }, .. } = error else {
        return None;
    };
    let metadata = std::fs::metadata(file).ok()?;
    let modified = metadata.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let identity = format!("unread: {} bytes, modified {modified} ns", metadata.len());
    Some(Box::new((identity, PluginConfig::default())))
}
