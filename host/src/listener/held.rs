//! An accepted connection that holds what its listener counts for as long as it is open: its
//! connection slot, and the listener's stop, which waits for it. hyper hands the connection itself
//! over when a request upgrades it (a WebSocket), and the connection's task ends there; the socket
//! then holds both, until it closes, as a gRPC connection holds its slot.
//!
//! Bytes the listener read from the stream to check them (the gRPC ingress's HTTP/2 preface) are
//! given back first, so the protocol reads the stream whole.
//!
//! A write that waits on a client taking nothing (its receive window shut) fails once it has waited
//! the listener's header deadline: else a client that stops reading held its connection, and the
//! listener's stop, for as long as it liked.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// An accepted connection, holding its slot and its listener's stop until it is dropped.
pub(crate) struct Held {
    stream: TcpStream,
    /// What was read of the stream to check it, and is still to be given to the reader.
    replay: &'static [u8],
    /// The longest a write may wait on the client.
    stall_limit: Duration,
    /// Running while a write waits on the client; none while writes go through.
    stalled: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
    /// Counted by the listener's tracker: its stop waits for the connection to close.
    _open: TaskTrackerToken,
}

impl Held {
    /// `stream`, whose writes may wait on the client for `stall_limit`, holding `slot` and `open`.
    pub(crate) fn new(
        stream: TcpStream,
        stall_limit: Duration,
        slot: OwnedSemaphorePermit,
        open: TaskTrackerToken,
    ) -> Held {
        Held { stream, replay: &[], stall_limit, stalled: None, _slot: slot, _open: open }
    }

    /// This connection, its reads giving `read` first: what was read of it to check it.
    pub(crate) fn replaying(self, read: &'static [u8]) -> Held {
        Held { replay: read, ..self }
    }

    /// `written`, or, for a write that has waited on the client past the stall limit, an error.
    fn within_limit<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let limit = self.stall_limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        let problem = format!("the client took nothing for {} ms", limit.as_millis());
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, problem)))
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            let (given, rest) = self.replay.split_at(self.replay.len().min(buf.remaining()));
            buf.put_slice(given);
            self.replay = rest;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.within_limit(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.within_limit(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
