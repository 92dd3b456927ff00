//! The transports a host knows, by the name a destination's `transport` gives, and what each needs to
//! check a destination's `options` and build its transport.

use super::Transport;
use crate::config::{Config, ConfigError, DestinationConfig, EndpointConfig};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

/// Checks a destination's settings and builds its transport from them; one per registry entry.
pub trait TransportFactory: Send + Sync + 'static {
    /// Check `destination`'s `options` and endpoints (and, for a `scheme:NAME` entry, its `transport`
    /// string), reading the files they name once: what it gives builds the transport. Called once per
    /// destination whenever a configuration is checked or applied; an applied one builds its new or
    /// changed destinations from what this gave, never from a second reading of their settings.
    fn check(&self, destination: &DestinationConfig) -> Result<CheckedTransport, SettingError>;
}

/// A destination's transport settings as [`TransportFactory::check`] read them: its endpoints, a
/// digest of what its files held, what it must be the only destination to use, and how to build its
/// transport from them.
pub struct CheckedTransport {
    endpoints: Vec<EndpointConfig>,
    files_digest: Option<String>,
    sole_use: Option<SoleUse>,
    /// Where it writes in the file system, if it does (see [`TransportOptions::written_path`]).
    written_path: Option<PathBuf>,
    build: BuildTransport,
}

/// Something only one destination of a configuration may use, such as the file a `file` destination
/// writes: a second destination using it is refused ([`TransportRegistry::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoleUse {
    /// What is used, as compared: two destinations giving the same key use the same thing (for a
    /// file, its path made absolute, `.`, `..` and symbolic links resolved).
    pub key: String,
    /// What kind of thing it is, for the error: `file`.
    pub kind: &'static str,
    /// How the destination's settings name it, for the error: `path = "out.jsonl"`.
    pub written: String,
    /// Why two destinations cannot share it.
    pub why: &'static str,
}

/// What builds a [`CheckedTransport`]'s transport, once.
type BuildTransport = Box<dyn FnOnce(&TransportContext) -> Arc<dyn Transport> + Send>;

impl std::fmt::Debug for CheckedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let CheckedTransport { endpoints, files_digest, sole_use, written_path, build: _ } = self;
        let debug = &mut f.debug_struct("CheckedTransport");
        debug.field("endpoints", endpoints).field("files_digest", files_digest);
        debug.field("sole_use", sole_use).field("written_path", written_path).finish_non_exhaustive()
    }
}

impl CheckedTransport {
    /// Settings found good: the destination's `endpoints` (those it lists for a network peer, or ones
    /// the transport names itself: a pool of processes, a file), the `files_digest` of what its
    /// settings read from files they name (see [`files_digest`](CheckedTransport::files_digest)), and
    /// `build`, which makes its transport when a configuration holding it is applied.
    pub fn new(
        endpoints: Vec<EndpointConfig>,
        files_digest: Option<String>,
        build: impl FnOnce(&TransportContext) -> Arc<dyn Transport> + Send + 'static,
    ) -> CheckedTransport {
        let build = Box::new(build);
        CheckedTransport { endpoints, files_digest, sole_use: None, written_path: None, build }
    }

    /// The same, with what the destination must be the only one to use, if anything (see
    /// [`SoleUse`]).
    pub fn with_sole_use(self, sole_use: Option<SoleUse>) -> CheckedTransport {
        CheckedTransport { sole_use, ..self }
    }

    /// The same, with where the destination writes in the file system, if it does (see
    /// [`TransportOptions::written_path`]).
    pub fn with_written_path(self, written_path: Option<PathBuf>) -> CheckedTransport {
        CheckedTransport { written_path, ..self }
    }

    /// The destination's endpoints.
    pub fn endpoints(&self) -> &[EndpointConfig] {
        &self.endpoints
    }

    /// A digest of what the settings read from files they name, such as a CA file's certificates; `None`
    /// when they read none. A destination whose settings are unchanged is rebuilt when this differs
    /// from what it was built with.
    pub fn files_digest(&self) -> Option<&str> {
        self.files_digest.as_deref()
    }

    /// The destination's transport, built from the settings checked.
    pub fn build(self, context: &TransportContext) -> Arc<dyn Transport> {
        (self.build)(context)
    }
}

/// The [`CheckedTransport`] of each network destination of a configuration, by destination name.
pub type CheckedTransports = BTreeMap<String, CheckedTransport>;

/// What is wrong with a destination's settings for its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The destination's field, e.g. `options` or `endpoints`.
    pub field: &'static str,
    /// The offending value, as written.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The options of a [`typed`] transport, deserialized from a destination's `options = {..}` (make the
/// type `#[serde(deny_unknown_fields)]` so that a misspelt key is refused).
pub trait TransportOptions: DeserializeOwned + Send + 'static {
    /// The endpoints of a destination with these options that lists `listed`, or what is wrong with
    /// them. By default, those listed, and at least one: a transport to network peers.
    fn endpoints(&self, listed: &[EndpointConfig]) -> Result<Vec<EndpointConfig>, SettingError> {
        match listed.is_empty() {
            true => Err(SettingError {
                field: "endpoints",
                value: "\"[]\"".into(),
                problem: "a network destination needs at least one endpoint".into(),
            }),
            false => Ok(listed.to_vec()),
        }
    }

    /// A digest of what these options read from files they name (a CA file's certificates); see
    /// [`CheckedTransport::files_digest`]. By default `None`: nothing read.
    fn files_digest(&self) -> Option<String> {
        None
    }

    /// What a destination with these options must be the only one to use (see [`SoleUse`]). By
    /// default `None`: nothing.
    fn sole_use(&self) -> Option<SoleUse> {
        None
    }

    /// Where a destination with these options writes in the file system: the path it writes, or
    /// the directory in which the names of those it writes vary. None of the host's own directories
    /// (plugins, compile cache, state) may lie there, nor it in one of them
    /// ([`TransportRegistry::check`]). By default `None`: it writes nowhere.
    fn written_path(&self) -> Option<PathBuf> {
        None
    }
}

/// What a transport may use of its host.
#[derive(Debug, Clone)]
pub struct TransportContext {
    /// The largest message the host takes (`host.max_message_bytes`): a larger reply is refused.
    pub max_message_bytes: usize,
    /// The plugins serving, for `plugin:NAME` transports.
    pub plugins: Arc<crate::plugin::PluginRegistry>,
    /// The engine plugins run in.
    pub engine: Arc<crate::plugin::PluginEngine>,
    /// Where a transport plugin's calls, counts, faults and renewed instances are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The process groups the host's `subprocess` destinations started, killed at once by
    /// [`Host::kill_subprocesses`](crate::Host::kill_subprocesses).
    pub process_groups: Arc<super::ProcessGroups>,
}

/// A [`TransportFactory`] whose options are the type `O` and whose transport `build` makes.
pub struct Typed<O, F> {
    /// Shared with the [`CheckedTransport`]s it gives, which build with it.
    build: Arc<F>,
    options: PhantomData<fn() -> O>,
}

/// A factory for a transport with options of type `O`, built by `build(options, destination, context)`.
pub fn typed<O, F>(build: F) -> Typed<O, F>
where
    O: TransportOptions,
    F: Fn(O, &DestinationConfig, &TransportContext) -> Arc<dyn Transport> + Send + Sync + 'static,
{
    Typed { build: Arc::new(build), options: PhantomData }
}

impl<O: TransportOptions, F> Typed<O, F> {
    fn options(destination: &DestinationConfig) -> Result<O, SettingError> {
        let table = toml::Value::Table(destination.options.clone());
        O::deserialize(table).map_err(|err| SettingError {
            field: "options",
            value: crate::config::inline_table(&destination.options),
            problem: err.message().trim_end().to_owned(),
        })
    }
}

impl<O, F> TransportFactory for Typed<O, F>
where
    O: TransportOptions,
    F: Fn(O, &DestinationConfig, &TransportContext) -> Arc<dyn Transport> + Send + Sync + 'static,
{
    fn check(&self, destination: &DestinationConfig) -> Result<CheckedTransport, SettingError> {
        let options = Self::options(destination)?;
        let endpoints = options.endpoints(&destination.endpoints)?;
        let (files_digest, sole_use, written_path) =
            (options.files_digest(), options.sole_use(), options.written_path());
        let (build, destination) = (self.build.clone(), destination.clone());
        let build = move |context: &TransportContext| build(options, &destination, context);
        let checked = CheckedTransport::new(endpoints, files_digest, build).with_sole_use(sole_use);
        Ok(checked.with_written_path(written_path))
    }
}

/// The network transports a host knows, by name. A destination's `transport` is looked up whole
/// (`"http"`), then by its scheme (`"plugin:redis"` finds the entry `"plugin:"`). `memory` and `log`
/// are in-process destinations, not transports.
#[derive(Clone)]
pub struct TransportRegistry {
    factories: BTreeMap<String, Arc<dyn TransportFactory>>,
}

impl std::fmt::Debug for TransportRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportRegistry").field("names", &self.factories.keys()).finish()
    }
}

impl Default for TransportRegistry {
    fn default() -> TransportRegistry {
        TransportRegistry::builtin()
    }
}

impl TransportRegistry {
    /// The transports every host has.
    pub fn builtin() -> TransportRegistry {
        let mut registry = TransportRegistry { factories: BTreeMap::new() };
        registry.insert("file", typed(super::file::build));
        registry.insert("http", typed(super::http::build));
        registry.insert("nats", typed(super::nats::build));
        registry.insert("redis", typed(super::redis::build));
        registry.insert("subprocess", typed(super::subprocess::build));
        registry.insert("tcp", typed(super::tcp::build));
        registry.insert("websocket", typed(super::websocket::build));
        registry.insert("plugin:", super::plugin::PluginTransportFactory);
        registry
    }

    /// Register `factory` under `name` (a `scheme:` name ending in a colon serves every `scheme:NAME`),
    /// replacing any transport of that name.
    pub fn insert(&mut self, name: &str, factory: impl TransportFactory) {
        self.factories.insert(name.to_owned(), Arc::new(factory));
    }

    /// The factory serving `transport`, if any.
    pub fn get(&self, transport: &str) -> Option<&Arc<dyn TransportFactory>> {
        let by_scheme = || {
            let (scheme, _) = transport.split_once(':')?;
            self.factories.get(&format!("{scheme}:"))
        };
        self.factories.get(transport).or_else(by_scheme)
    }

    /// Check every network destination of `config` (`file` names it in errors): its transport is known,
    /// its options fit it, it writes in none of the host's own directories
    /// ([`TransportOptions::written_path`]), and it is the only one to use what it must use alone
    /// ([`SoleUse`]). What
    /// each destination's check read, by destination name, builds its transport when `config` is
    /// applied.
    pub fn check(&self, file: &str, config: &Config) -> Result<CheckedTransports, ConfigError> {
        let mut checked = CheckedTransports::new();
        // What the destinations checked so far use alone, by key: which destination, and how.
        let mut used: BTreeMap<String, (&str, SoleUse)> = BTreeMap::new();
        for destination in config.destinations.iter().filter(|destination| !destination.is_in_process()) {
            let invalid = |field: &str, value: String, problem: String| ConfigError::Invalid {
                file: file.to_owned(),
                key: format!("destination \"{}\".{field}", destination.name),
                value,
                problem,
            };
            let Some(factory) = self.get(&destination.transport) else {
                let known = self.factories.keys().map(|name| match name.ends_with(':') {
                    true => format!("{name}NAME"),
                    false => name.clone(),
                });
                let known: Vec<String> = known.chain(["log".into(), "memory".into()]).collect();
                let problem = format!("unknown transport (known: {})", known.join(", "));
                let transport = format!("{:?}", crate::config::shown(&destination.transport));
                return Err(invalid("transport", transport, problem));
            };
            let transport =
                factory.check(destination).map_err(|err| invalid(err.field, err.value, err.problem))?;
            if let Some(reached) =
                transport.written_path.as_deref().and_then(|p| config.host.own_dir_reached(p))
            {
                let problem = format!("what it writes may lie in {reached}: no destination may write there");
                return Err(invalid("options", crate::config::inline_table(&destination.options), problem));
            }
            if let Some(mine) = transport.sole_use.clone() {
                if let Some((other, SoleUse { kind, written, why, .. })) = used.get(&mine.key) {
                    let problem = format!("destination \"{other}\" uses the same {kind} ({written}): {why}");
                    return Err(invalid(
                        "options",
                        crate::config::inline_table(&destination.options),
                        problem,
                    ));
                }
                used.insert(mine.key.clone(), (&destination.name, mine));
            }
            checked.insert(destination.name.clone(), transport);
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM file's text holding one self-signed CA certificate.
    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.self_signed(&key).unwrap().pem()
    }

    /// What a transport built outside a host may use.
    fn context() -> TransportContext {
        TransportContext {
            max_message_bytes: 1 << 20,
            plugins: Arc::default(),
            engine: Arc::new(crate::plugin::PluginEngine::new(None).unwrap()),
            metrics: Arc::new(crate::metrics::Metrics::new(false)),
            process_groups: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_ca_file_emptied_after_the_check_builds_what_the_check_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem()).unwrap();
        let text = format!(
            "[[destination]]\nname = \"live\"\ntransport = \"websocket\"\nendpoints = [\"127.0.0.1:9\"]\n\
             options = {{ tls = true, ca_file = \"{}\" }}\n",
            ca_file.display()
        );
        let config = Config::from_toml("test.toml", &text).unwrap();
        let read_at_check = crate::transport::TlsClient::ca_file(&ca_file).unwrap().roots_digest().to_owned();
        let mut checked = TransportRegistry::builtin().check("test.toml", &config).unwrap();
        // A new CA copied over the file in place, caught half-way: it is empty for now.
        std::fs::write(&ca_file, "").unwrap();
        // The build used to read the options again, and panicked on the file's contents of now.
        let live = checked.remove("live").unwrap();
        assert_eq!(live.files_digest(), Some(read_at_check.as_str()), "the certificates the check read");
        let _transport = live.build(&context());
    }
}
