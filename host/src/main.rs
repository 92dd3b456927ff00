//! The `switchyard` command: run a host, check plugins and configs, call a
//! plugin once, benchmark.

mod cli;

use clap::Parser;
use std::io::IsTerminal;

/// jemalloc returns freed pages to the system on a timer; glibc's per-thread arenas kept a long-running host's
/// RSS growing by a sixth over ten minutes of steady traffic (`scripts/soak`, see DESIGN.md).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    // Colours only for a person at a terminal, never into files or pipes.
    let colours = std::io::stderr().is_terminal();
    let logs =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours);
    match args.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().init(),
    }
    cli::status::set_format(args.log_format);
    match args.command.execute() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            cli::status::error(format!("error: {err:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
