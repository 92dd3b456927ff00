//! `switchyard check FILE`.

use anyhow::bail;
use std::path::Path;
use switchyard::Config;
use switchyard::config::{HostSection, IngressSection, StageRef};
use switchyard::plugin::{PluginEngine, PluginFormat, load_file};
use switchyard::reload::ConfiguredPlugin;
use switchyard::transport::TransportRegistry;

/// Check `file`: a plugin or a config. A native library, the file or a config's plugin, is loaded
/// only when `load_native`: loading one runs its code, and an operator vetting an untrusted file
/// must not run it by checking it. For the same reason a config's plugins are never loaded from its
/// `cache_dir` (native code; the user's own compile cache serves instead), and are tried with their
/// grants withheld.
pub fn check(file: &Path, load_native: bool) -> anyhow::Result<()> {
    if let Some(format) = PluginFormat::of(file) {
        if format == PluginFormat::Native && !load_native {
            bail!(
                "{}: loading a native library runs its code, so check loads one only when told: \
                 switchyard check --load-native {} (a library you trust)",
                file.display(),
                file.display()
            );
        }
        let engine = engine(HostSection::default().compile_cache_dir().as_deref())?;
        let plugin = load_file(&engine, file, None)?;
        let native = if format == PluginFormat::Native { "native " } else { "" };
        println!(
            "ok: {} is a {native}{} plugin, version {}",
            plugin.name,
            plugin.kind.as_str(),
            plugin.digest
        );
        return Ok(());
    }
    // Any other file is a config, whatever its name, as `run --config` reads it.
    let config = Config::from_file(file)?;
    TransportRegistry::builtin().check(&file.display().to_string(), &config)?;
    println!(
        "ok: {} routes, {} destinations, {} plugin settings",
        config.routes.len(),
        config.destinations.len(),
        config.plugins.len()
    );
    let warnings =
        listener_warnings(&config).into_iter().chain(memory_warnings(&config)).chain(alert_warnings(&config));
    for warning in warnings.chain(plugin_warnings(&config, load_native)?) {
        println!("warning: {warning}");
    }
    Ok(())
}

/// An engine that compiles with the compile cache in `cache_dir` (none when `None`), telling of
/// every compile.
pub(super) fn engine(cache_dir: Option<&Path>) -> anyhow::Result<PluginEngine> {
    let mut engine = PluginEngine::new(cache_dir)?;
    engine.observe_compiles(super::progress::compile_notices(0));
    Ok(engine)
}

/// Listeners a `run` of `config` lacks, and those reachable from other machines without a token to
/// guard them.
fn listener_warnings(config: &Config) -> Vec<String> {
    let mut warnings = missing_listener_warnings(config);
    if let Some(http) = config.ingress.http.as_ref().filter(|http| !http.listen.ip().is_loopback()) {
        warnings.push(format!(
            "ingress.http.listen = {}: any machine that reaches it can send messages",
            http.listen
        ));
    }
    let unguarded = config
        .admin
        .as_ref()
        .filter(|admin| !admin.listen.ip().is_loopback() && admin.token.as_deref().is_none_or(str::is_empty));
    if let Some(admin) = unguarded {
        warnings.push(format!(
            "admin.listen = {}: not loopback and no [admin] token: `run` refuses to start unless {} is set",
            admin.listen,
            switchyard::admin::TOKEN_ENV
        ));
    }
    warnings
}

/// Listeners a `run` of `config` lacks, which only a restart adds: with no ingress nothing can send
/// to the host, with no admin API nothing can watch it.
pub(super) fn missing_listener_warnings(config: &Config) -> Vec<String> {
    // Every ingress named: one added to the config is a compile error here until it is weighed.
    let IngressSection { http, nats, grpc } = &config.ingress;
    let mut warnings = Vec::new();
    if http.is_none() && grpc.is_none() && nats.is_empty() {
        warnings.push(
            "no [ingress.http], [ingress.grpc] or [[ingress.nats]]: nothing can send to this host, and adding one takes a restart"
                .to_owned(),
        );
    }
    if config.admin.is_none() {
        warnings.push(
            "no [admin]: nothing can read this host's health, metrics or plugins, nor reload it over HTTP, and adding it takes a restart"
                .to_owned(),
        );
    }
    warnings
}

/// Memory destinations, which nothing reads under `switchyard run`: they
/// are for a program that embeds the host.
pub(super) fn memory_warnings(config: &Config) -> Vec<String> {
    let memory = config.destinations.iter().filter(|destination| destination.transport == "memory");
    memory
        .map(|destination| {
            format!(
                "destination \"{}\": transport \"memory\" has no reader under `switchyard run`: once it holds its queue.capacity ({}) messages, deliveries to it wait, and with them the pipeline workers",
                destination.name, destination.queue.capacity
            )
        })
        .collect()
}

/// Alert rules selecting a route, destination or endpoint the config does not have: until a reload
/// adds it, a rule reads nothing of it (a counter 0, a gauge no value), which is likely a misspelling.
fn alert_warnings(config: &Config) -> Vec<String> {
    let routes: Vec<&str> = config.routes.iter().map(|route| route.name.as_str()).collect();
    let destinations: Vec<&str> =
        std::iter::once("log").chain(config.destinations.iter().map(|dest| dest.name.as_str())).collect();
    let endpoints: Vec<&str> = config
        .destinations
        .iter()
        .flat_map(|destination| destination.endpoints.iter().map(|endpoint| endpoint.address.as_str()))
        .collect();
    let mut warnings = Vec::new();
    for alert in &config.alerts {
        let Ok(condition) = alert.condition() else { continue };
        for (label, value) in &condition.reading.selector().labels {
            let known = match label.as_str() {
                // The series of the messages no route took.
                "route" if value.is_empty() => continue,
                "route" => &routes,
                "destination" => &destinations,
                "endpoint" => &endpoints,
                _ => continue,
            };
            if !known.contains(&value.as_str()) {
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                warnings.push(format!(
                    "alert \"{}\": {label} \"{value}\" is no {label} of this config ({label}s: {known}): the rule reads nothing of it until a reload adds it",
                    alert.name,
                ));
            }
        }
    }
    warnings
}

/// What would keep the routes' named stages and the destinations' `plugin:NAME` transports and
/// balancers (whose place p2c would take) from running with the plugin directory as it is now: a
/// missing file, a plugin of another kind, one that does not load (a native library is opened
/// only when `load_native`; else it is said to be left unopened). Compiled with the user's own
/// compile cache, as `check FILE.wasm` is, never the config's `cache_dir`: that is whoever wrote the
/// config's, and what a cache holds is native code that would run.
fn plugin_warnings(config: &Config, load_native: bool) -> anyhow::Result<Vec<String>> {
    let dir = &config.host.plugin_dir;
    let engine = engine(HostSection::default().compile_cache_dir().as_deref())?;
    let stages = config.routes.iter().flat_map(|route| {
        route.stages.iter().filter_map(move |stage| match stage {
            StageRef::Named { kind, name } => {
                let at = format!("route \"{}\": stage \"{}:{name}\"", route.name, kind.as_str());
                Some((at, kind.as_str(), name.as_str()))
            }
            _ => None,
        })
    });
    let destinations = config.destinations.iter().flat_map(|destination| {
        let uses = [("transport", &destination.transport), ("balancer", &destination.balancer)];
        uses.into_iter().filter_map(move |(kind, value)| {
            let name = value.strip_prefix("plugin:")?;
            Some((format!("destination \"{}\": {kind} \"{value}\"", destination.name), kind, name))
        })
    });
    let mut warnings = Vec::new();
    for (at, kind, name) in stages.chain(destinations) {
        let file =
            |format: PluginFormat| dir.join(format!("{name}.{}", format.extension())).display().to_string();
        // As `run` would load it: its size limit, its sidecar, native libraries only when trusted.
        match switchyard::reload::load_as_configured(&engine, name, config, load_native) {
            Ok(ConfiguredPlugin::Absent) => {
                warnings.push(format!("{at}: no plugin file {}", file(PluginFormat::Wasm)))
            }
            Ok(ConfiguredPlugin::NativeUnopened { file }) => warnings.push(format!(
                "{at}: {} is a native library, not opened: opening one runs its code; pass --load-native to check it (a library you trust)",
                file.display()
            )),
            Ok(ConfiguredPlugin::Loaded(plugin)) if plugin.kind.as_str() == kind => {}
            Ok(ConfiguredPlugin::Loaded(plugin)) => {
                let format = if plugin.is_native() { PluginFormat::Native } else { PluginFormat::Wasm };
                warnings.push(format!("{at}: {} is a {} plugin", file(format), plugin.kind.as_str()))
            }
            Err(err) => warnings.push(format!("{at}: {err}")),
        }
    }
    Ok(warnings)
}
