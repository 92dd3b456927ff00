//! The sandbox one plugin instance runs in: deny-by-default WASI, a memory cap,
//! and the `host` interface (log, config, clock, counters; see [`HostCalls`]).

use super::bindings::{HOST_INTERFACE, Level, TypesImports, add_types_imports};
use super::dir_grant::preopen;
use super::error::LoadError;
use super::host_calls::{CallCounts, HostCalls};
use super::net_grant::NetGrant;
use crate::config::{DirGrant, PluginConfig};
use prometheus_client::metrics::counter::Counter;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, ResourceTable, WasmStr};
use wasmtime_wasi::filesystem::FsPerms;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// One counter a plugin bumps through `host.count`.
#[derive(Debug, Default)]
struct Count {
    /// All this version of the plugin counted.
    total: u64,
    /// Increments not yet added to the host's metrics, where every version
    /// of the plugin adds to the same series.
    unreported: u64,
    /// That series, once looked up.
    series: Option<Counter>,
}

/// Everything the host knows about a plugin besides its code.
#[derive(Debug, Default)]
pub struct PluginSettings {
    /// The configuration as written (defaults when the plugin has no entry).
    pub config: PluginConfig,
    /// The counters this version bumped, by name.
    counts: Mutex<BTreeMap<String, Count>>,
    /// `allow_net`, resolved when the plugin was loaded.
    allow_net: Arc<NetGrant>,
    /// The lines this version may still log this second, over all its instances.
    pub(crate) log_budget: Mutex<super::host_calls::LogBudget>,
}

impl PluginSettings {
    /// Settings for `config`, resolving its network grants.
    pub fn new(config: PluginConfig) -> Result<PluginSettings, LoadError> {
        let allow_net = NetGrant::resolved_now(&config.allow_net).map_err(|(addr, err)| {
            LoadError::Grant { name: config.name.clone(), reason: format!("allow_net = \"{addr}\": {err}") }
        })?;
        let allow_net = Arc::new(allow_net);
        Ok(PluginSettings { config, counts: Mutex::default(), allow_net, log_budget: Mutex::default() })
    }

    /// What this version counted through `host.count`, by counter name
    /// (`/v1/plugins`); a new version starts from zero.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let counts = self.counts.lock().unwrap_or_else(|poison| poison.into_inner());
        counts.iter().map(|(name, count)| (name.clone(), count.total)).collect()
    }

    /// Add `delta` to counter `name`, saturating; a name not counted yet is
    /// added only if `room`, told how many names there are, allows it. A name
    /// is copied only when it is added: a plugin counts the same few names on
    /// every call.
    pub(crate) fn count(&self, name: &str, delta: u64, room: impl FnOnce(usize) -> bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = counts.get_mut(name) {
            count.total = count.total.saturating_add(delta);
            count.unreported = count.unreported.saturating_add(delta);
        } else if room(counts.len()) {
            counts.insert(name.to_owned(), Count { total: delta, unreported: delta, series: None });
        }
    }

    /// Add the counter increments made since the last report to their series
    /// in the host's metrics; `series` names the series of a counter, asked
    /// once per counter name.
    pub(crate) fn report_counts(&self, series: impl Fn(&str) -> Counter) {
        let mut counts = self.counts.lock().unwrap_or_else(|poison| poison.into_inner());
        for (name, count) in counts.iter_mut().filter(|(_, count)| count.unreported > 0) {
            let delta = std::mem::take(&mut count.unreported);
            count.series.get_or_insert_with(|| series(name)).inc_by(delta);
        }
    }

    /// Forget what was counted: the counters and their unreported increments.
    pub(crate) fn forget_counts(&self) {
        self.counts.lock().unwrap_or_else(|poison| poison.into_inner()).clear();
    }

    /// The plugin's memory cap in bytes.
    pub fn memory_cap(&self) -> usize {
        usize::try_from(self.config.limits.memory_mb << 20).unwrap_or(usize::MAX)
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.limits.timeout_ms)
    }

    /// A WASI context granting exactly what the config grants, nothing
    /// else, with `connect` as the addresses it may reach. Its granted
    /// directories open one after the other within the plugin's deadline, or
    /// it is not made: a mount that does not answer leaves one thread waiting
    /// on it (see [`preopen`]), at most one per context asked for.
    fn wasi(&self, connect: &Arc<NetGrant>) -> Result<WasiCtx, LoadError> {
        let mut builder = WasiCtxBuilder::new();
        for name in &self.config.env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        let mut builder = self.with_dirs(builder)?;
        if !connect.is_empty() {
            let allowed = connect.clone();
            builder.allow_tcp(true).allow_udp(true);
            builder.socket_addr_check(move |addr, usage| {
                let ok = match usage {
                    // Reaching out: only to a granted address.
                    SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => allowed.allows(addr),
                    // The bind a connect or send makes implicitly: any local port.
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                        addr.ip().is_unspecified() && addr.port() == 0
                    }
                    // A grant never lets a plugin listen, accept or receive from elsewhere.
                    SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                    SocketAddrUse::UdpReceive => allowed.allows(addr),
                };
                Box::pin(async move { ok })
            });
        }
        Ok(builder.build())
    }

    /// `builder` with the directories the config grants opened in it, one after the other within
    /// the plugin's deadline, or why not.
    fn with_dirs(&self, mut builder: WasiCtxBuilder) -> Result<WasiCtxBuilder, LoadError> {
        let deadline = tokio::time::Instant::now() + self.timeout();
        for (guest, value) in &self.config.dirs {
            let DirGrant { path, writable } = DirGrant::parse(value);
            let perms = if writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            let grant = || format!("dirs.\"{guest}\" = \"{path}\"");
            builder = match preopen(builder, path, guest, perms, deadline) {
                Some(Ok(builder)) => builder,
                Some(Err(err)) => {
                    let reason = format!("{}: {err}", grant());
                    return Err(LoadError::Grant { name: self.config.name.clone(), reason });
                }
                None => {
                    let (name, grant, timeout) = (self.config.name.clone(), grant(), self.timeout());
                    return Err(LoadError::GrantTimedOut { name, grant, timeout });
                }
            };
        }
        Ok(builder)
    }

    /// Whether the directories the config grants open as they would for an instance (the same
    /// errors, the same deadline), given to none: what a check asks of them.
    pub(crate) fn check_dirs(&self) -> Result<(), LoadError> {
        self.with_dirs(WasiCtxBuilder::new()).map(drop)
    }
}

/// The data of one plugin instance's `Store`.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) settings: Arc<PluginSettings>,
    /// What the instance may reach, and the names it may look up.
    pub(crate) net: Arc<NetGrant>,
    memory_cap: usize,
    /// Bytes all of the instance's linear memories and tables hold together
    /// (a table element counted as [`TABLE_ELEMENT_BYTES`]): the cap is on
    /// their sum, not on each (a component may have many).
    memory_in_use: usize,
    /// Sockets the instance holds open (see [`super::socket_cap`]).
    pub(super) open_sockets: usize,
    /// The files and directories the instance opened (see
    /// [`super::dir_grant`]): open while anything holds them.
    pub(super) open_files: Vec<std::sync::Weak<std::fs::File>>,
    /// Set when the guest asked for memory past the cap during the current
    /// call, so that the trap that follows is reported as a memory-cap fault
    /// rather than a plain trap.
    pub(crate) hit_memory_cap: bool,
    /// When the current call must end, for waits inside WASI (which epoch
    /// interruption cannot stop).
    pub(crate) call_deadline: Option<tokio::time::Instant>,
    /// When the current call must end by the real clock, which the epoch ticker keeps.
    pub(crate) call_ends_at: Option<std::time::Instant>,
    /// The engine's [cut](super::PluginEngine::cut_calls) of every call: once cancelled, the
    /// current call ends as at its deadline.
    pub(crate) calls_cut: tokio_util::sync::CancellationToken,
    /// Set when a wait inside WASI ran into the current call's deadline, so
    /// the trap that ends the call is reported as a timeout.
    pub(crate) waited_past_deadline: bool,
    /// The `host` interface: log, config, clock, counters.
    pub(crate) host: HostCalls,
    /// What the current call counted, held until its answer is taken. In a cell: `host.count`
    /// holds a count while it reads the counter's name in the guest's memory.
    pub(crate) call_counts: RefCell<CallCounts>,
}

impl StoreState {
    /// Fresh state for an instance of the plugin with `settings`.
    pub(crate) fn new(settings: Arc<PluginSettings>) -> Result<StoreState, LoadError> {
        let grants = settings.allow_net.clone();
        StoreState::with_connect_grants(settings, grants)
    }

    /// Fresh state whose network grant is `connect` (connect and send only),
    /// in place of the plugin's `allow_net`.
    pub(crate) fn with_connect_grants(
        settings: Arc<PluginSettings>,
        connect: Arc<NetGrant>,
    ) -> Result<StoreState, LoadError> {
        Ok(StoreState {
            wasi: settings.wasi(&connect)?,
            net: connect,
            table: resource_table(),
            memory_cap: settings.memory_cap(),
            memory_in_use: 0,
            open_sockets: 0,
            open_files: Vec::new(),
            host: HostCalls::new(settings.clone()),
            call_counts: RefCell::default(),
            settings,
            hit_memory_cap: false,
            call_deadline: None,
            call_ends_at: None,
            calls_cut: tokio_util::sync::CancellationToken::new(),
            waited_past_deadline: false,
        })
    }
}

impl StoreState {
    /// Bytes the instance's linear memories and tables hold together, and their cap.
    pub(crate) fn memory(&self) -> (usize, usize) {
        (self.memory_in_use, self.memory_cap)
    }

    /// The instance's resource table.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Linear memories, tables and core instances one plugin instance may have.
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;
const MAX_CORE_INSTANCES: usize = 256;

/// Bytes a table element counts for against the memory cap: a pointer.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// Host resources (streams, pollables, sockets, files...) one plugin instance
/// may hold at once. Each costs host memory outside the memory cap; a plugin
/// that leaks them across calls is stopped here (a trap) rather than at the
/// million wasmtime allows.
const MAX_RESOURCES: usize = 4096;

/// A resource table of at most [`MAX_RESOURCES`] entries.
fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// Every memory and table of the instance counts against one budget: a
/// memory or table created or grown is refused when the sum of all would
/// pass the cap.
///
/// A grow past the memory's or table's own declared maximum is refused here,
/// before it is counted: wasmtime asks the limiter first and checks that
/// maximum only after, so an approved grow it then refused stayed counted (a
/// guest retrying one added phantom bytes each time, until its instance was
/// renewed for nothing and its faults were told as memory-cap faults).
/// `memory_grow_failed` and `table_grow_failed` cannot undo an approval
/// instead: wasmtime also calls `table_grow_failed` for a grow it never asked
/// about (a 64-bit table's size overflowing), which would undo one that
/// succeeded. What may still fail after approval is the OS mapping memory,
/// counted until the instance is renewed: never more than the cap allows.
impl wasmtime::ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(within_own_maximum(desired, max) && self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(within_own_maximum(desired, max)
            && self.grow(
                current.saturating_mul(TABLE_ELEMENT_BYTES),
                desired.saturating_mul(TABLE_ELEMENT_BYTES),
            ))
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Whether a memory or table of `desired` size is within its own `maximum`.
fn within_own_maximum(desired: usize, maximum: Option<usize>) -> bool {
    maximum.is_none_or(|maximum| desired <= maximum)
}

impl StoreState {
    /// Whether one memory or table may grow from `current` to `desired`
    /// bytes: counted in if all of them together stay within the cap;
    /// refused, and the cap marked hit, if not.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = (self.memory_in_use - current.min(self.memory_in_use)).saturating_add(desired);
        if total > self.memory_cap {
            self.hit_memory_cap = true;
            return false;
        }
        self.memory_in_use = total;
        true
    }
}

impl TypesImports for StoreState {}

/// Register the `host` interface every plugin world imports. By hand, not
/// through the generated `add_to_linker`, so that `count`, called at the end
/// of every plugin call that counted, reads the counter's name in the guest's
/// memory instead of copying it into a `String` first, and `log` reads its
/// text there only if the plugin's log rate takes the line.
pub(crate) fn add_host_imports(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut host = linker.instance(HOST_INTERFACE)?;
    host.func_wrap(
        "log",
        |mut store: StoreContextMut<'_, StoreState>, (level, message): (Level, WasmStr)| {
            let Some(line) = store.data().host.log_line(level) else { return Ok(()) };
            if let Some(error) = line.write(&message.to_str(&store)?) {
                store.data_mut().host.last_error_logged = Some(error);
            }
            Ok(())
        },
    )?;
    host.func_wrap("config", |store: StoreContextMut<'_, StoreState>, (key,): (String,)| {
        Ok((store.data().host.config(&key),))
    })?;
    host.func_wrap("now-millis", |_: StoreContextMut<'_, StoreState>, (): ()| {
        Ok((HostCalls::now_millis(),))
    })?;
    host.func_wrap("count", |store: StoreContextMut<'_, StoreState>, (name, delta): (WasmStr, u64)| {
        let name = name.to_str(&store)?;
        store.data().call_counts.borrow_mut().add(&name, delta);
        Ok(())
    })?;
    add_types_imports(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instantiate a core module of `memories` memories of `pages` 64 KiB
    /// pages each, under a cap of `memory_mb`; whether the cap was hit, or
    /// the error.
    fn instantiate_memories(memories: usize, pages: u32, memory_mb: u64) -> Result<(), (bool, String)> {
        instantiate(&format!("(module {})", format!("(memory {pages})").repeat(memories)), memory_mb)
    }

    /// The core module `wat` instantiated under a cap of `memory_mb`, and its
    /// store; whether the cap was hit, or the error.
    fn instantiated(
        wat: &str,
        memory_mb: u64,
    ) -> (wasmtime::Store<StoreState>, Result<wasmtime::Instance, (bool, String)>) {
        let engine = crate::plugin::PluginEngine::new(None).unwrap();
        let module = wasmtime::Module::new(&engine.engine, wat).unwrap();
        let mut config = PluginConfig::default();
        config.limits.memory_mb = memory_mb;
        let state = StoreState::new(Arc::new(PluginSettings::new(config).unwrap())).unwrap();
        let mut store = wasmtime::Store::new(&engine.engine, state);
        store.limiter(|state| state);
        store.set_epoch_deadline(u64::MAX);
        let instance = wasmtime::Linker::new(&engine.engine).instantiate(&mut store, &module);
        let instance = instance.map_err(|err| (store.data().hit_memory_cap, format!("{err:#}")));
        (store, instance)
    }

    /// Instantiate the core module `wat` under a cap of `memory_mb`; whether
    /// the cap was hit, or the error.
    fn instantiate(wat: &str, memory_mb: u64) -> Result<(), (bool, String)> {
        instantiated(wat, memory_mb).1.map(drop)
    }

    #[test]
    fn memory_cap_obeyed_by_several_memories_whose_sum_fits() {
        // Four memories of 15 MiB: 60 MiB under a 64 MiB cap.
        assert_eq!(instantiate_memories(4, 240, 64), Ok(()));
    }

    #[test]
    fn memory_cap_violated_by_the_sum_of_memories_each_under_it() {
        // Four memories of 60 MiB, each under the 64 MiB cap, 240 MiB in all.
        let (hit_cap, error) = instantiate_memories(4, 960, 64).unwrap_err();
        assert!(hit_cap, "{error}");
    }

    #[test]
    fn the_reported_twenty_four_memories_of_sixty_mib_are_refused() {
        assert!(instantiate_memories(24, 960, 64).is_err());
    }

    #[test]
    fn memory_cap_violated_by_a_table_of_a_million_elements() {
        // 8 MB of table elements under a 1 MiB cap.
        let (hit_cap, error) = instantiate("(module (table 1000000 funcref))", 1).unwrap_err();
        assert!(hit_cap, "{error}");
    }

    #[test]
    fn memory_cap_violated_by_the_sum_of_a_memory_and_a_table_each_under_it() {
        // 640 KiB of memory and 512 KiB of table elements under a 1 MiB cap.
        let (hit_cap, error) = instantiate("(module (memory 10) (table 65536 funcref))", 1).unwrap_err();
        assert!(hit_cap, "{error}");
        assert_eq!(instantiate("(module (memory 10) (table 16384 funcref))", 1), Ok(()));
    }

    #[test]
    fn grows_refused_by_a_memorys_or_tables_own_maximum_are_not_counted_against_the_cap() {
        // Each try asked for 640 KiB of memory and 80 bytes of table: counted, though refused, the
        // second passed the 1 MiB cap and every later fault was a memory-cap fault.
        let wat = r#"(module (memory 1 2) (table 1 2 funcref)
            (func (export "grow") (result i32 i32)
                (memory.grow (i32.const 10)) (table.grow (ref.null func) (i32.const 10))))"#;
        let (mut store, instance) = instantiated(wat, 1);
        let grow = instance.unwrap().get_typed_func::<(), (i32, i32)>(&mut store, "grow").unwrap();
        for _ in 0..100 {
            assert_eq!(grow.call(&mut store, ()).unwrap(), (-1, -1), "refused by the maxima");
        }
        let (in_use, cap) = store.data().memory();
        assert_eq!((in_use, cap), ((64 << 10) + TABLE_ELEMENT_BYTES, 1 << 20), "what they hold, no more");
        assert!(!store.data().hit_memory_cap, "the cap was never reached");
    }

    #[test]
    fn an_instance_holds_at_most_its_share_of_host_resources() {
        let mut state = StoreState::new(Arc::new(PluginSettings::default())).unwrap();
        let held = (0..=MAX_RESOURCES).take_while(|_| state.table().push(()).is_ok()).count();
        assert_eq!(held, MAX_RESOURCES);
    }

    #[test]
    fn more_memories_than_allowed_are_refused() {
        let (_, error) = instantiate_memories(MAX_MEMORIES + 8, 1, 64).unwrap_err();
        assert!(error.contains("memory count"), "{error}");
    }
}
