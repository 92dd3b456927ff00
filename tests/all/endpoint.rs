//! A real HTTP endpoint on 127.0.0.1 whose behaviour a test switches while
//! it runs: answer, fail, reset connections, hold requests until released,
//! or die (stop listening and drop every connection).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// What the endpoint does with the next requests (health checks included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200, the body echoed.
    Answer = 0,
    /// 503.
    Fail = 1,
    /// Close the connection without an answer.
    Reset = 2,
    /// Wait for [`TestEndpoint::release`], then answer.
    Hold = 3,
    /// 503 for every other message request (the 2nd, 4th, …), else answer.
    Alternate = 4,
    /// Answer after [`SLOW`], past the deadlines the tests set.
    Slow = 5,
}

/// How long a [`Mode::Slow`] endpoint takes to answer.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(500);

/// One request the endpoint got.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `x-sy-id`: the message id.
    pub id: u64,
    /// The body.
    pub body: String,
    /// Whether it was answered 200 in time ([`Mode::Slow`] answers are late).
    pub answered: bool,
    /// Whether it came in [`Mode::Slow`].
    pub slow: bool,
}

struct State {
    mode: AtomicU8,
    held: Semaphore,
    seen: Mutex<Vec<Seen>>,
    arrivals: AtomicUsize,
    arrived: Notify,
}

/// A running endpoint; dropping it kills it.
pub struct TestEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl TestEndpoint {
    /// Listen on a fresh port of 127.0.0.1 in `mode`.
    pub async fn start(mode: Mode) -> TestEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: AtomicU8::new(mode as u8),
            held: Semaphore::new(0),
            seen: Mutex::default(),
            arrivals: AtomicUsize::new(0),
            arrived: Notify::new(),
        });
        let served = state.clone();
        let server = tokio::spawn(async move {
            // Dropped (so every connection aborted) when the server is.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = served.clone();
                let service = hyper::service::service_fn(move |request| serve(state.clone(), request));
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestEndpoint { addr, state, server }
    }

    /// Behave as `mode` from now on.
    pub fn set(&self, mode: Mode) {
        self.state.mode.store(mode as u8, SeqCst);
    }

    /// Let `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.state.held.add_permits(n);
    }

    /// Wait until `n` message requests (not health checks) arrived in all.
    pub async fn arrivals(&self, n: usize) {
        loop {
            let arrived = self.state.arrived.notified();
            if self.state.arrivals.load(SeqCst) >= n {
                return;
            }
            arrived.await;
        }
    }

    /// The message requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Stop listening and drop every open connection.
    pub fn kill(&self) {
        self.server.abort();
    }
}

impl Drop for TestEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    state: Arc<State>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, String> {
    let health_check = request.method() == hyper::Method::GET;
    let id = request.headers().get("x-sy-id").and_then(|id| id.to_str().ok()?.parse().ok()).unwrap_or(0);
    let body = request.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
    let mode = state.mode.load(SeqCst);
    let mut failing = mode == Mode::Fail as u8;
    if !health_check {
        let arrival = state.arrivals.fetch_add(1, SeqCst) + 1;
        state.arrived.notify_waiters();
        failing |= mode == Mode::Alternate as u8 && arrival.is_multiple_of(2);
        if mode == Mode::Hold as u8 {
            state.held.acquire().await.expect("never closed").forget();
        }
        if mode == Mode::Slow as u8 {
            // Seen now: the caller may give up and close the connection.
            let seen =
                Seen { id, body: String::from_utf8_lossy(&body).into_owned(), answered: false, slow: true };
            state.seen.lock().unwrap().push(seen);
            tokio::time::sleep(SLOW).await;
        }
    }
    let status = match mode {
        _ if failing => StatusCode::SERVICE_UNAVAILABLE,
        m if m == Mode::Reset as u8 => return Err("reset".into()),
        _ => StatusCode::OK,
    };
    if !health_check && mode != Mode::Slow as u8 {
        let seen = Seen {
            id,
            body: String::from_utf8_lossy(&body).into_owned(),
            answered: status.is_success(),
            slow: false,
        };
        state.seen.lock().unwrap().push(seen);
    }
    Ok(Response::builder().status(status).body(Full::new(body)).expect("a valid response"))
}
