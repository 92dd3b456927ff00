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
    let mut builder = match &config {
        Some(path) => Host::builder().config_file(path)?,
        None => Host::builder().config("<built-in default>", Config::builtin()),
    };
    if let Some(dir) = plugins {
        builder = builder.plugin_dir(dir);
    }
    let host = builder.build().await?;
    let source = config.map_or("<built-in default>".to_owned(), |path| path.display().to_string());
    println!("switchyard: config {source}, plugins from {}", host.config().host.plugin_dir.display());
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
    let http = listen.or(host.config().ingress.http.as_ref().map(|http| http.listen));
    let ingress = match http {
        Some(addr) => Some(HttpIngress::bind(host.clone(), addr).await?),
        None => None,
    };
    if let Some(ingress) = &ingress {
        println!("switchyard: HTTP ingress listening on http://{}", ingress.local_addr());
    }
    let shutdown = stop_signal(host.clone());
    match ingress {
        Some(ingress) => ingress.serve(shutdown).await,
        None => shutdown.await,
    }
    host.shutdown().await;
    let stats = host.stats();
    println!("switchyard: stopped; {}", serde_json::to_string(&stats).context("stats")?);
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM; reloads config and plugins on every SIGHUP.
async fn stop_signal(host: Host) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("a SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = terminate.recv() => return,
            _ = hangup.recv() => match host.reload().await {
                Ok(()) => println!("switchyard: reloaded"),
                Err(err) => println!("switchyard: reload refused: {err}"),
            },
        }
    }
}
