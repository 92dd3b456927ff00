//! What embedding code sets over any configuration (a plugin directory, a
//! state directory, routes added in code): applied to the configuration the host starts with
//! and to every one it reloads, so a reload never drops them.

use super::{Config, RouteConfig};
use std::path::PathBuf;

/// Settings made in code, kept across config reloads.
#[derive(Debug, Clone, Default)]
pub(crate) struct CodeOverrides {
    /// Load plugins from here, whatever the configuration says.
    pub(crate) plugin_dir: Option<PathBuf>,
    /// Keep the host's state here, whatever the configuration says.
    pub(crate) state_dir: Option<PathBuf>,
    /// Routes after the configuration's own.
    pub(crate) routes: Vec<RouteConfig>,
}

impl CodeOverrides {
    /// `config` with these settings applied.
    pub(crate) fn apply(&self, mut config: Config) -> Config {
        if let Some(dir) = &self.plugin_dir {
            config.host.plugin_dir = dir.clone();
        }
        if let Some(dir) = &self.state_dir {
            config.host.state_dir = dir.clone();
        }
        config.routes.extend(self.routes.iter().cloned());
        config
    }
}
