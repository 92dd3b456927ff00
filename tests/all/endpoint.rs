//! A real endpoint on 127.0.0.1, speaking HTTP or the `tcp` transport's
//! frames, whose behaviour a test switches while it runs: answer, fail,
//! reset connections (before or after taking the message), hold requests
//! until released, go slow, redirect, or die (stop listening and drop every
//! connection) and come back on the same port.

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
    /// Take the message (it is seen, and answered) but close the connection
    /// instead of answering: a reset after processing.
    TakeThenReset = 6,
    /// Answer 302 with a `location` (over `tcp`: answer as [`Mode::Answer`]).
    Redirect = 7,
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
    /// The message requests' bodies in the order they arrived (`seen` has them as answered).
    arrived_bodies: Mutex<Vec<String>>,
    arrivals: AtomicUsize,
    arrived: Notify,
    /// Message requests taken and not yet answered, and the most there were at once.
    open: AtomicUsize,
    most_open: AtomicUsize,
}

/// Serves one accepted connection.
type Connection = Arc<
    dyn Fn(
            tokio::net::TcpStream,
            Arc<State>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A running endpoint; dropping it kills it.
pub struct TestEndpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    connection: Connection,
    server: Mutex<Server>,
}

/// The accepting task, and how to stop it with every connection closed.
struct Server {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
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
        F: Fn(tokio::net::TcpStream, Arc<State>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let connection: Connection = Arc::new(move |stream, state| Box::pin(connection(stream, state)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: AtomicU8::new(mode as u8),
            held: Semaphore::new(0),
            seen: Mutex::default(),
            arrived_bodies: Mutex::default(),
            arrivals: AtomicUsize::new(0),
            arrived: Notify::new(),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
        });
        let server = Mutex::new(serve_on(listener, state.clone(), connection.clone()));
        TestEndpoint { addr, state, connection, server }
    }

    /// Stop listening and close every open connection, as a crash would;
    /// returns once the listener is gone (a connect is refused) and every
    /// connection is closed.
    pub async fn stop(&self) {
        let stop = self.server.lock().unwrap().stop.take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let finished = std::mem::replace(&mut self.server.lock().unwrap().task, tokio::spawn(async {}));
        let _ = finished.await;
    }

    /// Listen again on the same port after [`TestEndpoint::stop`].
    pub async fn revive(&self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        *self.server.lock().unwrap() = serve_on(listener, self.state.clone(), self.connection.clone());
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

    /// How many message requests arrived so far (answered or not).
    pub fn arrived(&self) -> usize {
        self.state.arrivals.load(SeqCst)
    }

    /// The bodies of the message requests that arrived so far, in the order they arrived (held ones
    /// included).
    pub fn arrived_bodies(&self) -> Vec<String> {
        self.state.arrived_bodies.lock().unwrap().clone()
    }

    /// The most message requests it had taken and not yet answered at once (held ones included).
    pub fn most_at_once(&self) -> usize {
        self.state.most_open.load(SeqCst)
    }

    /// The message requests seen so far, in the order they were answered.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// Accept connections on `listener` and serve each with `connection`, until
/// aborted or stopped.
fn serve_on(listener: tokio::net::TcpListener, state: Arc<State>, connection: Connection) -> Server {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        // Dropped (so every connection aborted) when the server is.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    connections.spawn(connection(stream, state.clone()));
                }
                _ = &mut stopped => break,
            }
        }
        drop(listener);
        connections.shutdown().await;
    });
    Server { task, stop: Some(stop) }
}

impl Drop for TestEndpoint {
    /// Stops it without waiting: the runtime drops the listener and the connections soon after.
    fn drop(&mut self) {
        self.server.get_mut().unwrap().task.abort();
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
        Answer::Redirect => {
            let mut response = status(StatusCode::FOUND, body);
            response.headers_mut().insert(hyper::header::LOCATION, "/elsewhere".parse().unwrap());
            Ok(response)
        }
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
            Answer::Ok | Answer::Redirect if stream.write_u32(0).await.is_ok() => {}
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
    Redirect,
}

impl State {
    /// Take a message in the current mode: count it, hold or slow it
    /// down as the mode says, record it, and say how to answer.
    async fn take(&self, body: String) -> Answer {
        let _open = Open::enter(self);
        let mode = self.mode.load(SeqCst);
        let arrival = {
            let mut arrived = self.arrived_bodies.lock().unwrap();
            arrived.push(body.clone());
            self.arrivals.fetch_add(1, SeqCst) + 1
        };
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
            m if m == Mode::TakeThenReset as u8 => Answer::Reset,
            m if m == Mode::Redirect as u8 => Answer::Redirect,
            m if m == Mode::Fail as u8 => Answer::Fail,
            m if m == Mode::Alternate as u8 && arrival.is_multiple_of(2) => Answer::Fail,
            _ => Answer::Ok,
        };
        self.seen.lock().unwrap().push(Seen { body, answered: matches!(answer, Answer::Ok), slow: false });
        answer
    }
}

/// One message request taken and not yet answered: counted among the open ones until dropped.
struct Open<'a>(&'a State);

impl<'a> Open<'a> {
    fn enter(state: &'a State) -> Open<'a> {
        let open = state.open.fetch_add(1, SeqCst) + 1;
        state.most_open.fetch_max(open, SeqCst);
        Open(state)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, SeqCst);
    }
}

/// Nothing else runs on this test's runtime: what the blocking calls see is what the endpoint left
/// when [`TestEndpoint::stop`] returned, not what the runtime got round to since.
#[tokio::test]
async fn a_stopped_endpoint_has_closed_its_connections_and_refuses_new_ones_once_stop_returns() {
    use std::io::Read;
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let mut open = std::net::TcpStream::connect(endpoint.addr).unwrap();
    open.set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
    endpoint.stop().await;
    let connect = std::net::TcpStream::connect(endpoint.addr);
    assert_eq!(connect.map_err(|err| err.kind()).err(), Some(std::io::ErrorKind::ConnectionRefused));
    let read = open.read(&mut [0]).map_err(|err| err.kind());
    assert!(matches!(read, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)), "{read:?}");
}
