//! HTTP endpoints that count the message ids they are sent (`x-sy-id`), and
//! can be killed (stop listening, drop every connection) and restarted on
//! the same port.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What a group of sinks received.
#[derive(Debug, Default)]
pub struct Tally {
    /// How many times each message id arrived.
    ids: Mutex<HashMap<String, u32>>,
    /// Arrivals by a label read from their headers (dead-letter code, or the
    /// plugin that transformed them).
    labels: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn record(&self, id: String, label: String) {
        *self.ids.lock().unwrap().entry(id).or_default() += 1;
        *self.labels.lock().unwrap().entry(label).or_default() += 1;
    }

    /// How many distinct ids arrived.
    pub fn unique(&self) -> u64 {
        self.ids.lock().unwrap().len() as u64
    }

    /// Each id with the number of times it arrived.
    pub fn ids(&self) -> HashMap<String, u32> {
        self.ids.lock().unwrap().clone()
    }

    /// Arrivals by label.
    pub fn labels(&self) -> BTreeMap<String, u64> {
        self.labels.lock().unwrap().clone()
    }
}

/// One endpoint on 127.0.0.1.
pub struct Sink {
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    tally: Arc<Tally>,
    /// The accept loop; aborting it drops every connection it serves.
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Sink {
    /// A sink on a fresh port that records into `tally`.
    pub async fn start(tally: Arc<Tally>) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = serve(listener, tally.clone());
        Ok(Sink { addr, tally, server: Mutex::new(Some(server)) })
    }

    /// Stops listening and drops every open connection.
    pub fn kill(&self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }

    /// Listens again on the same port (a killed sink's port may take a
    /// moment to be free again).
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if tries < 50 => tries += 1,
                Err(err) => return Err(err).with_context(|| format!("rebinding {}", self.addr)),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        *self.server.lock().unwrap() = Some(serve(listener, self.tally.clone()));
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(listener: TcpListener, tally: Arc<Tally>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Dropped, so every connection aborted, when the accept loop is.
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tally = tally.clone();
            let service = hyper::service::service_fn(move |request| answer(tally.clone(), request));
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            connections.spawn(connection);
            while connections.try_join_next().is_some() {}
        }
    })
}

/// Reads the whole message, records its id, answers 204.
async fn answer(tally: Arc<Tally>, request: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let complete = request.into_body().collect().await.is_ok();
    let status = match header("x-sy-id") {
        Some(id) if complete => {
            let label = header("x-sy-dead-letter")
                .or_else(|| header("x-transformed-by"))
                .or_else(|| header("x-stamp").map(|_| "stamp-transform".to_owned()))
                .unwrap_or_else(|| "untransformed".to_owned());
            tally.record(id, label);
            StatusCode::NO_CONTENT
        }
        Some(_) => StatusCode::BAD_REQUEST,
        None => StatusCode::OK, // a health check
    };
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    Ok(response)
}
