//! Configurations applied to a running host: its config file reloaded, a replacement written
//! (`PUT /v1/config`), or one given in code. A config is checked whole, its plugins are made ready
//! under it, and it becomes current with them at once, or it is refused and the running one stays.

use super::events::HostEvent;
use super::prepared::{Prepared, PreparedPlugins};
use super::reloader::{Reloader, Retry};
use super::source::files_of;
use crate::config::{Config, ConfigError, Overridden, restart_only_changes};
use crate::pipeline::Topology;
use crate::regular_file::Links;
use crate::transport::CheckedTransports;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The config file's text as last read or written.
pub(super) struct ConfigText {
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

impl Reloader {
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
