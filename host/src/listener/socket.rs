//! What the listeners' WebSockets (the ingress's `/v1/ws`, the admin API's `/v1/events`) hold a
//! client to: frames and messages no larger than the route needs, refused on their header, and no
//! silence longer than two ping intervals while the host waits to read (a client that answers the
//! ping it is sent halfway stays).

use axum::extract::ws::{CloseFrame, WebSocketUpgrade, close_code};
use std::time::Duration;
use tokio::time::Instant;

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

/// A client's silence while the host waits for its next frame: it is to be pinged once it has lasted
/// the ping interval, and the socket closed once it has lasted two. Without it a socket whose peer
/// was gone (a machine off the network sends no FIN) held its connection for good.
pub(crate) struct Silence {
    ping: Duration,
    since: Instant,
    pinged: bool,
}

/// What a [`Silence`] came to.
pub(crate) enum Silent {
    /// It lasted the ping interval: ping the client, whose pong ends it.
    Ping,
    /// It lasted two: close the socket with this frame (1001, going away).
    TooLong(CloseFrame),
}

impl Silence {
    /// A silence beginning now, as the host waits for a frame; a frame received ends it (the next
    /// wait begins another).
    pub(crate) fn begin(ping: Duration) -> Silence {
        Silence { ping, since: Instant::now(), pinged: false }
    }

    /// Completes when the silence has lasted the ping interval (once), then two. Cancel-safe: a
    /// `select!` may drop it and call it again.
    pub(crate) async fn lasted(&mut self) -> Silent {
        let intervals = if self.pinged { 2 } else { 1 };
        tokio::time::sleep_until(self.since + self.ping * intervals).await;
        if self.pinged {
            let silent = self.ping * 2;
            let reason = format!("nothing received for {} ms", silent.as_millis());
            return Silent::TooLong(CloseFrame { code: close_code::AWAY, reason: reason.into() });
        }
        self.pinged = true;
        Silent::Ping
    }
}
