//! The sandbox one plugin instance runs in: deny-by-default WASI, a memory cap,
//! and the `host` interface (log, config, clock, counters).

use super::bindings::{HostImports, Level, TypesImports};
use super::error::LoadError;
use crate::config::PluginConfig;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::FsPerms;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Everything the host knows about a plugin besides its code.
#[derive(Debug, Default)]
pub struct PluginSettings {
    /// The configuration as written (defaults when the plugin has no entry).
    pub config: PluginConfig,
    /// Counters the plugin bumped through `host.count`.
    pub counters: Mutex<BTreeMap<String, u64>>,
    allowed_addrs: Vec<SocketAddr>,
}

impl PluginSettings {
    /// Settings for `config`, resolving its network grants.
    pub fn new(config: PluginConfig) -> Result<PluginSettings, LoadError> {
        let mut allowed_addrs = Vec::new();
        for addr in &config.allow_net {
            let resolved = addr.to_socket_addrs().map_err(|err| LoadError::Grant {
                name: config.name.clone(),
                reason: format!("allow_net = \"{addr}\": {err}"),
            })?;
            allowed_addrs.extend(resolved);
        }
        Ok(PluginSettings { config, counters: Mutex::default(), allowed_addrs })
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
    /// else, with `connect` as the addresses it may reach.
    fn wasi(&self, connect: &[SocketAddr]) -> Result<WasiCtx, LoadError> {
        let mut builder = WasiCtxBuilder::new();
        for name in &self.config.env {
            if let Ok(value) = std::env::var(name) {
                builder.env(name, value);
            }
        }
        for (guest, host) in &self.config.dirs {
            let (host, writable) = match host.strip_suffix(":ro") {
                Some(path) => (path, false),
                None => (host.strip_suffix(":rw").unwrap_or(host), true),
            };
            let perms = if writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            builder.preopened_dir(host, guest, perms).map_err(|err| LoadError::Grant {
                name: self.config.name.clone(),
                reason: format!("dirs.\"{guest}\" = \"{host}\": {err}"),
            })?;
        }
        if !connect.is_empty() {
            let allowed = connect.to_vec();
            builder.allow_tcp(true).allow_udp(true);
            builder.socket_addr_check(move |addr, usage| {
                let ok = match usage {
                    // Reaching out: only to a granted address.
                    SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => allowed.contains(&addr),
                    // The bind a connect or send makes implicitly: any local port.
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                        addr.ip().is_unspecified() && addr.port() == 0
                    }
                    // A grant never lets a plugin listen, accept or receive from elsewhere.
                    SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                    SocketAddrUse::UdpReceive => allowed.contains(&addr),
                };
                Box::pin(async move { ok })
            });
        }
        Ok(builder.build())
    }
}

/// Characters of a logged error kept to explain a trap.
const MAX_ERROR_KEPT: usize = 512;

/// Bytes of one plugin log line, at most; the rest is cut.
const MAX_LOG_LINE: usize = 4096;

/// Counters one plugin version may have; further names are not counted.
const MAX_COUNTERS: usize = 256;

/// Bytes of one counter name, at most; a longer name is not counted.
const MAX_COUNTER_NAME: usize = 128;

/// The data of one plugin instance's `Store`.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) settings: Arc<PluginSettings>,
    memory_cap: usize,
    /// Bytes all of the instance's linear memories hold together: the cap
    /// is on their sum, not on each (a component may have many).
    memory_in_use: usize,
    /// Elements all of the instance's tables hold together.
    table_elements: usize,
    /// Set when the guest asked for memory past the cap, so that the trap that
    /// follows is reported as a memory-cap fault rather than a plain trap.
    pub(crate) hit_memory_cap: bool,
    /// The last error the plugin logged in the current call: the SDK logs a
    /// panic's message just before the panic traps, so a trap can say why.
    pub(crate) last_error_logged: Option<String>,
    /// When the current call must end, for waits inside WASI (which epoch
    /// interruption cannot stop).
    pub(crate) call_deadline: Option<tokio::time::Instant>,
    /// Set when a wait inside WASI ran into the deadline, so the trap that
    /// ends the call is reported as a timeout.
    pub(crate) waited_past_deadline: bool,
    /// How many lines the instance may still log this second.
    log_budget: LogBudget,
}

/// Lines one plugin instance may log a second; more are dropped, and how
/// many is said once the second is over.
const LOG_LINES_PER_SECOND: u32 = 100;

/// A plugin instance's log lines in the current one-second window.
#[derive(Debug)]
struct LogBudget {
    window: std::time::Instant,
    lines: u32,
    /// Lines dropped in this window.
    dropped: u64,
}

impl LogBudget {
    /// Start a new window once a second has passed since this one began;
    /// how many lines the ended window dropped, if any.
    fn roll(&mut self, now: std::time::Instant) -> Option<u64> {
        if now.duration_since(self.window) < std::time::Duration::from_secs(1) {
            return None;
        }
        let dropped = std::mem::replace(self, LogBudget { window: now, lines: 0, dropped: 0 }).dropped;
        (dropped > 0).then_some(dropped)
    }

    /// Whether one more line may be logged in this window (else it counts
    /// as dropped).
    fn spend(&mut self) -> bool {
        let keep = self.lines < LOG_LINES_PER_SECOND;
        match keep {
            true => self.lines += 1,
            false => self.dropped += 1,
        }
        keep
    }
}

impl StoreState {
    /// Fresh state for an instance of the plugin with `settings`.
    pub(crate) fn new(settings: Arc<PluginSettings>) -> Result<StoreState, LoadError> {
        let grants = settings.allowed_addrs.clone();
        StoreState::with_connect_grants(settings, grants)
    }

    /// Fresh state whose network grant is `connect` (connect and send only),
    /// in place of the plugin's `allow_net`.
    pub(crate) fn with_connect_grants(
        settings: Arc<PluginSettings>,
        connect: Vec<SocketAddr>,
    ) -> Result<StoreState, LoadError> {
        Ok(StoreState {
            wasi: settings.wasi(&connect)?,
            table: ResourceTable::new(),
            memory_cap: settings.memory_cap(),
            memory_in_use: 0,
            table_elements: 0,
            settings,
            hit_memory_cap: false,
            last_error_logged: None,
            call_deadline: None,
            waited_past_deadline: false,
            log_budget: LogBudget { window: std::time::Instant::now(), lines: 0, dropped: 0 },
        })
    }
}

impl StoreState {
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

/// Table elements one plugin instance may hold over all its tables.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Every memory and table of the instance counts against one budget: a
/// memory created or grown (from `current` to `desired` bytes) is refused
/// when the sum of all would pass the cap.
impl wasmtime::ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.memory_in_use - current.min(self.memory_in_use)).saturating_add(desired);
        if total > self.memory_cap {
            self.hit_memory_cap = true;
            return Ok(false);
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.table_elements - current.min(self.table_elements)).saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
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

impl TypesImports for StoreState {}

impl HostImports for StoreState {
    fn log(&mut self, level: Level, message: String) {
        let plugin = self.settings.config.name.as_str();
        // A plugin's line is one line, of bounded length: it cannot forge others.
        let message = crate::bounded_text::one_line(&message, MAX_LOG_LINE);
        if level == Level::Error {
            self.last_error_logged = Some(crate::bounded_text::one_line(&message, MAX_ERROR_KEPT));
        }
        if let Some(dropped) = self.log_budget.roll(std::time::Instant::now()) {
            tracing::warn!(
                plugin,
                dropped,
                "log lines over the rate of {LOG_LINES_PER_SECOND} a second were dropped"
            );
        }
        if !self.log_budget.spend() {
            return;
        }
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.settings.config.config.get(&key).cloned()
    }

    fn now_millis(&mut self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |elapsed| elapsed.as_millis() as u64)
    }

    fn count(&mut self, name: String, delta: u64) {
        let mut counters = self.settings.counters.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(total) = counters.get_mut(&name) {
            *total = total.saturating_add(delta);
        } else if counters.len() < MAX_COUNTERS && name.len() <= MAX_COUNTER_NAME {
            counters.insert(name, delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instantiate a core module of `memories` memories of `pages` 64 KiB
    /// pages each, under a cap of `memory_mb`; whether the cap was hit, or
    /// the error.
    fn instantiate_memories(memories: usize, pages: u32, memory_mb: u64) -> Result<(), (bool, String)> {
        let engine = crate::plugin::PluginEngine::new(None).unwrap();
        let wat = format!("(module {})", format!("(memory {pages})").repeat(memories));
        let module = wasmtime::Module::new(&engine.engine, wat).unwrap();
        let mut config = PluginConfig::default();
        config.limits.memory_mb = memory_mb;
        let state = StoreState::new(Arc::new(PluginSettings::new(config).unwrap())).unwrap();
        let mut store = wasmtime::Store::new(&engine.engine, state);
        store.limiter(|state| state);
        let instance = wasmtime::Linker::new(&engine.engine).instantiate(&mut store, &module);
        instance.map(drop).map_err(|err| (store.data().hit_memory_cap, format!("{err:#}")))
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
    fn more_memories_than_allowed_are_refused() {
        let (_, error) = instantiate_memories(MAX_MEMORIES + 8, 1, 64).unwrap_err();
        assert!(error.contains("memory count"), "{error}");
    }

    #[test]
    fn log_lines_past_the_rate_are_dropped_and_counted_until_the_next_second() {
        let start = std::time::Instant::now();
        let mut budget = LogBudget { window: start, lines: 0, dropped: 0 };
        assert!((0..LOG_LINES_PER_SECOND).all(|_| budget.spend()));
        assert!(!budget.spend() && !budget.spend());
        assert_eq!(budget.roll(start + std::time::Duration::from_millis(999)), None, "still the same second");
        assert_eq!(
            budget.roll(start + std::time::Duration::from_secs(1)),
            Some(2),
            "said when the second ends"
        );
        assert!(budget.spend());
        assert_eq!((budget.lines, budget.dropped), (1, 0));
    }

    #[test]
    fn counters_are_bounded_in_number_and_name_length_and_saturate() {
        let settings = Arc::new(PluginSettings::new(PluginConfig::default()).unwrap());
        let mut state = StoreState::new(settings.clone()).unwrap();
        for n in 0..300 {
            state.count(format!("c{n}"), 1);
        }
        state.count("x".repeat(MAX_COUNTER_NAME + 1), 1);
        state.count("c0".into(), u64::MAX);
        let counters = settings.counters.lock().unwrap();
        assert_eq!(counters.len(), MAX_COUNTERS);
        assert!(counters.keys().all(|name| name.len() <= MAX_COUNTER_NAME));
        assert_eq!(counters["c0"], u64::MAX, "saturates, never wraps");
    }
}
