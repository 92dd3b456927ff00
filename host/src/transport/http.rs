//! The `http` transport: each attempt POSTs the message to an endpoint over
//! an HTTP/1.1 keep-alive connection from that endpoint's [`Pool`](super::Pool).
//!
//! The request carries the payload as its body and the message's headers, plus
//! `x-sy-topic` and `x-sy-id`. A 2xx answer is the reply (its body the payload,
//! its `x-` headers but the host's own `x-sy-` ones the headers), and a 3xx too when the destination says
//! `redirects_ok` (otherwise a redirect is a final failure: it is not followed);
//! 5xx, 408, 429 and connection errors are retryable; other statuses are final. The status decides
//! whatever becomes of the body: after a delivering status, a body larger than the host reads, cut
//! off, or not read by the attempt's deadline is a refused reply ([`Outcome::ReplyRefused`]), never
//! a failure; after any other, the body is only the error's text, and the status's class stands. A
//! connection goes back to its pool only after a complete response, body read, with the connection
//! still open.

use super::pool::{PoolConfig, PoolStats, Pools};
use super::{AttemptFuture, AttemptProgress, AttemptResult, ProbeFuture, Step, Transport, TransportContext};
use crate::config::{DestinationConfig, HealthSettings, UrlPath};
use crate::message::{Message, TOPIC_HEADER};
use crate::resilience::{FatalReason, Outcome, RetryReason};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The sending half of one HTTP/1.1 connection; its driver runs as a task.
pub(super) type Sender = SendRequest<Full<Bytes>>;

/// One pooled HTTP/1.1 connection: its sending half (the driver, which owns
/// the socket, runs as a task), and a second handle on the same socket, so
/// that the pool sees a peer's close of an idle connection in the socket
/// itself, before a request goes out on it (the driver may not have run
/// since the close reached us).
pub(super) struct Connection {
    pub(super) sender: Sender,
    socket: std::net::TcpStream,
}

impl Connection {
    /// Whether neither the driver nor the socket saw the connection close.
    fn is_open(&self) -> bool {
        !self.sender.is_closed() && super::tcp::is_open(&self.socket)
    }
}

/// `options = {..}` of an `http` destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpOptions {
    /// Request path (default `/`).
    pub path: UrlPath,
    /// Whether a 3xx answer counts as delivered. By default a redirect is a final failure
    /// (dead-lettered, not retried): the host does not follow redirects, so nobody took the message.
    pub redirects_ok: bool,
}

impl super::TransportOptions for HttpOptions {}

/// The `http` transport of `destination`: its pool settings, its pools' waits counted in the host's
/// metrics, replies up to the host's largest message.
pub(super) fn build(
    options: HttpOptions,
    destination: &DestinationConfig,
    context: &TransportContext,
) -> Arc<dyn Transport> {
    let transport = HttpTransport::new(&options.path, options.redirects_ok, (&destination.pool).into());
    let pools = transport.pools.count_waits(context.metrics.pool_waits(&destination.name));
    Arc::new(HttpTransport { pools, ..transport }.max_reply_bytes(context.max_message_bytes))
}

/// [`TOPIC_HEADER`], its name made once.
const TOPIC: HeaderName = HeaderName::from_static(TOPIC_HEADER);

/// POSTs to `http://ADDRESS{path}`.
pub struct HttpTransport {
    pools: Pools<Connection>,
    path: UrlPath,
    /// Whether a 3xx answer counts as delivered.
    redirects_ok: bool,
    /// Largest reply body read; a larger one is refused unread.
    max_reply_bytes: usize,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport").field("path", &self.path).finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport posting to `path` on every endpoint, keeping a pool of
    /// connections with `pool` settings per endpoint; a 3xx answer counts as
    /// delivered only when `redirects_ok`.
    pub fn new(path: &UrlPath, redirects_ok: bool, pool: PoolConfig) -> HttpTransport {
        let pools = Pools::new(pool, Connection::is_open);
        let max_reply_bytes = crate::config::HostSection::default().max_message_bytes;
        HttpTransport { pools, path: path.clone(), redirects_ok, max_reply_bytes }
    }

    /// Read reply bodies of at most `bytes` (default: the default
    /// `host.max_message_bytes`); a larger reply is refused, unread (a failure's status still decides).
    pub fn max_reply_bytes(mut self, bytes: usize) -> HttpTransport {
        self.max_reply_bytes = bytes;
        self
    }

    /// The POST of `message` to `address`: its path parsed once (at construction), the header names
    /// the host adds known ones, the map sized once.
    fn request(
        &self,
        address: &str,
        message: &Message,
    ) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
        let mut request = hyper::Request::new(Full::new(message.payload.clone()));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = self.path.uri();
        let headers = request.headers_mut();
        headers.reserve(2 + message.headers.len());
        headers.insert(hyper::header::HOST, HeaderValue::from_str(address)?);
        headers.insert(TOPIC, HeaderValue::from_str(&message.topic)?);
        for (name, value) in message.headers.iter().filter(|(name, _)| !is_own_header(name)) {
            headers.append(HeaderName::from_bytes(name.as_bytes())?, HeaderValue::from_str(value)?);
        }
        Ok(request)
    }

    /// One POST; on failure, how to classify it and what went wrong.
    async fn post(&self, address: &str, message: &Message) -> AttemptResult {
        let mut request = self
            .request(address, message)
            .map_err(|err| (Outcome::Fatal(FatalReason::Protocol), format!("invalid request: {err}")))?;
        let pool = self.pools.get(address);
        // Reused connections found closed before the request went out: past as many as the pool
        // holds, they are no longer idle ones a keep-alive peer timed out, and the attempt fails.
        let mut closed_while_idle = 0;
        let (connection, response) = loop {
            let mut connection =
                pool.acquire(|| connect(address)).await.map_err(|err| err.into_attempt_error(address))?;
            let unsent = match connection.sender.ready().await {
                Ok(()) => match connection.sender.try_send_request(request).await {
                    Ok(response) => break (connection, response),
                    Err(mut err) => match err.take_message() {
                        // Given back unwritten: the connection closed before the request went out.
                        Some(unwritten) => {
                            request = unwritten;
                            err.into_error()
                        }
                        None => {
                            let err = err.into_error().to_string();
                            return Err((Outcome::Retryable(RetryReason::Reset), err));
                        }
                    },
                },
                Err(err) => err,
            };
            // Nothing was sent. On a reused connection, the peer closed it while it sat idle (a
            // keep-alive timeout), its close seen only now: drop it, take the next.
            if connection.is_reused() && closed_while_idle < pool.config().max_size {
                closed_while_idle += 1;
                continue;
            }
            // As safe to retry as a refused connection.
            return Err((Outcome::Retryable(RetryReason::Connect), unsent.to_string()));
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), std::time::SystemTime::now());
        let outcome = Outcome::from_status(status.as_u16(), self.redirects_ok, retry_after);
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            // The host's own headers among them are dropped where the host takes the reply.
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        // The status decides, whatever becomes of the body. One that delivers says the endpoint took
        // the message: the body is its reply, and the message is not sent again. Any other says how
        // the attempt failed: the body is only its error's text, and cut off or not read by the
        // deadline it changes nothing (a 429 still did not take the message, a 404 is still final).
        let taken = outcome == Outcome::Ok;
        // Written out only for a failure (a delivered message's attempt says nothing of its status).
        let answered = || match retry_after.filter(|_| !taken) {
            Some(after) => format!("HTTP {status} (retry after {} s)", after.as_secs()),
            None => format!("HTTP {status}"),
        };
        match taken {
            true => AttemptProgress::mark_current(Step::Answered),
            false => AttemptProgress::fail_current(outcome.clone(), &answered()),
        }
        let failed_or_refused = if taken { Outcome::ReplyRefused } else { outcome.clone() };
        let body = match Limited::new(response.into_body(), self.max_reply_bytes).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) if err.is::<LengthLimitError>() => {
                // The connection is dropped with the rest of the reply unread.
                let problem =
                    format!("{}: a reply of more than {} bytes, not read", answered(), self.max_reply_bytes);
                return Err((failed_or_refused, problem));
            }
            Err(err) => return Err((failed_or_refused, format!("{}: its reply cut off: {err}", answered()))),
        };
        if !connection.sender.is_closed() {
            connection.release();
        }
        match outcome {
            Outcome::Ok if status == hyper::StatusCode::NO_CONTENT => Ok(None),
            Outcome::Ok => {
                let reply = Message {
                    id: message.id,
                    topic: message.topic.clone(),
                    headers,
                    payload: body,
                    priority: message.priority,
                };
                Ok(Some(reply))
            }
            outcome => {
                let text = crate::bounded_text::error_text(&String::from_utf8_lossy(&body));
                Err((outcome, format!("{}: {text}", answered())))
            }
        }
    }
}

/// How long a reply's `Retry-After` asks to wait, from `now`: a number of seconds, or an HTTP date
/// (one already past is no wait). `None` without one that parses.
fn retry_after(headers: &hyper::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let value = headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => Some(httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or_default()),
    }
}

impl Transport for HttpTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.post(address, message))
    }

    /// `GET {health.path}` on a new connection must answer 2xx.
    fn probe<'a>(&'a self, address: &'a str, health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(get(address, &health.path))
    }

    fn close_idle(&self, address: &str) {
        self.pools.close_idle(address);
    }

    fn pool_stats(&self, address: &str) -> Option<PoolStats> {
        self.pools.stats(address)
    }
}

/// A new connection to `address`, its driver spawned as a task that ends
/// when the connection closes or its sender is dropped.
/// Headers the transport writes itself or that frame the request, never
/// copied from a message: a message's `content-length` would cut its body
/// short, a `host` or `transfer-encoding` would contradict the transport's.
const OWN_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    TOPIC_HEADER,
];

fn is_own_header(name: &str) -> bool {
    OWN_HEADERS.iter().any(|own| own.eq_ignore_ascii_case(name))
}

pub(super) async fn connect(address: &str) -> std::io::Result<Connection> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    // The driver owns the stream, so it reads through tokio's own `poll_read`, which
    // needs no system call to learn that a short read emptied the socket.
    let stream = stream.into_std()?;
    let socket = stream.try_clone()?;
    let (sender, driver) =
        http1::handshake(TokioIo::new(TcpStream::from_std(stream)?)).await.map_err(std::io::Error::other)?;
    let address = address.to_owned();
    tokio::spawn(async move {
        if let Err(err) = driver.await {
            tracing::debug!(endpoint = %address, %err, "http connection closed");
        }
    });
    Ok(Connection { sender, socket })
}

/// `GET path` on a new connection to `address`; 2xx passes.
async fn get(address: &str, path: &str) -> Result<(), String> {
    let mut sender = connect(address).await.map_err(|err| format!("connect: {err}"))?.sender;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(Full::new(Bytes::new()))
        .map_err(|err| format!("invalid request: {err}"))?;
    let status = sender.send_request(request).await.map_err(|err| format!("GET {path}: {err}"))?.status();
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("GET {path}: HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::task::{Context, Poll};
    use std::time::SystemTime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};

    /// The stream of a connection whose peer closed it while it sat idle, the close not read yet:
    /// nothing to read until `closed`, then its end (its reader is not woken: the close reaches
    /// the driver only when something else wakes it). It takes whatever is written.
    struct ClosedUnread {
        closed: Arc<AtomicBool>,
    }

    impl tokio::io::AsyncRead for ClosedUnread {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            match self.closed.load(SeqCst) {
                true => Poll::Ready(Ok(())),
                false => Poll::Pending,
            }
        }
    }

    impl tokio::io::AsyncWrite for ClosedUnread {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A server at the returned address answering every request `204`, on as many connections as
    /// it is given; it counts the requests.
    async fn answering_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut read = Vec::new();
                    let mut chunk = [0; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                        read.extend_from_slice(&chunk[..n]);
                        // Each test request has a body of one byte after its head.
                        let head_end = |read: &[u8]| read.windows(4).position(|window| window == b"\r\n\r\n");
                        while let Some(end) = head_end(&read).filter(|end| read.len() >= end + 5) {
                            read.drain(..end + 5);
                            counted.fetch_add(1, SeqCst);
                            stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
                        }
                    }
                });
            }
        });
        (address, requests)
    }

    /// A pooled connection whose peer's close arrives after the pool found it open, but before its
    /// driver wrote the request (a keep-alive peer closing an idle connection just then): hyper hands
    /// the request back unsent, and it goes out on another connection. Before, the attempt failed as
    /// a refused connection, which leaves a healthy endpoint out for its refusal window.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_a_reused_connection_hands_back_unsent_goes_out_on_another() {
        let (address, requests) = answering_server().await;
        let transport = HttpTransport::new(&UrlPath::default(), false, PoolConfig::default());
        let closed = Arc::new(AtomicBool::new(false));
        let (mut sender, driver) =
            http1::handshake(TokioIo::new(ClosedUnread { closed: closed.clone() })).await.unwrap();
        tokio::spawn(driver);
        // The driver has run and waits, idle, for a request or its stream.
        sender.ready().await.unwrap();
        // The socket the pool asks about is open, with nothing to read.
        let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(peer.local_addr().unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let _accepted = peer.accept().unwrap();
        let pool = transport.pools.get(&address);
        pool.acquire(|| async { Ok(Connection { sender, socket }) }).await.unwrap().release();
        closed.store(true, SeqCst);

        let message = Message::new("orders", "x");
        let delivered = transport.post(&address, &message).await;
        assert!(matches!(delivered, Ok(None)), "{delivered:?}");
        assert_eq!(requests.load(SeqCst), 1, "sent once, on a new connection");
        let stats = transport.pool_stats(&address).unwrap();
        assert_eq!((stats.idle, stats.in_use), (1, 0), "the closed connection is gone, the new one kept");
    }

    fn headers(retry_after: &str) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::RETRY_AFTER, retry_after.parse().unwrap());
        headers
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after(&headers("120"), now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&headers(" 0 "), now), Some(Duration::ZERO));
        let later = headers("Sun, 06 Nov 1994 08:50:07 GMT");
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        let past = headers("Sun, 06 Nov 1994 08:00:00 GMT");
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO), "a date gone by asks for no wait");
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&headers("-5"), now), None);
        assert_eq!(retry_after(&hyper::HeaderMap::new(), SystemTime::now()), None);
    }
}
