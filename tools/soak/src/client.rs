//! A keep-alive HTTP/1.1 connection to one address, reopened after an error.

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection, used for one request at a time.
pub struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `addr`, opened on first use.
    pub fn new(addr: SocketAddr) -> Connection {
        Connection { addr, sender: None }
    }

    /// Sends one request and reads the whole answer. After an error the next
    /// request opens a new connection.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await;
        let answer = answer.unwrap_or_else(|_| Err(anyhow!("no answer within {REQUEST_TIMEOUT:?}")));
        if answer.is_err() {
            self.sender = None;
        }
        answer
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.sender.insert(connect(self.addr).await?),
        };
        sender.ready().await.context("connection closed")?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let response = sender.send_request(request).await.context("request failed")?;
        let status = response.status();
        let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
        Ok((status, body))
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    Connection::new(addr).request(Method::GET, path, Bytes::new()).await
}
