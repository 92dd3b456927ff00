//! The `websocket` transport: one client connection per endpoint (`ws://ADDRESS{path}`, or
//! `wss://ADDRESS{path}` with `tls = true`), one frame per message.
//!
//! `tls = true` speaks TLS (rustls, `ring` provider) and checks the server's certificate against the
//! system's root certificates, or, with `ca_file = "ca.pem"`, against the CA certificates of that PEM
//! file only (a private CA; a relative path is from the working directory). The certificate must name
//! the endpoint's host (a DNS name, or an IP address as a SAN). A CA file that cannot be read or holds
//! no certificate is a configuration error. It is read again at each reload, once: other certificates
//! there (a CA rotated in place, its path the same) rebuild the destination, whose connections then
//! trust them, as that reading found them (a file changing meanwhile is read at the next reload). A
//! handshake that fails (a certificate not trusted, an
//! upgrade refused) counts as an attempt that nobody took ([`RetryReason::Handshake`]): it is retried,
//! counts against the endpoint's breaker, and after the last attempt dead-letters the message
//! (`delivery-failed`) with the TLS error as its last error; the health probe makes the same handshake.
//! An attempt that the destination's `timeout_ms` cuts before its frame goes out — while it connects,
//! makes either handshake, or waits for another attempt's handshake or for its turn to write — sent
//! nothing: it is a connect failure (or a wait), never "sent, no answer", so even a message of a
//! destination that is not `idempotent` goes again rather than being dead-lettered as uncertain.
//!
//! `frames = "payload"` (the default) sends the payload alone — a text frame when it is UTF-8, a binary
//! frame otherwise — and a message counts as delivered once its frame is written and flushed (there is
//! no reply). So no frame goes out on a connection its peer closed, as far as this host can know:
//! before writing one, an attempt looks at the connection's socket itself (the task reading it may
//! not have run since the close came) and, for a payload, first lets that task read what the socket
//! holds (a pong, or the peer's Close). A close seen so, or a frame tungstenite refuses to send as
//! the connection closes, sent nothing: the attempt fails as a refused connection does, and the
//! message goes on the next connection.
//!
//! `frames = "envelope"` sends a text frame holding `{"id": N, "topic": …, "headers": [[k, v], …],
//! "priority": …, "payload": "…"}` (`payload_base64` for bytes), `id` unique per attempt;
//! the peer answers each, in any order, with a text frame in the [`answers`](super::answers) format.
//! An answer whose reply is past the host's `max_message_bytes` (its topic, headers and payload), or
//! one that cannot be read but names its id (a field of the wrong type or shape), delivered the
//! message all the same: its reply is refused ([`Outcome::ReplyRefused`]). A frame
//! longer than the JSON of any message within that ([`largest_json`]) is refused on its header,
//! unread, and closes the connection.
//!
//! The connection is opened at the first attempt and again, after a backoff with jitter
//! ([`restart`](super::restart)), once it closed; attempts meanwhile fail as refused connections do.
//! Every `ping_ms` the transport pings; a connection that shows no sign of life (no frame, no pong)
//! for two intervals is closed. A connection that closes fails the envelopes it held (retried as the
//! destination's `idempotent` allows). One whose peer answers pings but no envelope is replaced: an
//! envelope whose attempt `timeout_ms` cuts as it waits for its answer, while the connection brought
//! no answer at all since the envelope went out, retires it (see
//! [`Awaited`](super::pending::Awaited)): the next attempt
//! opens a new one, and the retired one closes once no envelope it holds waits any more. Whoever
//! closes it (the peer, the silence, the destination going, a retirement, with or without pings), it
//! ends with the close handshake: the peer's Close answered, or one sent, and the TCP connection
//! closed once the peer ends it, or [`CLOSE_WAIT`] later.

use super::answers::{Answer, read_answer};
use super::pending::Pending;
use super::restart::{NotRunning, Peer, Restarting};
use super::tcp::{Unread, unread};
use super::tls::TlsClient;
use super::{
    AttemptFuture, AttemptProgress, AttemptResult, ProbeFuture, Step, Transport, TransportContext,
    TransportOptions, Wait, reply_within,
};
use crate::config::{DestinationConfig, HealthSettings, UrlPath};
use crate::message::{Message, largest_json};
use crate::resilience::{Outcome, RetryReason};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sending half of a connection, shared by its attempts and its pings; taken (`None`) once the
/// connection closes, so that dropping it with the reading half closes the TCP connection.
type Writer = Arc<tokio::sync::Mutex<Option<Outgoing>>>;

/// The sending half of a connection, and a second handle on its TCP socket (under TLS, if any): what
/// the peer sent and nobody read yet — its Close, its end of the connection — is seen there before
/// a frame goes out.
#[derive(Debug)]
struct Outgoing {
    frames: SplitSink<Socket, Frame>,
    socket: std::net::TcpStream,
}

/// Longest wait for the peer's part of the close handshake: a peer gone silent holds no connection
/// longer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// `options = {..}` of a `websocket` destination.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(try_from = "WebSocketSettings")]
pub struct WebSocketOptions {
    /// The path connected to on every endpoint (default `/`).
    pub path: UrlPath,
    /// What a frame holds: the payload alone, or a JSON envelope with an id the peer answers.
    pub frames: Framing,
    /// Milliseconds between pings; 0 sends none.
    pub ping_ms: u64,
    /// `wss://`, trusting these roots (`tls = true`, `ca_file`); `ws://` when `None`.
    pub tls: Option<TlsClient>,
}

/// The options as written, before the TLS trust they name is loaded.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct WebSocketSettings {
    path: UrlPath,
    frames: Framing,
    ping_ms: u64,
    tls: bool,
    ca_file: Option<PathBuf>,
}

impl Default for WebSocketSettings {
    fn default() -> WebSocketSettings {
        let (path, frames) = (UrlPath::default(), Framing::Payload);
        WebSocketSettings { path, frames, ping_ms: 15_000, tls: false, ca_file: None }
    }
}

impl TryFrom<WebSocketSettings> for WebSocketOptions {
    type Error = String;

    fn try_from(settings: WebSocketSettings) -> Result<WebSocketOptions, String> {
        let WebSocketSettings { path, frames, ping_ms, tls, ca_file } = settings;
        let tls = match (tls, ca_file) {
            (false, None) => None,
            (false, Some(_)) => return Err("ca_file is for TLS connections: give tls = true too".into()),
            (true, None) => Some(TlsClient::system_roots().map_err(|err| err.to_string())?),
            (true, Some(file)) => Some(TlsClient::ca_file(&file).map_err(|err| err.to_string())?),
        };
        Ok(WebSocketOptions { path, frames, ping_ms, tls })
    }
}

/// What a `websocket` destination's frames hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// The payload: text when UTF-8, binary otherwise; delivered once written.
    Payload,
    /// A JSON envelope the peer answers by id.
    Envelope,
}

impl TransportOptions for WebSocketOptions {
    /// The certificates of the roots trusted, read again at each reload: a CA file rotated in
    /// place rebuilds the destination.
    fn files_digest(&self) -> Option<String> {
        self.tls.as_ref().map(|tls| tls.roots_digest().to_owned())
    }
}

/// The `websocket` transport of `destination`; no connection opens before the first attempt.
pub(super) fn build(
    options: WebSocketOptions,
    destination: &DestinationConfig,
    context: &TransportContext,
) -> Arc<dyn Transport> {
    let links =
        destination.endpoints.iter().map(|endpoint| (endpoint.address.clone(), Restarting::default()));
    let max_reply_bytes = context.max_message_bytes;
    Arc::new(WebSocketTransport { options, links: links.collect(), max_reply_bytes })
}

/// WebSocket client connections, one per endpoint; see the module docs.
#[derive(Debug)]
pub struct WebSocketTransport {
    options: WebSocketOptions,
    links: HashMap<String, Restarting<Link>>,
    /// Largest reply taken (its topic, headers and payload): `host.max_message_bytes`.
    max_reply_bytes: usize,
}

/// One open connection.
#[derive(Debug)]
struct Link {
    /// Shared with the task sending pings, taken by the task reading once the connection closes.
    sink: Writer,
    /// Envelopes sent and not answered yet; closed once the connection closed.
    pending: Arc<Pending<Answer>>,
    /// Cancelled to close the connection (the destination went, or it was retired and nobody waits
    /// on it any more), and once it closes: its pings stop.
    closing: CancellationToken,
    /// What the task reading the connection tells the attempts sending on it.
    reading: Arc<Reading>,
}

/// What the task reading a connection tells the attempts sending on it.
#[derive(Debug, Default)]
struct Reading {
    /// Notified each time it has read all the socket held and waits for more.
    caught_up: Notify,
}

impl Peer for Link {
    fn ended(&self) -> bool {
        self.pending.is_closed()
    }
}

impl Link {
    /// Whether a frame may go out on the connection of `socket` now: the peer has not closed it,
    /// neither as the task reading it saw nor in the socket itself (that task may not have run
    /// since the close came). A payload counts as delivered once written, so what the socket holds
    /// unread (a pong, or the peer's Close) is read first: this waits for the reading task to catch
    /// up. An envelope's answer decides its delivery, and bytes unread are answers: they hold
    /// nothing back.
    async fn open_for(&self, socket: &std::net::TcpStream, frames: Framing) -> bool {
        loop {
            let caught_up = self.reading.caught_up.notified();
            tokio::pin!(caught_up);
            caught_up.as_mut().enable();
            if self.ended() {
                return false;
            }
            match (unread(socket), frames) {
                (Unread::Nothing, _) | (Unread::Bytes, Framing::Envelope) => return true,
                (Unread::Closed, _) => return false,
                (Unread::Bytes, Framing::Payload) => {}
            }
            tokio::select! {
                () = caught_up => {}
                () = self.closing.cancelled() => return false,
            }
        }
    }
}

impl WebSocketTransport {
    /// The connection to `address`, opened now if none is open and its backoff is over. Until it is
    /// given, the attempt has sent nothing: it waits for another attempt's handshake ([`Step::Waiting`])
    /// or makes its own ([`Step::Connecting`]), so a deadline that cuts it there cuts no delivery.
    async fn link(&self, address: &str) -> Result<Arc<Link>, NotRunning<Unconnected>> {
        let Some(restarting) = self.links.get(address) else {
            return Err(NotRunning::Failed(Unconnected::Refused(format!("no endpoint {address}"))));
        };
        AttemptProgress::mark_current(Step::Waiting(Wait::Handshake));
        let connect = || {
            AttemptProgress::mark_current(Step::Connecting);
            self.connect(address)
        };
        restarting.get(connect).await
    }

    /// A WebSocket connection to `address`, through TLS when the options say so.
    async fn open(&self, address: &str) -> Result<Socket, Unconnected> {
        let scheme = if self.options.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{address}{}", &*self.options.path);
        let tcp =
            TcpStream::connect(address).await.map_err(|err| Unconnected::Refused(format!("{url}: {err}")))?;
        tcp.set_nodelay(true).map_err(|err| Unconnected::Refused(format!("{url}: {err}")))?;
        let connector = self.options.tls.as_ref().map(|tls| Connector::Rustls(tls.config()));
        let largest = Some(largest_json(self.max_reply_bytes));
        let limits = WebSocketConfig::default().max_frame_size(largest).max_message_size(largest);
        let handshake =
            tokio_tungstenite::client_async_tls_with_config(&url, tcp, Some(limits), connector).await;
        let failed = |err| match (&self.options.tls, tls_error(&err)) {
            (Some(tls), Some(err)) => {
                format!("{url}: TLS handshake failed: {err} (trusting {})", tls.trusts())
            }
            _ => format!("{url}: handshake failed: {err}"),
        };
        handshake.map(|(socket, _)| socket).map_err(|err| Unconnected::Handshake(failed(err)))
    }

    async fn connect(&self, address: &str) -> Result<Link, Unconnected> {
        let socket = self.open(address).await?;
        let tcp = socket.get_ref().get_ref().as_fd().try_clone_to_owned();
        let tcp = tcp.map_err(|err| Unconnected::Refused(format!("{address}: {err}")))?;
        let (frames, stream) = socket.split();
        let link = Link {
            sink: Arc::new(tokio::sync::Mutex::new(Some(Outgoing { frames, socket: tcp.into() }))),
            pending: Arc::new(Pending::default()),
            closing: CancellationToken::new(),
            reading: Arc::default(),
        };
        let ping = (self.options.ping_ms > 0).then(|| Duration::from_millis(self.options.ping_ms));
        let (sink, pending, closing) = (link.sink.clone(), link.pending.clone(), link.closing.clone());
        let reading = link.reading.clone();
        let address = address.to_owned();
        tokio::spawn(async move {
            let mut stream = stream;
            let why = read_frames(&mut stream, &pending, &closing, &reading, ping).await;
            pending.close();
            // The pings stop, one stuck in sending (a peer that reads nothing) letting go of the sink.
            closing.cancel();
            tracing::warn!(endpoint = %address, "websocket closed: {why}");
            close(&sink, stream).await;
        });
        if let Some(ping) = ping {
            tokio::spawn(send_pings(link.sink.clone(), link.pending.clone(), link.closing.clone(), ping));
        }
        Ok(link)
    }

    async fn exchange(&self, address: &str, message: &Message) -> AttemptResult {
        let refused = |err| (Outcome::Retryable(RetryReason::Connect), err);
        let link = self.link(address).await.map_err(|err| match err {
            NotRunning::Failed(Unconnected::Handshake(err)) => {
                (Outcome::Retryable(RetryReason::Handshake), err)
            }
            err => refused(err.to_string()),
        })?;
        let awaited = match self.options.frames {
            Framing::Payload => None,
            Framing::Envelope => {
                let awaited = link.pending.await_answer(&link.closing, None);
                Some(awaited.ok_or_else(|| refused("the connection closed".into()))?)
            }
        };
        let frame = match &awaited {
            None => match std::str::from_utf8(&message.payload) {
                Ok(text) => Frame::text(text),
                Err(_) => Frame::binary(message.payload.clone()),
            },
            Some(awaited) => Frame::text(envelope(awaited.id(), message)),
        };
        // Waiting for the sink (an attempt or a ping sending), or for the reading task to read what
        // the peer sent, sends nothing either.
        let sent = {
            let mut sink = link.sink.lock().await;
            let Some(outgoing) = sink.as_mut() else { return Err(refused("the connection closed".into())) };
            if !link.open_for(&outgoing.socket, self.options.frames).await {
                return Err(refused("the peer closed the connection".into()));
            }
            AttemptProgress::mark_current(Step::MaySend);
            outgoing.frames.send(frame).await
        };
        if let Err(err) = sent {
            link.pending.close();
            return Err((Outcome::Retryable(send_failure(&err)), format!("sending the frame: {err}")));
        }
        let Some(awaited) = awaited else { return Ok(None) };
        let answer: Option<Answer> = awaited.answer().await;
        let closed =
            || (Outcome::Retryable(RetryReason::Reset), "the connection closed before an answer".to_owned());
        reply_within(answer.ok_or_else(closed)?.into_result(message)?, self.max_reply_bytes)
    }
}

/// Why no connection could be opened.
#[derive(Debug)]
enum Unconnected {
    /// No TCP connection (refused, unreachable).
    Refused(String),
    /// Connected, but the TLS or WebSocket handshake failed.
    Handshake(String),
}

impl std::fmt::Display for Unconnected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unconnected::Refused(why) | Unconnected::Handshake(why) => f.write_str(why),
        }
    }
}

/// The TLS error inside a handshake's error, if that is what it is.
fn tls_error(err: &tokio_tungstenite::tungstenite::Error) -> Option<&rustls::Error> {
    match err {
        tokio_tungstenite::tungstenite::Error::Io(err) => err.get_ref()?.downcast_ref(),
        _ => None,
    }
}

/// How sending a frame failed: refused before any of it was written (tungstenite saw the connection
/// closing or closed), it is as safe to retry as a refused connection; otherwise part of it may have
/// gone out.
fn send_failure(err: &tokio_tungstenite::tungstenite::Error) -> RetryReason {
    use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
    match err {
        Error::AlreadyClosed | Error::Protocol(ProtocolError::SendAfterClosing) => RetryReason::Connect,
        _ => RetryReason::Reset,
    }
}

/// The envelope of `message`, sent with `id`.
fn envelope(id: u64, message: &Message) -> String {
    let mut envelope = serde_json::json!({
        "id": id,
        "topic": message.topic,
        "headers": message.headers,
        "priority": message.priority,
    });
    let (field, payload) = crate::message::payload_field(&message.payload);
    envelope[field] = payload;
    envelope.to_string()
}

/// Route the answers `stream` brings until it ends, the connection is closed, or it shows no sign of
/// life for two ping intervals; why it stopped. Tells the attempts when it caught up (see [`Reading`]).
async fn read_frames(
    stream: &mut SplitStream<Socket>,
    pending: &Pending<Answer>,
    closing: &CancellationToken,
    reading: &Reading,
    ping: Option<Duration>,
) -> String {
    let mut last_sign = Instant::now();
    loop {
        let silence = ping.map(|ping| last_sign + ping * 2);
        let next = std::future::poll_fn(|cx| {
            let next = stream.poll_next_unpin(cx);
            if next.is_pending() {
                reading.caught_up.notify_waiters();
            }
            next
        });
        let frame = tokio::select! {
            frame = next => frame,
            () = closing.cancelled() => {
                return "closed by the host (its destination went, or it answered nothing in time)".into();
            }
            () = sleep_until(silence) => return "no pong or frame for two ping intervals".into(),
        };
        last_sign = Instant::now();
        match frame {
            Some(Ok(Frame::Text(text))) => match read_answer(text.as_bytes(), None) {
                Ok(answer) => drop(pending.answer(answer.id, answer)),
                Err(err) => tracing::debug!("a frame that is no answer: {err}"),
            },
            Some(Ok(Frame::Close(close))) => return format!("closed by the peer: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return err.to_string(),
            None => return "the stream ended".into(),
        }
    }
}

/// Ping on `sink` every `every` until the connection is closing: a ping waiting for the sink or
/// stuck in sending (a peer that reads nothing) is given up then, so that closing gets the sink.
async fn send_pings(
    sink: Writer,
    pending: Arc<Pending<Answer>>,
    closing: CancellationToken,
    every: Duration,
) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    let pings = async {
        loop {
            ticks.tick().await;
            let mut sink = sink.lock().await;
            let Some(outgoing) = sink.as_mut().filter(|_| !pending.is_closed()) else { return };
            if outgoing.frames.send(Frame::Ping(Default::default())).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = pings => {}
        () = closing.cancelled() => {}
    }
}

/// End the connection with the close handshake, whoever began it: send a Close (or, when the peer
/// sent one, flush the reply tungstenite queued as it read it), read until the peer ends the
/// connection, then drop both halves, which closes it on this side too. Waits at most
/// [`CLOSE_WAIT`].
async fn close(sink: &tokio::sync::Mutex<Option<Outgoing>>, mut stream: SplitStream<Socket>) {
    let handshake = async {
        let Some(mut outgoing) = sink.lock().await.take() else { return };
        let _ = outgoing.frames.close().await;
        while let Some(Ok(_)) = stream.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, handshake).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Drop for WebSocketTransport {
    /// Close every open connection.
    fn drop(&mut self) {
        for link in self.links.values().filter_map(Restarting::running) {
            link.closing.cancel();
        }
    }
}

impl Transport for WebSocketTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.exchange(address, message))
    }

    /// A fresh connection with both handshakes (TLS, WebSocket), closed at once.
    fn probe<'a>(&'a self, address: &'a str, _health: &'a HealthSettings) -> ProbeFuture<'a> {
        Box::pin(async move {
            let mut socket = self.open(address).await.map_err(|err| err.to_string())?;
            let _ = socket.close(None).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A safety net only: the peers below wait on the socket, never on the clock.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A transport to `address` sending payload frames and no pings.
    fn transport(address: &str) -> WebSocketTransport {
        let options =
            WebSocketOptions { path: UrlPath::default(), frames: Framing::Payload, ping_ms: 0, tls: None };
        let links = [(address.to_owned(), Restarting::default())].into();
        WebSocketTransport { options, links, max_reply_bytes: 1 << 20 }
    }

    /// A listener on 127.0.0.1 and its address.
    async fn listener() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, address)
    }

    /// The WebSocket of the next connection `listener` accepts.
    async fn accepted(listener: &tokio::net::TcpListener) -> WebSocketStream<TcpStream> {
        let (stream, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(stream).await.unwrap()
    }

    /// The next frame `socket` reads, within [`PATIENCE`].
    async fn next_frame(socket: &mut WebSocketStream<TcpStream>) -> Option<Frame> {
        let next = tokio::time::timeout(PATIENCE, socket.next()).await;
        next.expect("a frame, or the end of the stream, in time").and_then(Result::ok)
    }

    #[tokio::test]
    async fn a_close_from_the_peer_is_answered_and_the_connection_closed() {
        let (listener, address) = listener().await;
        let (transport, message) = (transport(&address), Message::new("jobs", "one"));
        let (attempt, mut socket) = tokio::join!(transport.attempt(&address, &message), accepted(&listener));
        assert_eq!(attempt, Ok(None));
        assert_eq!(next_frame(&mut socket).await, Some(Frame::text("one")));
        socket.close(None).await.unwrap();
        assert!(matches!(next_frame(&mut socket).await, Some(Frame::Close(_))), "the close answered");
        // As a server does once the handshake is over, end the connection first.
        socket.get_mut().shutdown().await.unwrap();
        let mut rest = [0; 16];
        let read = tokio::time::timeout(PATIENCE, socket.get_mut().read(&mut rest)).await;
        assert_eq!(read.expect("the connection closed in time").unwrap(), 0, "then the connection closed");
    }

    /// Wait, blocking the thread, until the host's end of the connection of `peer` has the peer's
    /// FIN (it is in CLOSE_WAIT, as `/proc/net/tcp` tells): a test on one thread runs no task
    /// meanwhile, so the host's reading task has not read it.
    fn until_the_host_socket_holds_the_close(peer: &TcpStream) {
        let (host, peer) = (peer.peer_addr().unwrap().port(), peer.local_addr().unwrap().port());
        let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
        let start = std::time::Instant::now();
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            let close_wait =
                table.lines().skip(1).map(|line| line.split_whitespace().collect::<Vec<_>>()).any(|fields| {
                    port(fields[1]) == Some(host) && port(fields[2]) == Some(peer) && fields[3] == "08"
                });
            if close_wait {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "the peer's FIN reached the host's socket in time");
            std::thread::yield_now();
        }
    }

    #[tokio::test]
    async fn a_payload_is_never_written_into_a_connection_the_peer_closed() {
        let (listener, address) = listener().await;
        let transport = transport(&address);
        let (one, two) = (Message::new("jobs", "one"), Message::new("jobs", "two"));
        let (attempt, mut socket) = tokio::join!(transport.attempt(&address, &one), accepted(&listener));
        assert_eq!(attempt, Ok(None));
        assert_eq!(next_frame(&mut socket).await, Some(Frame::text("one")));
        // The peer closes: its Close, then its end of the connection, in the host's socket before
        // the host's reading task could read them.
        socket.close(None).await.unwrap();
        socket.get_mut().shutdown().await.unwrap();
        until_the_host_socket_holds_the_close(socket.get_ref());
        let (outcome, problem) = match transport.attempt(&address, &two).await {
            Ok(reply) => panic!("counted delivered into the closed connection: {reply:?}"),
            Err(failed) => failed,
        };
        assert_eq!(outcome, Outcome::Retryable(RetryReason::Connect), "nothing sent: {problem}");
        assert!(
            matches!(next_frame(&mut socket).await, Some(Frame::Close(_))),
            "the closed connection got the host's Close, no frame"
        );
        assert_eq!(next_frame(&mut socket).await, None);
        // Once the host connects again, the message goes out on the new connection.
        let again = async {
            loop {
                match transport.attempt(&address, &two).await {
                    Ok(reply) => return reply,
                    Err((Outcome::Retryable(RetryReason::Connect), _)) => {}
                    Err(failed) => panic!("{failed:?}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (sent, mut socket) = tokio::join!(tokio::time::timeout(PATIENCE, again), accepted(&listener));
        assert_eq!(sent.expect("sent again in time"), None);
        assert_eq!(next_frame(&mut socket).await, Some(Frame::text("two")));
    }

    #[tokio::test]
    async fn a_frame_refused_by_a_closing_or_closed_connection_was_not_sent() {
        let (listener, address) = listener().await;
        let connect = tokio_tungstenite::connect_async(format!("ws://{address}/"));
        let (connected, mut peer) = tokio::join!(connect, accepted(&listener));
        let (mut socket, _) = connected.unwrap();
        peer.close(None).await.unwrap();
        assert!(matches!(socket.next().await, Some(Ok(Frame::Close(_)))), "the peer's Close read");
        let closing = socket.send(Frame::text("late")).await.unwrap_err();
        assert_eq!(send_failure(&closing), RetryReason::Connect, "{closing}");
        // The close handshake ends: the host's Close, then the peer's end of the connection.
        let peer_ends = async move {
            let frame = next_frame(&mut peer).await;
            drop(peer);
            frame
        };
        let (end, frame) = tokio::join!(socket.next(), peer_ends);
        assert!(matches!(frame, Some(Frame::Close(_))), "no frame before the Close: {frame:?}");
        assert!(!matches!(end, Some(Ok(_))), "{end:?}");
        let closed = socket.send(Frame::text("later")).await.unwrap_err();
        assert_eq!(send_failure(&closed), RetryReason::Connect, "{closed}");
    }

    #[tokio::test]
    async fn a_connection_retired_as_stuck_still_brings_the_answers_awaited_then_closes() {
        let (listener, address) = listener().await;
        let mut transport = transport(&address);
        transport.options.frames = Framing::Envelope;
        let (stuck, waits) = (Message::new("jobs", "stuck"), Message::new("jobs", "waits"));
        let mut waiting = transport.attempt(&address, &waits);
        // Both envelopes go out; the peer answers neither until the first one's attempt is cut, as
        // its deadline would.
        let (cut, cut_off) = tokio::sync::oneshot::channel();
        let cut_attempt = async {
            tokio::select! {
                answer = transport.attempt(&address, &stuck) => panic!("no answer came: {answer:?}"),
                _ = cut_off => {}
            }
        };
        let peer = async {
            let mut socket = accepted(&listener).await;
            let mut envelopes = Vec::new();
            for _ in 0..2 {
                let frame = next_frame(&mut socket).await.expect("an envelope");
                envelopes.push(serde_json::from_str::<serde_json::Value>(frame.to_text().unwrap()).unwrap());
            }
            cut.send(()).unwrap();
            (socket, envelopes)
        };
        let ((), (mut socket, envelopes)) = tokio::select! {
            both = async { tokio::join!(cut_attempt, peer) } => both,
            answer = &mut waiting => panic!("no answer came: {answer:?}"),
        };
        let awaited = envelopes.iter().find(|envelope| envelope["payload"] == "waits").unwrap();
        let answer = serde_json::json!({ "id": awaited["id"], "payload": "answered" });
        socket.send(Frame::text(answer.to_string())).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, waiting).await.expect("answered in time");
        assert_eq!(answer.unwrap().expect("a reply").payload, "answered");
        assert!(
            matches!(next_frame(&mut socket).await, Some(Frame::Close(_))),
            "closed once no envelope waits on it"
        );
    }

    #[tokio::test]
    async fn a_connection_to_a_peer_that_reads_nothing_is_closed_though_a_ping_is_stuck_sending() {
        let (listener, address) = listener().await;
        let mut transport = transport(&address);
        transport.options.ping_ms = 200;
        let message = Message::new("jobs", vec![b'x'; 1 << 20]);
        let (first, mut socket) = tokio::join!(transport.attempt(&address, &message), accepted(&listener));
        assert_eq!(first, Ok(None));
        // The peer reads nothing and sends a text frame every 20 ms (a sign of life), until its
        // connection is closed.
        let peer = tokio::spawn(async move {
            while socket.get_mut().write_all(&[0x81, 1, b'x']).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        // Attempts fill the buffers until one is stuck sending, given up as a deadline does; a ping
        // takes the sink next, and is stuck sending too.
        let link = transport.links[&address].running().expect("the connection");
        let stuck = async {
            loop {
                let attempt = transport.attempt(&address, &message);
                match tokio::time::timeout(Duration::from_millis(200), attempt).await {
                    Ok(sent) => assert_eq!(sent, Ok(None)),
                    Err(_) => break,
                }
            }
            while link.sink.try_lock().is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(PATIENCE, stuck).await.expect("a ping stuck sending");
        // The destination goes: the connection closes, at most CLOSE_WAIT later (the ping lets go).
        drop((link, transport));
        tokio::time::timeout(PATIENCE, peer).await.expect("the connection closed in time").unwrap();
    }

    #[tokio::test]
    async fn a_transport_dropped_without_pings_closes_its_connections() {
        let (listener, address) = listener().await;
        let (transport, message) = (transport(&address), Message::new("jobs", "one"));
        let (attempt, mut socket) = tokio::join!(transport.attempt(&address, &message), accepted(&listener));
        assert_eq!(attempt, Ok(None));
        assert_eq!(next_frame(&mut socket).await, Some(Frame::text("one")));
        drop(transport);
        assert!(
            matches!(next_frame(&mut socket).await, Some(Frame::Close(_))),
            "a close, not a dropped socket"
        );
    }
}
