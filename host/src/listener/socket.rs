//! What the listeners' WebSockets (the ingress's `/v1/ws`, the admin API's `/v1/events`) hold a
//! client to: frames and messages no larger than the route needs, refused on their header.

use axum::extract::ws::{CloseFrame, WebSocketUpgrade, close_code};

/// `upgrade` with its socket reading frames, and messages of any number of frames, of at most
/// `bytes`: a larger one is refused on its header, before it is read (tungstenite's defaults, 16 MiB
/// a frame and 64 MiB a message, had every socket able to make the host hold that much).
pub(crate) fn reading_at_most<F>(upgrade: WebSocketUpgrade<F>, bytes: usize) -> WebSocketUpgrade<F> {
    upgrade.max_frame_size(bytes).max_message_size(bytes)
}

/// The close frame that answers `error`, a read of the socket that failed, when it was a frame or
/// message past [`reading_at_most`]'s limit (1009, message too big); `None` for any other failure
/// (the connection broke: nothing can be sent).
pub(crate) fn refusal(error: axum::Error) -> Option<CloseFrame> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    let error = error.into_inner().downcast::<Error>().ok()?;
    let Error::Capacity(CapacityError::MessageTooLong { size, max_size }) = *error else { return None };
    let reason = format!("a message of {size} bytes: at most {max_size}");
    Some(CloseFrame { code: close_code::SIZE, reason: reason.into() })
}
