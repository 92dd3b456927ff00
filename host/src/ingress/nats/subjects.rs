//! Core NATS ingress: a subscription to `[[ingress.nats]]` subjects whose messages the host admits.
//!
//! Each message delivered becomes a message on the topic of its subject, with its NATS headers
//! (except `x-sy-` ones: a publisher cannot set the host's own) and a new unique id (`x-sy-id`),
//! admitted like an HTTP request's, through the same bounded queue: while the queue is full the
//! ingress waits for room and reads nothing more, so the server holds what follows (see below).
//! The messages already read when one is admitted (within a [`BatchRoom`]: up to 256 of them and
//! 1 MiB, as the WebSocket and gRPC ingresses read ahead) are admitted with it, in order: with
//! `durability = "spool"` their records share one fsync, each accepted once it is on disk, so the
//! subscription is read faster than one message per fsync.
//!
//! A message with a reply subject is a request: the host's answer is published to it, carrying
//! `x-sy-id`, and the reply's headers and payload; when the destination gives no reply, an empty
//! payload; when the message was refused, dropped or dead-lettered, an empty payload with
//! `x-sy-error` (the reason) and, for a dead letter, `x-sy-error-code`; when it was delivered but its
//! reply refused, an empty payload with `x-sy-error` and `x-sy-delivered: true`. An answer whose
//! headers and payload are over the server's `max_payload`, as its latest `INFO` on the connection
//! said it (the server would refuse it, closing the connection and dropping what it queued for this
//! host), is refused too: an empty payload with `x-sy-error` naming the limit (and
//! `x-sy-delivered: true` when the message was delivered).
//!
//! With a `queue_group`, the server gives each message to one member of the group: hosts in one
//! group share the work. A graceful stop sends `UNSUB` and a `PING`, and admits everything that
//! arrives before the `PONG` — all the server routed here before it read the `UNSUB` — then
//! publishes the answers still due, and closes.
//!
//! Core NATS has no acknowledgements, so what is not yet admitted is not safe anywhere: a message
//! on its way to (or buffered for) a host that dies is lost, and so is one the server drops because
//! this host read too slowly (the server cuts a client that stays behind its limits, 64 MiB pending
//! or a write blocked 10 s by default, as a slow consumer). A lost connection is made again with
//! backoff, and the subscriptions with it; a message read ahead of a batch when the connection is
//! lost (or a stop cannot send its `UNSUB`) is admitted first, as the host read it. Durable intake
//! is JetStream's, not this ingress's.
//! Plain connections only: a server that requires TLS or authentication is refused at start.
//!
//! A connection is lost when it closes or fails, and also when it dies without a word (the server's
//! machine crashed, or the network dropped the path without a reset), which only silence shows: as
//! NATS clients do, the ingress pings a server silent for `ping_interval_ms` (while it waits to
//! read, not while it waits for room in the queue), and counts the connection lost when two pings
//! in a row went unanswered — nothing heard for three intervals. A write the server does not take
//! whole within an interval counts it lost too, and a server that does not complete the handshake
//! within 5 s is given up on, for the next attempt.

use super::protocol::{self, Delivered, OverMaxPayload, Reader, ServerOp};
use crate::config::NatsIngressConfig;
use crate::host::{BuildError, Host, PendingReply, RequestError, SendError, await_reply};
use crate::ingress::together::BatchRoom;
use crate::message::{ID_HEADER, Message, is_host_header, unique_id};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The longest pause between two attempts to connect again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a stop waits for the server's next operation while it waits for the `PONG` to the
/// `PING` after its `UNSUB`s.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pings in a row the server may leave unanswered; at the next silent interval the connection is
/// counted lost (as in nats.go and async-nats).
const MAX_UNANSWERED_PINGS: u32 = 2;

/// A NATS ingress subscribed to its subjects, ready to serve.
#[derive(Debug)]
pub(super) struct SubjectIngress {
    host: Host,
    config: NatsIngressConfig,
    reader: Reader,
    /// What the reader gave after the last message of a batch (see [`BatchRoom`]), for the reading
    /// loop to hear next.
    read_ahead: Option<Option<io::Result<ServerOp>>>,
    /// The connection's writing half: `PONG`s and `PING`s from the reading loop, and answers from
    /// the tasks awaiting replies. Swapped for the new one's when the connection is made again.
    writer: Arc<tokio::sync::Mutex<Outbound>>,
    /// The connection's [`Outbound::broken`], for the reading loop to wait on without the lock.
    broken: CancellationToken,
    /// Pings sent since the server was last heard from.
    unanswered_pings: u32,
    /// The tasks awaiting a request's reply to publish it; a stop waits for them.
    answers: TaskTracker,
}

impl SubjectIngress {
    /// Connect to the server of `config` and subscribe to its subjects, for `host`.
    pub(super) async fn connect(host: Host, config: NatsIngressConfig) -> Result<SubjectIngress, BuildError> {
        let (reader, outbound) =
            subscribe(&config).await.map_err(|error| BuildError::Nats { url: config.url.clone(), error })?;
        let broken = outbound.broken.clone();
        let writer = Arc::new(tokio::sync::Mutex::new(outbound));
        let answers = TaskTracker::new();
        let read_ahead = None;
        Ok(SubjectIngress { host, config, reader, read_ahead, writer, broken, unanswered_pings: 0, answers })
    }

    /// The settings it serves.
    pub(super) fn config(&self) -> &NatsIngressConfig {
        &self.config
    }

    /// Admit what the server delivers until `shutdown` completes; then stop gracefully (see the
    /// module docs).
    pub(super) async fn serve(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        let connected = loop {
            let heard = tokio::select! {
                biased;
                () = &mut shutdown => break true,
                heard = self.listen() => heard,
            };
            let lost = match heard {
                Heard::Op(op) => self.handle(op).await.err(),
                Heard::Silence => self.ping().await.err(),
                Heard::Lost(err) => Some(err),
            };
            if let Some(err) = lost {
                tracing::warn!(url = %self.config.url, %err, "NATS ingress connection lost; connecting again");
                self.admit_read_ahead().await;
                if !self.reconnect(&mut shutdown).await {
                    break false;
                }
            }
        };
        if connected && let Err(err) = self.unsubscribe().await {
            tracing::warn!(url = %self.config.url, %err, "NATS ingress: unsubscribing failed");
        }
        self.admit_read_ahead().await;
        self.answers.close();
        self.answers.wait().await;
        let _ = self.writer.lock().await.write.shutdown().await;
    }

    /// The server's next operation, or [`Heard::Silence`] when none came for a ping interval.
    async fn listen(&mut self) -> Heard {
        let (broken, ping_interval) = (self.broken.clone(), self.config.ping_interval());
        let next = tokio::select! {
            () = broken.cancelled() => {
                return Heard::Lost(io::Error::other("a write to the server failed or stalled"));
            }
            next = tokio::time::timeout(ping_interval, self.next_op()) => next,
        };
        match next {
            Ok(Some(Ok(op))) => {
                self.unanswered_pings = 0;
                Heard::Op(op)
            }
            Ok(Some(Err(err))) => Heard::Lost(err),
            Ok(None) => Heard::Lost(io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the server")),
            Err(_) => Heard::Silence,
        }
    }

    /// The server's next operation: the one read ahead, if any, else the reader's next.
    async fn next_op(&mut self) -> Option<io::Result<ServerOp>> {
        match self.read_ahead.take() {
            Some(next) => next,
            None => self.reader.next().await,
        }
    }

    /// Ping the server after a silent interval; an error when it left the last pings unanswered.
    async fn ping(&mut self) -> io::Result<()> {
        if self.unanswered_pings == MAX_UNANSWERED_PINGS {
            let silence = self.config.ping_interval() * (MAX_UNANSWERED_PINGS + 1);
            let problem =
                format!("nothing heard from the server for {silence:?}, {MAX_UNANSWERED_PINGS} pings");
            return Err(io::Error::new(io::ErrorKind::TimedOut, problem));
        }
        self.unanswered_pings += 1;
        self.writer.lock().await.write(b"PING\r\n").await
    }

    /// Act on one operation from the server; an error when the connection failed.
    async fn handle(&mut self, op: ServerOp) -> io::Result<()> {
        match op {
            ServerOp::Message(delivered) => self.admit_read(delivered).await,
            ServerOp::Ping => self.writer.lock().await.write(b"PONG\r\n").await?,
            ServerOp::Error(text) => {
                tracing::warn!(url = %self.config.url, %text, "the NATS server reports an error")
            }
            // A server may say INFO again at any time; its latest `max_payload` holds.
            ServerOp::Info(info) => {
                if let Some(max_payload) = info.max_payload {
                    self.writer.lock().await.max_payload = Some(max_payload);
                }
            }
            ServerOp::Pong | ServerOp::Ok => {}
        }
        Ok(())
    }

    /// Admit `first` with the messages after it that are read already (within a [`BatchRoom`]; the
    /// first other operation read, or message past the room, is kept for the reading loop),
    /// waiting for room.
    async fn admit_read(&mut self, first: Delivered) {
        let mut room = BatchRoom::default();
        room.take(first.bytes());
        let mut batch = vec![first];
        loop {
            match self.reader.next().now_or_never() {
                Some(Some(Ok(ServerOp::Message(delivered)))) if room.take(delivered.bytes()) => {
                    batch.push(delivered)
                }
                Some(next) => {
                    self.read_ahead = Some(next);
                    break;
                }
                None => break,
            }
        }
        self.admit(batch).await;
    }

    /// Admit the message read ahead, if one is, as its connection is left (lost, or at a stop that
    /// could not fence it): the host read it, so it goes in, not with the connection. (What else
    /// is read ahead, an operation or the connection's end, goes with it.)
    async fn admit_read_ahead(&mut self) {
        if let Some(Some(Ok(ServerOp::Message(delivered)))) = self.read_ahead.take() {
            self.admit(vec![delivered]).await;
        }
    }

    /// Admit `batch`, waiting for room; for each request, answer once its reply is known.
    async fn admit(&self, batch: Vec<Delivered>) {
        let (mut messages, mut requests) = (Vec::with_capacity(batch.len()), Vec::with_capacity(batch.len()));
        for delivered in batch {
            let mut message = Message::new(delivered.subject, delivered.payload);
            let theirs = delivered.headers.into_iter().filter(|(name, _)| !is_host_header(name));
            message.headers.extend(theirs);
            let id = unique_id();
            message.headers.push((ID_HEADER.to_owned(), id.clone()));
            let (reply, request) = match delivered.reply {
                Some(reply_to) => {
                    let (reply, pending) = crate::pipeline::ReplySender::new();
                    (Some(reply), Some((reply_to, id, pending)))
                }
                None => (None, None),
            };
            messages.push((message, reply));
            requests.push(request);
        }
        for (admitted, request) in
            self.host.send_batch(messages).collect::<Vec<_>>().await.into_iter().zip(requests)
        {
            match request {
                Some((reply_to, id, pending)) => self.answer(reply_to, id, admitted.map(|_| pending)),
                None => {
                    if let Err(err) = admitted {
                        tracing::warn!(url = %self.config.url, %err, "NATS ingress: message refused");
                    }
                }
            }
        }
    }

    /// Publish the answer to the request admitted (or refused) as `admitted` to `reply_to`, once
    /// its reply is known.
    fn answer(&self, reply_to: String, id: String, admitted: Result<PendingReply, SendError>) {
        let writer = self.writer.clone();
        self.answers.spawn(async move {
            let answer = match admitted {
                Ok(pending) => await_reply(pending).await,
                Err(refused) => Err(refused.into()),
            };
            let mut writer = writer.lock().await;
            let sent = match answer_frame(&reply_to, id, answer, writer.max_payload) {
                Ok(frame) => writer.write(&frame).await,
                Err(over) => Err(io::Error::other(over)),
            };
            if let Err(err) = sent {
                tracing::warn!(%reply_to, %err, "NATS ingress: the answer to a request could not be sent");
            }
        });
    }

    /// Connect and subscribe again, with backoff, until it works (`true`) or `shutdown` completes.
    async fn reconnect(&mut self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            let connected = tokio::select! {
                biased;
                () = &mut *shutdown => return false,
                connected = async {
                    tokio::time::sleep(backoff).await;
                    subscribe(&self.config).await
                } => connected,
            };
            match connected {
                Ok((reader, outbound)) => {
                    self.reader = reader;
                    self.broken = outbound.broken.clone();
                    self.unanswered_pings = 0;
                    *self.writer.lock().await = outbound;
                    tracing::info!(url = %self.config.url, "NATS ingress connected again");
                    return true;
                }
                Err(err) => tracing::debug!(url = %self.config.url, %err, "NATS ingress: connecting failed"),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Unsubscribe everything, then admit what arrives before the server's `PONG` to the `PING`
    /// that follows: all it routed here before it read the `UNSUB`s.
    async fn unsubscribe(&mut self) -> io::Result<()> {
        let mut fence: Vec<u8> = (1..=self.config.subjects.len()).flat_map(protocol::unsubscribe).collect();
        fence.extend_from_slice(b"PING\r\n");
        self.writer.lock().await.write(&fence).await?;
        loop {
            let op = tokio::time::timeout(FENCE_TIMEOUT, self.next_op()).await.map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "no PONG from the server after the UNSUBs")
            })?;
            match op {
                Some(op) => match op? {
                    ServerOp::Pong => return Ok(()),
                    op => self.handle(op).await?,
                },
                None => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its PONG")),
            }
        }
    }
}

/// What the reading loop heard from the server.
enum Heard {
    /// An operation.
    Op(ServerOp),
    /// Nothing, for a ping interval.
    Silence,
    /// That the connection is lost: closed, failed, or a write to it failed or stalled.
    Lost(io::Error),
}

/// The writing half of a connection, with a deadline on each write.
#[derive(Debug)]
struct Outbound {
    write: OwnedWriteHalf,
    /// The server's `max_payload`, if it said: as its latest `INFO` on this connection said it.
    max_payload: Option<usize>,
    /// How long one write may take: the ping interval, as a server that takes nothing for that
    /// long is as gone as one that answers no ping.
    deadline: Duration,
    /// Cancelled once a write failed or missed its deadline: it may have cut a frame in the
    /// middle, so nothing more is written, and the reading loop counts the connection lost.
    broken: CancellationToken,
}

impl Outbound {
    /// Write all of `bytes` within the deadline; an error when it failed, or did not end in time,
    /// or an earlier write did not.
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.broken.is_cancelled() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "an earlier write failed or stalled"));
        }
        let stalled =
            || io::Error::new(io::ErrorKind::TimedOut, format!("not written within {:?}", self.deadline));
        let written = tokio::time::timeout(self.deadline, self.write.write_all(bytes))
            .await
            .unwrap_or_else(|_| Err(stalled()));
        if written.is_err() {
            self.broken.cancel();
        }
        written
    }
}

/// A connection to the server of `config`, subscribed to its subjects once it returns (the
/// subscription ids count from 1 in their order).
async fn subscribe(config: &NatsIngressConfig) -> io::Result<(Reader, Outbound)> {
    let subscriptions = config.subjects.iter().enumerate();
    let subscriptions: Vec<u8> = subscriptions
        .flat_map(|(at, subject)| protocol::subscribe(subject, config.queue_group.as_deref(), at + 1))
        .collect();
    let (reader, write, info) = protocol::connect(&config.url, &subscriptions).await?;
    let (deadline, broken) = (config.ping_interval(), CancellationToken::new());
    Ok((reader, Outbound { write, max_payload: info.max_payload, deadline, broken }))
}

/// The frame publishing `answer` to `reply_to`, with `id`: see the module docs. One over
/// `max_payload` is replaced by an error answer; an error when even that is over it.
fn answer_frame(
    reply_to: &str,
    id: String,
    answer: Result<Option<Message>, RequestError>,
    max_payload: Option<usize>,
) -> Result<Vec<u8>, OverMaxPayload> {
    let delivered = matches!(answer, Ok(_) | Err(RequestError::ReplyRefused { .. }));
    let (headers, payload) = answer_of(id.clone(), answer);
    protocol::publish(reply_to, &headers, &payload, max_payload).or_else(|over| {
        let mut headers = vec![(ID_HEADER.to_owned(), id)];
        if delivered {
            headers.push(("x-sy-delivered".to_owned(), "true".to_owned()));
        }
        headers.push(("x-sy-error".to_owned(), format!("its answer was refused: {over}")));
        protocol::publish(reply_to, &headers, &[], max_payload)
    })
}

/// The headers and payload published to a request's reply subject: see the module docs.
fn answer_of(id: String, answer: Result<Option<Message>, RequestError>) -> (Vec<(String, String)>, Bytes) {
    let mut headers = vec![(ID_HEADER.to_owned(), id)];
    match answer {
        Ok(Some(reply)) => {
            headers.extend(reply.headers.into_iter().filter(|(name, _)| name != ID_HEADER));
            (headers, reply.payload)
        }
        Ok(None) => (headers, Bytes::new()),
        Err(err) => {
            match &err {
                RequestError::DeadLettered(reason) | RequestError::ReplyFailed(reason) => {
                    headers.push(("x-sy-error-code".to_owned(), reason.code().to_owned()));
                }
                RequestError::ReplyRefused { .. } => {
                    headers.push(("x-sy-delivered".to_owned(), "true".to_owned()))
                }
                _ => {}
            }
            headers.push(("x-sy-error".to_owned(), err.to_string()));
            (headers, Bytes::new())
        }
    }
}
