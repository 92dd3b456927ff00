//! The control side of a running host ([`Reloader`]): what it holds to apply changes, one at a
//! time, and its stop. What it does is told by role: plugin files brought in line
//! ([`plugin_sync`](super::plugin_sync)), plugins made ready off the message path
//! ([`prepared`](super::prepared)), configurations applied ([`config_change`](super::config_change)).

use super::config_change::ConfigText;
use super::events::Events;
use super::open_writes::OpenWrites;
use super::refusal::Refusal;
use crate::config::{CodeOverrides, Config, ConfigError, Overridden};
use crate::pipeline::{LastingDestinations, Pipeline};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The control side of a host: everything that changes while it runs.
pub(crate) struct Reloader {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) events: Arc<Events>,
    pub(crate) config: ArcSwap<Config>,
    /// Settings made in code, applied over every config.
    pub(super) overrides: CodeOverrides,
    /// What the config last applied (or found unchanged) says of the keys `overrides` set, where
    /// it differs from them: an edit of one is told once
    /// ([`HostEvent::ConfigOverridden`](super::HostEvent::ConfigOverridden)).
    pub(super) overridden: Mutex<Vec<Overridden>>,
    /// The file the config was read from, if any, and the name errors use.
    pub(super) config_file: (String, Option<PathBuf>),
    pub(crate) lasting: LastingDestinations,
    /// Serializes changes: one plugin swap or config update at a time. True once the host stopped
    /// ([`close`](Reloader::close)): a config applied then would start health checks and
    /// dispatchers that nothing stops any more. Held only while a change is made, never while a
    /// plugin compiles: a stop waited for the compile (minutes for a big plugin) to end.
    pub(super) changing: Mutex<bool>,
    /// Serializes plugin syncs: one plugin read, compiled and swapped in at a time, so that two
    /// syncs of one plugin cannot swap in their versions out of order.
    pub(super) syncing: Mutex<()>,
    /// Serializes what changes the config from outside: a replacement (`PUT /v1/config`), applied
    /// and written to the file together, a reload of the file, read and applied together, and a
    /// config given in code. A reload that read the file before a replacement wrote it, and applied
    /// it after, ran the old config while the file and the replacement's answer said the new one;
    /// two configs applied at once could be made current in one order and their overridden keys
    /// told in the other, leaving `overridden` saying what the running config does not.
    pub(super) config_changes: Mutex<()>,
    /// The plugins whose latest file was refused, and why: that file is not
    /// read into a plugin, nor reported, again until it changes.
    pub(super) refused: Mutex<BTreeMap<String, Refusal>>,
    /// The text of the config file as last read (applied or refused) or written, and why it was
    /// refused, if it was: a file event that leaves it so reads nothing into a config and reports
    /// nothing again, unless it was refused.
    pub(super) config_text: Mutex<Option<ConfigText>>,
    /// The files their writers hold open, as the watcher tells (none without one): such a file,
    /// config or plugin, is not read into anything until it is closed.
    pub(super) writes: Arc<OpenWrites>,
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
    /// what its bytes say, is not: it would be refused alike (see [`Opened`](super::refusal::Opened)).
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

    /// Make no change any more: the host is stopping. Once a change under way is made, every later
    /// one is refused ([`ConfigError::ShuttingDown`]), and a plugin file is no longer read.
    pub(crate) fn close(&self) {
        *self.changing.lock().unwrap_or_else(|poison| poison.into_inner()) = true;
    }

    /// [`ConfigError::ShuttingDown`] once the host stopped, for a change of `file`.
    pub(super) fn refuse_if_closed(&self, file: &str) -> Result<(), ConfigError> {
        match self.is_closed() {
            true => Err(ConfigError::ShuttingDown { file: file.to_owned() }),
            false => Ok(()),
        }
    }

    /// Whether the host stopped ([`close`](Reloader::close)).
    pub(super) fn is_closed(&self) -> bool {
        *self.changing.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}
