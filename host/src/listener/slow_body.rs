//! A request body that must come at a pace: no pause inside it as long as the header deadline, and
//! the whole of it within its [`allowance`] from the request's headers on, else the request is
//! answered 408 whatever its handler made of the body cut short. A deadline on pauses alone let a
//! client that sent a byte just within each pause hold its connection (and the handler reading its
//! body) for as long as it liked.

use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Bytes, Frame};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The slowest a body (a gRPC message) may come on average, in bytes a second, beyond the header
/// deadline it is allowed first.
pub(crate) const MIN_BODY_RATE: u32 = 1024;

/// How long a client has to send `bytes` of a body (of a gRPC message): the header deadline, and a
/// second for every [`MIN_BODY_RATE`] bytes.
pub(crate) fn allowance(header_timeout: Duration, bytes: u64) -> Duration {
    header_timeout.saturating_add(Duration::from_secs(bytes) / MIN_BODY_RATE)
}

/// The body `B` of a request whose headers came at `start`, failing with [`TooSlow`] once its
/// client paused `header_timeout` or took longer than the [`allowance`] of what it sent.
pub(crate) struct SlowBody<B> {
    body: B,
    header_timeout: Duration,
    start: Instant,
    received: u64,
    /// When the body is cut if nothing comes: the pause's end or the allowance's, the earlier.
    deadline: Pin<Box<Sleep>>,
    /// Set when the body was cut, for the answer to say so.
    cut: Arc<AtomicBool>,
}

/// Why a body ended: its client sent it too slowly.
#[derive(Debug, thiserror::Error)]
#[error("request body not sent in time")]
pub(crate) struct TooSlow;

/// `request` with its body timed within `header_timeout`, and what tells whether it was cut.
pub(crate) fn timed<B>(
    request: hyper::Request<B>,
    header_timeout: Duration,
) -> (hyper::Request<SlowBody<B>>, Cut) {
    let cut = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = Box::pin(tokio::time::sleep_until(start + header_timeout));
    let request =
        request.map(|body| SlowBody { body, header_timeout, start, received: 0, deadline, cut: cut.clone() });
    (request, Cut(cut))
}

/// Whether a request's body was cut for coming too slowly.
pub(crate) struct Cut(Arc<AtomicBool>);

impl Cut {
    /// `answer`, or 408 if the body was cut: a handler sees a body cut short as malformed.
    pub(crate) fn answer(&self, answer: Response) -> Response {
        if !self.0.load(Ordering::Acquire) {
            return answer;
        }
        let error = format!(
            "{TooSlow}: a pause inside it, or slower than {MIN_BODY_RATE} bytes a second on average \
             after the header deadline"
        );
        let mut answer =
            (hyper::StatusCode::REQUEST_TIMEOUT, axum::Json(serde_json::json!({ "error": error })))
                .into_response();
        // The rest of the body is never read: the connection cannot carry another request.
        answer
            .headers_mut()
            .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        answer
    }
}

impl<B> Body for SlowBody<B>
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
            if let Some(Ok(frame)) = &frame {
                this.received += frame.data_ref().map_or(0, Bytes::len) as u64;
                let paused = Instant::now() + this.header_timeout;
                let whole = this.start + allowance(this.header_timeout, this.received);
                this.deadline.as_mut().reset(paused.min(whole));
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.cut.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(TooSlow))))
            }
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
