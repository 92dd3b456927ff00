//! A request body cut when its client pauses too long: a `publish_stream` that never sends its
//! next message must not hold its call for good. The pause counts only while whoever reads the body
//! waits for more, and what came meanwhile is read before the pause is looked at: a stream whose
//! reader took a while admitting what it read (a full queue, the spool's fsync) is not cut for the
//! time it did not read, though its client sent on at once.

use hyper::body::{Body, Bytes, Frame};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The body `B`, failing with [`Paused`] once its reader waited `pause` for a frame that did not come.
pub(super) struct PausedBody<B> {
    body: B,
    pause: Duration,
    /// Since the reader began waiting for the next frame: set when a read finds nothing, cleared
    /// when one finds a frame.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<B> PausedBody<B> {
    pub(super) fn new(body: B, pause: Duration) -> PausedBody<B> {
        PausedBody { body, pause, waiting: None }
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
            this.waiting = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let pause = this.pause;
        let waiting = this.waiting.get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
        match waiting.as_mut().poll(cx) {
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
