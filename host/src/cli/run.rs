//! `switchyard run`.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use switchyard::{Config, Host, HttpIngress};

pub async fn run(
    config: Option<PathBuf>,
    plugins: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let (file, mut config) = match &config {
        Some(path) => (path.display().to_string(), Config::from_file(path)?),
        None => ("<built-in default>".to_owned(), Config::builtin()),
    };
    if let Some(dir) = plugins {
        config.host.plugin_dir = dir;
    }
    if let Some(addr) = listen {
        config.ingress.http.get_or_insert(switchyard::config::HttpIngressConfig { listen: addr }).listen =
            addr;
    }
    let http = config.ingress.http.clone();
    println!("switchyard: config {file}, plugins from {}", config.host.plugin_dir.display());
    let host = Host::builder().config(file, config).build().await?;
    for plugin in host.plugins() {
        println!(
            "switchyard: plugin {} loaded: {} {} in {:.1} ms",
            plugin.name,
            plugin.kind.as_str(),
            plugin.short_version(),
            plugin.compile_time.as_secs_f64() * 1e3
        );
    }
    for error in host.load_errors() {
        println!("switchyard: {error}");
    }
    let ingress = match http {
        Some(http) => Some(HttpIngress::bind(host.clone(), http.listen).await?),
        None => None,
    };
    if let Some(ingress) = &ingress {
        println!("switchyard: HTTP ingress listening on http://{}", ingress.local_addr());
    }
    let shutdown = async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    match ingress {
        Some(ingress) => ingress.serve(shutdown).await,
        None => shutdown.await,
    }
    host.shutdown().await;
    let stats = host.stats();
    println!("switchyard: stopped; {}", serde_json::to_string(&stats).context("stats")?);
    Ok(())
}
