//! `soak`: runs the `switchyard` binary under load with plugin swaps, config
//! reloads and endpoint faults, prints what happened to every accepted
//! message and the host's memory over time, and exits 1 when any was lost.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_soak::Settings;

/// Soak test of the switchyard binary.
#[derive(Parser)]
struct Args {
    /// The switchyard binary.
    #[arg(long)]
    binary: PathBuf,
    /// Two transform plugins (.wasm); the plugin file alternates between them.
    #[arg(long, num_args = 2, required = true)]
    plugins: Vec<PathBuf>,
    /// How long to send for, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Seconds between plugin swaps (0: none).
    #[arg(long, default_value_t = 1.0)]
    swap_every: f64,
    /// Seconds between config rewrites (0: none).
    #[arg(long, default_value_t = 10.0)]
    reload_every: f64,
    /// Seconds between kills of one endpoint (0: none).
    #[arg(long, default_value_t = 30.0)]
    kill_every: f64,
    /// Seconds a killed endpoint stays down.
    #[arg(long, default_value_t = 5.0)]
    down_for: f64,
    /// Keep-alive connections to send over.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Delivery endpoints.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Seconds between samples of the host's RSS and CPU time.
    #[arg(long, default_value_t = 60.0)]
    sample_every: f64,
    /// Seconds to wait after the load for every accepted message to settle.
    #[arg(long, default_value_t = 120.0)]
    drain_timeout: f64,
    /// Where to keep the host's output.
    #[arg(long)]
    host_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plugins = <[PathBuf; 2]>::try_from(args.plugins).map_err(|_| anyhow::anyhow!("give two plugins"))?;
    let settings = Settings {
        binary: args.binary,
        plugins,
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        rate: args.rate,
        connections: args.connections,
        endpoints: args.endpoints,
        swap_every: Duration::from_secs_f64(args.swap_every),
        reload_every: Duration::from_secs_f64(args.reload_every),
        kill_every: Duration::from_secs_f64(args.kill_every),
        down_for: Duration::from_secs_f64(args.down_for),
        sample_every: Duration::from_secs_f64(args.sample_every),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        host_log: args.host_log,
    };
    let report = switchyard_soak::run(&settings).await.context("soak run")?;
    print!("{report}");
    if report.messages.lost > 0 {
        eprintln!("soak: {} accepted messages were lost", report.messages.lost);
        std::process::exit(1);
    }
    Ok(())
}
