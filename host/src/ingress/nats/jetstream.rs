//! JetStream ingress: `[[ingress.nats]]` with a `stream` pulls that stream's messages through a
//! durable pull consumer (`durable`, explicit acks) and acknowledges each only once the host
//! settled it — delivered, filtered, answered, or dead-lettered to a destination or the dead-letter
//! file — as the message's [`Receipt`](crate::Receipt) tells (once everything made from the
//! message is settled); one the host's stop handed back instead
//! ([`Settlement::HandedBack`](crate::Settlement::HandedBack)) it naks. From the moment a message
//! is pulled until it is answered — waiting behind others of its pull or for room in the host's
//! queue, then queued, retried, behind a slow destination — the host tells the server twice per
//! `ack_wait_ms` that the message is in progress, so the server does not deliver it again
//! meanwhile. Hosts naming the same consumer share the stream
//! (and its settings: a host whose `ack_wait_ms`, `max_ack_pending` or filter subject differ from
//! the existing consumer's refuses to start, and none changes them, see `durable`):
//! what a host that dies had not acknowledged, the server delivers to another after `ack_wait_ms`. The stream keeps each
//! message until then, so with `durability = "spool"` the host does not write these to its spool
//! (a spooled copy would only be delivered a second time after a crash).
//!
//! Flow: a host holds at most `max_ack_pending` unacknowledged messages (the server enforces the
//! same limit over all hosts of the consumer), pulls only as many as it has room for, and admits
//! them one by one, waiting while the host's queue is full — so a full queue pulls nothing more.
//! A pull is read as it arrives, ahead of admission, so that each message it brought is reported
//! in progress while those before it wait for room.
//!
//! Identity: a message's `x-sy-id` is derived from the stream, the message's sequence in it and the
//! time the stream stored it ([`stream_message_id`]), and `x-sy-stream-seq` carries the sequence,
//! so a message delivered again (by this host or another) keeps its id and receivers can
//! deduplicate, while the messages of a stream deleted and made again, whose sequences start again
//! at 1, have ids of their own. Headers set by the publisher are kept (except `x-sy-` ones); their
//! order is not (NATS keeps headers in a map).
//!
//! What the host refuses for good — a message over `max_message_bytes`, or malformed (a topic the
//! host does not take) — is terminated (`AckKind::Term`): the server never delivers it again, it
//! stays in the stream for an operator to read (`nats stream get`), the server publishes a
//! `MSG_TERMINATED` advisory, this host logs "JetStream message terminated" and counts it
//! (`switchyard_jetstream_messages_total{result="terminated"}`). It is not dead-lettered: a dead
//! letter is a message the host admitted, and this one could not be — an oversized payload would be
//! as oversized on its way to the dead-letter destination. What is refused only for now (the host
//! stopping) is handed back (`Nak`) for another host, held by the server until this host's pull
//! under way has ended (1 s at most), so that pull cannot take it straight back.
//!
//! A graceful stop finishes the pull under way (admitting what it brings), pulls no more, and
//! acknowledges the messages in flight as they settle until the host's own stop has ended (its
//! `host.shutdown_grace_ms` and what follows; 60 s past the grace at most), then closes: anything
//! still unsettled stays unacknowledged and is delivered again. An ingress stopped alone, its host
//! serving on, waits up to `host.shutdown_grace_ms` for the host to begin stopping. What the
//! host's stop gives up on at the end of its grace (queued, retried, or under way: a destination
//! down or slow) is not dead-lettered, as a message from elsewhere is, nor acknowledged: the host
//! hands it back, and the ingress, still waiting for it, naks it as above, so another host of the
//! consumer takes it within a second, with its `x-sy-id` (one cut while under way may have been
//! delivered: it may arrive twice). A lost connection is made again by the client with backoff,
//! and pulls resume with backoff of their own.
//!
//! A consumer that is gone — deleted by an operator, or with its stream, deleted and made again —
//! is noticed at the next failed or unanswered pull and joined again (made again, as at the start),
//! with the same backoff, each failed attempt logged. A consumer made again starts as a new one
//! does, at the stream's first message: what the stream still holds is delivered again, each with
//! its `x-sy-id`.

use super::durable::join;
use crate::config::NatsIngressConfig;
use crate::host::{BuildError, Host, SendError};
use crate::message::{ID_HEADER, Message, STREAM_SEQ_HEADER, is_host_header};
use crate::metrics::Pulled;
use crate::receipt::{Receipt, Settlement};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, message::Acker};
use futures_util::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages asked for by one pull, at most.
const MAX_BATCH: usize = 256;

/// How long one pull waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long the server holds a message this host hands back (naks) for another host: until the
/// pull under way has ended. A stop finishes that pull, and it would take a message handed back at
/// once straight back, to be refused and handed back again, in a loop until the pull is full.
const HAND_BACK_DELAY: Duration = PULL_EXPIRES;

/// How long past the shutdown grace a stopping ingress waits for the host's stop to end, at most
/// (a safety bound: the stop resolves every receipt, and ends well within it unless it hangs).
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// The shortest and longest pause before pulling again after a failed pull.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A pull that brought nothing and lasted this long went unanswered: the server ends an empty pull
/// at [`PULL_EXPIRES`], but says nothing to one for a consumer that is gone (the client gives up on
/// it 5 s past its expiry).
const UNANSWERED: Duration = PULL_EXPIRES.saturating_mul(3);

/// Wait `backoff`, doubled (up to [`MAX_BACKOFF`]) for the next time; false if `shutdown`
/// completed first.
async fn pause(shutdown: &mut (impl Future<Output = ()> + Unpin), backoff: &mut Duration) -> bool {
    tokio::select! {
        biased;
        () = shutdown => false,
        () = tokio::time::sleep(*backoff) => {
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            true
        }
    }
}

/// A durable consumer of one stream, ready to serve.
#[derive(Debug)]
pub(super) struct StreamIngress {
    host: Host,
    config: NatsIngressConfig,
    client: async_nats::Client,
    context: jetstream::Context,
    /// The durable consumer as last joined: joined again when a pull fails or goes unanswered, as
    /// it does once the consumer is gone (deleted, or its stream deleted and made again).
    consumer: PullConsumer,
    /// Messages pulled and not yet acknowledged (or handed back): `max_ack_pending` permits.
    room: Arc<Semaphore>,
    /// The tasks waiting for a message's receipt to acknowledge it; a stop waits for them.
    acks: TaskTracker,
    /// Cancelled when a stop stops waiting for receipts: the rest stay unacknowledged.
    abandon: CancellationToken,
}

impl StreamIngress {
    /// Connect, find the stream and create (or join) the durable consumer of `config`.
    pub(super) async fn connect(host: Host, config: NatsIngressConfig) -> Result<StreamIngress, BuildError> {
        let consumer_config = config.jetstream().expect("a stream ingress has a stream");
        let failed = |error: String| BuildError::JetStream {
            url: config.url.clone(),
            stream: consumer_config.stream.to_owned(),
            error,
        };
        let backoff = |attempts: usize| MIN_BACKOFF.saturating_mul(1 << attempts.min(8)).min(MAX_BACKOFF);
        let client = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(backoff)
            .max_reconnects(None)
            .ping_interval(config.ping_interval())
            .connect(config.url.as_str())
            .await
            .map_err(|err| failed(err.to_string()))?;
        let context = jetstream::new(client.clone());
        let consumer = join(&context, &consumer_config).await.map_err(failed)?;
        let room = Arc::new(Semaphore::new(consumer_config.max_ack_pending as usize));
        let (acks, abandon) = (TaskTracker::new(), CancellationToken::new());
        Ok(StreamIngress { host, config, client, context, consumer, room, acks, abandon })
    }

    /// The settings it serves.
    pub(super) fn config(&self) -> &NatsIngressConfig {
        &self.config
    }

    /// How often a message the host holds is reported in progress: twice within `ack_wait_ms`.
    fn progress_every(&self) -> Duration {
        let ack_wait = self.config.jetstream().expect("a stream ingress has a stream").ack_wait_ms;
        Duration::from_millis(ack_wait) / 2
    }

    fn stream(&self) -> &str {
        self.config.stream.as_deref().expect("a stream ingress has a stream")
    }

    /// Pull and admit until `shutdown` completes; then stop gracefully (see the module docs).
    pub(super) async fn serve(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        tokio::pin!(shutdown);
        let mut backoff = MIN_BACKOFF;
        // Pulls through a consumer that is gone fail once ("409 Consumer Deleted"), then go
        // unanswered for good: after a failed or unanswered pull, the consumer is joined again
        // (made again if it is gone) before the next pull.
        let mut rejoin = false;
        loop {
            if rejoin {
                if let Err(err) = self.rejoin().await {
                    tracing::warn!(stream = self.stream(), %err, "JetStream ingress: joining the durable consumer again failed; trying again");
                    match pause(&mut shutdown, &mut backoff).await {
                        true => continue,
                        false => break,
                    }
                }
                rejoin = false;
            }
            let room = tokio::select! {
                biased;
                () = &mut shutdown => break,
                room = self.room() => room,
            };
            let started = tokio::time::Instant::now();
            match self.pull(room, &mut shutdown).await {
                Ok(Pull::Done { pulled: 0 }) if started.elapsed() >= UNANSWERED => {
                    tracing::debug!(
                        stream = self.stream(),
                        "JetStream ingress: a pull went unanswered; joining the consumer again"
                    );
                    rejoin = true;
                }
                Ok(Pull::Done { .. }) => backoff = MIN_BACKOFF,
                Ok(Pull::Stopped) => break,
                Err(err) => {
                    tracing::warn!(stream = self.stream(), %err, "JetStream ingress: pulling failed; trying again");
                    rejoin = true;
                    if !pause(&mut shutdown, &mut backoff).await {
                        break;
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Join the durable consumer again, made again if it is gone, for the pulls that follow.
    async fn rejoin(&mut self) -> Result<(), String> {
        let consumer_config = self.config.jetstream().expect("a stream ingress has a stream");
        match join(&self.context, &consumer_config).await {
            Ok(consumer) => {
                self.consumer = consumer;
                Ok(())
            }
            Err(err) => Err(format!("durable {}: {err}", consumer_config.durable)),
        }
    }

    /// Room for one more unacknowledged message, waited for, and for as many more (up to
    /// [`MAX_BATCH`]) as are free now.
    async fn room(&self) -> OwnedSemaphorePermit {
        let mut room = self.room.clone().acquire_owned().await.expect("the room is never closed");
        let more = self.room.available_permits().min(MAX_BATCH - 1) as u32;
        if more > 0
            && let Ok(more) = self.room.clone().try_acquire_many_owned(more)
        {
            room.merge(more);
        }
        room
    }

    /// One pull of as many messages as `room` holds, each held (reported in progress) as it comes
    /// and admitted in order; once `shutdown` completes, the pull is finished (it ends within
    /// [`PULL_EXPIRES`]) and `Stopped` returned, once all it brought are admitted — also when the
    /// pull then ends in an error, as `shutdown` (any future, one that must not be polled once
    /// complete among them) is awaited only until it completes.
    ///
    /// The pull is read ahead of admission: while one message waits for room in the host's queue,
    /// those behind it are already in this host (the server sent them), and each must be reported
    /// in progress too, or the server delivers it again after `ack_wait_ms` — to another host,
    /// while this one still admits it.
    async fn pull(
        &self,
        mut room: OwnedSemaphorePermit,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Pull, async_nats::Error> {
        let batch = self.consumer.batch().max_messages(room.num_permits()).expires(PULL_EXPIRES);
        let mut messages = batch.messages().await?;
        let (held, mut to_admit) = mpsc::unbounded_channel();
        let read = async move {
            let (mut stopping, mut pulled) = (false, 0);
            loop {
                let next = match stopping {
                    true => messages.next().await,
                    false => tokio::select! {
                        biased;
                        () = &mut *shutdown => {
                            stopping = true;
                            continue;
                        }
                        next = messages.next() => next,
                    },
                };
                match next {
                    Some(Ok(message)) => {
                        let one =
                            room.split(1).expect("a pull asks for no more messages than it has room for");
                        pulled += 1;
                        if let Some(message) = self.hold(message, one).await {
                            held.send(message).expect("admission lasts as long as the pull");
                        }
                    }
                    // `shutdown` completed: the stop goes on, without awaiting it again.
                    Some(Err(err)) if stopping => {
                        tracing::warn!(stream = self.stream(), %err, "JetStream ingress: the pull under way at the stop failed; stopping");
                        return Ok(Pull::Stopped);
                    }
                    Some(Err(err)) => return Err(err),
                    None if stopping => return Ok(Pull::Stopped),
                    None => return Ok(Pull::Done { pulled }),
                }
            }
        };
        let admit = async {
            while let Some(message) = to_admit.recv().await {
                self.admit(message).await;
            }
        };
        tokio::join!(read, admit).0
    }

    /// Hold `pulled`, and `room` with it, until it is answered: reported in progress every
    /// [`progress_every`](Self::progress_every) from now on — while it waits for admission too,
    /// on one beat ([`progress_ticks`]) —, then answered as its admission (and, once admitted,
    /// its [`Receipt`](crate::Receipt)) tells.
    /// `None` for a message without its stream sequence, handed back at once.
    async fn hold(&self, pulled: jetstream::Message, room: OwnedSemaphorePermit) -> Option<HeldMessage> {
        let (stream, metrics) = (self.stream().to_owned(), self.host.metrics().jetstream.clone());
        let info = pulled.info().map(|info| (info.stream_sequence, info.delivered, info.published.into()));
        let (pulled, acker) = pulled.split();
        let (seq, delivered, stored) = match info {
            Ok(info) => info,
            Err(err) => {
                tracing::warn!(stream, %err, "JetStream ingress: a message without its stream sequence; handed back");
                let acks = HeldAcks { acker, stream, seq: None };
                metrics.pulled(&acks.stream, acks.answer(AckKind::Nak(None), Pulled::Nacked).await);
                return None;
            }
        };
        if delivered > 1 {
            metrics.redelivered(&stream);
        }
        let mut message = Message::new(pulled.subject.to_string(), pulled.payload);
        for (name, values) in pulled.headers.iter().flat_map(|headers| headers.iter()) {
            let name: &str = name.as_ref();
            if !is_host_header(name) {
                let values = values.iter().map(|value| (name.to_owned(), value.as_str().to_owned()));
                message.headers.extend(values);
            }
        }
        message.headers.push((ID_HEADER.to_owned(), stream_message_id(&stream, seq, stored)));
        message.headers.push((STREAM_SEQ_HEADER.to_owned(), seq.to_string()));
        let (admitted, admission) = oneshot::channel();
        let (abandon, mut ticks) = (self.abandon.clone(), progress_ticks(self.progress_every()));
        let acks = HeldAcks { acker, stream, seq: Some(seq) };
        self.acks.spawn(async move {
            let result = match acks.in_progress(&mut ticks, admission).await {
                Ok(Admission::Admitted(receipt)) => {
                    let settled = tokio::select! {
                        biased;
                        settled = acks.in_progress(&mut ticks, receipt.settled()) => settled,
                        () = abandon.cancelled() => Settlement::Unsettled,
                    };
                    match settled {
                        Settlement::Settled => acks.answer(AckKind::Ack, Pulled::Acked).await,
                        // The host stopped before it delivered it: for another host.
                        Settlement::HandedBack => {
                            acks.answer(AckKind::Nak(Some(HAND_BACK_DELAY)), Pulled::Nacked).await
                        }
                        Settlement::Unsettled => Pulled::Unacked,
                    }
                }
                Ok(Admission::Refused(kind, result)) => acks.answer(kind, result).await,
                // Never admitted: the ingress was dropped in the middle of its pull.
                Err(_) => Pulled::Unacked,
            };
            metrics.pulled(&acks.stream, result);
            drop(room);
        });
        Some(HeldMessage { message, seq, admitted })
    }

    /// Admit `held`, waiting while the host's queue is full, and tell its holder how that went.
    async fn admit(&self, held: HeldMessage) {
        let (stream, seq) = (self.stream(), held.seq);
        let admission = match self.host.send_with_receipt(held.message).await {
            Ok((_, receipt)) => Admission::Admitted(receipt),
            Err(err @ (SendError::TooLarge { .. } | SendError::Malformed(_))) => {
                tracing::warn!(stream, seq, %err, "JetStream message terminated: the host cannot admit it, so it is never delivered again");
                Admission::Refused(AckKind::Term, Pulled::Terminated)
            }
            Err(err) => {
                tracing::debug!(stream, seq, %err, "JetStream ingress: message not admitted now; handed back");
                Admission::Refused(AckKind::Nak(Some(HAND_BACK_DELAY)), Pulled::Nacked)
            }
        };
        // Its holder waits for this unless the runtime is going away.
        let _ = held.admitted.send(admission);
    }

    /// Wait for the messages in flight and acknowledge them (or hand them back) until the host's
    /// stop has ended, leave the rest unacknowledged, send what is written, and close.
    async fn finish(self) {
        self.acks.close();
        let grace = Duration::from_millis(self.host.config().host.shutdown_grace_ms);
        tokio::select! {
            biased;
            () = self.acks.wait() => {}
            ended = self.host_stop_ended(grace) => {
                if !ended {
                    tracing::warn!(
                        stream = self.stream(),
                        ?grace,
                        "JetStream ingress: messages still unsettled at the stop stay unacknowledged; they will be delivered again"
                    );
                    self.abandon.cancel();
                }
                // Once the stop has ended, every receipt is resolved: what is left is sending
                // the acknowledgements and hand-backs.
                self.acks.wait().await;
            }
        }
        if let Err(err) = self.client.flush().await {
            tracing::warn!(stream = self.stream(), %err, "JetStream ingress: the last acknowledgements may not have reached the server");
        }
    }

    /// Wait for the host's stop to end, which resolves every receipt (settled, or handed back at
    /// the end of its grace): true once it has. Its grace and the ingress's begin together when
    /// the ingress stops at once (waiting for room, every `max_ack_pending` message held), so a
    /// timer of the ingress's own would give up on those the host hands back a moment later.
    /// False if the host does not begin to stop within `grace` (the ingress stopped alone, the
    /// host serving on), or its stop outlasts `grace` and [`STOP_PATIENCE`].
    async fn host_stop_ended(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, self.host.stopping()).await.is_err() {
            return false;
        }
        tokio::time::timeout_at(deadline + STOP_PATIENCE, self.host.stop_ended()).await.is_ok()
    }
}

/// How a pull ended.
enum Pull {
    /// It brought what the server had (or the room allowed): `pulled` messages.
    Done { pulled: usize },
    /// The stop came meanwhile.
    Stopped,
}

/// A message pulled and held, waiting for admission.
struct HeldMessage {
    message: Message,
    seq: u64,
    /// Where its holder (the task that reports it in progress and answers it) learns its admission.
    admitted: oneshot::Sender<Admission>,
}

/// How a held message's admission went.
enum Admission {
    /// Admitted: answered once its receipt tells how it settled.
    Admitted(Receipt),
    /// Refused: answered with this kind at once, counted as this result.
    Refused(AckKind, Pulled),
}

/// What this host tells the server about one message it pulled, from its pull to its answer.
struct HeldAcks {
    acker: Acker,
    stream: String,
    /// Its sequence in the stream, unless the server did not say.
    seq: Option<u64>,
}

impl HeldAcks {
    /// Await `waited`, reporting the message in progress at each of `ticks` meanwhile: the server
    /// must not deliver it again while this host holds it, here or to another host.
    async fn in_progress<T>(&self, ticks: &mut Interval, waited: impl Future<Output = T>) -> T {
        let (stream, seq) = (&self.stream, self.seq);
        at_each_tick(ticks, waited, || async {
            if let Err(err) = self.acker.ack_with(AckKind::Progress).await {
                tracing::debug!(stream, ?seq, %err, "JetStream ingress: a progress acknowledgement could not be sent");
            }
        })
        .await
    }

    /// Answer the message with `kind`: `result` once sent, `Unacked` if it could not be (the
    /// server then delivers the message again after `ack_wait_ms`).
    async fn answer(&self, kind: AckKind, result: Pulled) -> Pulled {
        match self.acker.ack_with(kind).await {
            Ok(()) => result,
            Err(err) => {
                let (stream, seq) = (&self.stream, self.seq);
                tracing::warn!(stream, ?seq, ?kind, %err, "JetStream ingress: answering a message failed; it will be delivered again");
                Pulled::Unacked
            }
        }
    }
}

/// When a message pulled now is reported in progress: every `every` from now on, whatever it
/// waits for meanwhile (admission, then its receipt). The server counts `ack_wait_ms` from its
/// delivery or the last report, so a beat begun afresh for each wait could leave almost two
/// `every`s without a report. A report sent late is followed by the next `every` after it.
fn progress_ticks(every: Duration) -> Interval {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// Await `waited`, awaiting `report()` at each of `ticks` meanwhile.
async fn at_each_tick<T, R: Future<Output = ()>>(
    ticks: &mut Interval,
    waited: impl Future<Output = T>,
    mut report: impl FnMut() -> R,
) -> T {
    tokio::pin!(waited);
    loop {
        tokio::select! {
            biased;
            done = &mut waited => return done,
            _ = ticks.tick() => report().await,
        }
    }
}

/// The `x-sy-id` of the message at `seq` in `stream`, stored by the stream at `stored` (the time
/// the server took it from its publisher, as its deliveries and `nats stream get` tell): a UUIDv8
/// made of a hash of the stream's name and `stored`, and the sequence (its low 62 bits). The same
/// on every delivery and every host; a stream deleted and made again numbers its messages from 1
/// again, but stores them at other times, so their ids are new.
pub fn stream_message_id(stream: &str, seq: u64, stored: SystemTime) -> String {
    use sha2::Digest;
    // Times before 1970 (no server stores at one) all count as 1970.
    let stored = stored.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let stream_and_time =
        sha2::Sha256::new().chain_update(stream.as_bytes()).chain_update(stored.to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&stream_and_time.finalize()[..8]);
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_message_admitted_just_before_its_report_is_due_is_still_reported_on_time() {
        let every = Duration::from_secs(15);
        let (pulled, mut ticks) = (tokio::time::Instant::now(), progress_ticks(every));
        let mut reported = Vec::new();
        let mut report = || {
            reported.push(pulled.elapsed());
            std::future::ready(())
        };
        let admitted_at = every - Duration::from_millis(1);
        at_each_tick(&mut ticks, tokio::time::sleep(admitted_at), &mut report).await;
        at_each_tick(&mut ticks, tokio::time::sleep(every * 2), &mut report).await;
        assert_eq!(reported, [every, every * 2], "reported every {every:?} from its pull on");
    }

    #[test]
    fn a_stream_message_keeps_its_id_and_ids_differ_by_sequence_stream_and_time_stored() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_767_225_600_123_456_789);
        let id = stream_message_id("ORDERS", 42, stored);
        assert_eq!(id, stream_message_id("ORDERS", 42, stored));
        assert_ne!(id, stream_message_id("ORDERS", 43, stored));
        assert_ne!(id, stream_message_id("EVENTS", 42, stored));
        let made_again = stored + Duration::from_nanos(1);
        assert_ne!(
            id,
            stream_message_id("ORDERS", 42, made_again),
            "the same sequence stored at another time"
        );
        let uuid = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(uuid.get_version_num(), 8);
        let low = u64::from_be_bytes(uuid.as_bytes()[8..].try_into().unwrap());
        assert_eq!(low & (u64::MAX >> 2), 42, "the sequence, under the variant's two bits");
    }
}
