//! Serving HTTP on a bound listener under the limits a hostile client meets:
//! at most so many connections open at once (the rest wait in the kernel's
//! backlog, never costing a descriptor), a deadline for a new connection's
//! first bytes and for each request's headers, and one on every pause inside
//! a request's body and on the whole of it ([`slow_body`]), so a client that
//! sends nothing or trickles bytes is cut off instead of held forever; so is
//! one that takes nothing of what it is sent for as long. Shutdown stops
//! accepting (a new client is refused, not left in the backlog) and lets
//! requests in progress finish. A connection upgraded to a WebSocket keeps its slot,
//! and holds the shutdown, until the socket closes ([`held`]).

mod held;
pub(crate) use held::Held;
pub(crate) mod slow_body;
pub(crate) mod socket;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from the moment the
    /// connection is taken or the previous response was sent; the longest
    /// pause it may make inside a request's body, and the start of the time
    /// the whole body has ([`slow_body::allowance`]); and the longest a write to
    /// it may wait on it taking nothing (an answer, a socket's frame).
    pub header_timeout: Duration,
}

impl ListenerLimits {
    /// Limits of `max_connections` and a header deadline of `header_timeout_ms`.
    pub(crate) fn new(max_connections: usize, header_timeout_ms: u64) -> ListenerLimits {
        ListenerLimits { max_connections, header_timeout: Duration::from_millis(header_timeout_ms) }
    }
}

/// Serve `app` on `listener` within `limits` until `shutdown` completes, over HTTP/1.1 only
/// (WebSocket upgrades included): its header deadline then holds from a connection's first byte,
/// where HTTP/2's preface (and a client that sends part of it and stalls) had none. Returns once
/// every connection has closed, sockets included: `app` must end its sockets when `shutdown` comes.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (connections, stopping) = (TaskTracker::new(), CancellationToken::new());
    let mut http1 = http1::Builder::new();
    // hyper's limit of 100 header lines a request stays: a larger one makes hyper lay out the
    // request's headers on the heap, about 7 000 instructions more a request (callgrind's
    // `http_message` case: 109 194 → 115 748 with a limit of 1 152). More lines are refused, `431`.
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let app = TowerToHyperService::new(app);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let (stream, slot) = accepted;
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| {
            let (request, cut) = slow_body::timed(request, limits.header_timeout);
            let answered = hyper::service::Service::call(&app, request);
            async move { answered.await.map(|answer| cut.answer(answer)) }
        });
        // The slot goes with the connection: to the socket an upgrade hands it to, if one does.
        let held = Held::new(stream, limits.header_timeout, slot, connections.token());
        let served = http1.serve_connection(TokioIo::new(held), service).with_upgrades();
        let stopping = stopping.clone();
        connections.spawn(async move {
            tokio::pin!(served);
            // A connection that ends in an error (a timeout, a reset) is the client's business.
            tokio::select! {
                _ = served.as_mut() => {}
                () = stopping.cancelled() => {
                    // Requests in progress finish; an idle connection closes at once.
                    served.as_mut().graceful_shutdown();
                    let _ = served.await;
                }
            }
        });
    }
    // Clients that come now are refused, not left in the backlog for the whole stop.
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// The next connection, once a slot is free for it. An accept error (out of
/// descriptors, say) is logged and retried after a pause, not a spin.
pub(crate) async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit) {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, slot),
            Err(err) => {
                tracing::warn!(%err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
