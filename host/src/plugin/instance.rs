//! A live instance of one plugin version: its store, its exports, and calls
//! guarded by a deadline and a memory cap (or, for a native library, its
//! exports called directly).

use super::bindings::{
    Action, BalancerPlugin, EndpointRecord, FilterPlugin, MiddlewarePlugin, TransformPlugin, TransportPlugin,
};
use super::compiled::{CompiledPlugin, KindPre, PluginCode, PluginKind};
use super::engine::PluginEngine;
use super::error::{LoadError, PluginError, PluginFault};
use super::host_calls::CallCounts;
use super::net_grant::NetGrant;
use super::sandbox::StoreState;
use super::ticker::{CUT_CHECK_TICKS, CallMark};
use crate::message::Verdict;
use std::sync::Arc;
use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Store, Trap};

/// How calls reach the plugin's code.
enum Backend {
    Wasm {
        exports: Exports,
        guard: CallGuard,
    },
    /// A native library, and what its current call counted (a component's store holds that).
    Native {
        library: super::native::NativeLibrary,
        counts: CallCounts,
    },
}

pub(super) enum Exports {
    Filter(FilterPlugin),
    Transform(TransformPlugin),
    Middleware(MiddlewarePlugin),
    Balancer(BalancerPlugin),
    Transport(TransportPlugin),
}

/// What a middleware decided about a request.
#[derive(Debug)]
pub enum MiddlewareAction {
    /// Deliver this (possibly rewritten) request, as a one-message batch.
    Forward(Vec<u8>),
    /// Answer the caller with this reply, as a one-message batch.
    Respond(Vec<u8>),
}

/// What a transform call returned.
#[derive(Debug)]
pub struct Transformed {
    /// Output messages as a wire batch.
    pub messages: Vec<u8>,
    /// Inputs that failed, by index.
    pub errors: Vec<(u32, PluginError)>,
}

/// Why a component did not become an instance. Kept apart so that the trial
/// tells a plugin built for another world from one that fails as it starts.
#[derive(Debug)]
pub(super) enum StartFailure {
    /// Instantiating it failed: its start-up code trapped, ran too long or
    /// exited, or creating its memories and tables passed an instance's limits.
    Fault(PluginFault),
    /// It started, but its exports do not type-check against its kind's world.
    WrongWorld(String),
}

impl From<StartFailure> for PluginFault {
    fn from(failure: StartFailure) -> PluginFault {
        match failure {
            StartFailure::Fault(fault) => fault,
            StartFailure::WrongWorld(reason) => PluginFault::Unusable(reason),
        }
    }
}

/// An instantiated plugin. A fault poisons it: the caller must drop it.
pub struct PluginInstance {
    /// The version this instance runs.
    pub plugin: Arc<CompiledPlugin>,
    backend: Backend,
}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        self.plugin.instances.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The store of an instance, entered only under a deadline.
pub(super) struct CallGuard {
    store: Store<StoreState>,
    /// The same deadline as a duration, for waits inside WASI.
    timeout: std::time::Duration,
    /// Bytes of memory past which the instance has outgrown itself ([`PluginInstance::outgrown`]).
    outgrown_at: usize,
    /// Keeps the epoch ticker ticking while the store runs plugin code.
    mark: CallMark,
}

/// The share of the room between an instance's memory at start and its cap that it may fill
/// before it is [outgrown](PluginInstance::outgrown).
const OUTGROWN_SHARE: (usize, usize) = (3, 4);

impl PluginInstance {
    /// Instantiate `plugin` in a fresh store of `engine`, under the same
    /// deadline and memory cap as a call (start functions run here).
    pub fn new(engine: &PluginEngine, plugin: Arc<CompiledPlugin>) -> Result<PluginInstance, PluginFault> {
        let state = StoreState::new(plugin.settings.clone());
        PluginInstance::in_state(engine, plugin, state).map_err(PluginFault::from)
    }

    /// Like [`new`](Self::new), but the instance may connect to what `grant`
    /// resolves to only (TCP or UDP; never listen), and look up its names,
    /// whatever the plugin's own grants: a transport plugin reaches its
    /// destination's endpoints and nothing else.
    pub fn with_connect_grants(
        engine: &PluginEngine,
        plugin: Arc<CompiledPlugin>,
        grant: Arc<NetGrant>,
    ) -> Result<PluginInstance, PluginFault> {
        let state = StoreState::with_connect_grants(plugin.settings.clone(), grant);
        PluginInstance::in_state(engine, plugin, state).map_err(PluginFault::from)
    }

    /// Instantiate `plugin` in a fresh store holding `state`.
    pub(super) fn in_state(
        engine: &PluginEngine,
        plugin: Arc<CompiledPlugin>,
        state: Result<StoreState, LoadError>,
    ) -> Result<PluginInstance, StartFailure> {
        let backend = match &plugin.code {
            PluginCode::Wasm(pre) => Self::instantiate(engine, &plugin, pre, state)?,
            PluginCode::Native(library) => {
                Backend::Native { library: *library, counts: CallCounts::default() }
            }
        };
        plugin.instances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(PluginInstance { plugin, backend })
    }

    fn instantiate(
        engine: &PluginEngine,
        plugin: &CompiledPlugin,
        pre: &KindPre,
        state: Result<StoreState, LoadError>,
    ) -> Result<Backend, StartFailure> {
        let mut state = state.map_err(|err| {
            StartFailure::Fault(match err {
                LoadError::GrantTimedOut { timeout, .. } => PluginFault::TimedOut(timeout),
                err => PluginFault::Unusable(err.to_string()),
            })
        })?;
        state.calls_cut = engine.calls_cut.clone();
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|state| state);
        // A call the engine cut has no time left.
        let ends_at = |state: &StoreState| state.call_ends_at.filter(|_| !state.calls_cut.is_cancelled());
        super::ticker::end_calls_on_time(&mut store, ends_at);
        let timeout = plugin.settings.timeout();
        let mut guard = CallGuard { store, timeout, outgrown_at: usize::MAX, mark: engine.call_mark() };
        // In two steps, as the generated `instantiate` takes them: start the component (which
        // runs its code), then type-check its exports against the world (which runs none).
        let instance = guard.start(pre.instance_pre())?;
        let store = &mut guard.store;
        let exports = match pre {
            KindPre::Filter(_) => FilterPlugin::new(store, &instance).map(Exports::Filter),
            KindPre::Transform(_) => TransformPlugin::new(store, &instance).map(Exports::Transform),
            KindPre::Middleware(_) => MiddlewarePlugin::new(store, &instance).map(Exports::Middleware),
            KindPre::Balancer(_) => BalancerPlugin::new(store, &instance).map(Exports::Balancer),
            KindPre::Transport(_) => TransportPlugin::new(store, &instance).map(Exports::Transport),
        };
        let exports = exports.map_err(|err| StartFailure::WrongWorld(format!("{err:#}")))?;
        let (start, cap) = guard.store.data().memory();
        guard.outgrown_at = start + (cap.saturating_sub(start)) / OUTGROWN_SHARE.1 * OUTGROWN_SHARE.0;
        Ok(Backend::Wasm { exports, guard })
    }

    /// The wire format version the plugin was built for, asked of a
    /// component once at load; `None` for a native library, whose ABI
    /// version fixes its wire format.
    pub fn wire_format(&mut self) -> Result<Option<u32>, PluginFault> {
        let Backend::Wasm { exports, guard } = &mut self.backend else { return Ok(None) };
        let version = match exports {
            Exports::Filter(plugin) => {
                guard.call(|store| plugin.switchyard_plugin_format().call_version(store))
            }
            Exports::Transform(plugin) => {
                guard.call(|store| plugin.switchyard_plugin_format().call_version(store))
            }
            Exports::Middleware(plugin) => {
                guard.call(|store| plugin.switchyard_plugin_format().call_version(store))
            }
            Exports::Balancer(plugin) => {
                guard.call(|store| plugin.switchyard_plugin_format().call_version(store))
            }
            Exports::Transport(plugin) => {
                guard.call(|store| plugin.switchyard_plugin_format().call_version(store))
            }
        };
        version.map(Some)
    }

    /// Run a filter over a heads-only batch: one decision per message. What it counted is held
    /// until [`commit_counts`](Self::commit_counts).
    pub fn filter(&mut self, batch: &Vec<u8>) -> Result<Vec<Result<Verdict, PluginError>>, PluginFault> {
        let (exports, guard) = match &mut self.backend {
            Backend::Native { library, counts } if library.kind() == PluginKind::Filter => {
                return library.filter(batch, counts);
            }
            Backend::Wasm { exports: Exports::Filter(filter), guard } => (filter, guard),
            _ => return Err(self.not_a(PluginKind::Filter)),
        };
        let filter = exports.switchyard_plugin_filter();
        let answer = guard.call_held(|store| filter.call_filter(store, batch))?;
        let counts = guard.store.data_mut().call_counts.get_mut();
        let decisions =
            switchyard_wire::decisions::read_decisions(&answer, |name, delta| counts.add(name, delta))
                .map_err(super::native::malformed)?;
        Ok(decisions.into_iter().map(super::native::decision).collect())
    }

    /// Run a transform over a batch of full messages. What it counted is held until
    /// [`commit_counts`](Self::commit_counts).
    pub fn transform(&mut self, batch: &Vec<u8>) -> Result<Transformed, PluginFault> {
        let (exports, guard) = match &mut self.backend {
            Backend::Native { library, counts } if library.kind() == PluginKind::Transform => {
                return library.transform(batch, counts);
            }
            Backend::Wasm { exports: Exports::Transform(transform), guard } => (transform, guard),
            _ => return Err(self.not_a(PluginKind::Transform)),
        };
        let transform = exports.switchyard_plugin_transform();
        let out = guard.call_held(|store| transform.call_transform(store, batch))?;
        let errors = out.errors.into_iter().map(|(index, error)| (index, error.into())).collect();
        Ok(Transformed { messages: out.messages, errors })
    }

    /// Run a middleware on a request (a one-message batch). What it counted is held until
    /// [`commit_counts`](Self::commit_counts).
    pub fn on_request(
        &mut self,
        request: &Vec<u8>,
    ) -> Result<Result<MiddlewareAction, PluginError>, PluginFault> {
        let (exports, guard) = match &mut self.backend {
            Backend::Native { library, counts } if library.kind() == PluginKind::Middleware => {
                return library.on_request(request, counts);
            }
            Backend::Wasm { exports: Exports::Middleware(middleware), guard } => (middleware, guard),
            _ => return Err(self.not_a(PluginKind::Middleware)),
        };
        let middleware = exports.switchyard_plugin_middleware();
        let action = guard.call_held(|store| middleware.call_on_request(store, request))?;
        Ok(action.map_err(PluginError::from).map(|action| match action {
            Action::Forward(batch) => MiddlewareAction::Forward(batch),
            Action::Respond(batch) => MiddlewareAction::Respond(batch),
        }))
    }

    /// Run a middleware on a reply; returns the reply to pass on. What it counted is held until
    /// [`commit_counts`](Self::commit_counts).
    pub fn on_reply(
        &mut self,
        request: &Vec<u8>,
        reply: &Vec<u8>,
    ) -> Result<Result<Vec<u8>, PluginError>, PluginFault> {
        let (exports, guard) = match &mut self.backend {
            Backend::Native { library, counts } if library.kind() == PluginKind::Middleware => {
                return library.on_reply(request, reply, counts);
            }
            Backend::Wasm { exports: Exports::Middleware(middleware), guard } => (middleware, guard),
            _ => return Err(self.not_a(PluginKind::Middleware)),
        };
        let middleware = exports.switchyard_plugin_middleware();
        let reply = guard.call_held(|store| middleware.call_on_reply(store, request, reply))?;
        Ok(reply.map_err(PluginError::from))
    }

    /// Ask a balancer to pick one of `endpoints`, by its `index`, for `head` (a one-message,
    /// heads-only batch). The answer is the plugin's own, unchecked: an index out of range or of an
    /// unhealthy endpoint is the caller's to refuse.
    pub fn pick(&mut self, head: &Vec<u8>, endpoints: &[EndpointRecord]) -> Result<Option<u32>, PluginFault> {
        let (exports, guard) = match &mut self.backend {
            Backend::Native { library, counts } if library.kind() == PluginKind::Balancer => {
                let picked = library.pick(head, endpoints, counts)?;
                counts.commit(&self.plugin.settings);
                return Ok(picked);
            }
            Backend::Wasm { exports: Exports::Balancer(balancer), guard } => (balancer, guard),
            _ => return Err(self.not_a(PluginKind::Balancer)),
        };
        let balancer = exports.switchyard_plugin_balancer();
        guard.call(|store| balancer.call_pick(store, head, endpoints))
    }

    /// Count what the last call of a filter, transform or middleware counted, once its caller
    /// took the answer; whether there was anything. Until then it is held, and the next call, or
    /// the instance's end, drops it: a caller that refuses an answer runs its batch's messages
    /// again, and they must count once.
    pub fn commit_counts(&mut self) -> bool {
        match &mut self.backend {
            Backend::Wasm { guard, .. } => guard.commit_counts(),
            Backend::Native { counts, .. } => counts.commit(&self.plugin.settings),
        }
    }

    /// Whether the instance's memory has filled three quarters of the room its cap left it when
    /// it started. Linear memory never shrinks, so a plugin whose memory only grows (a leak, or a
    /// language runtime that keeps a little of every message: the JavaScript filter, called with
    /// batches of 64 messages, filled its 64 MiB in about ten thousand calls) would in time fail a
    /// call at its cap; the caller renews an outgrown instance between calls instead. Never true
    /// of a native library.
    pub fn outgrown(&self) -> bool {
        match &self.backend {
            Backend::Wasm { guard, .. } => guard.store.data().memory().0 > guard.outgrown_at,
            Backend::Native { .. } => false,
        }
    }

    /// Sockets the instance holds open (those [capped](super::MAX_SOCKETS)): between
    /// calls, exactly those its plugin keeps. None for a native library, whose sockets are the
    /// host's own, neither counted nor capped.
    pub(crate) fn open_sockets(&self) -> usize {
        match &self.backend {
            Backend::Wasm { guard, .. } => guard.store.data().open_sockets,
            Backend::Native { .. } => 0,
        }
    }

    /// The exports and call guard of a WebAssembly instance; `None` for a native library.
    pub(super) fn wasm(&mut self) -> Option<(&Exports, &mut CallGuard)> {
        match &mut self.backend {
            Backend::Wasm { exports, guard } => Some((exports, guard)),
            Backend::Native { .. } => None,
        }
    }

    pub(super) fn not_a(&self, wanted: PluginKind) -> PluginFault {
        PluginFault::Malformed(format!("is a {}, not a {}", self.plugin.kind.as_str(), wanted.as_str()))
    }
}

impl CallGuard {
    /// Instantiate `pre` in this guard's store, under the plugin's deadline
    /// and memory cap: start functions run here.
    fn start(&mut self, pre: &InstancePre<StoreState>) -> Result<Instance, StartFailure> {
        self.call(|store| pre.instantiate(store)).map_err(StartFailure::Fault)
    }

    /// Run `call` under the plugin's deadline; what it counted counts if it returns.
    fn call<R>(
        &mut self,
        call: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        self.call_within(self.timeout, call)
    }

    /// Run `call` under a deadline of `timeout` from now rather than the
    /// plugin's own (a transport call is bounded by its destination's
    /// per-attempt deadline); what it counted counts if it returns.
    pub(super) fn call_within<R>(
        &mut self,
        timeout: std::time::Duration,
        call: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        let answer = self.held_within(timeout, call)?;
        self.commit_counts();
        Ok(answer)
    }

    /// Run `call` under the plugin's deadline, holding what it counted for
    /// [`commit_counts`](Self::commit_counts): its answer has yet to be checked.
    fn call_held<R>(
        &mut self,
        call: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        self.held_within(self.timeout, call)
    }

    /// Count what the last call held; whether there was anything.
    fn commit_counts(&mut self) -> bool {
        let state = self.store.data_mut();
        state.call_counts.get_mut().commit(&state.settings)
    }

    fn held_within<R>(
        &mut self,
        timeout: std::time::Duration,
        call: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFault> {
        self.store.set_epoch_deadline(PluginEngine::deadline_ticks(timeout).min(CUT_CHECK_TICKS));
        let state = self.store.data_mut();
        // What an earlier call held was never taken.
        state.call_counts.get_mut().forget();
        state.host.last_error_logged = None;
        // What an earlier call ran into says nothing of this one: a plugin may survive a refused
        // grow (it asked with `try_reserve`), and its next trap must not be taken for the cap's.
        state.hit_memory_cap = false;
        state.waited_past_deadline = false;
        state.call_deadline = Some(tokio::time::Instant::now() + timeout);
        state.call_ends_at = Some(std::time::Instant::now() + timeout);
        let store = &mut self.store;
        self.mark.during(|| call(store)).map_err(|err| self.classify(err, timeout))
    }

    fn classify(&self, err: wasmtime::Error, timeout: std::time::Duration) -> PluginFault {
        let state = self.store.data();
        // The deadline first: a plugin that survived a refused grow and then ran past its deadline
        // timed out.
        if state.waited_past_deadline || matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return PluginFault::TimedOut(timeout);
        }
        if state.hit_memory_cap {
            return PluginFault::MemoryCap(state.settings.config.limits.memory_mb);
        }
        if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return PluginFault::Exited(exit.0);
        }
        match err.downcast_ref::<Trap>() {
            Some(trap) => PluginFault::Trapped(match &state.host.last_error_logged {
                Some(logged) => format!("{trap}; it logged: {logged}"),
                None => trap.to_string(),
            }),
            None => PluginFault::Unusable(format!("{err:#}")),
        }
    }
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance").field("plugin", &self.plugin).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fault of a call that ended with `err` after the guest asked past its memory cap and
    /// went on (a refused grow it survived); `waited_past_deadline` if a wait inside WASI ran into
    /// the deadline.
    fn fault_after_a_refused_grow(err: wasmtime::Error, waited_past_deadline: bool) -> PluginFault {
        let engine = PluginEngine::new(None).unwrap();
        let mut state = StoreState::new(Arc::default()).unwrap();
        (state.hit_memory_cap, state.waited_past_deadline) = (true, waited_past_deadline);
        let timeout = std::time::Duration::from_millis(100);
        let store = Store::new(&engine.engine, state);
        let guard = CallGuard { store, timeout, outgrown_at: usize::MAX, mark: engine.call_mark() };
        guard.classify(err, timeout)
    }

    #[test]
    fn a_call_cut_at_its_deadline_after_a_refused_grow_it_survived_timed_out() {
        let interrupted = fault_after_a_refused_grow(wasmtime::Error::new(Trap::Interrupt), false);
        assert!(matches!(interrupted, PluginFault::TimedOut(_)), "{interrupted:?}");
        let waited =
            fault_after_a_refused_grow(wasmtime::Error::msg("the deadline passed while it waited"), true);
        assert!(matches!(waited, PluginFault::TimedOut(_)), "{waited:?}");
        let trapped = fault_after_a_refused_grow(wasmtime::Error::new(Trap::UnreachableCodeReached), false);
        assert!(matches!(trapped, PluginFault::MemoryCap(_)), "a trap after it is the cap's: {trapped:?}");
    }
}
