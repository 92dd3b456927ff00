//! An accepted connection that holds what its listener counts for as long as it is open: its
//! connection slot, and the listener's stop, which waits for it. hyper hands the connection itself
//! over when a request upgrades it (a WebSocket), and the connection's task ends there; the socket
//! then holds both, until it closes, as a gRPC connection holds its slot.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// An accepted connection, holding its slot and its listener's stop until it is dropped.
pub(super) struct Held {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Counted by the listener's tracker: its stop waits for the connection to close.
    _open: TaskTrackerToken,
}

impl Held {
    pub(super) fn new(stream: TcpStream, slot: OwnedSemaphorePermit, open: TaskTrackerToken) -> Held {
        Held { stream, _slot: slot, _open: open }
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
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
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
