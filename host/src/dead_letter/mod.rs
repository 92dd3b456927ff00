//! Dead letters: accepted messages that could not be delivered, labelled with
//! the reason, and the local file that keeps them while the dead-letter
//! destination is down.

mod file;
mod reason;
mod record;

pub use file::{Batch, DAMAGED_FILE_NAME, DeadLetterFile, FILE_NAME, FileError, Position};
pub use reason::{
    ATTEMPTS_HEADER, DeadLetterReason, LAST_ERROR_HEADER, MAX_HEADER_VALUE, REASON_CODE_HEADER,
    REASON_HEADER, ROUTE_HEADER, header_value,
};
pub use record::{DeadLetterRecord, RecordError};

/// What the dead-letter file holds now: [`Host::dead_letters`](crate::Host::dead_letters)
/// and `GET /v1/dead-letters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpooledLetters {
    /// The file.
    pub file: std::path::PathBuf,
    /// How many letters it holds.
    pub count: usize,
    /// The oldest of them, oldest first.
    pub letters: Vec<DeadLetterRecord>,
}
