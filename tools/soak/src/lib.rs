//! A soak test of the `switchyard` binary, driven from outside through its
//! documented interfaces only.
//!
//! [`run`] starts HTTP endpoints on 127.0.0.1 (delivery sinks and a
//! dead-letter sink), writes a config and a plugin directory, starts
//! `switchyard run` on them, and then for the set duration sends messages at
//! a steady rate while it swaps the plugin file, rewrites the config and
//! kills and restarts one endpoint. When the load stops it waits for the host
//! to settle every accepted message, stops the host with SIGTERM and
//! reconciles every 202's id against the ids the sinks received:
//!
//! ```text
//! senders ──POST /v1/messages/soak.orders──► switchyard ──► sinks (one killed now and then)
//!    │ 202 {"id"}                              │  ▲            └──► dead-letter sink
//!    ▼                                         │  └── plugin swaps, config rewrites
//! accepted ids ─────── reconciled against ─────┴────► ids received (x-sy-id)
//! ```

mod admin;
mod client;
mod load;
mod process;
mod report;
mod sink;
mod workdir;

pub use process::Usage;
pub use report::{Reconciliation, Report, Sample};
pub use workdir::ENDPOINT_IN_FLIGHT;

use anyhow::bail;
use load::Load;
use process::HostProcess;
use sink::{Sink, Tally};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use workdir::{ROUTE, Workdir};

/// What to run and how hard.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `switchyard` binary.
    pub binary: PathBuf,
    /// Two transform plugins; the plugin file alternates between them.
    pub plugins: [PathBuf; 2],
    /// How long to send for.
    pub duration: Duration,
    /// Messages per second.
    pub rate: u32,
    /// Keep-alive connections the messages are sent over.
    pub connections: usize,
    /// Delivery endpoints (the first is the one killed).
    pub endpoints: usize,
    /// How often the plugin file is replaced with the other version.
    pub swap_every: Duration,
    /// How often the config is rewritten (the route's priority toggled).
    pub reload_every: Duration,
    /// How often the first endpoint is killed.
    pub kill_every: Duration,
    /// How long it stays dead before it listens again.
    pub down_for: Duration,
    /// How often the host's RSS and CPU time are sampled (every 60 s, the
    /// samples are labelled `minute N`, otherwise `sample N`).
    pub sample_every: Duration,
    /// How long to wait after the load for every accepted message to settle.
    pub drain_timeout: Duration,
    /// Where to keep the host's output (in the temporary directory, deleted
    /// after the run, otherwise).
    pub host_log: Option<PathBuf>,
}

/// How long a config rewrite may take to show in `/v1/routes`.
const RELOAD_PATIENCE: Duration = Duration::from_secs(5);
/// How often a condition the driver waits for is checked.
const POLL: Duration = Duration::from_millis(50);

/// Runs the soak test described by `settings`; progress lines go to stderr.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let delivered = Arc::new(Tally::default());
    let dead = Arc::new(Tally::default());
    let mut sinks = Vec::new();
    for _ in 0..settings.endpoints.max(1) {
        sinks.push(Sink::start(delivered.clone()).await?);
    }
    let dead_sink = Sink::start(dead.clone()).await?;
    let addrs: Vec<_> = sinks.iter().map(|sink| sink.addr).collect();
    let plugins = [settings.plugins[0].as_path(), settings.plugins[1].as_path()];
    let workdir = Workdir::create(plugins, &addrs, dead_sink.addr)?;
    let log = settings.host_log.clone().unwrap_or_else(|| workdir.log());
    let host = HostProcess::start(&settings.binary, &workdir.config, &log).await?;
    // Shared by the plugin swaps and the config rewrites, never across an await.
    let workdir = Mutex::new(workdir);
    if !wait_for(Duration::from_secs(60), || admin::ready(host.admin)).await {
        bail!("the host is not ready after 60 s: see {}", log.display());
    }
    eprintln!(
        "soak: host up (ingress {}, admin {}), its output in {}",
        host.ingress,
        host.admin,
        log.display()
    );

    let load = Arc::new(Load::default());
    let start = Instant::now();
    let end = start + settings.duration;
    let settled = || delivered.unique() + dead.unique();
    let sample = |label: String| -> anyhow::Result<Sample> {
        let accepted = load.accepted_count();
        Ok(Sample { label, at: start.elapsed(), usage: host.usage()?, accepted, settled: settled() })
    };
    let mut samples = vec![sample("start".to_owned())?];

    let sending = load::send(host.ingress, settings.rate, (start, end), settings.connections, load.clone());
    let swapping = every(settings.swap_every, end, || async {
        workdir.lock().unwrap().swap_plugin()?;
        anyhow::Ok(true)
    });
    let admin = host.admin;
    let reloading = every(settings.reload_every, end, || async {
        let priority = {
            let mut workdir = workdir.lock().unwrap();
            workdir.toggle_priority()?;
            u64::from(workdir.priority)
        };
        let applied =
            || async move { admin::route_priority(admin, ROUTE).await.ok().flatten() == Some(priority) };
        anyhow::Ok(wait_for(RELOAD_PATIENCE, applied).await)
    });
    let killing = every(settings.kill_every, end, || async {
        sinks[0].kill();
        tokio::time::sleep(settings.down_for).await;
        sinks[0].restart().await?;
        anyhow::Ok(true)
    });
    let sampling = async {
        let mut period = 1;
        while start + settings.sample_every * period <= end {
            tokio::time::sleep_until(start + settings.sample_every * period).await;
            let unit = if settings.sample_every == Duration::from_secs(60) { "minute" } else { "sample" };
            let taken = sample(format!("{unit} {period}"))?;
            eprintln!("soak: {}", progress(&taken));
            samples.push(taken);
            period += 1;
        }
        anyhow::Ok(())
    };
    let (_, swaps, reloads, kills, sampled) = tokio::join!(sending, swapping, reloading, killing, sampling);
    let (swaps, reloads, kills) = (swaps?, reloads?, kills?);
    sampled?;

    let load_stopped = Instant::now();
    let accepted = load.accepted_count();
    let drained = wait_for(settings.drain_timeout, || std::future::ready(settled() >= accepted)).await;
    let drained_in = drained.then(|| load_stopped.elapsed());
    samples.push(sample("drained".to_owned())?);
    let events = admin::event_counts(host.admin).await.unwrap_or_default();
    let log_levels = host.levels();
    let stopped = host.stop().await?;

    Ok(Report {
        scenario: scenario(settings),
        messages: Reconciliation::of(&load.accepted(), &delivered.ids(), &dead.ids()),
        refused: load.refused(),
        dead_letter_codes: dead.labels(),
        transformed_by: delivered.labels(),
        swaps: swaps.0,
        reloads,
        kills: kills.0,
        events,
        log_levels,
        samples,
        drained_in,
        stopped,
    })
}

/// Runs `act` every `period` until `end`; returns how many times it ran and
/// how many of those it answered `true`.
async fn every<F, Fut>(period: Duration, end: Instant, mut act: F) -> anyhow::Result<(u64, u64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let mut counts = (0, 0);
    if period.is_zero() {
        return Ok(counts);
    }
    let mut next = Instant::now() + period;
    while next < end {
        tokio::time::sleep_until(next).await;
        counts.0 += 1;
        counts.1 += u64::from(act().await?);
        next += period;
    }
    Ok(counts)
}

/// Whether `check` answered `true` within `timeout` (checked every [`POLL`]).
async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn progress(sample: &Sample) -> String {
    format!(
        "{}: accepted {}, settled {}, RSS {:.1} MiB, CPU {:.1} s",
        sample.label,
        sample.accepted,
        sample.settled,
        sample.usage.rss_kib as f64 / 1024.0,
        sample.usage.cpu.as_secs_f64()
    )
}

fn scenario(settings: &Settings) -> String {
    let secs = |duration: Duration| format!("{} s", duration.as_secs_f64());
    format!(
        "{} at {} msg/s over {} connections to {} endpoints; plugin swap every {}, config reload every {}, \
         endpoint killed every {} for {}",
        secs(settings.duration),
        settings.rate,
        settings.connections,
        settings.endpoints,
        secs(settings.swap_every),
        secs(settings.reload_every),
        secs(settings.kill_every),
        secs(settings.down_for),
    )
}
