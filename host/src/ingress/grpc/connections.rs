//! The connections the gRPC ingress serves, under the same limits as the HTTP listeners: at most
//! `max_connections` open at once (the rest wait in the kernel's backlog), and a new connection
//! that has not sent the whole HTTP/2 preface within `header_timeout_ms` is closed. Without them,
//! idle connections, or ones that sent part of the preface, held descriptors until the host had
//! none left for any listener.

use crate::listener::{ListenerLimits, accept};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection, holding its slot until it closes. Its preface was read to check it, so
/// its reads give the preface first.
pub(super) struct Held {
    stream: TcpStream,
    preface_given: usize,
    _slot: OwnedSemaphorePermit,
}

/// The connections `listener` accepts within `limits`, once each sent the whole HTTP/2 preface;
/// accepting stops when the stream is dropped.
pub(super) fn admitted(
    listener: TcpListener,
    limits: ListenerLimits,
) -> impl futures_util::Stream<Item = std::io::Result<Held>> {
    let (admit, admitted) = mpsc::channel(1);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let (mut stream, slot) = tokio::select! {
                accepted = accept(&listener, &slots) => accepted,
                () = admit.closed() => return,
            };
            let admit = admit.clone();
            tokio::spawn(async move {
                // The protocol's preface, whole, within the deadline: a client that sends less, or
                // something else, is cut.
                let mut preface = [0; PREFACE.len()];
                let read = tokio::time::timeout(limits.header_timeout, stream.read_exact(&mut preface)).await;
                if matches!(read, Ok(Ok(_))) && &preface == PREFACE {
                    let _gone = admit.send(Ok(Held { stream, preface_given: 0, _slot: slot })).await;
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
        if let Some(rest) = PREFACE.get(self.preface_given..).filter(|rest| !rest.is_empty()) {
            let given = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..given]);
            self.preface_given += given;
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
