//! `transport = "plugin:NAME"`: its options, checked with the rest of the
//! config, and the [`PluginTransport`] a destination gets.

use super::{PluginTransport, PluginTransportConfig};
use crate::config::DestinationConfig;
use crate::plugin::MAX_SOCKETS;
use crate::transport::{CheckedTransport, SettingError, Transport, TransportContext, TransportFactory};
use std::sync::Arc;
use std::time::Duration;

/// Lanes (plugin threads, one instance each) per endpoint when
/// `options.lanes` is not set: one per core of a small machine.
pub const DEFAULT_LANES: usize = 2;

/// Most lanes a destination may ask for.
const MAX_LANES: usize = 64;

/// Connections to an endpoint one lane holds at most: its instance's sockets, but one kept for a
/// health probe. A new connection (or probe) takes the endpoint's lane holding the fewest sockets,
/// so a pool within this many per lane finds one with room (of a plugin keeping one socket a
/// connection).
const LANE_CONNECTIONS: usize = MAX_SOCKETS - 1;

/// `options = {..}` of a `plugin:NAME` destination.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginOptions {
    /// How many calls of the plugin to each endpoint run at once: one
    /// thread and one instance each, per endpoint (default [`DEFAULT_LANES`],
    /// at most 64). A plugin waiting on its socket holds its lane until it
    /// answers or its deadline passes; other endpoints' lanes go on.
    pub lanes: usize,
}

impl Default for PluginOptions {
    fn default() -> PluginOptions {
        PluginOptions { lanes: DEFAULT_LANES }
    }
}

/// The registry entry `plugin:`, serving every `plugin:NAME`: a destination
/// of network endpoints (at least one) that its plugin reaches.
#[derive(Debug, Default)]
pub struct PluginTransportFactory;

impl PluginTransportFactory {
    /// The plugin's name (`NAME` of `plugin:NAME`) and the options.
    fn settings(destination: &DestinationConfig) -> Result<(&str, PluginOptions), SettingError> {
        let name = destination.transport.strip_prefix("plugin:").unwrap_or_default();
        if let Some(problem) = crate::config::plugin_name_problem(name) {
            return Err(SettingError {
                field: "transport",
                value: format!("{:?}", crate::config::shown(&destination.transport)),
                problem: format!("{problem} (\"plugin:NAME\" names NAME.wasm in the plugin directory)"),
            });
        }
        let invalid = |problem: String| SettingError {
            field: "options",
            value: crate::config::inline_table(&destination.options),
            problem,
        };
        let table = toml::Value::Table(destination.options.clone());
        let options: PluginOptions = serde::Deserialize::deserialize(table)
            .map_err(|err| invalid(err.message().trim_end().to_owned()))?;
        if !(1..=MAX_LANES).contains(&options.lanes) {
            return Err(invalid(format!("lanes = {}: must be 1 to {MAX_LANES}", options.lanes)));
        }
        let most_connections = LANE_CONNECTIONS * options.lanes;
        if destination.pool.max_size > most_connections {
            return Err(SettingError {
                field: "pool.max_size",
                value: destination.pool.max_size.to_string(),
                problem: format!(
                    "more connections to an endpoint than {} lanes (options.lanes) hold, at most \
                     {most_connections}: a lane holds at most {MAX_SOCKETS} sockets, one of them kept \
                     for a health probe",
                    options.lanes
                ),
            });
        }
        if destination.endpoints.is_empty() {
            return Err(SettingError {
                field: "endpoints",
                value: "\"[]\"".into(),
                problem: "a plugin transport needs at least one endpoint to reach".into(),
            });
        }
        Ok((name, options))
    }
}

impl TransportFactory for PluginTransportFactory {
    fn check(&self, destination: &DestinationConfig) -> Result<CheckedTransport, SettingError> {
        let (plugin, options) = PluginTransportFactory::settings(destination)?;
        let (plugin, destination) = (plugin.to_owned(), destination.clone());
        let endpoints = destination.endpoints.clone();
        let build = move |context: &TransportContext| -> Arc<dyn Transport> {
            let config = PluginTransportConfig {
                destination: destination.name.clone(),
                plugin,
                endpoints: destination.endpoints.iter().map(|endpoint| endpoint.address.clone()).collect(),
                timeout: Duration::from_millis(destination.timeout_ms),
                pool: (&destination.pool).into(),
                lanes: options.lanes,
                max_reply_bytes: context.max_message_bytes,
            };
            let (plugins, engine, metrics) =
                (context.plugins.clone(), context.engine.clone(), context.metrics.clone());
            Arc::new(PluginTransport::new(config, plugins, engine, metrics))
        };
        Ok(CheckedTransport::new(endpoints, None, build))
    }
}
