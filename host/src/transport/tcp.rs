//! The `tcp` transport: length-delimited frames over pooled connections.
//!
//! A frame is a `u32` big-endian length and that many bytes. A request frame
//! holds one message in the Switchyard wire layout (`switchyard-wire`, the
//! same bytes plugins receive). The peer answers every request with one frame:
//! empty for "taken, no reply", or one message (the reply). A reply frame
//! delivered the message whatever it holds: one past the host's
//! `max_message_bytes` (its topic, headers and payload; a frame longer than
//! that and 64 KiB is not read), cut off, not read by the attempt's deadline
//! or that does not decode is a refused reply ([`Outcome::ReplyRefused`]),
//! never a failure. A connection goes back to its
//! endpoint's pool only after a complete exchange; one that errored, timed
//! out, answered malformed bytes or a frame too long to read is closed, never
//! reused.

use super::pool::{PoolConfig, PoolStats, Pools};
use super::{AttemptFuture, AttemptProgress, AttemptResult, Step, Transport, TransportContext, reply_within};
use crate::config::DestinationConfig;
use crate::message::Message;
use crate::resilience::{Outcome, RetryReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a reply frame holds besides the strings a message's size counts: the wire layout's fixed
/// fields and lengths (26 bytes, and 8 a header: room for some 8 000 headers). A frame longer than
/// this and `max_message_bytes` cannot hold a reply the host takes: it is refused unread.
const FRAME_LAYOUT_BYTES: usize = 64 << 10;

/// `options = {..}` of a `tcp` destination: none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpOptions {}

impl super::TransportOptions for TcpOptions {}

/// The `tcp` transport of `destination`, with its pool settings, its pools' waits counted in the
/// host's metrics.
pub(super) fn build(
    _options: TcpOptions,
    destination: &DestinationConfig,
    context: &TransportContext,
) -> std::sync::Arc<dyn Transport> {
    let waits = context.metrics.pool_waits(&destination.name);
    let transport = TcpTransport::new((&destination.pool).into());
    let pools = transport.pools.count_waits(waits);
    std::sync::Arc::new(TcpTransport { pools, ..transport }.max_reply_bytes(context.max_message_bytes))
}

/// Frames over TCP, through a [`Pool`](super::Pool) of connections per endpoint.
#[derive(Debug)]
pub struct TcpTransport {
    pools: Pools<TcpStream>,
    /// Largest reply taken (its topic, headers and payload); a larger one is refused.
    max_reply_bytes: usize,
}

impl TcpTransport {
    /// A transport keeping a pool of connections with `pool` settings per endpoint, taking replies
    /// up to the default `host.max_message_bytes`.
    pub fn new(pool: PoolConfig) -> TcpTransport {
        let max_reply_bytes = crate::config::HostSection::default().max_message_bytes;
        TcpTransport { pools: Pools::new(pool, is_open), max_reply_bytes }
    }

    /// Take replies of at most `bytes` (their topic, headers and payload; default: the default
    /// `host.max_message_bytes`); a larger one is refused.
    pub fn max_reply_bytes(mut self, bytes: usize) -> TcpTransport {
        self.max_reply_bytes = bytes;
        self
    }

    async fn exchange(&self, address: &str, message: &Message) -> AttemptResult {
        let mut frame = vec![0; 4];
        message.encode(&mut frame, 0, true);
        let length = u32::try_from(frame.len() - 4).expect("messages are far below 4 GiB");
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let pool = self.pools.get(address);
        let mut stream =
            pool.acquire(|| connect(address)).await.map_err(|err| err.into_attempt_error(address))?;
        let reused = stream.is_reused();
        let sent = async {
            stream.write_all(&frame).await?;
            stream.read_u32().await
        };
        let length = sent.await.map_err(|err| {
            let reason = if reused { format!("{err} (on a reused connection)") } else { err.to_string() };
            (Outcome::Retryable(RetryReason::Reset), reason)
        })?;
        // A reply frame says the peer took the message: sending it again could do it twice, so
        // what becomes of the reply decides nothing but the reply.
        AttemptProgress::mark_current(Step::Answered);
        let max = self.max_reply_bytes;
        if length as usize > max.saturating_add(FRAME_LAYOUT_BYTES) {
            let problem =
                format!("a reply frame of {length} bytes: a reply of more than {max} bytes, not read");
            return Err((Outcome::ReplyRefused, problem));
        }
        let mut reply = vec![0; length as usize];
        let read = stream.read_exact(&mut reply).await;
        read.map_err(|err| (Outcome::ReplyRefused, format!("its reply frame cut off: {err}")))?;
        let reply = match reply.is_empty() {
            true => None,
            false => {
                let mut messages = switchyard_wire::decode(&reply);
                let decoded = messages.next().and_then(Result::ok).map(|m| Message::from_wire(&m));
                Some(decoded.ok_or_else(|| (Outcome::ReplyRefused, "malformed reply frame".to_owned()))?)
            }
        };
        stream.release();
        reply_within(reply, max)
    }
}

/// A new connection to `address`, without Nagle's delay (one frame per write).
async fn connect(address: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether an idle connection is still open: the peer neither closed it
/// (a peek of 0 bytes) nor sent bytes nobody asked for. Asks the kernel (one
/// non-blocking peek), not tokio's readiness, which lags until the reactor
/// next runs: a peer that closed just now is seen, and no message is sent
/// into a closed connection, where it could not be told from one the peer
/// took before it closed.
pub(super) fn is_open(stream: &impl std::os::fd::AsFd) -> bool {
    unread(stream) == Unread::Nothing
}

/// What a connection's socket holds that was not read yet, as the kernel tells now (one
/// non-blocking peek).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unread {
    /// Nothing: the connection is open, and whatever the peer sent was read.
    Nothing,
    /// Bytes the peer sent (its end of the connection may follow them).
    Bytes,
    /// The peer's end of the connection (its FIN), or a reset: nothing more comes.
    Closed,
}

/// What `stream`'s socket holds unread; see [`Unread`].
pub(super) fn unread(stream: &impl std::os::fd::AsFd) -> Unread {
    let mut byte = [std::mem::MaybeUninit::uninit()];
    match socket2::SockRef::from(stream).peek(&mut byte) {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Unread::Nothing,
        Ok(0) | Err(_) => Unread::Closed,
        Ok(_) => Unread::Bytes,
    }
}

impl Transport for TcpTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.exchange(address, message))
    }

    fn close_idle(&self, address: &str) {
        self.pools.close_idle(address);
    }

    fn pool_stats(&self, address: &str) -> Option<PoolStats> {
        self.pools.stats(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Pool;
    use std::time::Duration;

    /// A peer on 127.0.0.1 that takes every frame and answers with a frame
    /// holding `answer`, or never answers when it is `None`.
    async fn peer(answer: Option<&'static [u8]>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(length) = stream.read_u32().await {
                        let mut frame = vec![0; length as usize];
                        stream.read_exact(&mut frame).await.unwrap();
                        let Some(answer) = answer else { std::future::pending().await };
                        stream.write_u32(answer.len() as u32).await.unwrap();
                        stream.write_all(answer).await.unwrap();
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn good_exchanges_share_one_pooled_connection_until_close_idle() {
        let address = peer(Some(b"")).await;
        let transport = TcpTransport::new(PoolConfig::default());
        assert_eq!(transport.pool_stats(&address), None, "no pool before the first attempt");
        let message = Message::new("jobs", "one");
        for _ in 0..3 {
            assert_eq!(transport.attempt(&address, &message).await, Ok(None));
        }
        let stats = transport.pool_stats(&address);
        assert_eq!(stats, Some(PoolStats { size: 1, idle: 1, in_use: 0, waits: 0 }));
        transport.close_idle(&address);
        assert_eq!(transport.pool_stats(&address).map(|stats| stats.size), Some(0));
    }

    #[tokio::test]
    async fn full_pool_sheds_the_attempt_and_a_cancelled_exchange_is_not_reused() {
        let address = peer(None).await;
        let config =
            PoolConfig { max_size: 1, acquire_timeout: Duration::from_millis(50), ..PoolConfig::default() };
        let transport = TcpTransport::new(config);
        let message = Message::new("jobs", "one");
        let unanswered =
            tokio::time::timeout(Duration::from_millis(500), transport.attempt(&address, &message));
        let (unanswered, shed) = tokio::join!(unanswered, transport.attempt(&address, &message));
        assert!(unanswered.is_err(), "the silent peer never answers: {unanswered:?}");
        let expected = format!("no connection to {address} free within 50ms (pool of 1)");
        assert_eq!(shed, Err((Outcome::Shed, expected)));
        let stats = transport.pool_stats(&address);
        assert_eq!(stats, Some(PoolStats { size: 0, idle: 0, in_use: 0, waits: 1 }), "closed, not pooled");
    }

    #[tokio::test]
    async fn a_reply_that_does_not_decode_is_refused_and_its_connection_is_closed() {
        let address = peer(Some(b"not a wire message")).await;
        let transport = TcpTransport::new(PoolConfig::default());
        let answer = transport.attempt(&address, &Message::new("jobs", "one")).await;
        assert_eq!(answer, Err((Outcome::ReplyRefused, "malformed reply frame".into())));
        assert_eq!(transport.pool_stats(&address).map(|stats| stats.size), Some(0));
    }

    #[tokio::test]
    async fn a_reply_frame_cut_off_after_its_header_is_refused_not_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let length = stream.read_u32().await.unwrap();
            stream.read_exact(&mut vec![0; length as usize]).await.unwrap();
            // A frame of 100 bytes, 3 of them sent: the peer took the message, then went.
            stream.write_u32(100).await.unwrap();
            stream.write_all(b"abc").await.unwrap();
        });
        let transport = TcpTransport::new(PoolConfig::default());
        let (outcome, problem) = transport.attempt(&address, &Message::new("jobs", "one")).await.unwrap_err();
        assert_eq!(outcome, Outcome::ReplyRefused, "{problem}");
        assert!(problem.starts_with("its reply frame cut off: "), "{problem}");
        assert_eq!(transport.pool_stats(&address).map(|stats| stats.size), Some(0), "closed, not pooled");
    }

    #[tokio::test]
    async fn idle_connection_closed_by_the_peer_is_not_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let pool = std::sync::Arc::new(Pool::new(PoolConfig::default(), is_open));
        let (connected, accepted) = tokio::join!(pool.acquire(|| connect(&address)), listener.accept());
        connected.unwrap().release();
        let (mut peer_side, _) = accepted.unwrap();
        peer_side.shutdown().await.unwrap();
        drop(peer_side);
        let reconnect = async {
            loop {
                let stream = pool.acquire(|| connect(&address)).await.unwrap();
                if !stream.is_reused() {
                    return stream;
                }
                stream.release();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let fresh = tokio::time::timeout(Duration::from_secs(10), reconnect).await.expect("a new connection");
        assert!(!fresh.is_reused());
        assert_eq!(pool.stats().size, 1, "the connection the peer closed was dropped");
    }
}
