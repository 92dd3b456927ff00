//! A plugin as its files describe it: `NAME.wasm`, and the optional sidecar
//! `NAME.toml` holding its settings (which win over the main config's).

use crate::config::{Config, ConfigError, PluginConfig};
use crate::plugin::LoadError;
use crate::regular_file::{self, Links};
use std::path::Path;

/// What the plugin directory says about one plugin name.
pub(crate) enum Source {
    /// The file is there and settled.
    Present { bytes: Vec<u8>, config: PluginConfig },
    /// There is no such file (any more).
    Absent,
    /// The file changed while it was read (a copy in progress): wait for the
    /// next change event.
    Unsettled,
}

/// Read plugin `name` from `dir`, with its effective settings under `config`.
pub(crate) fn read_source(dir: &Path, name: &str, config: &Config) -> Result<Source, LoadError> {
    let path = dir.join(format!("{name}.wasm"));
    let read_error = |error: std::io::Error| LoadError::Read {
        name: name.to_owned(),
        path: path.display().to_string(),
        error,
    };
    let bytes = match regular_file::read(&path, config.host.max_plugin_bytes, Links::WithinDirectory) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Source::Unsettled),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Source::Absent),
        Err(err) => return Err(read_error(err)),
    };
    Ok(Source::Present { bytes, config: plugin_config(dir, name, config)? })
}

/// The settings of plugin `name`: its sidecar if present, else its
/// `[[plugin]]` entry, else the defaults.
pub(crate) fn plugin_config(dir: &Path, name: &str, config: &Config) -> Result<PluginConfig, LoadError> {
    let sidecar = dir.join(format!("{name}.toml"));
    let file = sidecar.display().to_string();
    match Config::read_text(&file, &sidecar, Links::WithinDirectory) {
        Ok(Some(text)) => parse_sidecar(&file, name, &text)
            .map_err(|error| LoadError::Settings { name: name.to_owned(), reason: error.to_string() }),
        Ok(None) => Err(LoadError::Settings {
            name: name.to_owned(),
            reason: ConfigError::Unsettled { file }.to_string(),
        }),
        Err(ConfigError::Read { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => Ok(config
            .plugins
            .iter()
            .find(|plugin| plugin.name == name)
            .cloned()
            .unwrap_or_else(|| PluginConfig { name: name.to_owned(), ..PluginConfig::default() })),
        Err(err) => Err(LoadError::Settings { name: name.to_owned(), reason: err.to_string() }),
    }
}

/// A sidecar holds the keys of a `[[plugin]]` entry except `name`.
fn parse_sidecar(file: &str, name: &str, text: &str) -> Result<PluginConfig, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse { file: file.to_owned(), message };
    let mut table: toml::Table =
        toml::from_str(text).map_err(|err| parse_error(err.to_string().trim_end().to_owned()))?;
    if table.contains_key("name") {
        return Err(parse_error("`name` comes from the file name; remove it".into()));
    }
    table.insert("name".into(), toml::Value::String(name.to_owned()));
    let config: PluginConfig =
        table.try_into().map_err(|err: toml::de::Error| parse_error(err.message().to_owned()))?;
    let mut check = Config::default();
    check.plugins.push(config.clone());
    check.validate(file, &[])?;
    Ok(config)
}
