//! Dead letters: accepted messages that could not be delivered, labelled with
//! the reason, and the local file that keeps them while the dead-letter
//! destination is down.

mod file;
mod position;
mod reason;
mod record;

pub use file::{Batch, DAMAGED_FILE_NAME, DeadLetterFile, FILE_NAME, FileError, Listing};
pub use position::{Position, PositionError};
pub use reason::{
    ATTEMPTS_HEADER, DeadLetterReason, LAST_ERROR_HEADER, MAX_HEADER_VALUE, REASON_CODE_HEADER,
    REASON_HEADER, ROUTE_HEADER, header_value,
};
pub use record::{DeadLetterRecord, RecordError};

/// The most bytes of letters (as lines of the file) one look at the file holds, but for a single
/// letter longer on its own: [`SpooledLetters::letters`] stop short of the `limit` asked for
/// where the next letter would take them past it.
pub const LISTED_BYTES: usize = 4 << 20;

/// What the dead-letter file holds now: [`Host::dead_letters`](crate::Host::dead_letters)
/// and `GET /v1/dead-letters`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpooledLetters {
    /// The file.
    pub file: std::path::PathBuf,
    /// How many letters it holds.
    pub count: usize,
    /// The oldest of them (from where the look started), oldest first: at most the `limit` asked
    /// for and [`LISTED_BYTES`].
    pub letters: Vec<DeadLetterRecord>,
    /// Where the letters after `letters` begin, to read on from
    /// ([`Host::dead_letters_after`](crate::Host::dead_letters_after), `?after=`); `None` once
    /// `letters` reach the end of the file.
    pub next: Option<Position>,
}
