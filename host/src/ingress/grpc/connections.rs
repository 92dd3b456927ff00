//! The connections the gRPC ingress serves, under the limits of the HTTP listeners, all from
//! `header_timeout_ms`: at most `max_connections` open at once (the rest wait in the kernel's
//! backlog); a new connection that has not sent the whole HTTP/2 preface by then is closed, and so is
//! one with no call open for that long (a GOAWAY: what the client sent before it is still served); a
//! request that pauses that long fails (a stream's answer refuses where it paused); a client that
//! leaves a ping unanswered for that long is cut, as is one that takes nothing of what it is sent for
//! that long ([`Held`]). Without them, idle connections, ones that sent part of the preface, and
//! streams that never sent their next message held their slots for good. A stop closes idle
//! connections at once, and the others once their calls are answered.

use super::Server;
use super::paused_body::PausedBody;
use crate::listener::{Held, ListenerLimits, accept};
use http_body_util::BodyExt;
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

/// Serve `server`'s calls on the connections `listener` accepts within `limits` until `stopping`
/// is cancelled; then accept no more, and return once every connection closed.
pub(super) async fn serve(
    listener: TcpListener,
    server: Server,
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
        .max_concurrent_streams(200);
    let server = TowerToHyperService::new(server);
    loop {
        let (stream, slot) = tokio::select! {
            () = stopping.cancelled() => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let (http2, server, stopping) = (http2.clone(), server.clone(), stopping.clone());
        let held = Held::new(stream, limits.header_timeout, slot, connections.token());
        connections.spawn(async move {
            let held = tokio::select! {
                held = preface(held, limits.header_timeout) => held,
                () = stopping.cancelled() => None,
            };
            if let Some(held) = held {
                serve_connection(held, &http2, server, limits.header_timeout, &stopping).await;
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
    idle: Duration,
    stopping: &CancellationToken,
) {
    let calls = Calls::default();
    let service = {
        let calls = calls.clone();
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let open = calls.open();
            let request = request.map(|body| PausedBody::new(body, idle));
            let answered = hyper::service::Service::call(&server, request);
            async move {
                // The call is open until its answer is sent, or the client resets it: hyper drops the
                // answer's body then.
                let answer = answered.await?;
                Ok::<_, std::convert::Infallible>(answer.map(|body| {
                    body.map_frame(move |frame| {
                        let _open = &open;
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
