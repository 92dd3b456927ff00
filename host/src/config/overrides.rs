//! What embedding code or the command line sets over any configuration (a plugin directory, a
//! state directory, the listeners' addresses, routes added in code): applied to the configuration
//! the host starts with and to every one it reloads, so a reload never drops them, and the host's
//! config shows them. What a configuration says of a key they set is not used:
//! [`CodeOverrides::overridden`] names it, for a reload to tell. A config sent to replace the
//! running one keeps the file's own settings of those keys and leaves out the routes added in code
//! ([`CodeOverrides::keep_own_settings`]).

use super::{AdminConfig, Config, HttpIngressConfig, RouteConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::Table;

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

    /// `text`, a config sent to replace the running one (and to be written over the file whose
    /// text is `own`, if it has one), as it is to be applied: a config read from the host
    /// (`GET /v1/config`, which shows what these settings set) and sent back leaves the file its own
    /// addresses and directories, and the routes added in code once. A route it gives as one
    /// added in code is, is left out: the code adds it again. Each key these settings set that
    /// `text` gives their value is set back as the file has it; a listener's table the file has
    /// not, which `text` gives as the host runs it (`running`: as these settings made it), is left
    /// out whole, the address it cannot go without with it. `None` when there is nothing to change.
    pub(crate) fn keep_own_settings(
        &self,
        text: &str,
        own: Option<&str>,
        running: &Config,
    ) -> Option<String> {
        let mut given = toml::from_str::<Table>(text).ok()?;
        let mut kept = self.leave_out_code_routes(&mut given);
        if let Some(own) = own.and_then(|own| toml::from_str::<Table>(own).ok()) {
            kept |= self.keep_own_keys(&mut given, &own, running);
        }
        kept.then(|| toml::to_string(&given).ok()).flatten()
    }

    /// Leave out of `given` the routes that are routes added in code (a route with the name of one
    /// but other settings stays, to be refused as sharing its name); whether there were any.
    fn leave_out_code_routes(&self, given: &mut Table) -> bool {
        let Some(routes) = given.get_mut("route").and_then(toml::Value::as_array_mut) else { return false };
        let count = routes.len();
        routes.retain(|route| {
            let route = route.clone().try_into::<RouteConfig>();
            !route.is_ok_and(|route| self.routes.contains(&route))
        });
        let left_out = routes.len() < count;
        if routes.is_empty() {
            given.remove("route");
        }
        left_out
    }

    /// Set back in `given` the keys these settings set that it gives their value as `own` (the
    /// file's text) has them; whether there were any (see [`keep_own_settings`](Self::keep_own_settings)).
    fn keep_own_keys(&self, given: &mut Table, own: &Table, running: &Config) -> bool {
        let settings = [
            (
                &["host", "plugin_dir"][..],
                self.plugin_dir.as_ref().map(|dir| dir.display().to_string()),
                None,
            ),
            (&["host", "state_dir"], self.state_dir.as_ref().map(|dir| dir.display().to_string()), None),
            (
                &["ingress", "http", "listen"],
                self.http_listen.map(|listen| listen.to_string()),
                Some(running.ingress.http.as_ref().and_then(|http| toml::Value::try_from(http).ok())),
            ),
            (
                &["admin", "listen"],
                self.admin_listen.map(|listen| listen.to_string()),
                Some(running.admin.as_ref().and_then(|admin| toml::Value::try_from(admin).ok())),
            ),
        ];
        let mut kept = false;
        for (path, used, listener) in settings {
            let Some(used) =
                used.filter(|used| value_at(given, path).and_then(toml::Value::as_str) == Some(used))
            else {
                continue;
            };
            let (key, table) = path.split_last().expect("a key's path is not empty");
            kept |= match (value_at(own, path), listener) {
                (Some(value), _) if value.as_str() == Some(used.as_str()) => false,
                (Some(value), _) => {
                    table_at(given, table).and_then(|at| at.insert(key.to_string(), value.clone())).is_some()
                }
                (None, None) => table_at(given, table).and_then(|at| at.remove(*key)).is_some(),
                (None, Some(running)) => {
                    let (name, outer) = table.split_last().expect("a listener's table is named");
                    let as_running = value_at(given, table) == running.as_ref();
                    as_running && table_at(given, outer).and_then(|at| at.remove(*name)).is_some()
                }
            };
        }
        kept
    }
}

/// The value at `path` in `table`, if it has one.
fn value_at<'a>(table: &'a Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (key, tables) = path.split_last()?;
    tables.iter().try_fold(table, |table, name| table.get(*name)?.as_table())?.get(*key)
}

/// The table at `path` in `table` (`table` itself for an empty one), if it has one.
fn table_at<'a>(table: &'a mut Table, path: &[&str]) -> Option<&'a mut Table> {
    path.iter().try_fold(table, |table, name| table.get_mut(*name)?.as_table_mut())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_sent_back_as_the_overrides_set_them_are_set_back_as_the_file_has_them() {
        let overrides = CodeOverrides {
            plugin_dir: Some("/srv/plugins".into()),
            http_listen: Some("127.0.0.1:7000".parse().unwrap()),
            admin_listen: Some("127.0.0.1:7001".parse().unwrap()),
            ..CodeOverrides::default()
        };
        let own = "[host]\nwatch = false\n[ingress.http]\nlisten = \"127.0.0.1:9\"\n";
        let running = overrides.apply(Config::parse("own.toml", own).unwrap());
        let read_back = |text: &str| overrides.keep_own_settings(text, Some(own), &running);
        // The file has no plugin_dir and no [admin]: sent back as the host shows them, they go.
        let shown = toml::to_string(&running).unwrap();
        let kept: Table = toml::from_str(&read_back(&shown).unwrap()).unwrap();
        assert_eq!(kept["ingress"]["http"]["listen"].as_str(), Some("127.0.0.1:9"));
        assert!(!kept["host"].as_table().unwrap().contains_key("plugin_dir"), "{kept}");
        assert!(!kept.contains_key("admin"), "{kept}");
        // An [admin] set apart from how it runs needs its address; values of the sender's own stay.
        let sent = "[host]\nplugin_dir = \"p\"\n[ingress.http]\nlisten = \"127.0.0.1:8\"\n\
                    [admin]\nlisten = \"127.0.0.1:7001\"\nmax_connections = 3\n";
        assert_eq!(read_back(sent), None);
    }
}
