//! The transports a host knows, by the name a destination's `transport` gives, and what each needs to
//! check a destination's `options` and build its transport.

use super::Transport;
use crate::config::{Config, ConfigError, DestinationConfig};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Builds the transport of a destination; one per registry entry.
pub trait TransportFactory: Send + Sync + 'static {
    /// Check `destination`'s `options` (and, for a `scheme:NAME` entry, its `transport` string): the
    /// problem when they are wrong. Called whenever a configuration is validated, before any build.
    fn check(&self, destination: &DestinationConfig) -> Result<(), String>;

    /// The transport of `destination`, whose options passed [`check`](TransportFactory::check); called
    /// when a topology takes a new or changed destination (an unchanged one keeps its transport).
    fn build(&self, destination: &DestinationConfig, context: &TransportContext) -> Arc<dyn Transport>;
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
}

/// A [`TransportFactory`] whose options are the type `O` (deserialized from `options = {..}`; make it
/// `#[serde(deny_unknown_fields)]` so that a misspelt key is refused) and whose transport `build` makes.
pub struct Typed<O, F> {
    build: F,
    options: PhantomData<fn() -> O>,
}

/// A factory for a transport with options of type `O`, built by `build(options, destination, context)`.
pub fn typed<O, F>(build: F) -> Typed<O, F>
where
    O: DeserializeOwned + 'static,
    F: Fn(O, &DestinationConfig, &TransportContext) -> Arc<dyn Transport> + Send + Sync + 'static,
{
    Typed { build, options: PhantomData }
}

impl<O, F> Typed<O, F>
where
    O: DeserializeOwned,
{
    fn options(destination: &DestinationConfig) -> Result<O, String> {
        let table = toml::Value::Table(destination.options.clone());
        O::deserialize(table).map_err(|err| err.message().trim_end().to_owned())
    }
}

impl<O, F> TransportFactory for Typed<O, F>
where
    O: DeserializeOwned + 'static,
    F: Fn(O, &DestinationConfig, &TransportContext) -> Arc<dyn Transport> + Send + Sync + 'static,
{
    fn check(&self, destination: &DestinationConfig) -> Result<(), String> {
        Self::options(destination).map(drop)
    }

    fn build(&self, destination: &DestinationConfig, context: &TransportContext) -> Arc<dyn Transport> {
        let options = Self::options(destination).expect("options are checked before a build");
        (self.build)(options, destination, context)
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
        registry.insert("http", typed(super::http::build));
        registry.insert("tcp", typed(super::tcp::build));
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
            if destination.transport.ends_with(':') {
                let problem = format!("names no NAME, as in \"{}NAME\"", destination.transport);
                return Err(invalid("transport", format!("\"{}\"", destination.transport), problem));
            }
            factory.check(destination).map_err(|problem| {
                invalid("options", crate::config::inline_table(&destination.options), problem)
            })?;
        }
        Ok(())
    }
}
