//! The transports a host knows, by the name a destination's `transport` gives, and what each needs to
//! check a destination's `options` and build its transport.

use super::Transport;
use crate::config::{Config, ConfigError, DestinationConfig, EndpointConfig};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Builds the transport of a destination; one per registry entry.
pub trait TransportFactory: Send + Sync + 'static {
    /// Check `destination`'s `options` and endpoints (and, for a `scheme:NAME` entry, its `transport`
    /// string). Called whenever a configuration is validated, before any build.
    fn check(&self, destination: &DestinationConfig) -> Result<(), SettingError>;

    /// The endpoints of `destination` (which passed [`check`](TransportFactory::check)): those it lists
    /// for a network peer, or ones the transport names itself (a pool of processes, a file).
    fn endpoints(&self, destination: &DestinationConfig) -> Vec<EndpointConfig>;

    /// The transport of `destination`, which passed [`check`](TransportFactory::check); called when a
    /// topology takes a new or changed destination (an unchanged one keeps its transport).
    fn build(&self, destination: &DestinationConfig, context: &TransportContext) -> Arc<dyn Transport>;

    /// A digest of what the transport of `destination` (which passed
    /// [`check`](TransportFactory::check)) reads from files its settings name, such as a CA file's
    /// certificates. Called whenever a configuration is applied: a destination whose settings are
    /// unchanged is rebuilt when this differs from what it was built with. By default `None`:
    /// nothing read.
    fn files_digest(&self, _destination: &DestinationConfig) -> Option<String> {
        None
    }
}

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
pub trait TransportOptions: DeserializeOwned + 'static {
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
    /// [`TransportFactory::files_digest`]. By default `None`: nothing read.
    fn files_digest(&self) -> Option<String> {
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
}

/// A [`TransportFactory`] whose options are the type `O` and whose transport `build` makes.
pub struct Typed<O, F> {
    build: F,
    options: PhantomData<fn() -> O>,
}

/// A factory for a transport with options of type `O`, built by `build(options, destination, context)`.
pub fn typed<O, F>(build: F) -> Typed<O, F>
where
    O: TransportOptions,
    F: Fn(O, &DestinationConfig, &TransportContext) -> Arc<dyn Transport> + Send + Sync + 'static,
{
    Typed { build, options: PhantomData }
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
    fn check(&self, destination: &DestinationConfig) -> Result<(), SettingError> {
        Self::options(destination)?.endpoints(&destination.endpoints).map(drop)
    }

    fn endpoints(&self, destination: &DestinationConfig) -> Vec<EndpointConfig> {
        let options = Self::options(destination).expect("options are checked before endpoints are asked for");
        options.endpoints(&destination.endpoints).expect("endpoints are checked before they are asked for")
    }

    fn build(&self, destination: &DestinationConfig, context: &TransportContext) -> Arc<dyn Transport> {
        let options = Self::options(destination).expect("options are checked before a build");
        (self.build)(options, destination, context)
    }

    fn files_digest(&self, destination: &DestinationConfig) -> Option<String> {
        Self::options(destination).ok()?.files_digest()
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

    /// Check every network destination of `config` (`file` names it in errors): its transport is known
    /// and its options fit it.
    pub fn check(&self, file: &str, config: &Config) -> Result<(), ConfigError> {
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
                return Err(invalid("transport", format!("\"{}\"", destination.transport), problem));
            };
            factory.check(destination).map_err(|err| invalid(err.field, err.value, err.problem))?;
        }
        Ok(())
    }
}
