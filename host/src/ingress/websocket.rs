//! WebSocket ingress: `GET /v1/ws` upgrades to a socket a producer keeps open.
//!
//! The client sends one message per text frame, as a bulk request's line (`{"topic": …, "headers":
//! {…}, "payload": "…"}`, see [`bulk`](super::bulk)) plus optional `"ref"` (any JSON value of at most
//! [`MAX_REF_BYTES`] as written, echoed back) and `"wait": true`. A frame is read straight into these
//! fields (nothing of it built that it is not kept as): a larger `ref` is refused, `400` `"ref too
//! large"`, with `"ref": null`, whatever else the frame holds, and headers past the host's limit are
//! counted, not kept. Each frame is answered with one text frame: `{"ref": …, "id": "<x-sy-id>"}` once
//! accepted, or `{"ref": …, "error": "…", "status": 400|413|503}` when refused; a `wait` message is
//! answered once settled instead: `{"ref": …, "id": …, "reply": {"topic", "headers", "payload"}}`
//! (`"reply": null` for none) or `{"ref": …, "id": …, "error": "…", "code": "…"}` (`"delivered": true`
//! in place of the code when it was delivered but its reply refused).
//!
//! Backpressure is by not reading: a frame is admitted with [`Host::send`], which waits while the queue
//! is full, before the next is read; at most [`MAX_WAITING`] `wait` messages per socket are open at
//! once, beyond which reading waits too. A `wait` message is open until its answer is written to the
//! socket, so that a client reading its answers slowly, or not at all, is not read either; and once
//! the answers waiting to be written come to [`answer_budget`] bytes, reading waits too (the `wait`
//! messages already open still settle, their answers waiting their turn). With
//! `[ingress.http] token`, the upgrade request must carry it (`Authorization: Bearer …`), and a
//! browser's foreign `Origin` is refused. A socket serves while the token it was let in with is the
//! one required: once a reload replaces it (or sets or removes one), the next frame the client sends
//! is not served, and the socket is closed (1008) once the answers still due are sent.
//!
//! A frame, or a message of several, larger than [`largest_json`](crate::message::largest_json) (of
//! `max_message_bytes`; a smaller one past `max_message_bytes` is answered `413`) is refused on its
//! header, unread: the socket is read no further and, once the answers still due are sent, closed
//! (1009). So is a socket that keeps silent for two `ping_ms` while the host waits for its next frame
//! (1001); it is pinged after one, and its pong ends the silence. Waiting on the host (a full queue,
//! 256 `wait` messages open) is no silence.
//!
//! A socket is one of the listener's connections until it closes (the connection it was upgraded
//! from holds its slot), and the ingress's stop waits for it: reading stops (a reader waiting for a
//! `wait` slot or for room for answers too), the answers still due are sent, then it closes. But a
//! client that is behind is not waited for: a socket whose answers waiting to be written fill the
//! budget when the ingress stops, or after, is closed at once, those answers unsent (their messages
//! settle all the same).

use super::bulk::{BulkMessage, ClientHeaders, message_of};
use crate::config::HttpIngressConfig;
use crate::host::{Host, RequestError, SendError};
use crate::listener::socket::{Silence, Silent};
use crate::message::Message;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// `wait` messages one socket may have open at once; beyond it, the socket is not read.
pub(super) const MAX_WAITING: usize = 256;

/// Answers queued for the socket's writer; beyond it, reading waits.
const QUEUED_ANSWERS: usize = 1024;

/// The bytes of answers a socket may have waiting for its client (queued for its writer, or being
/// written), for `max_message_bytes`: four of them. A `wait` answer may carry a reply of up to
/// `max_message_bytes`, and 256 of those, at 1 MiB, were 256 MiB held for a client that read none.
pub(super) fn answer_budget(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(4)
}

/// An answer queued for the socket's writer, as written, with what it holds until it is written:
/// its bytes of the socket's answer budget, and the slot of the `wait` message it settles (if any).
struct Answer {
    text: String,
    room: OwnedSemaphorePermit,
    waiting: Option<OwnedSemaphorePermit>,
}

/// Where a socket's answers wait for its writer: at most [`QUEUED_ANSWERS`] of them, and at most
/// the socket's [`answer_budget`] of bytes; and the slots of the `wait` messages whose answers are
/// to come. What waits on the client here sees the ingress stop.
#[derive(Clone)]
struct AnswerQueue {
    answers: mpsc::Sender<Answer>,
    /// The budget's bytes not taken by the answers queued: each takes its length (all of the
    /// budget, when larger) until it is written.
    room: Arc<Semaphore>,
    /// The budget, in bytes.
    budget: u32,
    /// [`MAX_WAITING`] slots, each held by a `wait` message until its answer is written.
    waiting: Arc<Semaphore>,
    /// Turns true when the ingress stops.
    stopping: watch::Receiver<bool>,
    /// Cancelled once the client is behind when the ingress stops (answers wait for room): the
    /// writer then gives up on it.
    behind: CancellationToken,
}

impl AnswerQueue {
    /// A queue to the writer's end `answers`, within `budget` bytes, until `stopping`; `behind` is
    /// the writer's.
    fn new(
        answers: mpsc::Sender<Answer>,
        budget: usize,
        stopping: watch::Receiver<bool>,
        behind: CancellationToken,
    ) -> AnswerQueue {
        let budget = u32::try_from(budget).unwrap_or(u32::MAX);
        let (room, waiting) =
            (Arc::new(Semaphore::new(budget as usize)), Arc::new(Semaphore::new(MAX_WAITING)));
        AnswerQueue { answers, room, budget, waiting, stopping, behind }
    }

    /// A slot for a `wait` message, once one is free; `None` if the ingress stops first (the
    /// answers holding the slots may be on their way, not waiting on the client: not behind).
    async fn wait_slot(&self) -> Option<OwnedSemaphorePermit> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            slot = self.waiting.clone().acquire_owned() => Some(slot.expect("the slots are never closed")),
            _ = stopping.wait_for(|stop| *stop) => None,
        }
    }

    /// Queue `frame`, which gives back the slot `waiting` (if it is a `wait` message's) once it is
    /// written, once there is room for it; `false` once the writer is gone, or when the ingress
    /// stops (or stopped) while it waits for room.
    async fn queue(&self, frame: Value, waiting: Option<OwnedSemaphorePermit>) -> bool {
        let text = frame.to_string();
        let bytes = u32::try_from(text.len()).map_or(self.budget, |bytes| bytes.min(self.budget));
        let queued = async {
            let room = self.room.clone().acquire_many_owned(bytes).await.expect("the budget is never closed");
            self.answers.send(Answer { text, room, waiting }).await.is_ok()
        };
        self.unless_behind(queued).await.unwrap_or(false)
    }

    /// Completes once the answers queued leave room in the budget and none waits for it (at once
    /// while the client takes its answers): `true`; or `false` when the ingress stops (or stopped)
    /// while it waits.
    async fn within_budget(&self) -> bool {
        let room = async { drop(self.room.acquire().await) };
        self.unless_behind(room).await.is_some()
    }

    /// What `waited` gives, unless the ingress stops, or stopped, while it waits on the client:
    /// then the client is behind, and its socket is closed at once.
    async fn unless_behind<T>(&self, waited: impl Future<Output = T>) -> Option<T> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            done = waited => Some(done),
            _ = stopping.wait_for(|stop| *stop) => {
                self.behind.cancel();
                None
            }
        }
    }

    /// Completes once the writer is gone.
    async fn closed(&self) {
        self.answers.closed().await;
    }
}

/// The most bytes a frame's `ref` may take, as written: it is echoed in the answer (and
/// [`QUEUED_ANSWERS`] may wait for a slow client), and kept while a `wait` message is open.
const MAX_REF_BYTES: usize = 256;

/// The most bytes of a parser's error an answer carries: it quotes what it refused (an unknown
/// field's name, a string where a number goes), which may be as long as the frame.
const MAX_PROBLEM_BYTES: usize = 512;

/// The close code of a socket whose ingress token was replaced: policy violation.
const TOKEN_REPLACED: u16 = 1008;

/// What the sockets of one ingress share.
#[derive(Clone)]
pub(super) struct Sockets {
    /// Turns true when the ingress stops: every socket ends.
    pub(super) stopping: watch::Receiver<bool>,
    /// See [`largest_json`](crate::message::largest_json).
    pub(super) largest_frame: usize,
    /// `ping_ms`: see [`Silence`].
    pub(super) ping: Duration,
    /// See [`answer_budget`].
    pub(super) answer_budget: usize,
}

/// One frame the client sends: a bulk message and the fields `ref` and `wait`.
struct ClientFrame {
    message: BulkMessage,
    reference: Value,
    wait: bool,
}

/// The fields of a frame as written: a bulk message's, `ref` and `wait`. A frame is read straight
/// into them, so that its limits hold while it is read: `ref` is borrowed from the frame's text
/// until its size is checked, and headers past the host's limit are only counted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameFields<'a> {
    topic: String,
    #[serde(default)]
    headers: ClientHeaders,
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    priority: u8,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(default)]
    wait: bool,
}

/// The `ref` alone of a frame that is not a message (the other fields skipped, not built), so
/// that its refusal carries it.
#[derive(Deserialize)]
struct ReferenceOnly<'a> {
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
}

impl ClientFrame {
    /// The frame of `text`; not one (a field it does not know included, as a bulk message
    /// refuses it), the `ref` it had, if any, and the problem. A `ref` past [`MAX_REF_BYTES`] is
    /// the problem, whatever else is wrong, and is not echoed.
    fn parse(text: &str) -> Result<ClientFrame, (Value, String)> {
        let problem = |error: &dyn std::fmt::Display| {
            crate::bounded_text::one_line(&format!("not a message: {error}"), MAX_PROBLEM_BYTES)
        };
        let fields = serde_json::from_str::<FrameFields>(text);
        let reference = match &fields {
            Ok(fields) => fields.reference,
            // Read again for its `ref` alone, only when it is refused.
            Err(_) => serde_json::from_str::<ReferenceOnly>(text).ok().and_then(|only| only.reference),
        };
        let reference = match reference {
            None => Value::Null,
            Some(raw) if raw.get().len() > MAX_REF_BYTES => {
                let size = raw.get().len();
                return Err((
                    Value::Null,
                    format!("ref too large: {size} bytes of JSON; at most {MAX_REF_BYTES}"),
                ));
            }
            // A number past f64's range is JSON, and a ref as written, but no `Value`.
            Some(raw) => serde_json::from_str(raw.get())
                .map_err(|err| (Value::Null, problem(&format!("ref {}: {err}", raw.get()))))?,
        };
        let FrameFields { topic, headers, payload, payload_base64, priority, wait, .. } = match fields {
            Ok(fields) => fields,
            Err(err) => return Err((reference, problem(&err))),
        };
        let message = BulkMessage { topic, headers, payload, payload_base64, priority };
        Ok(ClientFrame { message, reference, wait })
    }
}

/// Serve one upgraded socket, let in with the ingress token `granted` (if one was required), until
/// the client closes it, sends a frame past [`largest_json`](crate::message::largest_json) or after
/// a reload replaced that token, keeps silent too long (see [`Silence`]), or the ingress stops.
pub(super) async fn serve_socket(host: Host, socket: WebSocket, sockets: Sockets, granted: Option<String>) {
    let (sink, stream) = socket.split();
    let (answers, queued) = mpsc::channel::<Answer>(QUEUED_ANSWERS);
    let behind = CancellationToken::new();
    let answers = AnswerQueue::new(answers, sockets.answer_budget, sockets.stopping.clone(), behind.clone());
    let (ping, (closing, close)) = (Arc::new(Notify::new()), oneshot::channel());
    let writer = tokio::spawn(write_answers(sink, queued, ping.clone(), close, behind));
    let why = read_frames(&host, stream, &answers, &ping, sockets, granted.as_deref()).await;
    // In-flight `wait` answers still reach the writer; it ends when the last sender goes.
    let _ = closing.send(why);
    drop(answers);
    let _ = writer.await;
}

/// Send the answers `queued`, each giving back what it holds once written, and a ping each time
/// `ping` is notified, until every sender is gone; then close the socket, telling the client why
/// when the reader says (`close`). Once the client is `behind`, drop the socket at once.
async fn write_answers(
    mut sink: SplitSink<WebSocket, Frame>,
    mut queued: mpsc::Receiver<Answer>,
    ping: Arc<Notify>,
    close: oneshot::Receiver<Option<CloseFrame>>,
    behind: CancellationToken,
) {
    loop {
        let (frame, held) = tokio::select! {
            biased;
            () = behind.cancelled() => return,
            answer = queued.recv() => match answer {
                Some(Answer { text, room, waiting }) => (Frame::Text(text.into()), Some((room, waiting))),
                None => break,
            },
            () = ping.notified() => (Frame::Ping(Default::default()), None),
        };
        let sent = tokio::select! {
            sent = sink.send(frame) => sent,
            () = behind.cancelled() => return,
        };
        if sent.is_err() {
            return;
        }
        drop(held);
    }
    if let Ok(Some(why)) = close.await {
        let _ = sink.send(Frame::Close(Some(why))).await;
    }
    let _ = sink.close().await;
}

/// Admit the messages of the client's frames, queueing their answers (the next frame is read once
/// they are within their budget), until the client closes the socket, the ingress stops or the
/// writer gives up on the client; or until the client sends a frame too large, or any frame once
/// the ingress token is no longer `granted`, or keeps silent too long, which the returned frame
/// tells it.
async fn read_frames(
    host: &Host,
    mut stream: SplitStream<WebSocket>,
    answers: &AnswerQueue,
    ping: &Notify,
    sockets: Sockets,
    granted: Option<&str>,
) -> Option<CloseFrame> {
    let Sockets { mut stopping, ping: interval, .. } = sockets;
    let mut silence = Silence::begin(interval);
    loop {
        let frame = tokio::select! {
            // The stop first; what the client sent is read before its silence is judged.
            biased;
            _ = stopping.wait_for(|stop| *stop) => return None,
            // The writer gave up on the client (it took nothing of an answer in time).
            () = answers.closed() => return None,
            frame = stream.next() => frame,
            silent = silence.lasted() => match silent {
                Silent::Ping => {
                    ping.notify_one();
                    continue;
                }
                Silent::TooLong(why) => return Some(why),
            },
        };
        // Let in with a token since replaced (it may have leaked): what the client sends now is
        // not served.
        if matches!(frame, Some(Ok(_))) && token_replaced(host, granted) {
            let reason = "the ingress token was replaced: open the socket again with the new one";
            return Some(CloseFrame { code: TOKEN_REPLACED, reason: reason.into() });
        }
        let served = match frame {
            Some(Ok(Frame::Text(text))) => admit(host, text.as_str(), answers).await,
            Some(Ok(Frame::Binary(_))) => {
                let refused =
                    json!({ "ref": null, "error": "send messages as text frames of JSON", "status": 400 });
                answers.queue(refused, None).await
            }
            // A pong, a ping, the client's close (the stream ends next).
            Some(Ok(_)) => true,
            Some(Err(err)) => return crate::listener::socket::refusal(err),
            None => return None,
        };
        if !served {
            return None;
        }
        // A client that does not take its answers is not read either.
        if !answers.within_budget().await {
            return None;
        }
        // The client spoke; the host, done with what it said (admitting may have waited), waits anew.
        silence = Silence::begin(interval);
    }
}

/// Whether the token `[ingress.http]` requires now is not `granted`, the one a socket was let in with.
fn token_replaced(host: &Host, granted: Option<&str>) -> bool {
    let config = host.config();
    config.ingress.http.as_ref().and_then(HttpIngressConfig::required_token) != granted
}

/// Admit the message of one frame and queue its answer(s); `false` once the writer is gone, or
/// when the ingress stops while this waits on the client.
async fn admit(host: &Host, text: &str, answers: &AnswerQueue) -> bool {
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err((reference, problem)) => {
            return answers.queue(json!({ "ref": reference, "error": problem, "status": 400 }), None).await;
        }
    };
    let reference = frame.reference;
    let message = match message_of(frame.message) {
        Ok(message) => message,
        Err(problem) => {
            return answers.queue(json!({ "ref": reference, "error": problem, "status": 400 }), None).await;
        }
    };
    let id = message.unique_id().expect("message_of gives every message its id").to_owned();
    if !frame.wait {
        let answer = match host.send(message).await {
            Ok(_) => json!({ "ref": reference, "id": id }),
            Err(err) => refused(reference, &err),
        };
        return answers.queue(answer, None).await;
    }
    let Some(slot) = answers.wait_slot().await else { return false };
    let (host, answers) = (host.clone(), answers.clone());
    tokio::spawn(async move {
        let settled = match host.request(message).await {
            Ok(reply) => json!({ "ref": reference, "id": id, "reply": reply.as_ref().map(reply_json) }),
            Err(RequestError::NotAccepted(err)) => refused(reference, &err),
            Err(RequestError::DeadLettered(reason) | RequestError::ReplyFailed(reason)) => {
                json!({ "ref": reference, "id": id, "error": reason.to_string(), "code": reason.code() })
            }
            Err(err @ RequestError::ReplyRefused { .. }) => {
                json!({ "ref": reference, "id": id, "error": err.to_string(), "delivered": true })
            }
            Err(err) => json!({ "ref": reference, "id": id, "error": err.to_string() }),
        };
        answers.queue(settled, Some(slot)).await;
    });
    true
}

fn refused(reference: Value, err: &SendError) -> Value {
    let status = match err {
        SendError::TooLarge { .. } => 413,
        SendError::Malformed(_) => 400,
        SendError::Backpressure | SendError::ShuttingDown | SendError::Unrecorded(_) => 503,
    };
    json!({ "ref": reference, "error": err.to_string(), "status": status })
}

fn reply_json(reply: &Message) -> Value {
    let mut json = json!({ "topic": reply.topic, "headers": reply.headers });
    let (field, payload) = crate::message::payload_field(&reply.payload);
    json[field] = payload;
    json
}
