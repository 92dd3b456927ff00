//! A request body cut when its client pauses too long, or sends a message too slowly: a
//! `publish_stream` that never sends its next message must not hold its call for good, nor may a call
//! whose client sends a byte just within each pause. The pause, and the time a message may take from
//! its first byte ([`allowance`]: `header_timeout_ms`, and a second a KiB), count only while whoever
//! reads the body waits for more, and what came meanwhile is read before either is looked at: a
//! stream whose reader took a while admitting what it read (a full queue, the spool's fsync) is not
//! cut for the time it did not read, though its client sent on at once (or could not, its window
//! full).

use crate::listener::slow_body::allowance;
use hyper::body::{Body, Bytes, Frame};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The length prefix of a gRPC message: a compression flag, then its length (4 bytes, big-endian).
const PREFIX: usize = 5;

/// The body `B`, failing with [`Paused`] once its reader waited `pause` for a frame that did not
/// come, or with `DEADLINE_EXCEEDED` once it waited longer than the [`allowance`] of the message
/// under way.
pub(super) struct PausedBody<B> {
    body: B,
    pause: Duration,
    /// Since the reader began waiting for the next frame, and when that wait ends the body: set
    /// when a read finds nothing, cleared when one finds a frame.
    waiting: Option<Waiting>,
    message: Partial,
}

struct Waiting {
    since: Instant,
    end: Pin<Box<Sleep>>,
    /// Whether the wait ends at the message's allowance, not at the pause.
    at_allowance: bool,
}

/// The message under way: what was read of it, and how long its reader waited for that.
#[derive(Default)]
struct Partial {
    prefix: [u8; PREFIX],
    /// Bytes read, its prefix included.
    read: u64,
    waited: Duration,
}

impl Partial {
    /// Read `data`: the message under way and those after it, the last perhaps under way then.
    fn read(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let taken = match self.length() {
                None => {
                    let at = self.read as usize;
                    let taken = data.len().min(PREFIX - at);
                    self.prefix[at..at + taken].copy_from_slice(&data[..taken]);
                    taken
                }
                Some(length) => data.len().min((length - self.read) as usize),
            };
            self.read += taken as u64;
            data = &data[taken..];
            if self.length() == Some(self.read) {
                *self = Partial::default();
            }
        }
    }

    /// Its whole length, prefix included, once its prefix is read.
    fn length(&self) -> Option<u64> {
        let [_, length @ ..] = self.prefix;
        (self.read >= PREFIX as u64).then(|| PREFIX as u64 + u64::from(u32::from_be_bytes(length)))
    }

    /// How much longer its reader may wait for the rest, if one is under way.
    fn left(&self, pause: Duration) -> Option<Duration> {
        (self.read > 0).then(|| allowance(pause, self.read).saturating_sub(self.waited))
    }
}

impl<B> PausedBody<B> {
    pub(super) fn new(body: B, pause: Duration) -> PausedBody<B> {
        PausedBody { body, pause, waiting: None, message: Partial::default() }
    }
}

/// Why a body ended: its client sent nothing while its reader waited the pause allowed.
#[derive(Debug, thiserror::Error)]
#[error("no data for the longest pause allowed")]
pub(super) struct Paused;

impl<B> Body for PausedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            // A message's time runs from its first byte on.
            if let Some(waiting) = this.waiting.take().filter(|_| this.message.read > 0) {
                this.message.waited += waiting.since.elapsed();
            }
            if let Some(data) = frame.as_ref().and_then(|frame| frame.as_ref().ok()?.data_ref()) {
                this.message.read(data);
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let pause = this.pause;
        let allowance_left = this.message.left(pause).filter(|left| *left < pause);
        let waiting = this.waiting.get_or_insert_with(|| Waiting {
            since: Instant::now(),
            end: Box::pin(tokio::time::sleep(allowance_left.unwrap_or(pause))),
            at_allowance: allowance_left.is_some(),
        });
        match waiting.end.as_mut().poll(cx) {
            Poll::Ready(()) if waiting.at_allowance => {
                let why = format!(
                    "a message not sent within {} ms (header_timeout_ms) and a second for every KiB of it",
                    pause.as_millis()
                );
                Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(why)))))
            }
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Paused)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[test]
    fn a_message_is_followed_through_frames_that_split_and_join_messages() {
        let mut message = Partial::default();
        message.read(&[0, 0, 0]);
        assert_eq!((message.length(), message.read), (None, 3));
        message.read(&[0, 2, 7]);
        assert_eq!((message.length(), message.read), (Some(7), 6));
        // Its last byte, an empty message, and the next one's prefix and first byte.
        message.read(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 9]);
        assert_eq!((message.length(), message.read), (Some(7), 6));
        message.read(&[9]);
        assert_eq!((message.length(), message.read), (None, 0), "whole: none under way");
    }

    #[tokio::test(start_paused = true)]
    async fn what_came_while_nobody_read_is_read_however_long_that_was_and_a_pause_read_through_is_cut() {
        let (frames, mut sent) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, Paused>>();
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| sent.poll_recv(cx)));
        let mut body = PausedBody::new(body, Duration::from_secs(10));
        // A look that finds nothing, then nothing read for longer than the pause, while the client
        // sent at once.
        assert!(futures_util::poll!(body.frame()).is_pending());
        frames.send(Ok(Frame::data(Bytes::from_static(b"sent at once")))).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "sent at once");
        // Waited for through the whole pause: cut.
        let cut = body.frame().await.unwrap().unwrap_err();
        assert!(cut.is::<Paused>(), "{cut}");
    }
}
