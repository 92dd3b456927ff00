//! The wasmtime engine of one host: compiler settings, the linker every plugin
//! is checked against, and the epoch ticker that enforces call deadlines.

use super::cache::{CacheOutcome, CompileCache, OpenError};
use super::error::EngineError;
use super::sandbox::{StoreState, add_host_imports};
use super::ticker::{CallMark, EpochTicker};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

/// The environment variable that names plugin code for a profiler:
/// `perfmap` writes `/tmp/perf-<pid>.map` as plugins load, so that `perf`
/// (and callgrind, through the map) names each plugin function instead of an
/// address; `jitdump` writes `jit-<pid>.dump` for `perf inject --jit`. A
/// plugin built with `strip = true` is named by function index only.
pub(crate) const PROFILE_ENV: &str = "SWITCHYARD_PROFILE";

/// The profiler [`PROFILE_ENV`] asks for: none when unset.
fn profiling_strategy() -> wasmtime::Result<wasmtime::ProfilingStrategy> {
    use wasmtime::ProfilingStrategy::{JitDump, None, PerfMap};
    match std::env::var(PROFILE_ENV).as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("") => Ok(None),
        Ok("perfmap") => Ok(PerfMap),
        Ok("jitdump") => Ok(JitDump),
        Ok(other) => wasmtime::bail!("{PROFILE_ENV}={other:?}: expected \"perfmap\" or \"jitdump\""),
        Err(err) => wasmtime::bail!("{PROFILE_ENV}: {err}"),
    }
}

/// How often the epoch advances; call deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A compile of a component to machine code, told to a [`CompileObserver`]
/// before and after; never told when the code comes from the compile cache.
#[derive(Debug, Clone, Copy)]
pub enum CompileProgress<'a> {
    /// About to compile plugin `plugin`, a component of `bytes` bytes.
    Started {
        /// Plugin name.
        plugin: &'a str,
        /// Size of the component.
        bytes: usize,
    },
    /// Compiled (successfully or not) in `took`.
    Finished {
        /// Plugin name.
        plugin: &'a str,
        /// Size of the component.
        bytes: usize,
        /// How long compiling took.
        took: Duration,
        /// Whether it compiled (else its error comes with the load's).
        compiled: bool,
    },
}

/// Told of every compile, e.g. to say that a large one is under way; called
/// on the compiling thread, so it should be quick.
pub type CompileObserver = Arc<dyn Fn(CompileProgress<'_>) + Send + Sync>;

/// A wasmtime engine plus linker; one per [`Host`](crate::Host), never global.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    /// Where compiled code is kept between runs, if anywhere.
    cache: Option<CompileCache>,
    /// Why the configured cache is not used, if it is not: it is not this user's alone.
    cache_refused: Option<String>,
    /// Told before and after each compile.
    observer: Option<CompileObserver>,
    /// Advances the epoch while plugin code runs; stops when dropped.
    ticker: EpochTicker,
    /// Cancelled once the host's stop is past its grace period ([`cut_calls`](Self::cut_calls)):
    /// every instance's store holds a clone, and a call under way ends at once, as at its deadline.
    pub(super) calls_cut: CancellationToken,
}

impl PluginEngine {
    /// A fresh engine with its own epoch ticker thread (resting while no
    /// plugin code runs); compiled components
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
        config.profiler(profiling_strategy()?);
        let engine = Engine::new(&config)?;
        let (mut cache, mut cache_refused) = (None, None);
        if let Some(dir) = cache_dir {
            match CompileCache::open(dir, &engine) {
                Ok(opened) => cache = Some(opened),
                Err(OpenError::NotPrivate(why)) => {
                    tracing::warn!(
                        "compile cache {} not used, plugins are compiled afresh: {why} (make it this user's \
                         alone: chmod go-w on the directory, chmod 600 on its key; or set host.cache_dir elsewhere)",
                        dir.display()
                    );
                    cache_refused = Some(why);
                }
                Err(OpenError::Io(err)) => {
                    return Err(wasmtime::Error::msg(format!("compile cache {}: {err}", dir.display())));
                }
            }
        }
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        super::deadline::bound_blocking_calls(&mut linker)?;
        super::net_grant::answer_lookups_from_grants(&mut linker)?;
        super::socket_cap::cap_sockets(&mut linker)?;
        super::dir_grant::open_only_files_and_dirs(&mut linker)?;
        add_host_imports(&mut linker)?;
        let ticker = EpochTicker::start(engine.weak())?;
        let calls_cut = CancellationToken::new();
        Ok(PluginEngine { engine, linker, cache, cache_refused, observer: None, ticker, calls_cut })
    }

    /// Tell `observer` of every compile from now on. Compiles use all cores
    /// (wasmtime's parallel compilation) and then land in the compile cache.
    pub fn observe_compiles(&mut self, observer: CompileObserver) {
        self.observer = Some(observer);
    }

    /// The component of `bytes` (whose digest is `digest`), plugin `plugin`:
    /// from the cache when it holds a sound entry, else compiled, to be
    /// [kept](Self::keep) in the cache once it proved to be a plugin.
    pub(crate) fn component(
        &self,
        plugin: &str,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(cache) = &self.cache else {
            let outcome = self.cache_refused.clone().map_or(CacheOutcome::Off, CacheOutcome::Refused);
            return Ok((self.compile(plugin, bytes)?, outcome));
        };
        let outcome = match cache.load(&self.engine, digest) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => CacheOutcome::Miss,
            Err(why) => CacheOutcome::Discarded(why),
        };
        Ok((self.compile(plugin, bytes)?, outcome))
    }

    /// Store `component` (of digest `digest`, got with `outcome`) in the compile cache when
    /// [`component`](Self::component) compiled it: called once it proved to be a plugin, so
    /// that a file refused after its compile leaves no entry.
    pub(crate) fn keep(&self, digest: &str, component: &Component, outcome: &CacheOutcome) {
        let (Some(cache), CacheOutcome::Miss | CacheOutcome::Discarded(_)) = (&self.cache, outcome) else {
            return;
        };
        if let Err(err) = cache.store(digest, component) {
            tracing::warn!(%err, "cannot store compiled code in the compile cache, or evict old entries");
        }
    }

    /// Compile `bytes`, telling the observer.
    fn compile(&self, plugin: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let Some(observer) = &self.observer else { return Component::new(&self.engine, bytes) };
        observer(CompileProgress::Started { plugin, bytes: bytes.len() });
        let started = std::time::Instant::now();
        let component = Component::new(&self.engine, bytes);
        let (took, compiled) = (started.elapsed(), component.is_ok());
        observer(CompileProgress::Finished { plugin, bytes: bytes.len(), took, compiled });
        component
    }

    /// The mark a new store's calls run under, so that the epoch ticker
    /// ticks through them.
    pub(crate) fn call_mark(&self) -> CallMark {
        self.ticker.mark()
    }

    /// End every call of this engine's instances, those under way (within
    /// [`CUT_CHECK_TICKS`](super::ticker::CUT_CHECK_TICKS) ticks if in plugin code, at once if
    /// waiting inside WASI) and those to come, as at their deadline: called once the host's stop is
    /// past its grace period, when what a call holds is dead-lettered `shutdown` rather than waited for.
    pub(crate) fn cut_calls(&self) {
        self.calls_cut.cancel();
    }

    /// Whether [`cut_calls`](Self::cut_calls) was called: a call now would end at once.
    pub(crate) fn calls_cut(&self) -> bool {
        self.calls_cut.is_cancelled()
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
