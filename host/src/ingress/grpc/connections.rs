//! The connections the gRPC ingress serves, under the same limits as the HTTP listeners: at most
//! `max_connections` open at once (the rest wait in the kernel's backlog), and a new connection
//! that sends nothing within `header_timeout_ms` is closed. Without them, idle connections held
//! descriptors until the host had none left for any listener.

use crate::listener::{ListenerLimits, accept};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// An accepted connection, holding its slot until it closes.
pub(super) struct Held {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// The connections `listener` accepts within `limits`, once each sent its first bytes; accepting
/// stops when the stream is dropped.
pub(super) fn admitted(
    listener: TcpListener,
    limits: ListenerLimits,
) -> impl futures_util::Stream<Item = std::io::Result<Held>> {
    let (admit, admitted) = mpsc::channel(1);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let (stream, slot) = tokio::select! {
                accepted = accept(&listener, &slots) => accepted,
                () = admit.closed() => return,
            };
            let admit = admit.clone();
            tokio::spawn(async move {
                // The protocol's first bytes, within the deadline: a client that sends none is cut.
                let first = tokio::time::timeout(limits.header_timeout, stream.peek(&mut [0])).await;
                if matches!(first, Ok(Ok(1))) {
                    let _gone = admit.send(Ok(Held { stream, _slot: slot })).await;
                }
            });
        }
    });
    futures_util::stream::unfold(admitted, |mut admitted| async move {
        let next = admitted.recv().await?;
        Some((next, admitted))
    })
}

impl tonic::transport::server::Connected for Held {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
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
