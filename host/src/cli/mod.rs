//! Command-line parsing and dispatch.

mod bench;
mod call;
mod check;
mod new;
mod progress;
mod run;
mod spool;
pub mod status;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Switchyard: a message-orchestration host extended by WebAssembly plugins.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on standard error; filter with `RUST_LOG` (e.g. `RUST_LOG=switchyard=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the host (with no --config: the built-in default).
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Plugin directory, overriding the configuration's.
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// HTTP ingress address, overriding the configuration's (port 0: any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Admin API address, overriding the configuration's (port 0: any free port).
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Validate a plugin (.wasm, or a native library) or a configuration (any other file, as `run
    /// --config` reads it) without running it.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Load a native library (the file, or a configuration's plugin) to read its ABI version and
        /// kind. Loading runs the library's own code (its initialisers): only for a library you
        /// trust. Without it the file is refused, and a configuration's native plugin left unopened.
        #[arg(long)]
        load_native: bool,
    },
    /// Work with one plugin.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Look into or empty the durable spool of a host that is not running.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Run the standard benchmark with the given header-filter and redact-transform plugins.
    Bench {
        /// The header-filter plugin (.wasm).
        #[arg(long)]
        filter: PathBuf,
        /// The redact-transform plugin (.wasm).
        #[arg(long)]
        transform: PathBuf,
        /// The header-filter plugin built as a native library, to measure too.
        #[arg(long, requires = "native_transform")]
        native_filter: Option<PathBuf>,
        /// The redact-transform plugin built as a native library, to measure too.
        #[arg(long, requires = "native_filter")]
        native_transform: Option<PathBuf>,
        /// The stamp-transform plugin (.wasm): measures the header filter + stamp pipeline on
        /// 256 B payloads and the transform at 64 KiB too.
        #[arg(long)]
        stamp: Option<PathBuf>,
        /// Messages per timed run of the routed pipeline.
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Also measure send-to-delivery latency for this many seconds at half the routed maximum
        /// (of the stamp pipeline when `--stamp` is given).
        #[arg(long, default_value_t = 0)]
        latency_secs: u64,
        /// The rate the latency run offers, msgs/s, instead of half the routed maximum: to see
        /// latency at other loads (a light one shows what the thread hand-offs cost alone).
        /// Needs `--latency-secs`.
        #[arg(long, value_parser = positive_rate, requires = "latency_secs")]
        latency_rate: Option<f64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Instead of timing, run the instruction-count guard's cases (one filter call, one transform
        /// call, one routed message through the plugins and one through their native twins, one
        /// message on the HTTP path) this many times each between marker functions, for callgrind
        /// (`scripts/instructions`), and between marker system calls, for strace (`scripts/syscalls`).
        #[arg(long, conflicts_with_all = ["native_filter", "json"])]
        instructions: Option<usize>,
    },
}

#[derive(Subcommand)]
pub enum SpoolCommand {
    /// Print what the spool holds, as JSON: depth, bytes, oldest age, messages per topic, damage
    /// (torn tails, corrupt bytes skipped; each also said on standard error), and whether a host
    /// holds it now. Changes nothing.
    Inspect {
        /// The host's state directory (`host.state_dir`), which holds `spool/`.
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Write every message the spool holds to standard output, one JSON object a line (oldest
    /// first, with its x-sy-id, topic, headers and payload), then remove them from the spool: for
    /// retiring a machine, or keeping what a host could not deliver. Refused while a host holds
    /// the spool; nothing is removed if writing fails. Standard output is fsync'd before the
    /// messages are removed when it is a regular file (a pipe or a terminal cannot be).
    Drain {
        /// The host's state directory (`host.state_dir`), which holds `spool/`.
        #[arg(long)]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Run one plugin on one message and print what it did.
    Call {
        /// The plugin (.wasm, or a native library).
        file: PathBuf,
        /// The message: {"topic": "...", "headers": {"k": "v"}, "payload": "..."}.
        #[arg(long)]
        message: String,
        /// A plugin config entry, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = call::parse_key_value)]
        config: Vec<(String, String)>,
        /// For a transport plugin: the endpoint (`host:port`) to open a
        /// connection to and send the message on (the only address it may reach).
        #[arg(long)]
        address: Option<String>,
        /// For a transport plugin: how long the open and the send may take together, in
        /// milliseconds, as a destination's `timeout_ms` (default 5000, a destination's default).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
        timeout_ms: Option<u64>,
        /// For a middleware plugin: the destination's reply to the request it
        /// forwards, passed back through its `on_reply` (a message as `--message`).
        #[arg(long)]
        reply: Option<String>,
    },
    /// Write a ready plugin project: manifest, source, a test and a README.
    New {
        /// The plugin's name (lowercase letters, digits and dashes).
        name: String,
        /// The kind of plugin.
        #[arg(long, value_enum)]
        kind: new::Kind,
        /// The language it is written in.
        #[arg(long, value_enum)]
        lang: new::Lang,
        /// The project directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The Switchyard `plugin-sdk` directory (default: the checkout this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// The runtime `switchyard run` serves on: `threads` threads named `switchyard-io`, or when
/// `threads` is 0 one a core (tokio's default, which `TOKIO_WORKER_THREADS` overrides). The threads it
/// starts later for blocking work (a reload, a dead-letter file's writes) are `switchyard-blocking`.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = match threads {
        0 => default_io_threads()?,
        threads => threads,
    };
    // The runtime starts its workers first, as it is built: every later thread is a blocking one.
    let started = std::sync::atomic::AtomicUsize::new(0);
    let name = move || match started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < threads {
        true => "switchyard-io".to_owned(),
        false => "switchyard-blocking".to_owned(),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    Ok(builder.worker_threads(threads).thread_name_fn(name).enable_all().build()?)
}

/// tokio's default size of a runtime, one thread a core unless `TOKIO_WORKER_THREADS` says
/// otherwise; a value that is not a number of threads is an error here, where tokio would panic.
fn default_io_threads() -> anyhow::Result<usize> {
    const VARIABLE: &str = "TOKIO_WORKER_THREADS";
    let Some(text) = std::env::var_os(VARIABLE) else {
        return Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    };
    let most = switchyard::config::MAX_THREADS;
    let threads =
        text.to_str().and_then(|text| text.parse().ok()).filter(|threads| (1..=most).contains(threads));
    threads.ok_or_else(|| {
        anyhow::anyhow!(
            "{VARIABLE}={text:?}: expected a number of runtime threads, 1 to {most} (as host.io_threads)"
        )
    })
}

impl Command {
    /// Run the command. Only `run` needs an async runtime; plugins are called
    /// on plain threads.
    pub fn execute(self) -> anyhow::Result<()> {
        match self {
            Command::Run { config, plugins, listen, admin } => {
                // The runtime is sized by the config, so the config is read before the host is
                // built, once: the host is built from what was read.
                let file =
                    config.map(|path| switchyard::Config::from_file(&path).map(|config| (path, config)));
                let file = file.transpose()?;
                let io_threads = match &file {
                    Some((_, config)) => config.host.io_threads,
                    None => switchyard::Config::builtin().host.io_threads,
                };
                let runtime = runtime(io_threads)?;
                let ran = runtime.block_on(run::run(file, plugins, listen, admin));
                // The host has stopped: what still runs is a plugin compile it no longer waits for
                // (minutes for a big plugin), or a write to the state directory its stop gave up
                // on (a dead letter's append a hung disk holds, for good), which the runtime's drop
                // would wait for.
                runtime.shutdown_background();
                ran
            }
            Command::Check { file, load_native } => check::check(&file, load_native),
            Command::Plugin {
                command: PluginCommand::Call { file, message, config, address, timeout_ms, reply },
            } => call::call(&file, &message, config, address.as_deref(), timeout_ms, reply.as_deref()),
            Command::Plugin { command: PluginCommand::New { name, kind, lang, dir, sdk } } => {
                new::new(&name, kind, lang, dir, sdk)
            }
            Command::Spool { command: SpoolCommand::Inspect { state_dir } } => spool::inspect(&state_dir),
            Command::Spool { command: SpoolCommand::Drain { state_dir } } => spool::drain(&state_dir),
            Command::Bench { filter, transform, stamp, instructions: Some(iterations), .. } => {
                let plugins =
                    switchyard::bench::BenchPlugins { filter, transform, native_libraries: None, stamp };
                bench::instructions(plugins, iterations)
            }
            Command::Bench {
                filter,
                transform,
                native_filter,
                native_transform,
                stamp,
                messages,
                latency_secs,
                latency_rate,
                json,
                ..
            } => {
                let native_libraries = native_filter.zip(native_transform);
                let plugins = switchyard::bench::BenchPlugins { filter, transform, native_libraries, stamp };
                let latency = std::time::Duration::from_secs(latency_secs);
                bench::bench(
                    plugins,
                    switchyard::bench::BenchSettings { messages, latency, latency_rate },
                    json,
                )
            }
        }
    }
}

/// A rate in messages a second: a finite number above zero.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("`{text}` is not a rate above zero (messages a second)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(extra: &[&str]) -> Result<Cli, clap::Error> {
        let args = ["switchyard", "bench", "--filter", "f.wasm", "--transform", "t.wasm"];
        Cli::try_parse_from(args.iter().chain(extra))
    }

    #[test]
    fn a_latency_rate_is_taken_only_with_a_latency_run_and_above_zero() {
        assert!(bench(&["--latency-secs", "5", "--latency-rate", "5000"]).is_ok());
        let alone = bench(&["--latency-rate", "5000"]).err().expect("refused without --latency-secs");
        assert!(alone.to_string().contains("--latency-secs"), "{alone}");
        for rate in ["0", "-0.5", "fast", "inf", "NaN"] {
            let error = bench(&["--latency-secs", "5", &format!("--latency-rate={rate}")]).err().expect(rate);
            assert!(error.to_string().contains("not a rate above zero"), "{rate}: {error}");
        }
    }
}
