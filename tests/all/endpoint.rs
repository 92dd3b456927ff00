//! A real endpoint on 127.0.0.1, speaking HTTP or the `tcp` transport's
//! frames, whose behaviour a test switches while it runs: answer, fail,
//! reset connections, hold requests until released, go slow, or die (stop
//! listening and drop every connection).

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
    /// 503 (over `tcp`, which has no failure answer: close the connection).
    Fail = 1,
    /// Close the connection without an answer.
    Reset = 2,
    /// Wait for [`TestEndpoint::release`], then answer.
    Hold = 3,
    /// Fail every other message request (the 2nd, 4th, …), else answer.
    Alternate = 4,
    /// Answer after [`SLOW`], past the deadlines the tests set.
    Slow = 5,
}

/// How long a [`Mode::Slow`] endpoint takes to answer.
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(500);

/// One request the endpoint got.
#[derive(Clone, Debug)]
pub struct Seen {
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
    /// An HTTP endpoint on a fresh port of 127.0.0.1 in `mode`.
    pub async fn start(mode: Mode) -> TestEndpoint {
        TestEndpoint::listen(mode, |stream, state| async move {
            let service = hyper::service::service_fn(move |request| serve(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
        .await
    }

    /// A `tcp` transport endpoint (length-delimited frames) on a fresh port
    /// of 127.0.0.1 in `mode`. It answers each message with an empty frame.
    pub async fn start_tcp(mode: Mode) -> TestEndpoint {
        TestEndpoint::listen(mode, serve_frames).await
    }

    async fn listen<F, Fut>(mode: Mode, connection: F) -> TestEndpoint
    where
        F: Fn(tokio::net::TcpStream, Arc<State>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
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
                connections.spawn(connection(stream, served.clone()));
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
    let body = request.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
    if health_check {
        return match state.mode.load(SeqCst) {
            m if m == Mode::Fail as u8 => Ok(status(StatusCode::SERVICE_UNAVAILABLE, body)),
            m if m == Mode::Reset as u8 => Err("reset".into()),
            _ => Ok(status(StatusCode::OK, body)),
        };
    }
    match state.take(String::from_utf8_lossy(&body).into_owned()).await {
        Answer::Ok => Ok(status(StatusCode::OK, body)),
        Answer::Fail => Ok(status(StatusCode::SERVICE_UNAVAILABLE, body)),
        Answer::Reset => Err("reset".into()),
    }
}

fn status(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder().status(status).body(Full::new(body)).expect("a valid response")
}

/// One `tcp` transport connection: a frame in, an empty frame out.
async fn serve_frames(mut stream: tokio::net::TcpStream, state: Arc<State>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok(length) = stream.read_u32().await {
        let mut frame = vec![0; length as usize];
        if stream.read_exact(&mut frame).await.is_err() {
            return;
        }
        let Some(Ok(message)) = switchyard_wire::decode(&frame).next() else { return };
        let body = String::from_utf8_lossy(message.payload.unwrap_or_default()).into_owned();
        match state.take(body).await {
            Answer::Ok if stream.write_u32(0).await.is_ok() => {}
            // No failure answer in this protocol: close the connection.
            _ => return,
        }
    }
}

/// How to answer a message request.
enum Answer {
    Ok,
    Fail,
    Reset,
}

impl State {
    /// Take a message in the current mode: count it, hold or slow it
    /// down as the mode says, record it, and say how to answer.
    async fn take(&self, body: String) -> Answer {
        let mode = self.mode.load(SeqCst);
        let arrival = self.arrivals.fetch_add(1, SeqCst) + 1;
        self.arrived.notify_waiters();
        if mode == Mode::Hold as u8 {
            self.held.acquire().await.expect("never closed").forget();
        }
        if mode == Mode::Slow as u8 {
            // Seen now: the caller may give up and close the connection.
            self.seen.lock().unwrap().push(Seen { body, answered: false, slow: true });
            tokio::time::sleep(SLOW).await;
            return Answer::Ok;
        }
        let answer = match mode {
            m if m == Mode::Reset as u8 => return Answer::Reset,
            m if m == Mode::Fail as u8 => Answer::Fail,
            m if m == Mode::Alternate as u8 && arrival.is_multiple_of(2) => Answer::Fail,
            _ => Answer::Ok,
        };
        self.seen.lock().unwrap().push(Seen { body, answered: matches!(answer, Answer::Ok), slow: false });
        answer
    }
}
