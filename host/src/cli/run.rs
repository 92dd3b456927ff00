//! `switchyard run`. Status lines go to standard error, like logs (as log events under
//! `--log-format json`); standard output carries only what the `log` destination delivers.

use super::status;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use switchyard::admin::AdminServer;
use switchyard::{Config, ConfigChange, GrpcIngress, Host, HttpIngress, NatsIngress};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Run a host of the config `file` (its path, and the config read from it), or of the built-in
/// default without one.
pub async fn run(
    file: Option<(PathBuf, Config)>,
    plugins: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let source =
        file.as_ref().map_or("<built-in default>".to_owned(), |(path, _)| path.display().to_string());
    let mut builder = match file {
        Some((path, config)) => Host::builder().config_read_from(path, config),
        None => Host::builder().config("<built-in default>", Config::builtin()),
    };
    if let Some(dir) = plugins {
        builder = builder.plugin_dir(dir);
    }
    if let Some(listen) = listen {
        builder = builder.http_listen(listen);
    }
    if let Some(listen) = admin {
        builder = builder.admin_listen(listen);
    }
    // Handlers first: a start may take minutes compiling plugins, and a SIGHUP then (a log rotation,
    // a service manager's reload) killed the host; it is applied once the host runs. A SIGINT or
    // SIGTERM then stops the start.
    let mut signals = Signals::install()?;
    let notices = super::progress::compile_notices(super::progress::LONG_COMPILE_BYTES);
    let host = tokio::select! {
        built = builder.observe_compiles(notices).build() => built?,
        () = signals.stops.recv() => {
            status::info("switchyard: stopped before it started");
            return Ok(());
        }
    };
    status::info(format!(
        "switchyard: config {source}, plugins from {}",
        host.config().host.plugin_dir.display()
    ));
    for plugin in host.plugins() {
        status::info(escaped(format!(
            "switchyard: plugin {} loaded: {} {} in {:.1} ms",
            plugin.name,
            plugin.kind.as_str(),
            plugin.short_version(),
            plugin.compile_time.as_secs_f64() * 1e3
        )));
    }
    for error in host.load_errors() {
        status::warn(escaped(format!("switchyard: {error}")));
    }
    for problem in host.unready() {
        status::warn(escaped(format!("switchyard: warning: {problem}")));
    }
    for warning in super::check::missing_listener_warnings(&host.config()) {
        status::warn(format!("switchyard: warning: {warning}"));
    }
    for warning in super::check::memory_warnings(&host.config()) {
        status::warn(format!("switchyard: warning: {warning}"));
    }
    let ingress = match host.config().ingress.http.as_ref().map(|http| http.listen) {
        Some(addr) => Some(HttpIngress::bind(host.clone(), addr).await?),
        None => None,
    };
    if let Some(ingress) = &ingress {
        status::info(format!("switchyard: HTTP ingress listening on http://{}", ingress.local_addr()));
    }
    let grpc = match host.config().ingress.grpc.as_ref().map(|grpc| grpc.listen) {
        Some(addr) => Some(GrpcIngress::bind(host.clone(), addr).await?),
        None => None,
    };
    if let Some(grpc) = &grpc {
        status::info(format!("switchyard: gRPC ingress listening on {}", grpc.local_addr()));
    }
    let mut nats = Vec::new();
    for entry in &host.config().ingress.nats {
        let ingress = NatsIngress::connect(host.clone(), entry.clone()).await?;
        let group =
            entry.queue_group.as_ref().map(|group| format!(" in queue group {group}")).unwrap_or_default();
        match entry.jetstream() {
            Some(consumer) => status::info(format!(
                "switchyard: NATS ingress consuming JetStream stream {} as durable {} at {}",
                consumer.stream, consumer.durable, entry.url
            )),
            None => status::info(format!(
                "switchyard: NATS ingress subscribed to {} at {}{group}",
                entry.subjects.join(", "),
                entry.url
            )),
        }
        nats.push(ingress);
    }
    // The token comes from the config of the moment: a reload changes it live.
    let admin = match host.config().admin.as_ref().map(|admin| admin.listen) {
        Some(addr) => Some(AdminServer::bind(host.clone(), addr, None).await?),
        None => None,
    };
    if let Some(admin) = &admin {
        status::info(format!("switchyard: admin API listening on http://{}", admin.local_addr()));
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let servers = tokio::spawn({
        let until_stopped = until_stopped.clone();
        async move {
            let ingress = async {
                if let Some(ingress) = ingress {
                    ingress.serve(until_stopped()).await
                }
            };
            let admin = async {
                if let Some(admin) = admin {
                    admin.serve(until_stopped()).await
                }
            };
            let grpc = async {
                if let Some(grpc) = grpc {
                    grpc.serve(until_stopped()).await
                }
            };
            // A NATS ingress stops by unsubscribing and admitting what its server had sent.
            let nats =
                futures_util::future::join_all(nats.into_iter().map(|nats| nats.serve(until_stopped())));
            tokio::join!(ingress, nats, admin, grpc);
        }
    });
    let stops = signals.until_stopped(host.clone()).await;
    // The host stops at once, as the ingresses drain: its spool's start-up redelivery admits no
    // more, and a JetStream ingress waits for the host's stop to end, not a timer of its own.
    let stopped = host.shutdown_after(servers);
    let _ = stop.send(true);
    status::info("switchyard: stopping (a second SIGINT or SIGTERM stops at once)");
    tokio::spawn(stops.stop_now(host.clone()));
    if let Some(servers) = stopped.await {
        servers?;
    }
    let stats = host.stats();
    status::info(format!("switchyard: stopped; {}", serde_json::to_string(&stats).context("stats")?));
    Ok(())
}

/// The signals `run` obeys: SIGINT and SIGTERM stop (a second one at once), SIGHUP reloads.
/// SIGXFSZ is caught and ignored, so a write past the process's file size limit (`ulimit -f`)
/// fails with `EFBIG` (the file destination's attempt, a spool's put) instead of killing the host
/// and what it holds; a caught signal, unlike an ignored one, is reset to its default in the
/// processes the host starts.
struct Signals {
    stops: Stops,
    hangup: Signal,
}

/// The signals that stop `run`.
struct Stops {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        // Once installed, a handler stays for the life of the process: the stream can go.
        drop(signal(SignalKind::from_raw(libc::SIGXFSZ))?);
        let stops = Stops {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        };
        Ok(Signals { stops, hangup: signal(SignalKind::hangup())? })
    }

    /// Completes on SIGINT or SIGTERM, handing the stop signals back; reloads config and plugins on
    /// every SIGHUP (one received while the host started included), each on a task of its own: a
    /// stop signal during a reload (a plugin compile may take minutes) waited for it.
    async fn until_stopped(mut self, host: Host) -> Stops {
        loop {
            tokio::select! {
                () = self.stops.recv() => return self.stops,
                _ = self.hangup.recv() => drop(tokio::spawn(reload(host.clone()))),
            }
        }
    }
}

/// Reload `host`'s config and plugins, and say how it went.
async fn reload(host: Host) {
    match host.reload().await {
        Ok(ConfigChange::Applied) => status::info("switchyard: reloaded"),
        Ok(ConfigChange::Unchanged) => status::info("switchyard: reloaded (config unchanged)"),
        Err(err) => status::warn(format!("switchyard: reload refused: {err}")),
    }
}

impl Stops {
    /// Completes on SIGINT or SIGTERM (one received since the handlers were installed included).
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    /// Once a stop of `host` is under way: a second SIGINT or SIGTERM ends the process at once
    /// (exit status 130), as one who asks twice means; the stop's grace period may be long (up to
    /// a day), and a second Ctrl-C did nothing. What was under way is given up, as in a crash:
    /// with `durability = "spool"` the next start delivers it. The host's subprocess workers are
    /// killed first: in process groups of their own, they ran on after it.
    async fn stop_now(mut self, host: Host) {
        self.recv().await;
        status::warn(
            "switchyard: a second stop signal: exiting now, giving up what is under way (a spool keeps it for the next start)",
        );
        host.kill_subprocesses();
        std::process::exit(130);
    }
}

/// `line` with its control characters escaped: a line names files of the plugin directory, and one
/// named "x\nswitchyard: …" or holding a terminal's escape sequences must not forge lines of ours
/// or drive the operator's terminal.
fn escaped(line: String) -> String {
    line.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}
