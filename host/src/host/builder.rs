//! Building a host: configuration, plugins, destinations and native stages.

use super::{BuildError, Host, HostInner};
use crate::config::{CodeOverrides, Config, ConfigError, RouteConfig};
use crate::dead_letter::DeadLetterFile;
use crate::destination::{Destination, EventSink, HostServices};
use crate::metrics::Metrics;
use crate::pipeline::{
    Counters, DeadLetters, DispatchContext, LastingDestinations, Pipeline, Redelivery, StageBudget, Topology,
    Worker, run_reply_worker, run_worker,
};
use crate::plugin::{CompileObserver, PluginEngine, PluginRegistry};
use crate::reload::{Events, HostEvent, Reloader};
use crate::spool::DamageKind;
use crate::stage::{NativeFilter, NativeStages, NativeTransform};
use crate::state_lock::StateLock;
use crate::transport::{TransportFactory, TransportRegistry};
use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// Builds a [`Host`]; start with [`Host::builder`].
#[must_use]
pub struct HostBuilder {
    config: Config,
    config_file: (String, Option<PathBuf>),
    destinations: HashMap<String, Arc<dyn Destination>>,
    natives: NativeStages,
    overrides: CodeOverrides,
    transports: TransportRegistry,
    /// Told of every plugin compile, at build and on reload.
    compile_observer: Option<CompileObserver>,
    /// Every name registered, by kind: a second registration of one is refused at build.
    registered: HashSet<(&'static str, String)>,
    /// The first name registered twice.
    registered_twice: Option<(&'static str, String)>,
}

impl HostBuilder {
    pub(super) fn new() -> HostBuilder {
        HostBuilder {
            config: Config::default(),
            config_file: ("<builder>".into(), None),
            destinations: HashMap::new(),
            natives: NativeStages::default(),
            overrides: CodeOverrides::default(),
            transports: TransportRegistry::builtin(),
            compile_observer: None,
            registered: HashSet::new(),
            registered_twice: None,
        }
    }

    /// Note that `name` of `kind` is registered; the first name registered twice fails the build.
    fn register(&mut self, kind: &'static str, name: &str) {
        if !self.registered.insert((kind, name.to_owned())) && self.registered_twice.is_none() {
            self.registered_twice = Some((kind, name.to_owned()));
        }
    }

    /// Tell `observer` of every plugin compile (not cache hits), at build and
    /// on reload: `switchyard run` says so when a large one starts and ends.
    pub fn observe_compiles(mut self, observer: CompileObserver) -> Self {
        self.compile_observer = Some(observer);
        self
    }

    /// Use `config` (routes, plugins, destinations); `file` names it in errors.
    pub fn config(mut self, file: impl Into<String>, config: Config) -> Self {
        self.config = config;
        self.config_file = (file.into(), None);
        self
    }

    /// Load plugins from `dir` instead of the configured directory (also
    /// after config reloads).
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.overrides.plugin_dir = Some(dir.into());
        self
    }

    /// Serve the HTTP ingress on `listen` instead of the configured `ingress.http.listen` (also
    /// after config reloads; with no `[ingress.http]`, one with the default limits): the host's
    /// config says so, and [`Host::run`] binds it. `switchyard run --listen` sets it.
    pub fn http_listen(mut self, listen: SocketAddr) -> Self {
        self.overrides.http_listen = Some(listen);
        self
    }

    /// Serve the admin API on `listen` instead of the configured `admin.listen` (also after
    /// config reloads; with no `[admin]`, one with no token and the default limits): the host's
    /// config says so. `switchyard run --admin` sets it.
    pub fn admin_listen(mut self, listen: SocketAddr) -> Self {
        self.overrides.admin_listen = Some(listen);
        self
    }

    /// Keep the host's state (the dead-letter file) in `dir` instead of
    /// the configured `host.state_dir`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.overrides.state_dir = Some(dir.into());
        self
    }

    /// Append a route (after those of the configuration, also after config
    /// reloads). The host's config shows it; a config sent to replace it
    /// ([`Host::replace_config`]) that gives it as it is leaves it out, and the code adds it again.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.overrides.routes.push(route);
        self
    }

    /// Register a destination implemented in Rust (or a closure). A name registered twice fails
    /// [`build`](Self::build), as it does for transports, filters and transforms.
    pub fn destination(mut self, name: impl Into<String>, destination: impl Destination) -> Self {
        let name = name.into();
        self.register("destination", &name);
        self.destinations.insert(name, Arc::new(destination));
        self
    }

    /// Register a transport written in Rust, named by destinations as `transport = "NAME"` (a name
    /// ending in `:` serves every `NAME…`); it replaces a built-in one of the same name. See
    /// [`transport::typed`](crate::transport::typed) for a factory from a function and an options type.
    pub fn transport(mut self, name: &str, factory: impl TransportFactory) -> Self {
        self.register("transport", name);
        self.transports.insert(name, factory);
        self
    }

    /// Register a native filter stage, used in routes as `filter:NAME`.
    pub fn filter(mut self, name: impl Into<String>, filter: impl NativeFilter) -> Self {
        let name = name.into();
        self.register("filter", &name);
        self.natives.filters.insert(name, Arc::new(filter));
        self
    }

    /// Register a native transform stage, used in routes as `transform:NAME`.
    pub fn transform(mut self, name: impl Into<String>, transform: impl NativeTransform) -> Self {
        let name = name.into();
        self.register("transform", &name);
        self.natives.transforms.insert(name, Arc::new(transform));
        self
    }

    /// Read the configuration from `path`; [`Host::reload`] and the watcher
    /// re-read it from there. It is validated by [`build`](HostBuilder::build), and so may name
    /// destinations registered in code before or after this call.
    pub fn config_file(self, path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let config = Config::parse_file(&path)?;
        Ok(self.config_read_from(path, config))
    }

    /// Use `config`, which the caller read from the file at `path` (with [`Config::from_file`]):
    /// as [`config_file`](HostBuilder::config_file), without reading the file again.
    /// [`Host::reload`] and the watcher re-read it from there.
    pub fn config_read_from(mut self, path: impl Into<PathBuf>, config: Config) -> Self {
        let path = path.into();
        self.config = config;
        self.config_file = (path.display().to_string(), Some(path));
        self
    }

    /// Validate, compile every plugin of the plugin directory (in parallel,
    /// from the compile cache when warm), start the workers and, when
    /// `host.watch` is set, the watcher. A plugin that fails to load is
    /// reported by [`Host::load_errors`] and an event; it does not stop the host.
    pub async fn build(self) -> Result<Host, BuildError> {
        let HostBuilder {
            config,
            config_file,
            destinations,
            natives,
            overrides,
            transports,
            compile_observer,
            registered: _,
            registered_twice,
        } = self;
        if let Some((kind, name)) = registered_twice {
            return Err(BuildError::RegisteredTwice { kind, name });
        }
        // What the config says of the keys code overrides: a reload tells an edit of one.
        let overridden = overrides.overridden(&config);
        let config = overrides.apply(config);
        let native_names: Vec<&str> = destinations.keys().map(String::as_str).collect();
        config.validate(&config_file.0, &native_names)?;
        let checked = transports.check(&config_file.0, &config)?;
        let mut engine = PluginEngine::new(config.host.compile_cache_dir().as_deref())?;
        if let Some(observer) = compile_observer {
            engine.observe_compiles(observer);
        }
        let engine = Arc::new(engine);
        let metrics = Arc::new(Metrics::new(config.host.metrics));
        let dir = state_dir(&config.host);
        let state_lock = StateLock::acquire(&dir)
            .map_err(|problem| BuildError::StateDir { dir: dir.display().to_string(), problem })?;
        let state_lock = Arc::new(state_lock);
        let dead_letter_file =
            DeadLetterFile::open(&dir, metrics.dead_letters_spooled())?.locked_by(state_lock.clone());
        let dead_letters = Arc::new(DeadLetters::new(dead_letter_file));
        // Dropped after the spool (declared below) if the start fails, else with the host.
        let dead_letter_file = super::DeadLetterFileGuard(dead_letters.file.clone());
        let spool = super::spool::open(&config.host, &dir, &metrics, &state_lock)?;
        let settling = crate::alert::settling_time(&config.destinations);
        let alerts = crate::alert::AlertBook::kept_in_locked(&dir, state_lock.clone(), settling);
        let lasting = LastingDestinations::new(destinations);
        let runtime = tokio::runtime::Handle::current();
        let ids = Arc::new(AtomicU64::new(1));
        // Bounded like the intake: a slow reply middleware holds deliveries back.
        let (replies, reply_queue) = tokio::sync::mpsc::channel(config.host.queue_capacity.max(1));
        let max_message_bytes = config.host.max_message_bytes;
        let stage_budget = StageBudget::new(&config.host);
        let new_reply_worker = {
            let (engine, ids, metrics, budget) =
                (engine.clone(), ids.clone(), metrics.clone(), stage_budget.clone());
            move || {
                Worker::new(engine.clone(), ids.clone(), metrics.clone(), max_message_bytes, budget.clone())
            }
        };
        let registry = Arc::new(PluginRegistry::default());
        let reply_registry = registry.clone();
        std::thread::Builder::new()
            .name("switchyard-replies".into())
            .spawn(move || run_reply_worker(new_reply_worker, reply_registry, reply_queue))
            .map_err(|error| BuildError::Thread { error })?;
        let events = Arc::new(Events::new(metrics.clone()));
        let endpoint_events: EventSink = {
            let events = events.clone();
            Arc::new(move |event| events.emit(event.into()))
        };
        let pipeline = Arc::new_cyclic(|pipeline| {
            let max_in_flight = config.host.max_in_flight;
            let services = HostServices {
                events: endpoint_events,
                metrics: metrics.clone(),
                registry: registry.clone(),
                engine: engine.clone(),
            };
            let dispatch = DispatchContext::new(
                runtime.clone(),
                max_in_flight,
                pipeline.clone(),
                services,
                Arc::new(transports),
                max_message_bytes,
            );
            let topology = Topology::build(&config, checked, None, &lasting, &metrics, &dispatch);
            topology.release_events();
            Pipeline {
                engine,
                registry,
                topology: ArcSwap::from_pointee(topology),
                natives,
                counters: Counters::new(metrics.accepted_counter()),
                metrics: metrics.clone(),
                ids,
                batch_size: config.host.batch_size,
                max_message_bytes,
                stage_budget,
                dispatch,
                replies,
                dead_letters,
                letters_in_flight: Arc::new(tokio::sync::Semaphore::new(config.host.queue_capacity)),
                intake_taken: tokio::sync::Notify::new(),
            }
        });
        let redelivery = Redelivery::start(&pipeline, &runtime);
        let intake_kib = super::intake_kib(config.host.queue_bytes);
        let intake_bytes = Arc::new(tokio::sync::Semaphore::new(intake_kib as usize));
        let bodies = super::body_budget::BodyBudget::new(
            super::body_budget::body_budget(&config),
            metrics.ingress_body_bytes(),
        );
        let (sender, queue) = flume::bounded(config.host.queue_capacity);
        let (workers, watch) = (worker_count(config.host.workers), config.host.watch);
        let reloader = Arc::new(Reloader::new(
            pipeline.clone(),
            (config, overrides, overridden),
            config_file,
            lasting,
            events,
        ));
        let dir = reloader.plugin_dir();
        let load_errors = reloader
            .load_all()
            .await
            .map_err(|error| BuildError::PluginDir { dir: dir.display().to_string(), error })?;
        let watcher = match watch {
            true => Some(
                crate::reload::watch(reloader.clone()).map_err(|err| BuildError::Watch(err.to_string()))?,
            ),
            false => None,
        };
        if watch {
            let reloader = reloader.clone();
            let caught_up = tokio::task::spawn_blocking(move || crate::reload::catch_up(&reloader));
            caught_up.await.expect("catching up with the files does not panic");
        }
        let workers = (0..workers)
            .map(|n| {
                let (pipeline, queue, runtime) = (pipeline.clone(), queue.clone(), runtime.clone());
                std::thread::Builder::new()
                    .name(format!("switchyard-worker-{n}"))
                    .spawn(move || run_worker(pipeline, queue, runtime))
                    .map_err(|error| BuildError::Thread { error })
            })
            .collect::<Result<_, _>>()?;
        // Nothing fails from here on. Until here a failure drops the spool (closing it) before
        // the messages it recovered, and their records stay for the next start.
        let (spool, recovered) = match spool {
            Some((spool, recovery)) => {
                // A torn tail is what a crash leaves: the spool logged it quietly.
                let corrupt = recovery.damage.into_iter().filter(|damage| damage.kind == DamageKind::Corrupt);
                for damage in corrupt {
                    reloader.events.emit(HostEvent::SpoolDamaged {
                        segment: damage.segment.display().to_string(),
                        offset: damage.offset,
                        lost: damage.lost,
                        problem: damage.problem.to_owned(),
                    });
                }
                (Some(spool), recovery.messages)
            }
            None => (None, Vec::new()),
        };
        let host = Host {
            inner: Arc::new(HostInner {
                reloader,
                sender: Arc::new(RwLock::new(Some(sender))),
                workers: Mutex::new(workers),
                watcher: Mutex::new(watcher),
                load_errors,
                intake_bytes,
                bodies,
                redelivery: tokio::sync::Mutex::new(Some(redelivery)),
                spool,
                alerts,
                state_lock,
                _dead_letter_file: dead_letter_file,
                alerting: Mutex::new(None),
                stopped: Mutex::new(None),
                stopping: pipeline.dispatch.stopping.clone(),
                stop_ended: CancellationToken::new(),
            }),
        };
        if let Some(sender) = host.inner.sender.read().unwrap_or_else(|poison| poison.into_inner()).clone() {
            let budget = (host.inner.intake_bytes.clone(), intake_kib);
            let stopping = host.inner.stopping.clone();
            super::spool::redeliver(&pipeline, sender, budget, recovered, stopping);
        }
        let weak = Arc::downgrade(&host.inner);
        host.metrics().watch_destinations(Box::new(move || {
            let host = weak.upgrade().map(|inner| Host { inner });
            host.map(|host| host.destinations().into_iter().map(super::gauges_of).collect())
                .unwrap_or_default()
        }));
        let weak = Arc::downgrade(&host.inner);
        host.metrics().watch_spool(Box::new(move || {
            let status = weak.upgrade().and_then(|inner| Host { inner }.spool())?;
            Some((status.depth, status.oldest_age_ms))
        }));
        super::alerting::start(&host);
        super::stop::watch_runtime(&runtime, &host.inner.sender, &pipeline);
        Ok(host)
    }
}

fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

/// The state directory, absolute: relative to the working directory.
fn state_dir(host: &crate::config::HostSection) -> PathBuf {
    std::path::absolute(&host.state_dir).unwrap_or_else(|_| host.state_dir.clone())
}
