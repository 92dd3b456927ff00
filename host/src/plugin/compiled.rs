//! A compiled, type-checked plugin version, ready to instantiate.

use super::bindings::{
    BalancerPluginPre, FilterPluginPre, MiddlewarePluginPre, TransformPluginPre, TransportPluginPre,
};
use super::cache::CacheOutcome;
use super::engine::PluginEngine;
use super::error::LoadError;
use super::native::{self, NativeLibrary};
use super::sandbox::{PluginSettings, StoreState};
use crate::metrics::CallSeries;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, InstancePre};

/// The kinds of plugin, one per WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PluginKind {
    /// Exports `switchyard:plugin/filter`.
    Filter,
    /// Exports `switchyard:plugin/transform`.
    Transform,
    /// Exports `switchyard:plugin/middleware`.
    Middleware,
    /// Exports `switchyard:plugin/balancer`.
    Balancer,
    /// Exports `switchyard:plugin/transport`.
    Transport,
}

impl PluginKind {
    const ALL: [PluginKind; 5] = [
        PluginKind::Filter,
        PluginKind::Transform,
        PluginKind::Middleware,
        PluginKind::Balancer,
        PluginKind::Transport,
    ];

    /// The kind's name, as in its WIT interface.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Filter => "filter",
            PluginKind::Transform => "transform",
            PluginKind::Middleware => "middleware",
            PluginKind::Balancer => "balancer",
            PluginKind::Transport => "transport",
        }
    }

    fn export_name(self) -> String {
        format!("switchyard:plugin/{}@0.1.0", self.as_str())
    }
}

/// A plugin's code: a linked component, or a native library.
pub(crate) enum PluginCode {
    Wasm(KindPre),
    Native(NativeLibrary),
}

/// The linked, ready-to-instantiate form of a plugin, by kind.
pub(crate) enum KindPre {
    Filter(FilterPluginPre<StoreState>),
    Transform(TransformPluginPre<StoreState>),
    Middleware(MiddlewarePluginPre<StoreState>),
    Balancer(BalancerPluginPre<StoreState>),
    Transport(TransportPluginPre<StoreState>),
}

impl KindPre {
    /// The linked component, whatever its kind.
    pub(crate) fn instance_pre(&self) -> &InstancePre<StoreState> {
        match self {
            KindPre::Filter(pre) => pre.instance_pre(),
            KindPre::Transform(pre) => pre.instance_pre(),
            KindPre::Middleware(pre) => pre.instance_pre(),
            KindPre::Balancer(pre) => pre.instance_pre(),
            KindPre::Transport(pre) => pre.instance_pre(),
        }
    }
}

/// One version of a plugin: compiled, checked against its world, linked.
pub struct CompiledPlugin {
    /// Plugin name (the file stem).
    pub name: String,
    /// Which world it implements.
    pub kind: PluginKind,
    /// SHA-256 of the component (or library) bytes, hex: the plugin's version.
    pub digest: String,
    /// How long compiling and linking took.
    pub compile_time: Duration,
    /// Whether the compiled code came from the compile cache.
    pub cache: CacheOutcome,
    /// Config, limits, grants and counters.
    pub settings: Arc<PluginSettings>,
    pub(crate) code: PluginCode,
    /// Instances of this version alive now.
    pub(crate) instances: std::sync::atomic::AtomicUsize,
    /// The metric series its calls add to, once looked up.
    pub(crate) call_series: std::sync::OnceLock<CallSeries>,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl CompiledPlugin {
    /// Compile `bytes` (a component binary or WAT text) as plugin `settings.config.name`.
    pub fn compile(
        engine: &PluginEngine,
        bytes: &[u8],
        settings: Arc<PluginSettings>,
    ) -> Result<CompiledPlugin, LoadError> {
        let started = Instant::now();
        let name = settings.config.name.clone();
        let digest = hex::encode(Sha256::digest(bytes));
        let (component, cache) = engine.component(&name, &digest, bytes).map_err(|err| {
            // Bytes that are not a binary were parsed as WAT text: that parser's complaint (say,
            // "input bytes aren't valid utf-8") would not tell what is wrong.
            let reason = match bytes.starts_with(b"\0asm") || std::str::from_utf8(bytes).is_ok() {
                true => format!("{err:#}"),
                false => "not a WebAssembly binary (it does not begin with \\0asm) nor WAT text".to_owned(),
            };
            LoadError::Invalid { name: name.clone(), reason }
        })?;
        let kind = detect_kind(engine, &component, &name)?;
        super::format::check_exported(&engine.engine, &component, &name)?;
        let wrong_world = |err: wasmtime::Error| LoadError::WrongWorld {
            name: name.clone(),
            world: kind.as_str(),
            reason: format!("{err:#}"),
        };
        let linked = engine.linker.instantiate_pre(&component).map_err(wrong_world)?;
        let pre = match kind {
            PluginKind::Filter => KindPre::Filter(FilterPluginPre::new(linked).map_err(wrong_world)?),
            PluginKind::Transform => {
                KindPre::Transform(TransformPluginPre::new(linked).map_err(wrong_world)?)
            }
            PluginKind::Middleware => {
                KindPre::Middleware(MiddlewarePluginPre::new(linked).map_err(wrong_world)?)
            }
            PluginKind::Balancer => KindPre::Balancer(BalancerPluginPre::new(linked).map_err(wrong_world)?),
            PluginKind::Transport => {
                KindPre::Transport(TransportPluginPre::new(linked).map_err(wrong_world)?)
            }
        };
        engine.keep(&digest, &component, &cache);
        let instances = Default::default();
        let compile_time = started.elapsed();
        let code = PluginCode::Wasm(pre);
        let call_series = Default::default();
        Ok(CompiledPlugin { name, kind, digest, compile_time, cache, settings, code, instances, call_series })
    }

    /// Load `bytes`, a native library, as plugin `settings.config.name`
    /// (trusted code: no sandbox, no memory cap, no deadline).
    pub fn load_native(bytes: &[u8], settings: Arc<PluginSettings>) -> Result<CompiledPlugin, LoadError> {
        let started = Instant::now();
        let name = settings.config.name.clone();
        let digest = hex::encode(Sha256::digest(bytes));
        let library = native::load(bytes, &settings)
            .map_err(|refusal| LoadError::NativeRefused { name: name.clone(), refusal })?;
        Ok(CompiledPlugin {
            name,
            kind: library.kind(),
            digest,
            compile_time: started.elapsed(),
            cache: CacheOutcome::Off,
            settings,
            code: PluginCode::Native(library),
            instances: Default::default(),
            call_series: Default::default(),
        })
    }

    /// Whether this version is a native library rather than a component.
    pub fn is_native(&self) -> bool {
        matches!(self.code, PluginCode::Native(_))
    }

    /// The first 12 hex digits of the digest, for humans.
    pub fn short_version(&self) -> &str {
        &self.digest[..12]
    }

    /// How many instances of this version are alive now (one per worker
    /// thread that ran it, at most).
    pub fn live_instances(&self) -> usize {
        self.instances.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn detect_kind(engine: &PluginEngine, component: &Component, name: &str) -> Result<PluginKind, LoadError> {
    let exports: Vec<String> =
        component.component_type().exports(&engine.engine).map(|(export, _)| export.to_owned()).collect();
    let mut kinds = PluginKind::ALL.into_iter().filter(|kind| exports.contains(&kind.export_name()));
    match (kinds.next(), kinds.next()) {
        (Some(kind), None) => Ok(kind),
        _ => Err(LoadError::UnknownKind {
            name: name.to_owned(),
            exports: if exports.is_empty() { "none".into() } else { exports.join(", ") },
        }),
    }
}
