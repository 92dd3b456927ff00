//! Plugins made ready off the message path, to swap in: one at a time as its files change, or all
//! of them under a config before it is current, so that its routes run with their plugins.

use super::events::HostEvent;
use super::refusal::{FileRead, Opened, Refusal, unread_library};
use super::reloader::{Reloader, Retry};
use super::source::{Source, files_of, read_source};
use crate::config::{Config, ConfigError, StageRef};
use crate::plugin::{
    CacheOutcome, CompiledPlugin, LoadError, PluginKind, PluginSet, compile_bytes, trial_instantiation,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A plugin made ready off the message path, or why not.
pub(super) enum Prepared {
    Ready(Arc<CompiledPlugin>),
    Gone(String),
    /// Refused; `file` is its digest and settings, when it could be read.
    Failed {
        name: String,
        error: LoadError,
        file: Option<FileRead>,
        opened: Opened,
    },
    /// The file is the serving version's.
    Serving,
    /// The file is one refused before, unchanged.
    Refused,
    Unsettled,
}

/// Every plugin prepared under a config before it is current, to serve as it becomes current.
pub(super) struct PreparedPlugins {
    /// The versions serving when they were prepared.
    pub(super) serving: Arc<PluginSet>,
    /// What each plugin's file made, by name.
    pub(super) outcomes: BTreeMap<String, Prepared>,
}

impl PreparedPlugins {
    /// The outcomes that still hold with `serving` (the versions serving now), and the names of
    /// the others: plugins another sync changed since they were prepared.
    pub(super) fn against(self, serving: &PluginSet) -> (Vec<(String, Prepared)>, Vec<String>) {
        let PreparedPlugins { serving: then, outcomes } = self;
        let unchanged = |name: &String| match (then.get(name), serving.get(name)) {
            (Some(then), Some(now)) => Arc::ptr_eq(then, now),
            (then, now) => then.is_none() && now.is_none(),
        };
        let (fresh, stale): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(name, _)| unchanged(name));
        (fresh, stale.into_iter().map(|(name, _)| name).collect())
    }
}

impl Reloader {
    /// Every plugin read and compiled under `config` (not current yet) as a sync after it would,
    /// off all locks: compiles may take minutes, and a stop does not wait for them. As many at
    /// once as a start compiles ([`compiles_at_once`]): the config waits for the longest compile
    /// of each round, not for the sum of them all. A plugin `config` runs whose file or sidecar
    /// its writer still holds (a copy under way) is waited for, as long as an explicit reload
    /// waits for the config file's writer, and read again: `config` made current without it
    /// would run its routes without it (under `fail-open`, a filter skipped). Still being written
    /// then, it refuses `config` (of `file`): the running one stays.
    pub(super) fn prepare_all(&self, file: &str, config: &Config) -> Result<PreparedPlugins, ConfigError> {
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

    /// Plugin `name` read and compiled as `config` says, ready to swap in, or why not.
    pub(super) fn prepare(&self, config: &Config, name: &str, retry: Retry) -> Prepared {
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
pub(super) fn compiles_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
