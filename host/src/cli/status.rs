//! Status lines: what the commands tell on standard error beside their logs (where `run` listens,
//! how a reload went, a compile under way, the error a command ends with). As text, lines of their
//! own; under `--log-format json`, log events written by the same JSON layer as every other log
//! line (the line as the event's `message`), so that standard error is one JSON object a line.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Whether status lines are log events (`--log-format json`); set once, as the logs are set up.
static AS_LOG_EVENTS: AtomicBool = AtomicBool::new(false);

/// Write the status lines that follow as `format` asks.
pub fn set_format(format: super::LogFormat) {
    AS_LOG_EVENTS.store(matches!(format, super::LogFormat::Json), Relaxed);
}

/// Tell `line`: how things go.
pub fn info(line: impl Display) {
    match AS_LOG_EVENTS.load(Relaxed) {
        true => tracing::info!("{line}"),
        false => eprintln!("{line}"),
    }
}

/// Tell `line`: something refused or not as it should be, the host going on.
pub fn warn(line: impl Display) {
    match AS_LOG_EVENTS.load(Relaxed) {
        true => tracing::warn!("{line}"),
        false => eprintln!("{line}"),
    }
}

/// Tell `line`: why the command failed.
pub fn error(line: impl Display) {
    match AS_LOG_EVENTS.load(Relaxed) {
        true => tracing::error!("{line}"),
        false => eprintln!("{line}"),
    }
}
