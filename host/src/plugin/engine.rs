//! The wasmtime engine of one host: compiler settings, the linker every plugin
//! is checked against, and the epoch ticker that enforces call deadlines.

use super::bindings::add_host_imports;
use super::cache::{CacheOutcome, CompileCache};
use super::error::EngineError;
use super::sandbox::StoreState;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A wasmtime engine plus linker; one per [`Host`](crate::Host), never global.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    /// Where compiled code is kept between runs, if anywhere.
    cache: Option<CompileCache>,
    /// Dropping this stops the ticker thread.
    _ticker: mpsc::Sender<()>,
}

impl PluginEngine {
    /// A fresh engine with its own epoch ticker thread; compiled components
    /// are cached in `cache_dir` (keyed by content and engine settings,
    /// sealed; see [`CacheOutcome`]).
    pub fn new(cache_dir: Option<&Path>) -> Result<PluginEngine, EngineError> {
        PluginEngine::configure(cache_dir).map_err(|err| EngineError(format!("{err:#}")))
    }

    fn configure(cache_dir: Option<&Path>) -> wasmtime::Result<PluginEngine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // The fixed cost of every call is ~3x lower without the component-model
        // concurrency machinery, which no plugin world needs.
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        let cache = match cache_dir {
            Some(dir) => Some(
                CompileCache::open(dir, &engine)
                    .map_err(|err| wasmtime::Error::msg(format!("compile cache {}: {err}", dir.display())))?,
            ),
            None => None,
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        super::deadline::bound_blocking_calls(&mut linker)?;
        add_host_imports(&mut linker)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let ticking = engine.weak();
        std::thread::Builder::new().name("switchyard-epoch".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                match ticking.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })?;
        Ok(PluginEngine { engine, linker, cache, _ticker: stop })
    }

    /// The component of `bytes` (whose digest is `digest`): from the cache
    /// when it holds a sound entry, else compiled (and cached).
    pub(crate) fn component(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(cache) = &self.cache else {
            return Ok((Component::new(&self.engine, bytes)?, CacheOutcome::Off));
        };
        let outcome = match cache.load(&self.engine, digest) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => CacheOutcome::Miss,
            Err(why) => CacheOutcome::Discarded(why),
        };
        let component = Component::new(&self.engine, bytes)?;
        if let Err(err) = cache.store(digest, &component) {
            tracing::warn!(%err, "cannot store compiled code in the compile cache");
        }
        Ok((component, outcome))
    }

    /// Epoch ticks that cover `timeout`, plus one for the partial tick in progress.
    pub(crate) fn deadline_ticks(timeout: Duration) -> u64 {
        (timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()) + 1) as u64
    }
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}
