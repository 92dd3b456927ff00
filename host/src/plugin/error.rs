//! What can go wrong with a plugin: loading it, or calling it.

use std::time::Duration;

/// A plugin file that cannot be loaded. The previous version (if any) keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin \"{name}\": cannot read {path}: {error}")]
    Read {
        /// Plugin name.
        name: String,
        /// File path.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file's name is not UTF-8: a plugin is named by its file's stem, which must be text.
    #[error(
        "plugin \"{name}\": the name of {path} is not UTF-8: rename the file (a plugin is named by its stem)"
    )]
    NameNotUtf8 {
        /// Plugin name: the file's stem, each of its bytes that are not UTF-8 shown as U+FFFD.
        name: String,
        /// File path, shown so too.
        path: String,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("plugin \"{name}\": not a valid WebAssembly component: {reason}")]
    Invalid {
        /// Plugin name.
        name: String,
        /// Compiler's message.
        reason: String,
    },
    /// The component exports none of the plugin interfaces.
    #[error("plugin \"{name}\": must export exactly one Switchyard plugin interface (it exports: {exports})")]
    UnknownKind {
        /// Plugin name.
        name: String,
        /// What it does export.
        exports: String,
    },
    /// The component claims a kind but its exports or imports do not match the world: most often
    /// a plugin built with an SDK of another version of the interface than this host's.
    #[error(
        "plugin \"{name}\": does not match world switchyard:plugin/{world}@0.1.0: {reason} \
         (a plugin built with another version of the Switchyard SDK than this host's does not: \
         rebuild it with this host's)"
    )]
    WrongWorld {
        /// Plugin name.
        name: String,
        /// World it was checked against.
        world: &'static str,
        /// The type checker's message.
        reason: String,
    },
    /// The component was built for another wire format than this host speaks
    /// (`found` is 0 for one built before wire format versions existed).
    #[error("plugin \"{name}\": {}; this host speaks wire format {expected}", built_for(*.found))]
    WireFormat {
        /// Plugin name.
        name: String,
        /// The version the plugin exports; 0 when it exports none.
        found: u32,
        /// The host's version, [`switchyard_wire::FORMAT_VERSION`].
        expected: u32,
    },
    /// The component compiled, but instantiating it failed: creating its memories and tables
    /// passed an instance's limits (`limits.memory_mb`, 16 memories, 64 tables), or its start-up
    /// code trapped, ran too long or exited. Not a plugin built for another world.
    #[error("plugin \"{name}\": failed to start (instantiating it, before any call): {fault}")]
    StartUp {
        /// Plugin name.
        name: String,
        /// What went wrong.
        fault: PluginFault,
    },
    /// The component started but failed its trial: asked its wire format, or given a sample
    /// message, it trapped, ran too long, exceeded its memory cap or exited.
    #[error("plugin \"{name}\": failed its trial run: {fault}")]
    Instantiate {
        /// Plugin name.
        name: String,
        /// What went wrong.
        fault: PluginFault,
    },
    /// The plugin's settings (its sidecar `NAME.toml`) are invalid.
    #[error("plugin \"{name}\": invalid settings: {reason}")]
    Settings {
        /// Plugin name.
        name: String,
        /// What is wrong, with file, key and value.
        reason: String,
    },
    /// A native library that is not loaded, and why.
    #[error("plugin \"{name}\": {refusal}")]
    NativeRefused {
        /// Plugin name.
        name: String,
        /// Why it is not loaded.
        refusal: NativeRefusal,
    },
    /// Both a component and a native library claim the name.
    #[error("plugin \"{name}\": both {name}.wasm and {name}.{native} exist; remove one")]
    TwoFiles {
        /// Plugin name.
        name: String,
        /// The native library's extension on this platform.
        native: &'static str,
    },
    /// A new version of another kind than the serving one, which the config
    /// uses as its kind: it would leave that use with nothing to run.
    #[error(
        "plugin \"{name}\": the new file is a {new}, but {user} uses the serving {serving}: the serving version keeps serving"
    )]
    KindChanged {
        /// Plugin name.
        name: String,
        /// The new file's kind.
        new: &'static str,
        /// The serving version's kind.
        serving: &'static str,
        /// What uses it as the serving version's kind, e.g. `route "orders" (stage filter:NAME)`.
        user: String,
    },
    /// A grant in the plugin's config cannot be honoured.
    #[error("plugin \"{name}\": {reason}")]
    Grant {
        /// Plugin name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A granted directory did not open within the plugin's deadline: the mount it is on does not
    /// answer (a hung network or FUSE mount). An instance being made fails as a timeout.
    #[error(
        "plugin \"{name}\": {grant}: not opened within the plugin's deadline of {timeout:?} \
         (limits.timeout_ms): the filesystem it is on did not answer"
    )]
    GrantTimedOut {
        /// Plugin name.
        name: String,
        /// The grant, as `dirs."/guest" = "host path"`.
        grant: String,
        /// The plugin's deadline.
        timeout: Duration,
    },
}

/// What a plugin was built for, in words.
fn built_for(found: u32) -> String {
    match found {
        0 => "built before wire format versions (v0: it exports no switchyard:plugin/format)".to_owned(),
        found => format!("built for wire format {found}"),
    }
}

/// Why a native library (`.so`, `.dylib`, `.dll`) is not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NativeRefusal {
    /// Native plugins are off: the file was never opened.
    #[error(
        "{file} is a native library and host.native_plugins is false: it was not opened (a native plugin runs unsandboxed in the host's process; set native_plugins = true under [host] to trust the plugin directory)"
    )]
    Disabled {
        /// The library's path.
        file: String,
    },
    /// The dynamic loader refused it.
    #[error("cannot load the native library: {0}")]
    Unloadable(String),
    /// It lacks the ABI version symbol.
    #[error("not a switchyard native plugin: it exports no `switchyard_native_abi`")]
    NotAPlugin,
    /// It was built against another native plugin ABI.
    #[error(
        "built for native plugin ABI {found} (switchyard-plugin {sdk}); this host speaks ABI {expected}: rebuild it against this host's SDK"
    )]
    AbiMismatch {
        /// The library's ABI version.
        found: u32,
        /// The SDK version that built it.
        sdk: String,
        /// The host's ABI version.
        expected: u32,
    },
    /// It was built with `panic = "abort"`: a panic would end the host.
    #[error("built with panic = \"abort\": a panic would end the host; build it with panic = \"unwind\"")]
    AbortsOnPanic,
    /// It names a kind this host cannot load natively, or lacks the kind's export.
    #[error("{0}")]
    Kind(String),
}

impl NativeRefusal {
    /// Whether the library was refused once opened, for what its bytes say: it stays mapped (a
    /// library is never closed), and the same bytes opened again would be refused alike.
    pub(crate) fn once_opened(&self) -> bool {
        matches!(
            self,
            NativeRefusal::NotAPlugin
                | NativeRefusal::AbiMismatch { .. }
                | NativeRefusal::AbortsOnPanic
                | NativeRefusal::Kind(_)
        )
    }
}

/// The WebAssembly engine could not be set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot start the WebAssembly engine: {0}")]
pub struct EngineError(pub String);

/// A plugin's own answer that it could not handle a message (not a fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The message is bad; dead-letter it, never retry.
    #[error("rejected the message: {0}")]
    Rejected(String),
    /// A transient condition.
    #[error("asked for a retry: {0}")]
    Retryable(String),
    /// The plugin failed on its side.
    #[error("failed: {0}")]
    Failed(String),
}

/// A plugin that misbehaved; its instance is discarded, never reused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginFault {
    /// The guest trapped (panic, unreachable, out-of-bounds access...).
    #[error("trapped: {0}")]
    Trapped(String),
    /// The call ran past its deadline and was interrupted.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("hit its memory cap of {0} MiB")]
    MemoryCap(u64),
    /// The instance cannot run at all: its exports do not type-check against its world, or the
    /// host refused it something that is not a trap (an instance limit, a host call's error).
    #[error("cannot run: {0}")]
    Unusable(String),
    /// The guest ended itself through WASI `exit`, with this status (1 for a plain failure): its
    /// instance cannot be called again.
    #[error("exited with status {0}")]
    Exited(i32),
    /// The guest returned a malformed answer (bad batch, wrong count, bad index).
    #[error("returned a malformed answer: {0}")]
    Malformed(String),
    /// The guest answered with more than the host takes from one call.
    #[error("went past its output limit: {0}")]
    OutputLimit(String),
}

impl PluginError {
    /// A stable snake_case name of the kind, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Rejected(_) => "rejected",
            PluginError::Retryable(_) => "retryable",
            PluginError::Failed(_) => "failed",
        }
    }

    /// This answer with its text as the host keeps a plugin's or an embedder's stage's (to log it,
    /// dead-letter a message with it, or answer a caller with it): one line of bounded length
    /// ([`error_text`](crate::bounded_text::error_text)).
    pub(crate) fn bounded(self) -> PluginError {
        use crate::bounded_text::error_text;
        match self {
            PluginError::Rejected(text) => PluginError::Rejected(error_text(&text)),
            PluginError::Retryable(text) => PluginError::Retryable(error_text(&text)),
            PluginError::Failed(text) => PluginError::Failed(error_text(&text)),
        }
    }
}

impl PluginFault {
    /// A stable snake_case name of the kind, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFault::Trapped(_) => "trapped",
            PluginFault::TimedOut(_) => "timed_out",
            PluginFault::MemoryCap(_) => "memory_cap",
            PluginFault::Malformed(_) => "malformed",
            PluginFault::Unusable(_) => "unusable",
            PluginFault::OutputLimit(_) => "output_limit",
            PluginFault::Exited(_) => "exited",
        }
    }
}

/// A guest's error, its text kept as one line of bounded length.
impl From<crate::plugin::bindings::WitError> for PluginError {
    fn from(error: crate::plugin::bindings::WitError) -> Self {
        use crate::plugin::bindings::WitError;
        let error = match error {
            WitError::Rejected(reason) => PluginError::Rejected(reason),
            WitError::Retryable(reason) => PluginError::Retryable(reason),
            WitError::Failed(reason) => PluginError::Failed(reason),
        };
        error.bounded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::WitError;

    #[test]
    fn a_plugins_error_text_is_kept_as_one_line_of_bounded_length() {
        let text = format!("bad\nWARN forged log line{}", "x".repeat(1 << 20));
        let PluginError::Rejected(kept) = PluginError::from(WitError::Rejected(text)) else { unreachable!() };
        assert!(kept.starts_with(r"bad\nWARN forged log line"), "{kept:.100}");
        assert!(!kept.contains('\n'), "{kept:.100}");
        assert!(kept.len() <= 1024 + "...".len(), "{} bytes", kept.len());
    }
}
