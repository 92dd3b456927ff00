//! `switchyard check FILE`.

use anyhow::bail;
use std::path::Path;
use switchyard::Config;
use switchyard::plugin::{PluginEngine, load_file};

pub fn check(file: &Path) -> anyhow::Result<()> {
    match file.extension().and_then(|ext| ext.to_str()) {
        Some("wasm") => {
            let engine = PluginEngine::new(None)?;
            let plugin = load_file(&engine, file, None)?;
            println!("ok: {} is a {} plugin, version {}", plugin.name, plugin.kind.as_str(), plugin.digest);
        }
        Some("toml") => {
            let config = Config::from_file(file)?;
            println!(
                "ok: {} routes, {} destinations, {} plugin settings",
                config.routes.len(),
                config.destinations.len(),
                config.plugins.len()
            );
        }
        _ => bail!("{}: expected a .wasm plugin or a .toml configuration", file.display()),
    }
    Ok(())
}
