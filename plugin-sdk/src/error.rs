//! Why a plugin could not handle a message, and a filter's verdict.

use switchyard_wire::WireError;

/// Why a plugin could not handle a message.
///
/// The host treats the three cases differently: [`Error::Rejected`] dead-letters
/// the message without retrying, [`Error::Retryable`] may be retried, and
/// [`Error::Failed`] counts as a fault of the plugin itself.
pub use crate::bindings::types::Error;

/// What a filter decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Pass the message on to the next stage.
    Keep,
    /// Drop the message: a counted decision, not a loss.
    Drop,
}

impl Error {
    /// The message is bad: dead-letter it, never retry.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::Rejected(message.into())
    }

    /// A transient condition: the host may retry the message.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// The plugin itself failed (a bug, a missing config key).
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// Its kind, as the byte encodings of answers number it, and its reason.
    pub(crate) fn parts(&self) -> (switchyard_wire::native::ErrorKind, &str) {
        use switchyard_wire::native::ErrorKind;
        let kind = match self {
            Self::Rejected(_) => ErrorKind::Rejected,
            Self::Retryable(_) => ErrorKind::Retryable,
            Self::Failed(_) => ErrorKind::Failed,
        };
        (kind, self.message())
    }

    /// The human-readable reason, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::Rejected(message) | Self::Retryable(message) | Self::Failed(message) => message,
        }
    }
}

impl From<WireError> for Error {
    /// A batch the SDK cannot decode is the host's or the plugin's fault, never
    /// the message's: it maps to [`Error::Failed`].
    fn from(error: WireError) -> Self {
        Self::failed(error.to_string())
    }
}
