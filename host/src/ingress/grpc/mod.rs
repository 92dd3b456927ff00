//! gRPC ingress: the `switchyard.v1.Ingress` service (`host/proto/ingress.proto`) on its own HTTP/2
//! listener, `[ingress.grpc] listen`.
//!
//! `Publish` admits one message as `POST /v1/messages/{topic}` does (waiting for no room: a full queue
//! is `RESOURCE_EXHAUSTED`); with `wait`, it answers once the message is settled, with the reply.
//! `PublishStream` admits each message of a client stream in order, each waiting for room in the queue
//! (so the stream is read no faster than the host takes messages), with the messages after it already
//! read (none waited for: see [`together`](super::together)), so that with `durability = "spool"`
//! their records share one fsync; it answers with one result per
//! message, at most 10 000 of them (the bulk ingress's `MAX_BATCH`): reading stops at the message past
//! them, at one the stream breaks off with (too large, malformed, a pause of `header_timeout_ms`, sent
//! slower than its allowance: see [`paused_body`]) and
//! at a stop, and a last refusal says so; the call itself never fails once a message was admitted.
//! A message with more headers than the host takes is refused for their count as it is decoded,
//! none of them built ([`codec`]); in a stream, it alone is refused (400), as a message with a bad
//! header is, and reading goes on.
//! Refusals map to gRPC codes: malformed `INVALID_ARGUMENT`, too large `OUT_OF_RANGE`, no room
//! `RESOURCE_EXHAUSTED` (in the queue, or for the call, unread, in the host's budget for request
//! bodies not yet admitted: see [`Charge`]), shutting down `UNAVAILABLE`; a waited-for message
//! dead-lettered or dropped is `ABORTED` with the reason (its dead-letter code in the
//! `x-sy-dead-letter` metadata), and so is one delivered whose reply was refused (with
//! `x-sy-delivered: true` metadata: not to be sent again). With
//! `[ingress.grpc] token`, every call needs `authorization: Bearer …` metadata, checked on the call's
//! headers before any of its body is read ([`TokenCheck`]).

mod codec;
mod connections;
#[rustfmt::skip]
mod generated;
mod paused_body;

use super::bulk::MAX_BATCH;
use super::together::{BatchRoom, admit_together};
use crate::host::{BuildError, Host, RequestError, SendError, grpc_call_bytes, grpc_decoding_limit};
use crate::message::Message;
use PublishOutcome as Outcome;
use connections::Charge;
use futures_util::{FutureExt, StreamExt};
pub use generated::ingress_client::IngressClient;
use generated::ingress_server::{Ingress, IngressServer};
pub use generated::publish_result::Outcome as PublishOutcome;
pub use generated::{PublishReply, PublishRequest, PublishResult, PublishStreamReply, Refusal, Reply};
use paused_body::Paused;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

/// The longest refusal text a stream's answer quotes: with [`MAX_BATCH`] results and the refusal past
/// them, an answer stays under 3 MB, within the 4 MiB a gRPC client decodes by default (an answer it
/// cannot decode fails the call, though every message was taken).
const MAX_REFUSAL_BYTES: usize = 256;

/// A bound gRPC ingress, ready to serve.
#[derive(Debug)]
pub struct GrpcIngress {
    host: Host,
    listener: TcpListener,
}

impl GrpcIngress {
    /// Bind `addr` (port 0 picks a free port) for `host`.
    pub async fn bind(host: Host, addr: SocketAddr) -> Result<GrpcIngress, BuildError> {
        let listener = TcpListener::bind(addr).await.map_err(|error| BuildError::Listen { addr, error })?;
        Ok(GrpcIngress { host, listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve until `shutdown` completes; calls in progress finish first, but a stream is read no
    /// further (its answer refuses the rest) and idle connections close at once.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let config = self.host.config().ingress.grpc.clone();
        let config = config.unwrap_or_else(|| crate::config::GrpcIngressConfig::new(self.local_addr()));
        let limits = crate::listener::ListenerLimits::new(config.max_connections, config.header_timeout_ms);
        let stopping = CancellationToken::new();
        let service =
            Service { host: self.host.clone(), stopping: stopping.clone(), pause: limits.header_timeout };
        let server =
            IngressServer::new(service).max_decoding_message_size(grpc_decoding_limit(&self.host.config()));
        let server = InterceptedService::new(server, TokenCheck { host: self.host.clone() });
        let charge = Charge { bytes: grpc_call_bytes(&self.host.config()), host: self.host };
        let stop = async {
            shutdown.await;
            stopping.cancel();
        };
        tokio::join!(stop, connections::serve(self.listener, server, charge, limits, stopping.clone()));
    }
}

struct Service {
    host: Host,
    /// Cancelled at the stop: a stream waiting for its next message is answered then.
    stopping: CancellationToken,
    /// The longest pause a request may make (`header_timeout_ms`), named in the refusal of a stream
    /// that made it.
    pause: Duration,
}

/// The ingress's service behind its token check.
type Server = InterceptedService<IngressServer<Service>, TokenCheck>;

/// Refuses a call without the configured token (`UNAUTHENTICATED`) on its headers: a unary call's
/// handler runs only once its whole message is read and decoded, so a check there let a client
/// without the token make the host read and hold a message of up to `max_message_bytes` per call
/// (200 calls a connection), or wait for one that never came whole until `header_timeout_ms`.
#[derive(Clone)]
struct TokenCheck {
    host: Host,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let token = self.host.config().ingress.grpc.as_ref().and_then(|grpc| grpc.token.clone());
        // An empty token is none, as the admin API's.
        let Some(token) = token.filter(|token| !token.is_empty()) else { return Ok(request) };
        let mut headers = axum::http::HeaderMap::new();
        if let Some(value) = request.metadata().get("authorization").and_then(|value| value.to_str().ok()) {
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().map_err(|_| unauthenticated())?);
        }
        match crate::bearer::presented(&headers, &token) {
            true => Ok(request),
            false => Err(unauthenticated()),
        }
    }
}

fn unauthenticated() -> Status {
    Status::unauthenticated("unauthorized")
}

#[tonic::async_trait]
impl Ingress for Service {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishReply>, Status> {
        let publish = request.into_inner();
        let wait = publish.wait;
        let message = message_of(publish).map_err(Status::invalid_argument)?;
        let id = message.unique_id().expect("message_of gives every message its id").to_owned();
        if !wait {
            self.host.try_send(message).await.map_err(|err| status_of(&err))?;
            return Ok(Response::new(PublishReply { id, reply: None }));
        }
        let (_, pending) = self.host.try_request(message).await.map_err(|err| status_of(&err))?;
        match crate::host::await_reply(pending).await {
            Ok(reply) => Ok(Response::new(PublishReply { id, reply: reply.map(reply_of) })),
            Err(RequestError::DeadLettered(reason) | RequestError::ReplyFailed(reason)) => {
                let mut status = Status::aborted(format!("{id}: {reason}"));
                if let Ok(code) = reason.code().parse() {
                    status.metadata_mut().insert("x-sy-dead-letter", code);
                }
                Err(status)
            }
            Err(err @ RequestError::ReplyRefused { .. }) => {
                let mut status = Status::aborted(format!("{id}: {err}"));
                status.metadata_mut().insert("x-sy-delivered", MetadataValue::from_static("true"));
                Err(status)
            }
            Err(err) => Err(Status::aborted(format!("{id}: {err}"))),
        }
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishStreamReply>, Status> {
        let mut stream = request.into_inner();
        let (mut accepted, mut results) = (0, Vec::new());
        // What was read after the messages last read together, to take next.
        let mut read_ahead = None;
        let stopped = loop {
            let next = match read_ahead.take() {
                Some(next) => next,
                None => self.next_of(&mut stream).await,
            };
            let publish = match next {
                Ok(Some(_)) if results.len() == MAX_BATCH => {
                    break Some((format!("more than {MAX_BATCH} messages in one stream"), 413));
                }
                Ok(Some(publish)) => publish,
                Ok(None) => break None,
                Err(why) => break Some(why),
            };
            let read;
            (read, read_ahead) = self.read_together(publish, &mut stream, MAX_BATCH - results.len());
            let read = read.into_iter().map(|publish| {
                let message = publish.and_then(message_of).map_err(|problem| refusal(&problem, 400))?;
                let id = message.unique_id().expect("message_of gives every message its id").to_owned();
                Ok((message, id))
            });
            let outcomes = admit_together(&self.host, read.collect(), |id, admitted| match admitted {
                Ok(_) => {
                    accepted += 1;
                    Outcome::Id(id)
                }
                Err(err) => refused(&err),
            });
            let outcomes = outcomes.map(|outcome| PublishResult { outcome: Some(outcome) });
            results.extend(outcomes.collect::<Vec<_>>().await);
        };
        // What was admitted is answered, never a failed call: a client would send it all again.
        if let Some((why, status)) = stopped {
            let why = format!("not admitted, nor anything after it: {why}");
            results.push(PublishResult { outcome: Some(refusal(&why, status)) });
        }
        Ok(Response::new(PublishStreamReply { accepted, results }))
    }
}

/// A message of a stream as read: its request, or why it is refused as it is read (more headers
/// than the host takes, see [`codec`]).
type Read = Result<PublishRequest, String>;

/// What a stream gives next: see [`Service::next_of`].
type Next = Result<Option<Read>, (String, u32)>;

impl Service {
    /// `first` and the messages of `stream` after it already read (none waited for), at most `left`
    /// in all and within a [`BatchRoom`]; with what was read next when it is not one of them, for
    /// the reading loop to take next.
    fn read_together(
        &self,
        first: Read,
        stream: &mut Streaming<PublishRequest>,
        left: usize,
    ) -> (Vec<Read>, Option<Next>) {
        // A refused message holds nothing.
        let bytes = |publish: &Read| publish.as_ref().map_or(0, prost::Message::encoded_len);
        let mut room = BatchRoom::default();
        room.take(bytes(&first));
        let mut read = vec![first];
        while read.len() < left {
            match self.next_of(stream).now_or_never() {
                Some(Ok(Some(publish))) if room.take(bytes(&publish)) => read.push(publish),
                Some(next) => return (read, Some(next)),
                None => break,
            }
        }
        (read, None)
    }

    /// The next message of `stream` (or its refusal as read), `None` at its end; or why reading it
    /// stops there, with the HTTP status of the refusal: the ingress is stopping (503), or the
    /// stream broke off with a message too large (413) or malformed, or a pause too long (400), or
    /// a message sent too slowly (408).
    async fn next_of(&self, stream: &mut Streaming<PublishRequest>) -> Next {
        let (next, over_count) = tokio::select! {
            biased;
            () = self.stopping.cancelled() => return Err(("the ingress is stopping".to_owned(), 503)),
            next = codec::counting_headers(stream.next()) => next,
        };
        let next = next.map(|next| next.map(|publish| over_count.map_or(Ok(publish), Err)));
        next.transpose().map_err(|broke| {
            let paused = std::error::Error::source(&broke).is_some_and(|source| source.is::<Paused>());
            match broke.code() {
                _ if paused => {
                    (format!("no message for {} ms (header_timeout_ms)", self.pause.as_millis()), 400)
                }
                tonic::Code::OutOfRange => (broke.message().to_owned(), 413),
                tonic::Code::DeadlineExceeded => (broke.message().to_owned(), 408),
                _ => (broke.message().to_owned(), 400),
            }
        })
    }
}

/// The message `publish` describes, with a new unique id, or why it is refused.
fn message_of(publish: PublishRequest) -> Result<Message, String> {
    let priority = u8::try_from(publish.priority)
        .map_err(|_| format!("priority {}: must be 0 to 255", publish.priority))?;
    let message = Message::new(publish.topic, publish.payload).with_priority(priority);
    super::bulk::with_headers(message, publish.headers)
}

fn reply_of(reply: Message) -> Reply {
    Reply {
        topic: reply.topic,
        headers: reply.headers.into_iter().collect(),
        payload: reply.payload.to_vec(),
    }
}

fn status_of(err: &SendError) -> Status {
    match err {
        SendError::TooLarge { .. } => Status::out_of_range(err.to_string()),
        SendError::Malformed(_) => Status::invalid_argument(err.to_string()),
        SendError::Backpressure => Status::resource_exhausted(err.to_string()),
        SendError::ShuttingDown | SendError::Unrecorded(_) => Status::unavailable(err.to_string()),
    }
}

fn refused(err: &SendError) -> Outcome {
    let status = match err {
        SendError::TooLarge { .. } => 413,
        SendError::Malformed(_) => 400,
        SendError::Backpressure | SendError::ShuttingDown | SendError::Unrecorded(_) => 503,
    };
    refusal(&err.to_string(), status)
}

/// A refusal with the HTTP `status` the same refusal gets there, `error` quoted in at most
/// [`MAX_REFUSAL_BYTES`].
fn refusal(error: &str, status: u32) -> Outcome {
    Outcome::Refused(Refusal { error: crate::bounded_text::one_line(error, MAX_REFUSAL_BYTES), status })
}
