//! Reading, defaulting and validating a configuration.

use super::model::{AdminConfig, Config, HttpIngressConfig, RouteConfig, StageRef};
use super::secret::{inline_table, shown};
use crate::regular_file::{self, Links};
use std::collections::BTreeSet;
use std::path::Path;

/// A configuration that cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        error: std::io::Error,
    },
    /// A config accepted over the admin API was applied, but could not be
    /// written to the file: a restart would not keep it.
    #[error("{file}: applied, but cannot write it: {error} (a restart would not keep it)")]
    Write {
        /// The file.
        file: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("{file}: {key} = {value}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// Where in the file, e.g. `route "orders".to`.
        key: String,
        /// The offending value, quoted as written.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A reload would leave no routes where some serve, and the file does not
    /// say `route = []`: an empty or half-written file, most likely.
    #[error(
        "{file}: no [[route]]: refused, it would replace the {serving} serving (an empty or half-written file?); write `route = []` to run with none"
    )]
    NoRoutes {
        /// The file.
        file: String,
        /// How many routes serve now.
        serving: usize,
    },
    /// A reload changes keys that take effect only when the host starts.
    #[error("{file}: {} take effect only at start: restart the host to change them (nothing was applied)", keys.join(", "))]
    NeedsRestart {
        /// The file.
        file: String,
        /// The keys, e.g. `host.workers`.
        keys: Vec<&'static str>,
    },
    /// The host is shutting down: it applies no config any more.
    #[error("{file}: not applied: the host is shutting down")]
    ShuttingDown {
        /// The file.
        file: String,
    },
    /// The file changed while it was read: it is read again once it stops changing.
    #[error("{file}: changed while it was read (still being written?); read again once it stops changing")]
    Unsettled {
        /// The file.
        file: String,
    },
    /// A plugin the config runs (a route's stage, a destination's `plugin:NAME`) is still being
    /// written (its file or sidecar held open by its writer, or changing as it was read) after
    /// the wait for its writer: applied, its routes would run without it. The running config stays.
    #[error(
        "{file}: not applied: plugin \"{plugin}\", which it runs, is still being written; the running config stays: apply it again once the plugin's file is complete"
    )]
    PluginUnsettled {
        /// The file.
        file: String,
        /// The plugin.
        plugin: String,
    },
}

impl Config {
    /// The built-in default: plugins from `./plugins.d`, HTTP ingress on
    /// 127.0.0.1:7070, one route that runs every plugin then logs the message.
    pub fn builtin() -> Config {
        let mut config = Config::default();
        config.ingress.http = Some(HttpIngressConfig::new(([127, 0, 0, 1], 7070).into()));
        config.admin = Some(AdminConfig::new(([127, 0, 0, 1], 7071).into()));
        let mut route = RouteConfig::new("default", ">", "log");
        route.stages.push(StageRef::AllPlugins);
        config.routes.push(route);
        config
    }

    /// Read and validate the file at `path` (a regular file of at most
    /// 4 MiB).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse_file(path)?;
        config.validate(&path.display().to_string(), &[])?;
        Ok(config)
    }

    /// Read and parse the file at `path`, leaving [`Config::validate`] to the caller, which knows
    /// the destinations registered in code the file may name.
    pub(crate) fn parse_file(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = Config::read_text(&file, path, Links::Anywhere)?;
        let text = text.ok_or_else(|| ConfigError::Unsettled { file: file.clone() })?;
        Config::parse(&file, &text)
    }

    /// The text of the settings file at `path` (named `file` in errors,
    /// links followed as `links` allows), or `None` when it changed while
    /// it was read.
    pub(crate) fn read_text(file: &str, path: &Path, links: Links) -> Result<Option<String>, ConfigError> {
        let read_error = |error| ConfigError::Read { file: file.to_owned(), error };
        let Some(bytes) =
            regular_file::read(path, regular_file::MAX_SETTINGS_BYTES, links).map_err(read_error)?
        else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes)
            .map_err(|err| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, err)))?;
        Ok(Some(text))
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(file, text)?;
        config.validate(file, &[])?;
        Ok(config)
    }

    /// Parse TOML text, leaving [`Config::validate`] to the caller, which knows the destinations
    /// registered in code the text may name; `file` names it in errors.
    pub(crate) fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|err| ConfigError::Parse { file: file.to_owned(), message: parse_message(text, &err) })
    }

    /// Check the cross-references and ranges serde cannot: `extra_destinations`
    /// are destinations registered in code by an embedder.
    pub fn validate(&self, file: &str, extra_destinations: &[&str]) -> Result<(), ConfigError> {
        let invalid = |key: String, value: &dyn std::fmt::Debug, problem: String| ConfigError::Invalid {
            file: file.to_owned(),
            // A name in the key may hold a control character: escaped, it reaches no terminal or log.
            key: key
                .chars()
                .map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() })
                .collect(),
            value: format!("{value:?}").replace("\\\"", "\""),
            problem,
        };
        let host = &self.host;
        let sizes = [
            ("queue_capacity", host.queue_capacity),
            ("batch_size", host.batch_size),
            ("max_in_flight", host.max_in_flight),
        ];
        for (key, value) in sizes {
            if value == 0 {
                return Err(invalid(format!("host.{key}"), &value, "must be at least 1".into()));
            }
            if value > MAX_SIZE {
                return Err(invalid(format!("host.{key}"), &value, format!("must be at most {MAX_SIZE}")));
            }
        }
        let listeners = [
            (
                "ingress.http",
                self.ingress.http.as_ref().map(|http| (http.max_connections, http.header_timeout_ms)),
            ),
            ("admin", self.admin.as_ref().map(|admin| (admin.max_connections, admin.header_timeout_ms))),
            (
                "ingress.grpc",
                self.ingress.grpc.as_ref().map(|grpc| (grpc.max_connections, grpc.header_timeout_ms)),
            ),
        ];
        for (section, limits) in listeners {
            let Some((connections, timeout_ms)) = limits else { continue };
            if !(1..=MAX_SIZE).contains(&connections) {
                let problem = format!("must be 1 to {MAX_SIZE}");
                return Err(invalid(format!("{section}.max_connections"), &connections, problem));
            }
            if !(1..=3_600_000).contains(&timeout_ms) {
                let problem = "must be 1 to 3600000".to_owned();
                return Err(invalid(format!("{section}.header_timeout_ms"), &timeout_ms, problem));
            }
        }
        let pings = [
            ("ingress.http", self.ingress.http.as_ref().map(|http| http.ping_ms)),
            ("admin", self.admin.as_ref().map(|admin| admin.ping_ms)),
        ];
        for (section, ping_ms) in pings {
            if let Some(ping_ms) = ping_ms.filter(|ping_ms| !(1..=3_600_000).contains(ping_ms)) {
                let problem = "must be 1 to 3600000".to_owned();
                return Err(invalid(format!("{section}.ping_ms"), &ping_ms, problem));
            }
        }
        // A token is compared with what a client presents in a header, which carries visible ASCII
        // and loses the spaces around it: any other token could never be presented.
        let tokens = [
            ("ingress.http.token", self.ingress.http.as_ref().and_then(|http| http.token.as_deref())),
            ("ingress.grpc.token", self.ingress.grpc.as_ref().and_then(|grpc| grpc.token.as_deref())),
            ("admin.token", self.admin.as_ref().and_then(|admin| admin.token.as_deref())),
        ];
        for (key, token) in tokens {
            if token.is_some_and(|token| !token.bytes().all(|byte| byte.is_ascii_graphic())) {
                let problem = "must be visible ASCII characters, no spaces: no client could present it";
                return Err(invalid(key.into(), &"(not shown)", problem.into()));
            }
        }
        // Two listeners cannot share an address (port 0 picks a free one each).
        let addresses = [
            ("ingress.http.listen", self.ingress.http.as_ref().map(|http| http.listen)),
            ("ingress.grpc.listen", self.ingress.grpc.as_ref().map(|grpc| grpc.listen)),
            ("admin.listen", self.admin.as_ref().map(|admin| admin.listen)),
        ];
        let bound: Vec<(&str, std::net::SocketAddr)> = addresses
            .into_iter()
            .filter_map(|(key, addr)| addr.filter(|addr| addr.port() != 0).map(|addr| (key, addr)))
            .collect();
        // One on 0.0.0.0 (or ::) takes its port on every address, so another cannot have it there.
        let clash = |a: &std::net::SocketAddr, b: &std::net::SocketAddr| {
            a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (at, (key, addr)) in bound.iter().enumerate() {
            if let Some((other, _)) = bound[..at].iter().find(|(_, earlier)| clash(earlier, addr)) {
                return Err(invalid((*key).into(), addr, format!("{other} listens there already")));
            }
        }
        if let Some(http) =
            self.ingress.http.as_ref().filter(|http| !(1..=MAX_MESSAGE_BYTES).contains(&http.max_batch_bytes))
        {
            let problem = format!("must be 1 to {MAX_MESSAGE_BYTES}");
            return Err(invalid("ingress.http.max_batch_bytes".into(), &http.max_batch_bytes, problem));
        }
        for (at, nats) in self.ingress.nats.iter().enumerate() {
            if let Some((field, value, problem)) = nats.problem() {
                return Err(invalid(
                    format!("ingress.nats[{at}].{field}"),
                    &format_args!("{value}"),
                    problem,
                ));
            }
            // Each subscription gets its own copy of a message, as two of one entry do.
            let shared = self.ingress.nats[..at]
                .iter()
                .enumerate()
                .find_map(|(earlier_at, earlier)| Some((earlier_at, nats.shared_subject(earlier)?)));
            if let Some((earlier_at, (mine, theirs))) = shared {
                let problem = "overlap at one server: a message on a subject both match would be admitted \
                               twice, with two ids (unless both entries join the same queue_group)";
                return Err(invalid(
                    format!("ingress.nats[{at}].subjects"),
                    &format_args!("{mine:?} and ingress.nats[{earlier_at}]'s {theirs:?}"),
                    problem.into(),
                ));
            }
        }
        if host.max_message_bytes == 0 {
            return Err(invalid("host.max_message_bytes".into(), &0, "must be at least 1".into()));
        }
        if host.max_message_bytes > MAX_MESSAGE_BYTES {
            let problem = format!("must be at most {MAX_MESSAGE_BYTES}");
            return Err(invalid("host.max_message_bytes".into(), &host.max_message_bytes, problem));
        }
        // Counted in KiB permits of a semaphore; one whole message must fit.
        if !(host.max_message_bytes..=MAX_QUEUE_BYTES).contains(&host.queue_bytes) {
            let problem = format!(
                "must be from host.max_message_bytes ({}) to {MAX_QUEUE_BYTES}",
                host.max_message_bytes
            );
            return Err(invalid("host.queue_bytes".into(), &host.queue_bytes, problem));
        }
        if host.shutdown_grace_ms > MAX_DURATION_MS {
            let problem = format!("must be at most {MAX_DURATION_MS} (a day)");
            return Err(invalid("host.shutdown_grace_ms".into(), &host.shutdown_grace_ms, problem));
        }
        for (key, threads) in [("host.workers", host.workers), ("host.io_threads", host.io_threads)] {
            if threads > MAX_THREADS {
                return Err(invalid(key.into(), &threads, format!("must be at most {MAX_THREADS}")));
            }
        }
        if !(1..=MAX_PLUGIN_BYTES).contains(&host.max_plugin_bytes) {
            let problem = format!("must be 1 to {MAX_PLUGIN_BYTES}");
            return Err(invalid("host.max_plugin_bytes".into(), &host.max_plugin_bytes, problem));
        }
        if host.plugin_dir.as_os_str().is_empty() {
            let problem = "must name a directory (\".\" for the working directory)".into();
            return Err(invalid("host.plugin_dir".into(), &host.plugin_dir, problem));
        }
        if host.state_dir.as_os_str().is_empty() {
            let problem = "must name a directory (the dead-letter file is kept there)".into();
            return Err(invalid("host.state_dir".into(), &host.state_dir, problem));
        }
        if host.spool_max_bytes < host.max_message_bytes as u64 + 1024 {
            let problem = format!(
                "must hold one message of host.max_message_bytes ({}) and 1 KiB more",
                host.max_message_bytes
            );
            return Err(invalid("host.spool_max_bytes".into(), &host.spool_max_bytes, problem));
        }
        if host.cache_dir.as_os_str() != ""
            && resolved(&host.cache_dir).starts_with(resolved(&host.plugin_dir))
        {
            let problem = "inside the plugin directory: the compile cache holds native code, and whoever writes plugins must not write it".into();
            return Err(invalid("host.cache_dir".into(), &host.cache_dir, problem));
        }
        let mut destinations = BTreeSet::from(["log"]);
        destinations.extend(extra_destinations);
        for dest in &self.destinations {
            if dest.name.is_empty() {
                return Err(invalid("destination.name".into(), &"", "must not be empty".into()));
            }
            if !destinations.insert(&dest.name) {
                let problem = "a destination of this name already exists".into();
                return Err(invalid("destination.name".into(), &dest.name, problem));
            }
            dest.validate().map_err(|(field, value, problem)| {
                invalid(format!("destination \"{}\".{field}", dest.name), &value, problem)
            })?;
        }
        let known = || destinations.iter().copied().collect::<Vec<_>>().join(", ");
        for dest in &self.destinations {
            let Some(fallback) = &dest.fallback else { continue };
            let key = format!("destination \"{}\".fallback", dest.name);
            let problem = match self.destinations.iter().find(|other| &other.name == fallback) {
                _ if dest.is_in_process() => Some("only a network destination has a fallback".to_owned()),
                _ if fallback == &dest.name => Some("a destination cannot be its own fallback".to_owned()),
                Some(other) if other.fallback.is_some() => {
                    Some(format!("\"{fallback}\" has a fallback of its own: fallbacks do not chain"))
                }
                Some(_) => None,
                None if destinations.contains(fallback.as_str()) => None,
                None => Some(format!("unknown destination (known: {})", known())),
            };
            if let Some(problem) = problem {
                return Err(invalid(key, fallback, problem));
            }
        }
        for dest in &self.destinations {
            let Some(target) = &dest.dead_letter else { continue };
            let key = format!("destination \"{}\".dead_letter", dest.name);
            if target == &dest.name {
                return Err(invalid(key, target, "a destination cannot be its own dead letter".into()));
            }
            if !destinations.contains(target.as_str()) {
                return Err(invalid(key, target, format!("unknown destination (known: {})", known())));
            }
        }
        if !destinations.contains(host.dead_letter.as_str()) {
            let problem = format!("unknown destination (known: {})", known());
            return Err(invalid("host.dead_letter".into(), &host.dead_letter, problem));
        }
        let mut plugins = BTreeSet::new();
        for plugin in &self.plugins {
            let key = |field: &str| format!("plugin \"{}\".{field}", plugin.name);
            if !plugins.insert(&plugin.name) {
                return Err(invalid(key("name"), &plugin.name, "configured twice".into()));
            }
            if let Some(problem) = super::model::plugin_name_problem(&plugin.name) {
                return Err(invalid(key("name"), &plugin.name, problem.into()));
            }
            if plugin.limits.memory_mb == 0 {
                return Err(invalid(key("limits.memory_mb"), &0, "must be at least 1".into()));
            }
            if plugin.limits.timeout_ms == 0 {
                return Err(invalid(key("limits.timeout_ms"), &0, "must be at least 1".into()));
            }
            // A cap in bytes must fit a usize; a deadline past an hour is no deadline.
            let ceilings = [
                ("limits.memory_mb", plugin.limits.memory_mb, 65_536),
                ("limits.timeout_ms", plugin.limits.timeout_ms, 3_600_000),
            ];
            for (field, value, ceiling) in ceilings {
                if value > ceiling {
                    return Err(invalid(key(field), &value, format!("must be at most {ceiling}")));
                }
            }
            // Refused here, not when the plugin loads: a grant not given then is tried at every event.
            if let Some(address) =
                plugin.allow_net.iter().find(|address| !super::endpoint::is_host_and_port(address))
            {
                return Err(invalid(key("allow_net"), address, super::endpoint::HOST_AND_PORT.into()));
            }
            if let Some(name) = plugin.env.iter().find(|name| name.is_empty() || name.contains(['=', '\0'])) {
                let problem = "must name an environment variable: not empty, no `=` or NUL".into();
                return Err(invalid(key("env"), name, problem));
            }
            for (guest, value) in &plugin.dirs {
                let field = key(&format!("dirs.\"{guest}\""));
                if guest.is_empty() {
                    return Err(invalid(field, value, "the guest path must not be empty".into()));
                }
                let grant = super::DirGrant::parse(value);
                let reached = || host.own_dir_reached(Path::new(grant.path));
                let problem = grant.problem().map(str::to_owned).or_else(|| {
                    reached().map(|reached| format!("overlaps {reached}: no plugin may reach it"))
                });
                if let Some(problem) = problem {
                    return Err(invalid(field, value, problem));
                }
            }
        }
        let mut alerts = BTreeSet::new();
        for alert in &self.alerts {
            let key = |field: &str| format!("alert \"{}\".{field}", alert.name);
            if !alerts.insert(&alert.name) {
                return Err(invalid(key("name"), &alert.name, "two alerts share this name".into()));
            }
            alert.validate().map_err(|(field, value, problem)| invalid(key(field), &value, problem))?;
        }
        let mut routes = BTreeSet::new();
        for route in &self.routes {
            let key = |field: &str| format!("route \"{}\".{field}", route.name);
            // Its name labels its metrics, where "" is the series of messages no route took.
            if route.name.is_empty() {
                return Err(invalid("route.name".into(), &"", "must not be empty".into()));
            }
            if !routes.insert(&route.name) {
                return Err(invalid(key("name"), &route.name, "two routes share this name".into()));
            }
            if let Some(pattern) = &route.matches.topic {
                crate::router::TopicPattern::parse(pattern)
                    .map_err(|problem| invalid(key("match.topic"), pattern, problem))?;
            }
            let targets: Vec<&String> = route.to.iter().chain(&route.fan_out).collect();
            if targets.is_empty() || (route.to.is_some() && !route.fan_out.is_empty()) {
                let problem = "a route needs exactly one of `to` or `fan_out`".into();
                return Err(invalid(key("to"), &route.to.as_deref().unwrap_or(""), problem));
            }
            if let Some(twice) =
                route.fan_out.iter().enumerate().find(|(at, name)| route.fan_out[..*at].contains(name))
            {
                let problem = "names this destination twice: it would get each message twice".into();
                return Err(invalid(key("fan_out"), twice.1, problem));
            }
            if let Some(unknown) = targets.iter().find(|name| !destinations.contains(name.as_str())) {
                let field = if route.to.is_some() { "to" } else { "fan_out" };
                return Err(invalid(
                    key(field),
                    unknown,
                    format!("unknown destination (known: {})", known()),
                ));
            }
        }
        Ok(())
    }
}

/// The largest queue, batch, pool or in-flight limit the host or a destination may have.
const MAX_SIZE: usize = 1_000_000;

/// The largest message: 1 GiB (the wire layout counts in 32 bits).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// The most bytes the intake may hold: 1 TiB (in KiB, it fits a semaphore).
const MAX_QUEUE_BYTES: usize = 1 << 40;

/// The longest duration a destination setting may name: a day, in milliseconds.
const MAX_DURATION_MS: u64 = 86_400_000;

/// The most threads of one kind (pipeline workers, runtime threads) a host may be told to start.
pub const MAX_THREADS: usize = 1024;

/// The largest plugin file a host may be told to load: 1 GiB.
const MAX_PLUGIN_BYTES: u64 = 1 << 30;

impl super::DestinationConfig {
    /// Whether it is delivered to in the host's process (`memory`, `log`) rather than over a transport
    /// to endpoints.
    pub fn is_in_process(&self) -> bool {
        matches!(self.transport.as_str(), "memory" | "log")
    }

    /// Check the transport's own settings: (field, value, problem) when wrong.
    fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let networked = !self.is_in_process();
        if !networked && !self.options.is_empty() {
            let problem = format!("the {} destination has no options", self.transport);
            return Err(("options", inline_table(&self.options), problem));
        }
        if !networked && !self.endpoints.is_empty() {
            return Err((
                "endpoints",
                format!("{:?}", self.endpoints.iter().map(|e| shown(&e.address)).collect::<Vec<_>>()),
                "only network transports have endpoints".into(),
            ));
        }
        if let Some((field, value, users)) = self.unused_in_place() {
            let problem = format!("applies only to {users} destinations, not to a {} one", self.transport);
            return Err((field, value, problem));
        }
        for (at, endpoint) in self.endpoints.iter().enumerate() {
            let address = &endpoint.address;
            let shown_address = || shown(address).into_owned();
            // Listed twice, it would have two breakers and health states, but one pool and one
            // series of each metric, which both would write.
            if self.endpoints[..at].iter().any(|earlier| earlier.address == *address) {
                let problem = "listed twice: one address is one endpoint \
                               (for more of the traffic, give it a larger weight)";
                return Err(("endpoints", shown_address(), problem.into()));
            }
            if !super::endpoint::is_host_and_port(address) {
                return Err(("endpoints", shown_address(), super::endpoint::HOST_AND_PORT.into()));
            }
            if !(1..=super::MAX_WEIGHT).contains(&endpoint.weight) {
                let problem = format!("weight = {}: must be 1 to {}", endpoint.weight, super::MAX_WEIGHT);
                return Err(("endpoints", shown_address(), problem));
            }
        }
        let balancer = match self.balancer.parse::<crate::balance::BalancerConfig>() {
            Ok(balancer) => balancer,
            Err(err) => return Err(("balancer", self.balancer.clone(), err.to_string())),
        };
        if let Some(affinity) = &self.affinity {
            if !matches!(balancer, crate::balance::BalancerConfig::Affinity { .. }) {
                let problem =
                    format!("only the affinity:header:NAME balancer has it, not {:?}", self.balancer);
                return Err(("affinity", affinity.as_written(), problem));
            }
            affinity.validate()?;
        }
        self.validate_limits()
    }

    /// The first setting `self`, delivered in place, holds other than its default though it does
    /// not use it (only network destinations do, or for `queue.capacity` memory ones too): (field,
    /// value, the destinations that use it). Set to its default, a setting cannot be told from unset.
    fn unused_in_place(&self) -> Option<(&'static str, String, &'static str)> {
        if !self.is_in_process() {
            return None;
        }
        let unless_default = |value: String, default: String| (value != default).then_some(value);
        let section = |changed: toml::Table| (!changed.is_empty()).then(|| inline_table(&changed));
        let queue = super::QueueSettings::default();
        let network = [
            ("balancer", unless_default(self.balancer.clone(), super::model::default_balancer())),
            ("idempotent", self.idempotent.then(|| true.to_string())),
            (
                "timeout_ms",
                unless_default(self.timeout_ms.to_string(), super::model::default_timeout_ms().to_string()),
            ),
            ("retry", section(changed(&self.retry, &Default::default()))),
            ("breaker", section(changed(&self.breaker, &Default::default()))),
            ("pool", section(changed(&self.pool, &Default::default()))),
            (
                "health",
                self.health.as_ref().map(|health| inline_table(&changed(health, &Default::default()))),
            ),
            (
                "queue.timeout_ms",
                unless_default(self.queue.timeout_ms.to_string(), queue.timeout_ms.to_string()),
            ),
            (
                "queue.max_in_flight",
                unless_default(self.queue.max_in_flight.to_string(), queue.max_in_flight.to_string()),
            ),
        ];
        let capacity = match self.transport.as_str() {
            "log" => unless_default(self.queue.capacity.to_string(), queue.capacity.to_string()),
            _ => None,
        };
        let network = network.into_iter().find_map(|(field, value)| Some((field, value?, "network")));
        network.or_else(|| Some(("queue.capacity", capacity?, "network and memory")))
    }

    /// Check the queue and health settings.
    fn validate_limits(&self) -> Result<(), (&'static str, String, String)> {
        let at_least_one = |field, value: u64| match value {
            0 => Err((field, "0".to_owned(), "must be at least 1".to_owned())),
            _ => Ok(()),
        };
        // Sizes that become semaphores and buffers: at most a million.
        let size = |field, value: usize| match value {
            0 => Err((field, "0".to_owned(), "must be at least 1".to_owned())),
            1..=MAX_SIZE => Ok(()),
            _ => Err((field, value.to_string(), format!("must be at most {MAX_SIZE}"))),
        };
        // No attempt can be made in no time: each would be cut before it answered, after it was sent.
        at_least_one("timeout_ms", self.timeout_ms)?;
        at_least_one("retry.attempts", self.retry.attempts.into())?;
        if self.retry.max_ms < self.retry.base_ms {
            let problem = format!("must be at least retry.base_ms ({})", self.retry.base_ms);
            return Err(("retry.max_ms", self.retry.max_ms.to_string(), problem));
        }
        size("queue.capacity", self.queue.capacity)?;
        size("queue.max_in_flight", self.queue.max_in_flight)?;
        at_least_one("queue.timeout_ms", self.queue.timeout_ms)?;
        size("pool.max_size", self.pool.max_size)?;
        size("breaker.window", self.breaker.window)?;
        // An open breaker that lets the next attempt through at once re-tries a dead endpoint in a loop.
        at_least_one("breaker.open_ms", self.breaker.open_ms)?;
        if let Some(percent) = self.breaker.failure_percent.filter(|percent| !(1..=100).contains(percent)) {
            return Err(("breaker.failure_percent", percent.to_string(), "must be 1 to 100".into()));
        }
        at_least_one("pool.acquire_timeout_ms", self.pool.acquire_timeout_ms)?;
        if let Some(health) = &self.health {
            at_least_one("health.interval_ms", health.interval_ms)?;
            at_least_one("health.timeout_ms", health.timeout_ms)?;
            at_least_one("health.rise", health.rise.into())?;
            at_least_one("health.fall", health.fall.into())?;
            if let Err(problem) = super::UrlPath::new(&health.path) {
                return Err(("health.path", shown(&health.path).into_owned(), problem));
            }
        }
        self.validate_durations()
    }

    /// Check that no duration is past a day: added to an instant, a larger
    /// one could overflow, and no deadline that long means anything.
    fn validate_durations(&self) -> Result<(), (&'static str, String, String)> {
        let health = self.health.as_ref();
        let durations = [
            ("timeout_ms", Some(self.timeout_ms)),
            ("retry.base_ms", Some(self.retry.base_ms)),
            ("retry.max_ms", Some(self.retry.max_ms)),
            ("breaker.open_ms", Some(self.breaker.open_ms)),
            ("queue.timeout_ms", Some(self.queue.timeout_ms)),
            ("pool.idle_timeout_ms", Some(self.pool.idle_timeout_ms)),
            ("pool.max_lifetime_ms", Some(self.pool.max_lifetime_ms)),
            ("pool.acquire_timeout_ms", Some(self.pool.acquire_timeout_ms)),
            ("health.interval_ms", health.map(|health| health.interval_ms)),
            ("health.timeout_ms", health.map(|health| health.timeout_ms)),
        ];
        match durations.into_iter().find(|(_, ms)| ms.is_some_and(|ms| ms > MAX_DURATION_MS)) {
            Some((field, Some(ms))) => {
                Err((field, ms.to_string(), format!("must be at most {MAX_DURATION_MS} (a day)")))
            }
            _ => Ok(()),
        }
    }
}

/// The parser's message for `err` in `text`, with the line and column it points at but not the
/// line itself: a token mistyped in a rotation would be quoted whole into the log, the
/// `config-rejected` event and the admin API's answer.
pub(crate) fn parse_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    let Some(at) = err.span().map(|span| span.start.min(text.len())) else { return message.to_owned() };
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |start| start.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

/// The keys of `settings` (a section such as `retry`) whose values differ from `default`'s, with
/// their values.
fn changed<T: serde::Serialize>(settings: &T, default: &T) -> toml::Table {
    let table = |settings| toml::Table::try_from(settings).unwrap_or_default();
    let default = table(default);
    let mut settings = table(settings);
    settings.retain(|key, value| default.get(key) != Some(value));
    settings
}

impl super::HostSection {
    /// Which of the host's own directories `path` (a directory granted to a plugin, a file a
    /// destination writes) could reach, if any: one inside it, or one it is inside of. Said as
    /// `host.state_dir ("DIR"), WHAT IT HOLDS`.
    pub(crate) fn own_dir_reached(&self, path: &Path) -> Option<String> {
        let path = resolved(path);
        let cache_dir = (self.cache_dir.as_os_str() != "").then_some(&self.cache_dir);
        let own = [
            ("host.plugin_dir", Some(&self.plugin_dir), "the plugins the host runs"),
            ("host.cache_dir", cache_dir, "the native code the host runs and its key"),
            ("host.state_dir", Some(&self.state_dir), "the host's own state (dead letters, spool)"),
        ];
        own.into_iter().find_map(|(key, dir, what)| {
            let (dir, resolved_dir) = (dir?, resolved(dir?));
            let overlaps = path.starts_with(&resolved_dir) || resolved_dir.starts_with(&path);
            overlaps.then(|| format!("{key} ({dir:?}), {what}"))
        })
    }
}

/// `path` as the file system resolves it: absolute, each symbolic link and `..` of the part that
/// exists resolved, and `..` applied to the rest, so that neither hides where it leads.
pub(crate) fn resolved(path: &Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut resolved = std::path::PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => _ = resolved.pop(),
            std::path::Component::CurDir => {}
            other => resolved.push(other),
        }
        if let Ok(real) = resolved.canonicalize() {
            resolved = real;
        }
    }
    resolved
}
