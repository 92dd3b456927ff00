//! The connections the gRPC ingress serves, under the limits of the HTTP listeners, all from
//! `header_timeout_ms`: at most `max_connections` open at once (the rest wait in the kernel's
//! backlog); a new connection that has not sent the whole HTTP/2 preface by then is closed, and so is
//! one with no call open for that long (a GOAWAY: what the client sent before it is still served); a
//! request that pauses that long fails (a stream's answer refuses where it paused); a client that
//! leaves a ping unanswered for that long is cut, as is one that takes nothing of what it is sent for
//! that long ([`Held`]). Without them, idle connections, ones that sent part of the preface, and
//! streams that never sent their next message held their slots for good. A stop closes idle
//! connections at once, and the others once their calls are answered. Each call is charged to the
//! host's budget for request bodies not yet admitted before any of it is read ([`Charge`]).

use super::Server;
use super::paused_body::PausedBody;
use crate::host::{BodyHold, GRPC_STREAM_WINDOW, Host};
use crate::listener::{Held, ListenerLimits, accept};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What each call takes of its host's budget for request bodies not yet admitted, from before
/// any of it is read until its answer is sent (or the client resets it). Without it, each call
/// could make the host hold a message being decoded and what the HTTP/2 window lets its client send
/// ahead, 200 calls a connection, whatever the number of connections. A call that finds no room is
/// refused unread, `RESOURCE_EXHAUSTED`: so at most the budget over `bytes` calls are served at once,
/// over all connections.
pub(super) struct Charge {
    pub(super) host: Host,
    /// Bytes a call takes: [`crate::host::grpc_call_bytes`].
    pub(super) bytes: usize,
}

impl Charge {
    /// A call's share of the budget, if there is room for it now; else its refusal.
    fn hold(&self) -> Result<BodyHold, tonic::Status> {
        self.host.try_hold_body(self.bytes).map_err(|problem| {
            // A call is charged the largest message it may send and what HTTP/2 lets it send ahead.
            tonic::Status::resource_exhausted(format!("{problem} (a gRPC call's charge)"))
        })
    }
}

/// Serve `server`'s calls on the connections `listener` accepts within `limits`, each [`Charge`]d,
/// until `stopping` is cancelled; then accept no more, and return once every connection closed.
pub(super) async fn serve(
    listener: TcpListener,
    server: Server,
    charge: Charge,
    limits: ListenerLimits,
    stopping: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    // A ping goes after header_timeout without a frame from the client, and must be answered within
    // as long: a graceful close waits for that answer. 200 calls at once, as hyper's default (tonic's
    // server allowed any number).
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout)
        .max_concurrent_streams(200)
        .initial_stream_window_size(GRPC_STREAM_WINDOW);
    let server = TowerToHyperService::new(server);
    let charge = Arc::new(charge);
    loop {
        let (stream, slot) = tokio::select! {
            () = stopping.cancelled() => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let (http2, server, charge, stopping) =
            (http2.clone(), server.clone(), charge.clone(), stopping.clone());
        let held = Held::new(stream, limits.header_timeout, slot, connections.token());
        connections.spawn(async move {
            let held = tokio::select! {
                held = preface(held, limits.header_timeout) => held,
                () = stopping.cancelled() => None,
            };
            if let Some(held) = held {
                serve_connection(held, &http2, server, charge, limits.header_timeout, &stopping).await;
            }
        });
    }
    // Clients that come now are refused, not left in the backlog.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// `stream`, once it sent the whole HTTP/2 preface within `timeout`, to be read from the preface on;
/// a client that sends less, or something else, is cut.
async fn preface(mut stream: Held, timeout: Duration) -> Option<Held> {
    let mut preface = [0; PREFACE.len()];
    let read = tokio::time::timeout(timeout, stream.read_exact(&mut preface)).await;
    (matches!(read, Ok(Ok(_))) && &preface == PREFACE).then(|| stream.replaying(PREFACE))
}

/// Serve the calls of one connection until it closes: the client closes it, or it is closed
/// gracefully once no call was open for `idle` or at the stop.
async fn serve_connection(
    stream: Held,
    http2: &http2::Builder<TokioExecutor>,
    server: TowerToHyperService<Server>,
    charge: Arc<Charge>,
    idle: Duration,
    stopping: &CancellationToken,
) {
    let calls = Calls::default();
    let service = {
        let calls = calls.clone();
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let open = calls.open();
            // Charged before any of its body is read; refused, it is never read.
            let called = charge.hold().map(|hold| {
                let request = request.map(|body| PausedBody::new(body, idle));
                (hyper::service::Service::call(&server, request), hold)
            });
            async move {
                let (answer, hold) = match called {
                    Ok((answered, hold)) => (answered.await?.map(Either::Left), Some(hold)),
                    Err(refused) => (refused.into_http::<Empty<Bytes>>().map(Either::Right), None),
                };
                // The call is open, and holds its charge, until its answer is sent, or the client
                // resets it: hyper drops the answer's body then.
                Ok::<_, std::convert::Infallible>(answer.map(|body| {
                    body.map_frame(move |frame| {
                        let _open = (&open, &hold);
                        frame
                    })
                }))
            }
        })
    };
    let served = http2.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    // A connection that ends in an error (a reset, an unanswered ping) is the client's business.
    tokio::select! {
        _ = served.as_mut() => return,
        () = calls.idle_for(idle) => {}
        () = stopping.cancelled() => {}
    }
    // A GOAWAY: calls the client began before it are served, then the connection closes.
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}

/// How many calls are open on one connection, for whoever waits for it to go idle.
#[derive(Clone)]
struct Calls(Arc<watch::Sender<usize>>);

/// One open call: it closes when dropped.
struct OpenCall(Calls);

impl Default for Calls {
    fn default() -> Calls {
        Calls(Arc::new(watch::Sender::new(0)))
    }
}

impl Calls {
    fn open(&self) -> OpenCall {
        self.0.send_modify(|open| *open += 1);
        OpenCall(self.clone())
    }

    /// Resolves once no call was open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut open = self.0.subscribe();
        loop {
            // Never an error: `self` holds the sender.
            let _ = open.wait_for(|open| *open == 0).await;
            tokio::select! {
                () = tokio::time::sleep(idle) => return,
                // A call opened (and perhaps closed already): the quiet begins again.
                _ = open.changed() => {}
            }
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.0.send_modify(|open| *open -= 1);
    }
}
