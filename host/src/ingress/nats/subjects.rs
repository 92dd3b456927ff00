//! Core NATS ingress: a subscription to `[[ingress.nats]]` subjects whose messages the host admits.
//!
//! Each message delivered becomes a message on the topic of its subject, with its NATS headers
//! (except `x-sy-` ones: a publisher cannot set the host's own) and a new unique id (`x-sy-id`),
//! admitted like an HTTP request's, through the same bounded queue: while the queue is full the
//! ingress waits for room and reads nothing more, so the server holds what follows (see below).
//!
//! A message with a reply subject is a request: the host's answer is published to it, carrying
//! `x-sy-id`, and the reply's headers and payload; when the destination gives no reply, an empty
//! payload; when the message was refused, dropped or dead-lettered, an empty payload with
//! `x-sy-error` (the reason) and, for a dead letter, `x-sy-error-code`; when it was delivered but its
//! reply refused, an empty payload with `x-sy-error` and `x-sy-delivered: true`.
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
//! backoff, and the subscriptions with it. Durable intake is JetStream's, not this ingress's.
//! Plain connections only: a server that requires TLS or authentication is refused at start.

use super::protocol::{self, Delivered, Reader, ServerOp};
use crate::config::NatsIngressConfig;
use crate::host::{BuildError, Host, RequestError, await_reply};
use crate::message::{ID_HEADER, Message, is_host_header, unique_id};
use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::task::TaskTracker;

/// The longest pause between two attempts to connect again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How long a stop waits for the server's next operation while it waits for the `PONG` to the
/// `PING` after its `UNSUB`s.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// A NATS ingress subscribed to its subjects, ready to serve.
#[derive(Debug)]
pub(super) struct SubjectIngress {
    host: Host,
    config: NatsIngressConfig,
    reader: Reader,
    /// The connection's writing half: `PONG`s from the reading loop, and answers from the tasks
    /// awaiting replies. Swapped for the new one's when the connection is made again.
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    /// The tasks awaiting a request's reply to publish it; a stop waits for them.
    answers: TaskTracker,
}

impl SubjectIngress {
    /// Connect to the server of `config` and subscribe to its subjects, for `host`.
    pub(super) async fn connect(host: Host, config: NatsIngressConfig) -> Result<SubjectIngress, BuildError> {
        let (reader, writer) =
            subscribe(&config).await.map_err(|error| BuildError::Nats { url: config.url.clone(), error })?;
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        Ok(SubjectIngress { host, config, reader, writer, answers: TaskTracker::new() })
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
            let op = tokio::select! {
                biased;
                () = &mut shutdown => break true,
                op = self.reader.next() => op,
            };
            let lost = match op {
                Some(Ok(op)) => self.handle(op).await.err(),
                Some(Err(err)) => Some(err),
                None => Some(io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the server")),
            };
            if let Some(err) = lost {
                tracing::warn!(url = %self.config.url, %err, "NATS ingress connection lost; connecting again");
                if !self.reconnect(&mut shutdown).await {
                    break false;
                }
            }
        };
        if connected && let Err(err) = self.unsubscribe().await {
            tracing::warn!(url = %self.config.url, %err, "NATS ingress: unsubscribing failed");
        }
        self.answers.close();
        self.answers.wait().await;
        let _ = self.writer.lock().await.shutdown().await;
    }

    /// Act on one operation from the server; an error when the connection failed.
    async fn handle(&self, op: ServerOp) -> io::Result<()> {
        match op {
            ServerOp::Message(delivered) => self.admit(delivered).await,
            ServerOp::Ping => self.writer.lock().await.write_all(b"PONG\r\n").await?,
            ServerOp::Error(text) => {
                tracing::warn!(url = %self.config.url, %text, "the NATS server reports an error")
            }
            ServerOp::Pong | ServerOp::Info(_) | ServerOp::Ok => {}
        }
        Ok(())
    }

    /// Admit `delivered`, waiting for room; for a request, answer once its reply is known.
    async fn admit(&self, delivered: Delivered) {
        let mut message = Message::new(delivered.subject, delivered.payload);
        let theirs = delivered.headers.into_iter().filter(|(name, _)| !is_host_header(name));
        message.headers.extend(theirs);
        let id = unique_id();
        message.headers.push((ID_HEADER.to_owned(), id.clone()));
        let Some(reply_to) = delivered.reply else {
            if let Err(err) = self.host.send(message).await {
                tracing::warn!(url = %self.config.url, %err, "NATS ingress: message refused");
            }
            return;
        };
        let admitted = self.host.send_request(message).await;
        let writer = self.writer.clone();
        self.answers.spawn(async move {
            let answer = match admitted {
                Ok((_, pending)) => await_reply(pending).await,
                Err(refused) => Err(refused.into()),
            };
            let (headers, payload) = answer_of(id, answer);
            let frame = protocol::publish(&reply_to, &headers, &payload);
            if let Err(err) = writer.lock().await.write_all(&frame).await {
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
                Ok((reader, writer)) => {
                    self.reader = reader;
                    *self.writer.lock().await = writer;
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
        self.writer.lock().await.write_all(&fence).await?;
        loop {
            let op = tokio::time::timeout(FENCE_TIMEOUT, self.reader.next()).await.map_err(|_| {
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

/// A connection to the server of `config`, subscribed to its subjects once it returns (the
/// subscription ids count from 1 in their order).
async fn subscribe(config: &NatsIngressConfig) -> io::Result<(Reader, OwnedWriteHalf)> {
    let subscriptions = config.subjects.iter().enumerate();
    let subscriptions: Vec<u8> = subscriptions
        .flat_map(|(at, subject)| protocol::subscribe(subject, config.queue_group.as_deref(), at + 1))
        .collect();
    protocol::connect(&config.url, &subscriptions).await
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
