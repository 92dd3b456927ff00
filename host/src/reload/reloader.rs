//! Applying changes to a running host: plugin files added, replaced or
//! removed, and new configurations. All of it happens off the message path:
//! compiling runs on blocking threads and the result is swapped in atomically.

use super::events::{Events, HostEvent};
use super::open_writes::OpenWrites;
use super::prepared::{Prepared, PreparedPlugins};
use super::refusal::{FileRead, Opened, Refusal, unread_library};
use super::source::{Source, beyond_grants, files_of, read_source};
use crate::config::{CodeOverrides, Config, ConfigError, Overridden, StageRef, restart_only_changes};
use crate::pipeline::{LastingDestinations, Pipeline, Topology};
use crate::plugin::{
    CacheOutcome, CompiledPlugin, LoadError, NativeRefusal, PluginKind, compile_bytes, plugin_files,
    plugin_name, trial_instantiation,
};
use crate::regular_file::Links;
use crate::transport::CheckedTransports;
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The control side of a host: everything that changes while it runs.
pub(crate) struct Reloader {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) events: Arc<Events>,
    pub(crate) config: ArcSwap<Config>,
    /// Settings made in code, applied over every config.
    overrides: CodeOverrides,
    /// What the config last applied (or found unchanged) says of the keys `overrides` set, where
    /// it differs from them: an edit of one is told once ([`HostEvent::ConfigOverridden`]).
    overridden: Mutex<Vec<Overridden>>,
    /// The file the config was read from, if any, and the name errors use.
    config_file: (String, Option<PathBuf>),
    pub(crate) lasting: LastingDestinations,
    /// Serializes changes: one plugin swap or config update at a time. True once the host stopped
    /// ([`close`](Reloader::close)): a config applied then would start health checks and
    /// dispatchers that nothing stops any more. Held only while a change is made, never while a
    /// plugin compiles: a stop waited for the compile (minutes for a big plugin) to end.
    changing: Mutex<bool>,
    /// Serializes plugin syncs: one plugin read, compiled and swapped in at a time, so that two
    /// syncs of one plugin cannot swap in their versions out of order.
    syncing: Mutex<()>,
    /// Serializes what changes the config from outside: a replacement (`PUT /v1/config`), applied
    /// and written to the file together, a reload of the file, read and applied together, and a
    /// config given in code. A reload that read the file before a replacement wrote it, and applied
    /// it after, ran the old config while the file and the replacement's answer said the new one;
    /// two configs applied at once could be made current in one order and their overridden keys
    /// told in the other, leaving `overridden` saying what the running config does not.
    config_changes: Mutex<()>,
    /// The plugins whose latest file was refused, and why: that file is not
    /// read into a plugin, nor reported, again until it changes.
    refused: Mutex<BTreeMap<String, Refusal>>,
    /// The text of the config file as last read (applied or refused) or written, and why it was
    /// refused, if it was: a file event that leaves it so reads nothing into a config and reports
    /// nothing again, unless it was refused.
    config_text: Mutex<Option<ConfigText>>,
    /// The files their writers hold open, as the watcher tells (none without one): such a file,
    /// config or plugin, is not read into anything until it is closed.
    pub(super) writes: Arc<OpenWrites>,
}

/// `plugin`, unless it is of another kind than `serving` (the version it
/// would replace) and `config` uses it as the serving one's kind: a route's
/// named stage, a destination's `plugin:NAME` transport or balancer. Such a
/// file would leave that use with nothing to run; the serving version stays.
fn same_kind_where_used(
    config: &Config,
    serving: Option<&CompiledPlugin>,
    plugin: Arc<CompiledPlugin>,
) -> Result<Arc<CompiledPlugin>, LoadError> {
    let Some(serving) = serving.filter(|serving| serving.kind != plugin.kind) else { return Ok(plugin) };
    let (name, kind) = (&plugin.name, serving.kind.as_str());
    let stage = format!("{kind}:{name}");
    let by_route =
        config.routes.iter().find(|route| route.stages.iter().any(|named| named.to_string() == stage));
    let as_plugin = format!("plugin:{name}");
    let by_destination = config.destinations.iter().find(|destination| match serving.kind {
        PluginKind::Transport => destination.transport == as_plugin,
        PluginKind::Balancer => destination.balancer == as_plugin,
        _ => false,
    });
    let user = match (by_route, by_destination) {
        (Some(route), _) => format!("route \"{}\" (stage {stage})", route.name),
        (None, Some(destination)) => format!("destination \"{}\" ({as_plugin})", destination.name),
        (None, None) => return Ok(plugin),
    };
    Err(LoadError::KindChanged { name: name.clone(), new: plugin.kind.as_str(), serving: kind, user })
}

/// Whether `config` runs plugin `name`: a route's stage names it (or runs every plugin), or a
/// destination's `plugin:NAME` transport or balancer does.
fn runs_plugin(config: &Config, name: &str) -> bool {
    let as_stage = |stage: &StageRef| match stage {
        StageRef::Named { name: named, .. } => named == name,
        StageRef::AllPlugins => true,
    };
    let as_plugin = format!("plugin:{name}");
    config.routes.iter().any(|route| route.stages.iter().any(as_stage))
        || config
            .destinations
            .iter()
            .any(|destination| destination.transport == as_plugin || destination.balancer == as_plugin)
}

/// How many plugins compile at once, a start's or a config's: one a core. Each takes memory of
/// its own while it runs (hundreds of MiB for a large component), and more would not finish sooner.
fn compiles_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The config file's text as last read or written.
struct ConfigText {
    text: String,
    /// Why it was refused, if it was. A refusal may lie outside the text and pass while the text
    /// stays as it is (a CA file a destination reads, not there yet): a file event tries the same
    /// text again, and the same refusal is not reported again.
    refusal: Option<String>,
    /// The plugin it runs that was still being written when it was refused
    /// ([`ConfigError::PluginUnsettled`]), if that refused it: the watcher tries the same text
    /// again once that plugin's files are closed ([`Reloader::config_waits_for`]).
    waits_for: Option<String>,
}

/// Which plugin files a sync reads into plugins.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Those changed since they were last read: a file refused before and
    /// unchanged is not compiled and tried again (a config change, a file
    /// event), unless its refusal may have passed without a change of it
    /// (a grant the host could not give, a kind the config did not use it as).
    Changed,
    /// Those refused before too, whose refusal may have passed (an explicit
    /// reload); the same refusal is not reported twice. A native library refused once opened, for
    /// what its bytes say, is not: it would be refused alike (see [`Opened`]).
    Refused,
}

impl Reloader {
    /// A reloader of the host running `config`, which had `overrides` applied over what `overridden`
    /// says it set itself.
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        (config, overrides, overridden): (Config, CodeOverrides, Vec<Overridden>),
        config_file: (String, Option<PathBuf>),
        lasting: LastingDestinations,
        events: Arc<Events>,
    ) -> Reloader {
        Reloader {
            pipeline,
            events,
            config: ArcSwap::from_pointee(config),
            overrides,
            overridden: Mutex::new(overridden),
            config_file,
            lasting,
            changing: Mutex::new(false),
            syncing: Mutex::new(()),
            config_changes: Mutex::new(()),
            refused: Mutex::default(),
            config_text: Mutex::default(),
            writes: Arc::default(),
        }
    }

    pub(crate) fn plugin_dir(&self) -> PathBuf {
        self.config.load().host.plugin_dir.clone()
    }

    /// The config file's name, as errors quote it.
    pub(crate) fn config_name(&self) -> String {
        self.config_file.0.clone()
    }

    pub(crate) fn config_path(&self) -> Option<&Path> {
        self.config_file.1.as_deref()
    }

    /// Compile every plugin of the directory in parallel and make them serve.
    pub(crate) async fn load_all(self: &Arc<Self>) -> Result<Vec<LoadError>, std::io::Error> {
        let dir = self.plugin_dir();
        let names: BTreeSet<String> = plugin_files(&dir)?.iter().map(|path| plugin_name(path)).collect();
        let compiles = futures_util::stream::iter(names).map(|name| {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.prepare(&this.config.load(), &name, Retry::Refused))
        });
        let mut compiles = compiles.buffered(compiles_at_once());
        let mut errors = Vec::new();
        while let Some(compile) = compiles.next().await {
            match compile.expect("compiling a plugin does not panic") {
                Prepared::Ready(plugin) => self.events.emit(self.serve(plugin)),
                Prepared::Failed { name, error, file, opened } => {
                    self.refuse(name, &error, file, opened);
                    errors.push(error);
                }
                Prepared::Gone(_) | Prepared::Serving | Prepared::Refused | Prepared::Unsettled => {}
            }
        }
        Ok(errors)
    }

    /// Bring plugin `name` in line with its files: load, replace, remove, or
    /// reject (the previous version keeps serving); a file refused before is
    /// read again only if `retry` says so. Blocks while compiling; what it
    /// made is dropped if the host stopped meanwhile, and made again under a
    /// config applied meanwhile, as `retry` says still (that config's own
    /// reading of every plugin, before it applied, tried no file refused before). Why it refused
    /// the file it read, if it did.
    pub(crate) fn sync_plugin(&self, name: &str, retry: Retry) -> Option<String> {
        let _syncing = self.syncing.lock().unwrap_or_else(|poison| poison.into_inner());
        if self.is_closed() {
            return None;
        }
        let (prepared, _changing) = loop {
            let config = self.config.load_full();
            let prepared = self.prepare(&config, name, retry);
            let closed = self.changing.lock().unwrap_or_else(|poison| poison.into_inner());
            if *closed {
                return None;
            }
            if Arc::ptr_eq(&config, &self.config.load()) {
                break (prepared, closed);
            }
            // A config was applied while this compiled: prepare the plugin again under it.
        };
        self.settle(name, prepared)
    }

    /// Make plugin `name` what `prepared` (under the current config) says: serve its new version,
    /// stop serving it, or report its refusal. Called holding `changing`. Why the file was
    /// refused, if `prepared` refuses it: told even when reported before, for the same file or
    /// the same reason.
    fn settle(&self, name: &str, prepared: Prepared) -> Option<String> {
        match prepared {
            Prepared::Ready(plugin) => self.events.emit(self.serve(plugin)),
            Prepared::Gone(name) => {
                self.forget_refusal(&name);
                self.remove(&name);
            }
            Prepared::Failed { name, error, file, opened } => {
                // A library refused unopened stands where no WebAssembly file is: the serving
                // version's file is gone, and so is it.
                let gone =
                    matches!(error, LoadError::NativeRefused { refusal: NativeRefusal::Disabled { .. }, .. });
                if gone || self.serves_beyond_grants(&name) {
                    self.remove(&name);
                }
                let reason = error.to_string();
                self.refuse(name, &error, file, opened);
                return Some(reason);
            }
            // The file is the serving version's again: a refusal in between is over.
            Prepared::Serving => self.forget_refusal(name),
            Prepared::Refused => {}
            Prepared::Unsettled => {
                tracing::debug!(plugin = name, "file still changing; waiting for it to settle")
            }
        }
        None
    }

    /// Whether plugin `name` serves with a grant or limit the config no longer gives it: its new
    /// settings (or file) refused, it must not keep what was taken away, so it stops serving.
    fn serves_beyond_grants(&self, name: &str) -> bool {
        let Some(serving) = self.pipeline.registry.snapshot().get(name).cloned() else { return false };
        let Some((held, granted)) = beyond_grants(&serving.settings.config, &self.config.load()) else {
            return false;
        };
        tracing::warn!(
            plugin = name,
            held,
            granted,
            "the plugin's new settings were refused, and the config no longer grants what its serving version holds: it stops serving"
        );
        true
    }

    /// Report that plugin `name`'s file (`file`: its digest and settings,
    /// when it could be read) was refused for `error`, unless this same file
    /// was refused for the same reason already; keep what it left `opened`.
    fn refuse(&self, name: String, error: &LoadError, file: Option<FileRead>, opened: Opened) {
        let may_pass = matches!(
            error,
            LoadError::KindChanged { .. } | LoadError::Grant { .. } | LoadError::GrantTimedOut { .. }
        );
        let refusal = Refusal { file, reason: error.to_string(), may_pass, opened };
        let mut refused = self.refused.lock().unwrap_or_else(|poison| poison.into_inner());
        // Kept even when told before: what it left open is what a retry starts from.
        let told = refused.insert(name.clone(), refusal);
        let refusal = &refused[&name];
        if told.is_none_or(|told| !told.tells_as(refusal)) {
            let reason = refusal.reason.clone();
            self.events.emit(HostEvent::PluginRejected { name, reason });
        }
    }

    /// Plugin `name` has no refused file any more: it serves its file, or has none.
    fn forget_refusal(&self, name: &str) {
        let mut refused = self.refused.lock().unwrap_or_else(|poison| poison.into_inner());
        if refused.remove(name).is_some() {
            self.events.forget_rejection(name);
        }
    }

    /// Re-read every plugin of the directory, and drop those whose file is
    /// gone; `retry` says whether files refused before are read again. Each plugin whose file it
    /// read and refused, with why (as [`sync_plugin`](Self::sync_plugin) tells).
    pub(crate) fn sync_all(&self, retry: Retry) -> BTreeMap<String, String> {
        let names = self.plugin_names().into_iter();
        names.filter_map(|name| self.sync_plugin(&name, retry).map(|reason| (name, reason))).collect()
    }

    /// The plugins a sync of every plugin reads: those serving, those refused, and those of the
    /// plugin directory's files.
    fn plugin_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.pipeline.registry.snapshot().keys().cloned().collect();
        names.extend(self.refused.lock().unwrap_or_else(|poison| poison.into_inner()).keys().cloned());
        let dir = self.plugin_dir();
        // A directory gone holds no plugin; it is not made again here (it
        // is made at the start only), and is watched for.
        match dir.is_dir().then(|| plugin_files(&dir)) {
            Some(Ok(files)) => names.extend(files.iter().map(|path| plugin_name(path))),
            Some(Err(err)) => tracing::error!(%err, "cannot list the plugin directory"),
            None => {
                tracing::warn!(dir = %dir.display(), "the plugin directory is gone: no plugin serves from it")
            }
        }
        names
    }

    /// Re-read the config file the host was built from (if any) and apply
    /// it. Refused whole, with a `config-rejected` event: an invalid file, one
    /// that changes start-only keys, and one with no routes replacing one
    /// with some unless it says `route = []`. A file caught while it is being
    /// written, or that its writer holds open still, is refused without an
    /// event: its next write, or its close, brings it back. An explicit reload
    /// ([`Retry::Refused`]) first waits for a writer that holds it open, as the
    /// watcher would.
    /// With [`Retry::Changed`] (a file event), a file whose text is the one last read or written
    /// is left alone: events beside a linked config file, or a log written next to it, do not
    /// apply it again. One refused is tried again, as what refused it may lie outside its text (a
    /// CA file a destination reads, there now), but the same refusal is not reported again.
    pub(crate) fn reload_config(&self, retry: Retry) -> Result<ConfigChange, ConfigError> {
        let file = &self.config_file.0;
        self.refuse_if_closed(file)?;
        let Some(path) = self.config_path() else { return Ok(ConfigChange::Unchanged) };
        let _changes = self.config_changes.lock().unwrap_or_else(|poison| poison.into_inner());
        let read = || {
            Config::read_text(file, path, Links::Anywhere).and_then(|text| {
                let written_out = text.filter(|_| !self.writes.holds(path));
                written_out.ok_or_else(|| ConfigError::Unsettled { file: file.clone() })
            })
        };
        let text = match read() {
            // Read while a writer held it, or before its close was told: read again once it is.
            Err(ConfigError::Unsettled { .. }) if retry == Retry::Refused => {
                self.writes.wait_for_writer(path);
                read()
            }
            text => text,
        };
        let mut told = None;
        if let Ok(text) = &text {
            let last = self.config_text.lock().unwrap_or_else(|poison| poison.into_inner());
            match last.as_ref().filter(|last| retry == Retry::Changed && last.text == *text) {
                Some(ConfigText { refusal: None, .. }) => return Ok(ConfigChange::Unchanged),
                Some(ConfigText { refusal, .. }) => told = refusal.clone(),
                None => {}
            }
        }
        let (result, read) = match text {
            Ok(text) => {
                (self.parse_config(file, &text).and_then(|config| self.apply(file, config)), Some(text))
            }
            Err(error) => (Err(error), None),
        };
        let refusal = result.as_ref().err().map(ToString::to_string);
        if let Some(text) = read {
            let waits_for = match &result {
                Err(ConfigError::PluginUnsettled { plugin, .. }) => Some(plugin.clone()),
                _ => None,
            };
            let last = ConfigText { text, refusal: refusal.clone(), waits_for };
            *self.config_text.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(last);
        }
        match &result {
            Err(ConfigError::Unsettled { .. }) => {
                tracing::debug!(file, "config file still changing; waiting for it to settle")
            }
            Err(_) if refusal != told => {
                let reason = refusal.unwrap_or_default();
                self.events.emit(HostEvent::ConfigRejected { file: file.clone(), reason })
            }
            Err(_) | Ok(_) => {}
        }
        result
    }

    /// The plugin the config file, as last read, was refused for as it was still being written
    /// ([`ConfigError::PluginUnsettled`]), if it was and that plugin's files are no longer held
    /// open by a writer: the watcher reads the file again with that plugin's change that tells
    /// so. Nothing else reads it again (the plugin's close reads that plugin alone): the old config
    /// ran on although the new one was on disk.
    pub(crate) fn config_waits_for(&self) -> Option<String> {
        let last = self.config_text.lock().unwrap_or_else(|poison| poison.into_inner());
        let name = last.as_ref()?.waits_for.clone()?;
        drop(last);
        let held = files_of(&self.plugin_dir(), &name).iter().any(|path| self.writes.holds(path));
        (!held).then_some(name)
    }

    /// The config `text` of `file`; refused when it has no route while some
    /// serve and it does not say so (`route = []`): an empty or half-written
    /// file, or a body cut short, would otherwise drop every route.
    pub(crate) fn parse_config(&self, file: &str, text: &str) -> Result<Config, ConfigError> {
        // Validated when applied or checked, with the destinations registered in code.
        let config = Config::parse(file, text)?;
        let serving = self.config.load().routes.len().saturating_sub(self.overrides.routes.len());
        let says_no_routes =
            toml::from_str::<toml::Table>(text).is_ok_and(|table| table.contains_key("route"));
        if config.routes.is_empty() && serving > 0 && !says_no_routes {
            return Err(ConfigError::NoRoutes { file: file.to_owned(), serving });
        }
        Ok(config)
    }

    /// Validate `config` whole and make it current: routes, destinations and
    /// plugin settings. An invalid one, or one changing start-only keys,
    /// changes nothing; one equal to the running one (its destinations' files
    /// unchanged too) changes nothing either, and emits no `config-applied` event.
    /// Either way, a value it gives a key that code overrides, not told before, is told
    /// (`config-overridden`). One change from outside at a time (`config_changes`), as a reload of
    /// the file and a replacement are.
    pub(crate) fn apply_config(&self, file: &str, config: Config) -> Result<ConfigChange, ConfigError> {
        let _changes = self.config_changes.lock().unwrap_or_else(|poison| poison.into_inner());
        self.apply(file, config)
    }

    /// [`apply_config`](Self::apply_config), its caller holding `config_changes`.
    fn apply(&self, file: &str, config: Config) -> Result<ConfigChange, ConfigError> {
        self.apply_then(file, config, || ()).map(|(change, _, ())| change)
    }

    /// [`apply`](Self::apply), running `current` (and keeping what it returns) once `config` is
    /// current or found unchanged. The plugins are read under `config` before it is current, and
    /// those it brings (new files, new settings) serve before its routes run: no message meets a
    /// route whose plugin is still compiling. One refused does not hold it back: it applies, and
    /// the routes using that plugin follow their failure policy (`stage-unavailable`). One it runs
    /// whose file is still being written is waited for ([`prepare_all`](Self::prepare_all)), and
    /// refuses it if it still is. Besides the change, each plugin whose file it read and refused,
    /// with why.
    fn apply_then<T>(
        &self,
        file: &str,
        config: Config,
        current: impl FnOnce() -> T,
    ) -> Result<(ConfigChange, BTreeMap<String, String>, T), ConfigError> {
        let overridden = self.overrides.overridden(&config);
        let (config, transports) = self.checked(file, config)?;
        self.refuse_if_closed(file)?;
        let change = self.change_by(file, &config, &transports)?;
        let (stale, mut refused) = match change {
            ConfigChange::Applied => {
                let plugins = self.prepare_all(file, &config)?;
                self.make_current(file, config, transports, plugins)?
            }
            ConfigChange::Unchanged => Default::default(),
        };
        let done = current();
        for name in stale {
            if let Some(reason) = self.sync_plugin(&name, Retry::Changed) {
                refused.insert(name, reason);
            }
        }
        self.tell_overridden(file, overridden);
        Ok((change, refused, done))
    }

    /// Every plugin read and compiled under `config` (not current yet) as a sync after it would,
    /// off all locks: compiles may take minutes, and a stop does not wait for them. As many at
    /// once as a start compiles ([`compiles_at_once`]): the config waits for the longest compile
    /// of each round, not for the sum of them all. A plugin `config` runs whose file or sidecar
    /// its writer still holds (a copy under way) is waited for, as long as an explicit reload
    /// waits for the config file's writer, and read again: `config` made current without it
    /// would run its routes without it (under `fail-open`, a filter skipped). Still being written
    /// then, it refuses `config` (of `file`): the running one stays.
    fn prepare_all(&self, file: &str, config: &Config) -> Result<PreparedPlugins, ConfigError> {
        let serving = self.pipeline.registry.snapshot();
        let names = Mutex::new(self.plugin_names().into_iter());
        let outcomes = Mutex::new(BTreeMap::new());
        let next_name = || names.lock().unwrap_or_else(|poison| poison.into_inner()).next();
        std::thread::scope(|compilers| {
            for _ in 0..compiles_at_once() {
                compilers.spawn(|| {
                    while let Some(name) = next_name() {
                        let prepared = self.prepare(config, &name, Retry::Changed);
                        outcomes.lock().unwrap_or_else(|poison| poison.into_inner()).insert(name, prepared);
                    }
                });
            }
        });
        let mut outcomes = outcomes.into_inner().unwrap_or_else(|poison| poison.into_inner());
        let unsettled = |(name, prepared): &(&String, &mut Prepared)| {
            matches!(prepared, Prepared::Unsettled) && runs_plugin(config, name)
        };
        for (name, prepared) in outcomes.iter_mut().filter(unsettled) {
            files_of(&config.host.plugin_dir, name).iter().for_each(|path| self.writes.wait_for_writer(path));
            *prepared = self.prepare(config, name, Retry::Changed);
            if matches!(prepared, Prepared::Unsettled) {
                return Err(ConfigError::PluginUnsettled { file: file.to_owned(), plugin: name.clone() });
            }
        }
        Ok(PreparedPlugins { serving, outcomes })
    }

    /// Make the checked `config`, which changes the running one (its caller holds
    /// `config_changes`, so that is still the one [`change_by`](Self::change_by) compared), current
    /// with `plugins` prepared under it: the new versions serve first, its routes and destinations
    /// (the new and changed ones built from what its check read, `transports`) after, so that a
    /// batch that loads them finds those versions; then the rest of `plugins` is settled. The
    /// plugins another sync changed meanwhile are left out: they are the caller's to sync again.
    /// What those destinations tell follows `config-applied`, and so does what the plugins tell.
    /// Those left out, and each plugin of `plugins` refused, with why.
    fn make_current(
        &self,
        file: &str,
        config: Config,
        transports: CheckedTransports,
        plugins: PreparedPlugins,
    ) -> Result<(Vec<String>, BTreeMap<String, String>), ConfigError> {
        let (topology, stale, refused) = {
            let closed = self.changing.lock().unwrap_or_else(|poison| poison.into_inner());
            if *closed {
                return Err(ConfigError::ShuttingDown { file: file.to_owned() });
            }
            // The new versions first, the routes and destinations last: a batch pins its topology
            // before its plugins (`Pipeline::pin`), so one that finds the new routes finds their
            // plugins, and so do the destinations built here. One that finds the old routes runs
            // them with the plugins serving before the first new version, kept here.
            let serving = self.pipeline.registry.snapshot();
            self.pipeline.topology.load().keep_plugins(serving.clone());
            let (fresh, stale) = plugins.against(&serving);
            let (mut served, mut settled) = (Vec::new(), Vec::new());
            for (name, prepared) in fresh {
                match prepared {
                    Prepared::Ready(plugin) => served.push(self.serve(plugin)),
                    prepared => settled.push((name, prepared)),
                }
            }
            let pipeline = &self.pipeline;
            let previous = pipeline.topology.load();
            let topology = Arc::new(Topology::build(
                &config,
                transports,
                Some(&previous),
                &self.lasting,
                &pipeline.metrics,
                &pipeline.dispatch,
            ));
            self.pipeline.topology.store(topology.clone());
            self.config.store(Arc::new(config));
            self.events.emit(HostEvent::ConfigApplied { file: file.to_owned() });
            served.into_iter().for_each(|event| self.events.emit(event));
            let refused = settled
                .into_iter()
                .filter_map(|(name, prepared)| Some((name.clone(), self.settle(&name, prepared)?)))
                .collect();
            (topology, stale, refused)
        };
        topology.release_events();
        Ok((stale, refused))
    }

    /// Tell each key of `overridden` (what the config of `file` just applied or found unchanged
    /// sets, and the code overrides) whose value there is not the one told before.
    fn tell_overridden(&self, file: &str, overridden: Vec<Overridden>) {
        let mut told = self.overridden.lock().unwrap_or_else(|poison| poison.into_inner());
        for Overridden { key, value, used } in overridden.iter().filter(|key| !told.contains(key)).cloned() {
            let (file, key) = (file.to_owned(), key.to_owned());
            self.events.emit(HostEvent::ConfigOverridden { file, key, value, used });
        }
        *told = overridden;
    }

    /// Make no change any more: the host is stopping. Once a change under way is made, every later
    /// one is refused ([`ConfigError::ShuttingDown`]), and a plugin file is no longer read.
    pub(crate) fn close(&self) {
        *self.changing.lock().unwrap_or_else(|poison| poison.into_inner()) = true;
    }

    /// [`ConfigError::ShuttingDown`] once the host stopped, for a change of `file`.
    fn refuse_if_closed(&self, file: &str) -> Result<(), ConfigError> {
        match self.is_closed() {
            true => Err(ConfigError::ShuttingDown { file: file.to_owned() }),
            false => Ok(()),
        }
    }

    /// Whether the host stopped ([`close`](Reloader::close)).
    fn is_closed(&self) -> bool {
        *self.changing.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// `config` with the code's overrides, validated whole (its transports'
    /// options too), and what the check of its network destinations read.
    fn checked(&self, file: &str, config: Config) -> Result<(Config, CheckedTransports), ConfigError> {
        let config = self.overrides.apply(config);
        let native: Vec<&str> = self.lasting.native.keys().map(String::as_str).collect();
        config.validate(file, &native)?;
        let transports = self.pipeline.dispatch.transports().check(file, &config)?;
        Ok((config, transports))
    }

    /// Whether `config` says what `running` does, and its destinations' files (a CA file) held,
    /// when its check read them (`transports`), what they did when the running ones were built:
    /// applied, it would change nothing.
    fn unchanged(&self, running: &Config, config: &Config, transports: &CheckedTransports) -> bool {
        same_config(running, config) && !self.pipeline.topology.load().files_changed(config, transports)
    }

    /// What [`Reloader::apply_config`] would do with `config`, changing nothing.
    pub(crate) fn check_config(&self, file: &str, config: Config) -> Result<ConfigChange, ConfigError> {
        let (config, transports) = self.checked(file, config)?;
        self.change_by(file, &config, &transports)
    }

    /// What making the checked `config` current (`transports`: what its check read) would do to
    /// the running one: change it, or nothing; refused if it needs a restart.
    fn change_by(
        &self,
        file: &str,
        config: &Config,
        transports: &CheckedTransports,
    ) -> Result<ConfigChange, ConfigError> {
        let running = self.config.load();
        if self.unchanged(&running, config, transports) {
            return Ok(ConfigChange::Unchanged);
        }
        let keys = restart_only_changes(&running, config, &self.lasting.memory_capacities());
        match keys.is_empty() {
            true => Ok(ConfigChange::Applied),
            false => Err(ConfigError::NeedsRestart { file: file.to_owned(), keys }),
        }
    }

    /// Apply the config `text` as a reload of the file would, writing it to
    /// the config file (atomically: a temporary file renamed over it) as soon
    /// as it is current, so a restart keeps it; its plugins compile before it
    /// is, so a stop during those compiles leaves it neither running nor
    /// written. A refused config changes nothing, on disk or running.
    pub(crate) fn replace_config(&self, text: &str) -> Result<Replacement, ConfigError> {
        // One replacement at a time, applied and written together: the file
        // then holds what runs.
        let _changes = self.config_changes.lock().unwrap_or_else(|poison| poison.into_inner());
        let file = self.config_name();
        let kept = self.as_sent_back(text);
        let text = kept.as_deref().unwrap_or(text);
        let Some(path) = self.config_path() else {
            let (change, plugins_refused, ()) =
                self.apply_then(&file, self.parse_config(&file, text)?, || ())?;
            return Ok(Replacement { change, written: None, plugins_refused });
        };
        let (change, plugins_refused, written) =
            self.apply_then(&file, self.parse_config(&file, text)?, || replace_file(path, text))?;
        written.map_err(|error| ConfigError::Write { file, error })?;
        let written = ConfigText { text: text.to_owned(), refusal: None, waits_for: None };
        *self.config_text.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(written);
        Ok(Replacement { change, written: Some(path.to_owned()), plugins_refused })
    }

    /// The config `text`, sent to replace the running one, as it is applied (and written) where
    /// it differs: what code overrides keeps the file's own setting where the text gives the
    /// override's, and a route added in code that the text gives as it is is left out (as
    /// `GET /v1/config` shows them), so a config read from the host and sent back changes neither.
    pub(crate) fn as_sent_back(&self, text: &str) -> Option<String> {
        let file = self.config_name();
        let own = self
            .config_path()
            .and_then(|path| Config::read_text(&file, path, Links::Anywhere).ok().flatten());
        self.overrides.keep_own_settings(text, own.as_deref(), &self.config.load())
    }

    /// Plugin `name` read and compiled as `config` says, ready to swap in, or why not.
    fn prepare(&self, config: &Config, name: &str, retry: Retry) -> Prepared {
        let (format, bytes, settings) = match read_source(&config.host.plugin_dir, name, config, &self.writes)
        {
            Ok(Source::Present { format, bytes, config }) => (format, bytes, config),
            Ok(Source::Absent) => return Prepared::Gone(name.to_owned()),
            Ok(Source::Unsettled) => return Prepared::Unsettled,
            Err(error) => {
                let file = unread_library(&error);
                return Prepared::Failed { name: name.to_owned(), error, file, opened: Opened::Nothing };
            }
        };
        let digest = hex::encode(Sha256::digest(&bytes));
        let current = self.pipeline.registry.snapshot().get(name).cloned();
        if current
            .as_ref()
            .is_some_and(|current| current.digest == digest && current.settings.config == settings)
        {
            return Prepared::Serving;
        }
        let file = Some(Box::new((digest, settings.clone())));
        let refused = self.refused.lock().unwrap_or_else(|poison| poison.into_inner());
        let loaded = match refused.get(name).filter(|refusal| refusal.file == file) {
            Some(Refusal { opened: Opened::Refused, .. }) => return Prepared::Refused,
            Some(Refusal { may_pass: false, .. }) if retry == Retry::Changed => return Prepared::Refused,
            Some(Refusal { opened: Opened::Loaded(plugin), .. }) => Some(plugin.clone()),
            _ => None,
        };
        drop(refused);
        let failed = |error, loaded| {
            let opened = Opened::by(&error, loaded);
            Prepared::Failed { name: name.to_owned(), error, file: file.clone(), opened }
        };
        // Compiled, then tried: a bad cache entry the compile found is told even if the trial fails.
        let engine = &self.pipeline.engine;
        let compiled = match loaded {
            Some(plugin) => Ok(plugin),
            None => compile_bytes(engine, format, &bytes, settings)
                .inspect(|plugin| self.tell_discarded_entry(plugin)),
        };
        let plugin = match compiled {
            Ok(plugin) => plugin,
            Err(error) => return failed(error, None),
        };
        let tried = trial_instantiation(engine, &plugin, config.host.max_message_bytes)
            .and_then(|()| same_kind_where_used(config, current.as_deref(), plugin.clone()));
        match tried {
            Ok(plugin) => Prepared::Ready(plugin),
            Err(error) => failed(error, Some(plugin)),
        }
    }

    /// Tell that the compile cache's entry for `plugin` failed its check and was deleted, whether or
    /// not `plugin` passes its trial and comes to serve: a later compile of the same file finds no
    /// entry to tell of.
    fn tell_discarded_entry(&self, plugin: &CompiledPlugin) {
        if let CacheOutcome::Discarded(reason) = &plugin.cache {
            let (name, reason) = (plugin.name.clone(), reason.clone());
            self.events.emit(HostEvent::CacheEntryDiscarded { name, reason });
        }
    }

    /// Make `plugin` serve; the event that tells it (`plugin-loaded` or `plugin-replaced`), for the
    /// caller to emit. A refusal of its name in between is over (else the same bad file, put back
    /// later, would be taken for the one refused before, and neither reported nor shown).
    fn serve(&self, plugin: Arc<CompiledPlugin>) -> HostEvent {
        self.forget_refusal(&plugin.name);
        let mut old = None;
        // Counted as serving before it serves: a call of it may count a name or a problem at once.
        self.pipeline.metrics.plugin_serving(&plugin.name);
        self.pipeline.registry.update(|set| old = set.insert(plugin.name.clone(), plugin.clone()));
        let (name, kind, version) = (plugin.name.clone(), plugin.kind.as_str(), plugin.digest.clone());
        let compile_ms = plugin.compile_time.as_secs_f64() * 1e3;
        match old {
            None => HostEvent::PluginLoaded { name, kind, version, compile_ms },
            Some(old) => {
                HostEvent::PluginReplaced { name, kind, old_version: old.digest.clone(), version, compile_ms }
            }
        }
    }

    fn remove(&self, name: &str) {
        let mut old = None;
        self.pipeline.registry.update(|set| old = set.remove(name));
        if let Some(old) = old {
            self.pipeline.metrics.plugin_removed(name);
            self.events.emit(HostEvent::PluginRemoved { name: name.to_owned(), version: old.digest.clone() });
        }
    }
}

/// What applying a configuration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigChange {
    /// It differed from the running one and is now current (one `config-applied` event).
    Applied,
    /// It equals the running one, and the files its destinations read (a `ca_file`) hold what they
    /// did: nothing changed, no event.
    Unchanged,
}

/// What replacing the configuration did ([`Host::replace_config`](crate::Host::replace_config)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replacement {
    /// Whether it changed the running configuration.
    pub change: ConfigChange,
    /// The config file written, or `None` for a host started without one.
    pub written: Option<PathBuf>,
    /// Each plugin whose file (or settings) the configuration read and refused, with why: those
    /// refused for the reason they were refused before too (a broken file compiled again under new
    /// settings, a plugin tried again as the kind a route uses it as), not one refused before and
    /// not read again.
    pub plugins_refused: BTreeMap<String, String>,
}

/// Whether two configurations say the same (compared as data).
fn same_config(a: &Config, b: &Config) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Replace the file at `path` with `text` at once (a temporary file beside it, synced, renamed over
/// it). A symbolic link is followed: what it points to is replaced, and the link stays. The file
/// keeps its permissions.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temporary, text.as_bytes())?;
    if let Ok(existing) = std::fs::metadata(&path) {
        temporary.as_file().set_permissions(existing.permissions())?;
    }
    temporary.as_file().sync_all()?;
    temporary.persist(&path).map_err(|err| err.error)?;
    Ok(())
}
