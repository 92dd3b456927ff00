//! What embedding code or the command line sets over any configuration (a plugin directory, a
//! state directory, the listeners' addresses, routes added in code): applied to the configuration
//! the host starts with and to every one it reloads, so a reload never drops them, and the host's
//! config shows them. What a configuration says of a key they set is not used:
//! [`CodeOverrides::overridden`] names it, for a reload to tell.

use super::{AdminConfig, Config, HttpIngressConfig, RouteConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings made in code (`switchyard run`'s options included), kept across config reloads.
#[derive(Debug, Clone, Default)]
pub(crate) struct CodeOverrides {
    /// Load plugins from here, whatever the configuration says.
    pub(crate) plugin_dir: Option<PathBuf>,
    /// Keep the host's state here, whatever the configuration says.
    pub(crate) state_dir: Option<PathBuf>,
    /// The HTTP ingress listens here (`switchyard run --listen`), whatever the configuration says.
    pub(crate) http_listen: Option<SocketAddr>,
    /// The admin API listens here (`switchyard run --admin`), whatever the configuration says.
    pub(crate) admin_listen: Option<SocketAddr>,
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
        if let Some(listen) = self.http_listen {
            config.ingress.http.get_or_insert_with(|| HttpIngressConfig::new(listen)).listen = listen;
        }
        if let Some(listen) = self.admin_listen {
            config.admin.get_or_insert_with(|| AdminConfig::new(listen)).listen = listen;
        }
        config.routes.extend(self.routes.iter().cloned());
        config
    }

    /// The keys `config` (as written, before [`apply`](Self::apply)) sets to other values than
    /// these settings do: what it says of them is not used.
    pub(crate) fn overridden(&self, config: &Config) -> Vec<Overridden> {
        let dirs = [
            ("host.plugin_dir", &config.host.plugin_dir, &self.plugin_dir),
            ("host.state_dir", &config.host.state_dir, &self.state_dir),
        ];
        let dirs = dirs.into_iter().filter_map(|(key, value, used)| {
            let used = used.as_ref().filter(|used| *used != value)?;
            Some(Overridden { key, value: value.display().to_string(), used: used.display().to_string() })
        });
        let listeners = [
            ("ingress.http.listen", config.ingress.http.as_ref().map(|http| http.listen), self.http_listen),
            ("admin.listen", config.admin.as_ref().map(|admin| admin.listen), self.admin_listen),
        ];
        let listeners = listeners.into_iter().filter_map(|(key, value, used)| {
            let (value, used) = (value?, used.filter(|used| Some(*used) != value)?);
            Some(Overridden { key, value: value.to_string(), used: used.to_string() })
        });
        dirs.chain(listeners).collect()
    }
}

/// A key a configuration sets that a [`CodeOverrides`] setting replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overridden {
    /// The key, e.g. `host.plugin_dir`.
    pub(crate) key: &'static str,
    /// What the configuration says.
    pub(crate) value: String,
    /// What is used instead.
    pub(crate) used: String,
}
