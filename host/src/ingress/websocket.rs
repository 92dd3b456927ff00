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
//! Backpressure is by not reading: a frame is admitted as [`Host::send`] admits, waiting while the
//! queue is full, before the next is read (a `wait` one too: only its settling is waited for
//! apart), with the frames after it already read (none waited for, up to a `wait` one: see
//! [`together`](super::together)), so that with `durability = "spool"` their records share one
//! fsync; and once the answers a socket has waiting for its client come to its [`answer_budget`] of
//! bytes, reading waits too. A `wait` message takes its share of the budget when it is admitted,
//! the most its reply may hold (`max_message_bytes`: so at most four are open at once), and keeps
//! it until its answer is written to the socket (its answer's own length once settled, when
//! shorter; a longer answer, its reply as JSON with its `ref` and id, is queued in that share all
//! the same, waiting for no more): the answers waiting for a client come to at most the budget, or
//! four `wait` answers whole when theirs are longer, and a client reading its answers slowly, or
//! not at all, is not read either. With `[ingress.http] token`, the upgrade request must carry it
//! (`Authorization: Bearer …`), and a browser's foreign `Origin` is refused. A socket serves while
//! the token it was let in with is the one required: once a reload replaces it (or sets or removes
//! one), the next frame the client sends is not served, and the socket is closed (1008) once the
//! answers still due are sent.
//!
//! A frame, or a message of several, larger than [`largest_json`](crate::message::largest_json) (of
//! `max_message_bytes`; a smaller one past `max_message_bytes` is answered `413`) is refused on its
//! header, unread: the socket is read no further and, once the answers still due are sent, closed
//! (1009). So is a socket that keeps silent for two `ping_ms` while the host waits for its next frame
//! (1001); it is pinged after one, and its pong ends the silence. Waiting on the host (a full queue,
//! the budget taken by the `wait` messages open) is no silence.
//!
//! A socket is one of the listener's connections until it closes (the connection it was upgraded
//! from holds its slot), and the ingress's stop waits for it: reading stops (a reader waiting for
//! room in the budget too), the answers still due are sent, then it closes. But a client that is
//! behind is not waited for: once the ingress stops, a socket whose answer waits on its client (the
//! connection's buffers hold what it was sent and it takes no more, or an answer waits for room in
//! the budget) is closed at once, those answers unsent (their messages settle all the same); so a
//! client that reads nothing, or a byte at a time, does not hold the stop.

use super::bulk::{BulkMessage, ClientHeaders, message_of};
use super::together::{BatchRoom, admit_together};
use crate::config::HttpIngressConfig;
use crate::host::{Host, RequestError, SendError, await_reply};
use crate::listener::socket::{Silence, Silent};
use crate::message::Message;
use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Answers queued for the socket's writer; beyond it, reading waits.
const QUEUED_ANSWERS: usize = 1024;

/// The bytes of answers a socket may have waiting for its client (to come, queued for its writer,
/// or being written), for `max_message_bytes`: four of them. A `wait` answer may carry a reply of up
/// to `max_message_bytes`, and 256 of those, at 1 MiB, were 256 MiB held for a client that read none.
/// A `wait` answer counts as `max_message_bytes` at most, however long its reply's JSON (up to six
/// bytes a byte, escaped): when theirs are longer, the answers waiting come to four `wait` answers.
fn answer_budget(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(4)
}

/// An answer queued for the socket's writer, as written, with its bytes of the socket's answer
/// budget (a `wait` answer's, no more than its message reserved), held until it is written.
struct Answer {
    text: String,
    room: OwnedSemaphorePermit,
}

/// Where a socket's answers wait for its writer: at most [`QUEUED_ANSWERS`] of them, and at most
/// the socket's [`answer_budget`] of bytes, the answers of the `wait` messages still open included.
/// What waits on the client here sees the ingress stop.
#[derive(Clone)]
struct AnswerQueue {
    answers: mpsc::Sender<Answer>,
    /// The budget's bytes not taken: a `wait` message takes `reservation` from its admission, and
    /// its answer keeps its own length of that once settled (all of it when longer: see `queue`);
    /// each other answer queued takes its length (all of the budget, when larger) until it is
    /// written.
    room: Arc<Semaphore>,
    /// The budget, in bytes.
    budget: u32,
    /// What an open `wait` message takes of the budget: `max_message_bytes`, the most its reply
    /// may hold (all of the budget, when larger); its answer, the reply written as JSON with the
    /// frame's `ref` and the message's id, may be longer.
    reservation: u32,
    /// Turns true when the ingress stops.
    stopping: watch::Receiver<bool>,
    /// Cancelled once the client is behind when the ingress stops (an answer waits for room): the
    /// writer then gives up on it.
    behind: CancellationToken,
}

impl AnswerQueue {
    /// A queue to the writer's end `answers`, within the budget of `max_message_bytes`, until
    /// `stopping`; `behind` is the writer's.
    fn new(
        answers: mpsc::Sender<Answer>,
        max_message_bytes: usize,
        stopping: watch::Receiver<bool>,
        behind: CancellationToken,
    ) -> AnswerQueue {
        let budget = u32::try_from(answer_budget(max_message_bytes)).unwrap_or(u32::MAX);
        let reservation = u32::try_from(max_message_bytes).map_or(budget, |bytes| bytes.min(budget));
        let room = Arc::new(Semaphore::new(budget as usize));
        AnswerQueue { answers, room, budget, reservation, stopping, behind }
    }

    /// The room of a `wait` message's answer, once the budget has it; `None` if the ingress stops
    /// first (the room may be held by answers on their way, not waiting on the client: not behind).
    async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            room = self.room.clone().acquire_many_owned(self.reservation) => {
                Some(room.expect("the budget is never closed"))
            }
            _ = stopping.wait_for(|stop| *stop) => None,
        }
    }

    /// Queue `frame` once there is room for it; a `wait` message's answer in the room `reserved`
    /// for it, at once: what it does not need is given back, and what it is longer (its reply's
    /// JSON, its `ref` and id around it) is not waited for, as the other open `wait` messages may
    /// hold the rest of the budget, each waiting for its own answer's turn. `false` once the writer
    /// is gone, or when the ingress stops (or stopped) while it waits.
    async fn queue(&self, frame: Value, reserved: Option<OwnedSemaphorePermit>) -> bool {
        let text = frame.to_string();
        let bytes = text.len().min(self.budget as usize);
        let queued = async {
            let room = match reserved {
                Some(mut room) => {
                    drop(room.split(room.num_permits().saturating_sub(bytes)));
                    room
                }
                None => {
                    let room = self.room.clone().acquire_many_owned(bytes as u32);
                    room.await.expect("the budget is never closed")
                }
            };
            self.answers.send(Answer { text, room }).await.is_ok()
        };
        self.unless_behind(queued).await.unwrap_or(false)
    }

    /// Completes once the budget has room and none waits for it (at once while the client takes
    /// its answers and fewer `wait` messages are open than the budget holds): `true`; or `false`
    /// when the ingress stops (or stopped) while it waits.
    async fn within_budget(&self) -> bool {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            biased;
            _ = self.room.acquire() => true,
            _ = stopping.wait_for(|stop| *stop) => false,
        }
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
    /// `max_message_bytes`: the most a `wait` message's reply may hold (see [`answer_budget`]).
    pub(super) max_message_bytes: usize,
}

/// What the client's stream gives next: a frame, a failure, or `None` once it ended.
type Read = Option<Result<Frame, axum::Error>>;

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
    let stopping = sockets.stopping.clone();
    let answers = AnswerQueue::new(answers, sockets.max_message_bytes, stopping.clone(), behind.clone());
    let (ping, (closing, close)) = (Arc::new(Notify::new()), oneshot::channel());
    let writer = tokio::spawn(write_answers(sink, queued, ping.clone(), close, behind, stopping));
    let why = read_frames(&host, stream, &answers, &ping, sockets, granted.as_deref()).await;
    // In-flight `wait` answers still reach the writer; it ends when the last sender goes.
    let _ = closing.send(why);
    drop(answers);
    let _ = writer.await;
}

/// Send the answers `queued`, each giving back its room once written, and a ping each time `ping`
/// is notified, until every sender is gone; then close the socket, telling the client why when the
/// reader says (`close`). Once the client is behind, drop the socket at once: `behind` is
/// cancelled, or a write waits on the client when the ingress is `stopping` (or stops while it
/// waits): a client that has not taken what it was sent is not waited for.
async fn write_answers(
    mut sink: SplitSink<WebSocket, Frame>,
    mut queued: mpsc::Receiver<Answer>,
    ping: Arc<Notify>,
    close: oneshot::Receiver<Option<CloseFrame>>,
    behind: CancellationToken,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let (frame, room) = tokio::select! {
            biased;
            () = behind.cancelled() => return,
            answer = queued.recv() => match answer {
                Some(Answer { text, room }) => (Frame::Text(text.into()), Some(room)),
                None => break,
            },
            () = ping.notified() => (Frame::Ping(Default::default()), None),
        };
        if !sent_in_time(sink.send(frame), &behind, &mut stopping).await {
            return;
        }
        drop(room);
    }
    if let Ok(Some(why)) = close.await
        && !sent_in_time(sink.send(Frame::Close(Some(why))), &behind, &mut stopping).await
    {
        return;
    }
    sent_in_time(sink.close(), &behind, &mut stopping).await;
}

/// Whether `sending` went through before the client was found behind (see [`write_answers`]).
async fn sent_in_time(
    sending: impl Future<Output = Result<(), axum::Error>>,
    behind: &CancellationToken,
    stopping: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        biased;
        sent = sending => sent.is_ok(),
        () = behind.cancelled() => false,
        _ = stopping.wait_for(|stop| *stop) => false,
    }
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
    // What was read after the frames last read together, to take next.
    let mut read_ahead = None;
    loop {
        let frame = tokio::select! {
            // The stop first; what the client sent is read before its silence is judged.
            biased;
            _ = stopping.wait_for(|stop| *stop) => return None,
            // The writer gave up on the client (it took nothing of an answer in time).
            () = answers.closed() => return None,
            frame = next_frame(&mut read_ahead, &mut stream) => frame,
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
            Some(Ok(Frame::Text(text))) => {
                let read;
                (read, read_ahead) = read_together(text.as_str(), &mut stream);
                admit(host, read, answers).await
            }
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

/// The frame `read_ahead` holds, if any, else the next the client sends.
async fn next_frame(read_ahead: &mut Option<Read>, stream: &mut SplitStream<WebSocket>) -> Read {
    match read_ahead.take() {
        Some(read) => read,
        None => stream.next().await,
    }
}

/// What the client asks with the text frame `first` and those after it already read (none waited
/// for; up to a `wait` one, which waits for its own room in the budget, and within a
/// [`BatchRoom`]), each a message or the answer refusing it; with the first frame read that is
/// not one of them, for the reading loop to take next.
fn read_together(
    first: &str,
    stream: &mut SplitStream<WebSocket>,
) -> (Vec<Result<Asked, Value>>, Option<Read>) {
    let mut room = BatchRoom::default();
    room.take(first.len());
    let mut read = vec![Asked::of(first)];
    while !matches!(read.last(), Some(Ok(Asked { wait: true, .. }))) {
        match stream.next().now_or_never() {
            Some(Some(Ok(Frame::Text(text)))) if room.take(text.len()) => read.push(Asked::of(text.as_str())),
            Some(next) => return (read, Some(next)),
            None => break,
        }
    }
    (read, None)
}

/// The message a text frame asks to admit, with what its answer echoes.
struct Asked {
    reference: Value,
    id: String,
    message: Message,
    wait: bool,
}

impl Asked {
    /// The message of the frame `text`, or the answer refusing the frame (`400`).
    fn of(text: &str) -> Result<Asked, Value> {
        let frame = ClientFrame::parse(text)
            .map_err(|(reference, problem)| json!({ "ref": reference, "error": problem, "status": 400 }))?;
        let reference = frame.reference;
        let message = match message_of(frame.message) {
            Ok(message) => message,
            Err(problem) => return Err(json!({ "ref": reference, "error": problem, "status": 400 })),
        };
        let id = message.unique_id().expect("message_of gives every message its id").to_owned();
        Ok(Asked { reference, id, message, wait: frame.wait })
    }
}

/// Whether the token `[ingress.http]` requires now is not `granted`, the one a socket was let in with.
fn token_replaced(host: &Host, granted: Option<&str>) -> bool {
    let config = host.config();
    config.ingress.http.as_ref().and_then(HttpIngressConfig::required_token) != granted
}

/// Admit the messages of frames read together (see [`read_together`]) and queue their answers, in
/// order: those of all but a `wait` one last together (see [`admit_together`]), then that one;
/// `false` once the writer is gone, or when the ingress stops while this waits on the client.
async fn admit(host: &Host, mut read: Vec<Result<Asked, Value>>, answers: &AnswerQueue) -> bool {
    let waited = read.pop_if(|asked| matches!(asked, Ok(Asked { wait: true, .. })));
    let read = read
        .into_iter()
        .map(|asked| asked.map(|Asked { reference, id, message, .. }| (message, (reference, id))));
    let admitted = admit_together(host, read.collect(), |(reference, id), admitted| match admitted {
        Ok(_) => json!({ "ref": reference, "id": id }),
        Err(err) => refused(reference, &err),
    });
    let mut admitted = std::pin::pin!(admitted);
    while let Some(answer) = admitted.next().await {
        if !answers.queue(answer, None).await {
            return false;
        }
    }
    match waited {
        Some(Ok(asked)) => admit_waited(host, asked, answers).await,
        _ => true,
    }
}

/// Admit the message of a `wait` frame once the budget has room for its answer, before the next
/// frame is admitted, and queue that answer once it is settled (waited for in the background);
/// `false` when the ingress stops while this waits on the client, or the writer is gone.
async fn admit_waited(host: &Host, asked: Asked, answers: &AnswerQueue) -> bool {
    let Asked { reference, id, message, .. } = asked;
    let Some(room) = answers.reserve().await else { return false };
    let pending = match host.send_request(message).await {
        Ok((_, pending)) => pending,
        Err(err) => return answers.queue(refused(reference, &err), Some(room)).await,
    };
    let answers = answers.clone();
    tokio::spawn(async move {
        let settled = match await_reply(pending).await {
            Ok(reply) => json!({ "ref": reference, "id": id, "reply": reply.as_ref().map(reply_json) }),
            Err(RequestError::DeadLettered(reason) | RequestError::ReplyFailed(reason)) => {
                json!({ "ref": reference, "id": id, "error": reason.to_string(), "code": reason.code() })
            }
            Err(err @ RequestError::ReplyRefused { .. }) => {
                json!({ "ref": reference, "id": id, "error": err.to_string(), "delivered": true })
            }
            Err(err) => json!({ "ref": reference, "id": id, "error": err.to_string() }),
        };
        answers.queue(settled, Some(room)).await;
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
