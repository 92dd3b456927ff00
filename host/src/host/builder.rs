//! Building a host: configuration, plugins, destinations and native stages.

use super::{BuildError, Host, HostInner};
use crate::config::{Config, RouteConfig, Transport};
use crate::destination::{Destination, LogDestination, MemoryDestination};
use crate::pipeline::{Counters, Pipeline, run_worker};
use crate::plugin::{LoadError, PluginEngine, PluginRegistry, PluginSet, load_file, plugin_files};
use crate::router::{Route, RouteTable};
use crate::stage::{NativeFilter, NativeStages, NativeTransform};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

/// Builds a [`Host`]; start with [`Host::builder`].
#[must_use]
pub struct HostBuilder {
    config: Config,
    config_file: String,
    destinations: HashMap<String, Arc<dyn Destination>>,
    natives: NativeStages,
}

impl HostBuilder {
    pub(super) fn new() -> HostBuilder {
        HostBuilder {
            config: Config::default(),
            config_file: "<builder>".into(),
            destinations: HashMap::new(),
            natives: NativeStages::default(),
        }
    }

    /// Use `config` (routes, plugins, destinations); `file` names it in errors.
    pub fn config(mut self, file: impl Into<String>, config: Config) -> Self {
        self.config = config;
        self.config_file = file.into();
        self
    }

    /// Load plugins from `dir` instead of the configured directory.
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.host.plugin_dir = dir.into();
        self
    }

    /// Append a route (after those of the configuration).
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.config.routes.push(route);
        self
    }

    /// Register a destination implemented in Rust (or a closure).
    pub fn destination(mut self, name: impl Into<String>, destination: impl Destination) -> Self {
        self.destinations.insert(name.into(), Arc::new(destination));
        self
    }

    /// Register a native filter stage, used in routes as `filter:NAME`.
    pub fn filter(mut self, name: impl Into<String>, filter: impl NativeFilter) -> Self {
        self.natives.filters.insert(name.into(), Arc::new(filter));
        self
    }

    /// Register a native transform stage, used in routes as `transform:NAME`.
    pub fn transform(mut self, name: impl Into<String>, transform: impl NativeTransform) -> Self {
        self.natives.transforms.insert(name.into(), Arc::new(transform));
        self
    }

    /// Validate, compile every plugin of the plugin directory (in parallel),
    /// and start the workers. A plugin that fails to load is reported by
    /// [`Host::load_errors`]; it does not stop the host.
    pub async fn build(self) -> Result<Host, BuildError> {
        let HostBuilder { config, config_file, mut destinations, natives } = self;
        let native_names: Vec<&str> = destinations.keys().map(String::as_str).collect();
        config.validate(&config_file, &native_names)?;
        let engine = Arc::new(PluginEngine::new()?);
        let (plugins, load_errors) = load_plugins(&engine, &config).await?;
        let mut memory = HashMap::new();
        destinations.entry("log".into()).or_insert_with(|| Arc::new(LogDestination::new("log")));
        for dest in &config.destinations {
            let destination: Arc<dyn Destination> = match dest.transport {
                Transport::Log => Arc::new(LogDestination::new(&dest.name)),
                Transport::Memory => {
                    let (destination, receiver) = MemoryDestination::new();
                    memory.insert(dest.name.clone(), receiver);
                    Arc::new(destination)
                }
            };
            destinations.insert(dest.name.clone(), destination);
        }
        let routes = config.routes.iter().map(Route::from_config).collect::<Result<Vec<_>, _>>();
        let routes = routes.expect("validated above");
        let registry = PluginRegistry::default();
        registry.replace(plugins);
        let pipeline = Arc::new(Pipeline {
            engine,
            registry,
            routes: ArcSwap::from_pointee(RouteTable::new(routes)),
            natives,
            destinations,
            dead_letter: config.host.dead_letter.clone(),
            counters: Counters::default(),
            ids: Arc::new(AtomicU64::new(1)),
            batch_size: config.host.batch_size,
        });
        let (sender, queue) = flume::bounded(config.host.queue_capacity);
        let workers = match config.host.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let runtime = tokio::runtime::Handle::current();
        let workers = (0..workers)
            .map(|n| {
                let (pipeline, queue, runtime) = (pipeline.clone(), queue.clone(), runtime.clone());
                std::thread::Builder::new()
                    .name(format!("switchyard-worker-{n}"))
                    .spawn(move || run_worker(pipeline, queue, runtime))
                    .map_err(|source| BuildError::Thread { source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Host {
            inner: Arc::new(HostInner {
                config,
                pipeline,
                sender: RwLock::new(Some(sender)),
                workers: Mutex::new(workers),
                memory,
                load_errors,
            }),
        })
    }
}

async fn load_plugins(
    engine: &Arc<PluginEngine>,
    config: &Config,
) -> Result<(PluginSet, Vec<LoadError>), BuildError> {
    let dir = &config.host.plugin_dir;
    let files = plugin_files(dir)
        .map_err(|source| BuildError::PluginDir { dir: dir.display().to_string(), source })?;
    let compiles = files.into_iter().map(|path| {
        let engine = engine.clone();
        let name = crate::plugin::plugin_name(&path);
        let plugin_config = config.plugins.iter().find(|p| p.name == name).cloned();
        tokio::task::spawn_blocking(move || load_file(&engine, &path, plugin_config.as_ref()))
    });
    let mut plugins = PluginSet::new();
    let mut errors = Vec::new();
    for compile in compiles.collect::<Vec<_>>() {
        match compile.await.expect("plugin compilation panicked") {
            Ok(plugin) => {
                tracing::info!(plugin = %plugin.name, kind = plugin.kind.as_str(), version = plugin.short_version(),
                    compile_ms = plugin.compile_time.as_secs_f64() * 1e3, "plugin loaded");
                plugins.insert(plugin.name.clone(), plugin);
            }
            Err(error) => {
                tracing::error!(%error, "plugin rejected");
                errors.push(error);
            }
        }
    }
    Ok((plugins, errors))
}
