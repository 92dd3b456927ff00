//! The HTTP path of the instruction and system-call guards: one message POSTed to the HTTP
//! ingress over a keep-alive connection, routed without stages to an `http` destination whose
//! endpoint is a server in this process. An iteration ends when that server has the message, so
//! it counts the client, the host and the endpoint: on real sockets, as in production.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Payload bytes of each message, as in `scripts/http-bench`.
const PAYLOAD: usize = 256;

/// A host with the HTTP ingress, one route without stages to an `http` destination, its
/// endpoint, and a client connection to the ingress.
pub(super) struct HttpPath {
    host: Host,
    client: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    /// The `Host` header of every request: the ingress's address, made once.
    ingress: hyper::header::HeaderValue,
    /// One item each time the endpoint has answered a POST.
    arrivals: mpsc::UnboundedReceiver<usize>,
    payload: Bytes,
    /// Messages the ingress accepted so far.
    sent: u64,
    /// The host's state directory: one of its own, thrown away after the run.
    _state: tempfile::TempDir,
}

impl HttpPath {
    /// Start the endpoint, the host (plugins from `plugin_dir`, unused) and the client.
    pub(super) async fn start(plugin_dir: &Path) -> Result<HttpPath, BenchError> {
        let (endpoint, arrivals) = endpoint().await?;
        let config = format!(
            "[host]\nwatch = false\ncache_dir = \"\"\n\
             [[destination]]\nname = \"endpoint\"\ntransport = \"http\"\nendpoints = [\"{endpoint}\"]\n\
             [[route]]\nname = \"orders\"\nmatch = {{ topic = \"orders.*\" }}\nto = \"endpoint\"\n"
        );
        let config =
            Config::from_toml("<bench>", &config).map_err(|err| BenchError::Check(err.to_string()))?;
        let state = tempfile::tempdir()?;
        let host = Host::builder()
            .config("<bench>", config)
            .plugin_dir(plugin_dir)
            .state_dir(state.path())
            .build()
            .await?;
        let ingress =
            crate::ingress::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().expect("an address"))
                .await?;
        let addr = ingress.local_addr();
        tokio::spawn(ingress.serve(std::future::pending()));
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| BenchError::Check(format!("the client's connection: {err}")))?;
        tokio::spawn(connection);
        let payload = Bytes::from(vec![b'x'; PAYLOAD]);
        let ingress =
            hyper::header::HeaderValue::try_from(addr.to_string()).expect("an address is a header value");
        Ok(HttpPath { host, client, ingress, arrivals, payload, sent: 0, _state: state })
    }

    /// POST `messages` messages one after the other, each accepted (202) and at the endpoint
    /// before the next is sent.
    pub(super) async fn deliver(&mut self, messages: usize) -> Result<(), BenchError> {
        for _ in 0..messages {
            let request = hyper::Request::post("/v1/messages/orders.http")
                .header(hyper::header::HOST, self.ingress.clone())
                .body(Full::new(self.payload.clone()))
                .map_err(|err| BenchError::Check(err.to_string()))?;
            let check = |err: hyper::Error| BenchError::Check(format!("the ingress: {err}"));
            self.client.ready().await.map_err(check)?;
            let response = self.client.send_request(request).await.map_err(check)?;
            let status = response.status();
            let answer = response.into_body().collect().await.map_err(check)?.to_bytes();
            if status != hyper::StatusCode::ACCEPTED {
                let answer = String::from_utf8_lossy(&answer);
                return Err(BenchError::Check(format!("the ingress answered {status}: {answer}")));
            }
            self.sent += 1;
            match self.arrivals.recv().await {
                Some(bytes) if bytes == PAYLOAD => {}
                Some(bytes) => {
                    return Err(BenchError::Check(format!("the endpoint got {bytes} bytes, not {PAYLOAD}")));
                }
                None => return Err(BenchError::Check("the endpoint stopped".into())),
            }
        }
        Ok(())
    }

    /// Shut the host down and check that every message accepted was delivered, none lost.
    pub(super) async fn finish(self) -> Result<(), BenchError> {
        shut_down_and_account(&self.host, self.sent).await
    }
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request 204; it sends the size of each
/// request's body on the channel returned.
async fn endpoint() -> Result<(SocketAddr, mpsc::UnboundedReceiver<usize>), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (arrived, arrivals) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let arrived = arrived.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let _ = arrived.send(body.len());
                    let answer = hyper::Response::builder().status(hyper::StatusCode::NO_CONTENT);
                    Ok::<_, hyper::Error>(answer.body(Empty::<Bytes>::new()).expect("a response"))
                }
            });
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let connection = hyper::server::conn::http1::Builder::new();
                let _ = connection.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok((addr, arrivals))
}
