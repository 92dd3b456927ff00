//! JetStream ingress against a real `nats-server -js`. The done-when test: three `switchyard run`
//! processes on one durable consumer, one SIGKILLed mid-stream, every message published to the
//! stream delivered to a real HTTP sink (duplicates counted, bounded by what was unacknowledged at
//! the kill). And its unhappy neighbours: no acknowledgement while the destination is down (the
//! message reported in progress, not delivered again; once the destination is back it is delivered
//! once and acked), nor while the host's queue is full (the messages pulled and waiting for room
//! in it, reported in progress too, are not given to another host, and each is delivered once), a
//! stopped host acknowledges nothing it did not finish (another host takes it over), a host that
//! stops as `switchyard run` does hands what it did not deliver back to the stream, neither
//! dead-lettered nor acknowledged (another host takes each once) — also when it holds every
//! message `max_ack_pending` allows, so its ingress stops at once, and `switchyard run` itself so
//! stopped —, and a message the host cannot admit is terminated, not redelivered forever, and a stop
//! that comes while a pull is open, the pull then failing, still ends the ingress gracefully. And
//! with the spool: a host killed while its destination is down loses nothing of what it pulled,
//! restarted on the same state.

use crate::cli::Running;
use crate::crash_recovery::spool_command;
use crate::exposition::sample;
use crate::nats_server::NatsServer;
use crate::routing::gated_host;
use crate::support::{eventually, host, http, next, plugin_dir, within};
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard::config::NatsIngressConfig;
use switchyard::ingress::{STREAM_SEQ_HEADER, stream_message_id};
use switchyard::{Host, NatsIngress};
use tokio::sync::{Notify, Semaphore, oneshot};

const STREAM: &str = "ORDERS";

/// An HTTP endpoint recording each arrival's stream sequence and `x-sy-id`, on a runtime of its own.
struct Sink {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<(u64, String)>>>,
    /// Taken on drop: shut down in the background, as a test's own runtime may be the one dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Sink {
    /// A sink listening on `listener`, answering each message after `delay` (its slowness).
    fn start(listener: std::net::TcpListener, delay: Duration) -> Sink {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let recorded = arrivals.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let recorded = recorded.clone();
            async move {
                let header = |name: &str| headers.get(name).map(|value| value.to_str().unwrap().to_owned());
                let seq = header(STREAM_SEQ_HEADER).expect("a stream sequence").parse().unwrap();
                recorded.lock().unwrap().push((seq, header("x-sy-id").expect("an id")));
                tokio::time::sleep(delay).await;
                "taken"
            }
        });
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink { addr, arrivals, runtime: Some(runtime) }
    }

    fn arrivals(&self) -> Vec<(u64, String)> {
        self.arrivals.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A free port on 127.0.0.1, not listened on (a destination that is down until a sink takes it).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The stream `ORDERS` on `orders.>`, created on `server`; a JetStream context of `client`.
pub(crate) async fn create_stream(client: &async_nats::Client) -> jetstream::Context {
    let context = jetstream::new(client.clone());
    let config = jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    };
    context.create_stream(config).await.unwrap();
    context
}

/// Publish `count` messages of `bytes` bytes to the stream, in order, all stored once this returns.
pub(crate) async fn publish(context: &jetstream::Context, count: usize, bytes: usize) {
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        acks.push(context.publish("orders.eu", vec![b'x'; bytes].into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// The consumer's acknowledgement figures: (unacknowledged, not yet delivered, redelivered).
pub(crate) async fn pending(context: &jetstream::Context) -> (usize, u64, usize) {
    let stream = context.get_stream(STREAM).await.unwrap();
    let mut consumer: PullConsumer = stream.get_consumer("switchyard").await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_ack_pending, info.num_pending, info.num_redelivered)
}

/// Wait until the consumer has no message pending or waiting for its acknowledgement.
async fn until_all_acked(context: &jetstream::Context) {
    until(async || match pending(context).await {
        (0, 0, _) => Ok(()),
        seen => Err(seen),
    })
    .await;
}

/// The `x-sy-id` of each message of `seqs` in the stream, by the time the stream stored it.
async fn stored_ids(context: &jetstream::Context, seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, String)> {
    let stream = context.get_stream(STREAM).await.unwrap();
    let mut ids = Vec::new();
    for seq in seqs {
        let stored = stream.get_raw_message(seq).await.unwrap().time;
        ids.push((seq, stream_message_id(STREAM, seq, stored.into())));
    }
    ids
}

/// Poll `probe` (async) until it gives `Ok`, failing after the usual patience.
pub(crate) async fn until<T: std::fmt::Debug>(mut probe: impl AsyncFnMut() -> Result<(), T>) {
    let mut last = None;
    for _ in 0..6000 {
        match probe().await {
            Ok(()) => return,
            Err(seen) => last = Some(seen),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out (safety net): {last:?}");
}

/// A host delivering `orders.>` over HTTP to `sink`, with `[host]` lines `extra`.
async fn embedded(dir: &std::path::Path, sink: SocketAddr, extra: &str) -> Host {
    let state = dir.join("state");
    let config = format!(
        "[host]\nwatch = false\nstate_dir = {state:?}\n{extra}\n\
         [[destination]]\nname = \"sink\"\ntransport = \"http\"\nendpoints = [\"{sink}\"]\n\
         queue = {{ timeout_ms = 600000 }}\n[[route]]\nname = \"all\"\nto = \"sink\"\n"
    );
    host(dir, &config).await
}

/// A JetStream ingress of `host` on `server`'s `ORDERS`, serving until the sender is used.
async fn consume(
    host: &Host,
    server: &NatsServer,
    ack_wait_ms: u64,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    consume_with(host, consumer_config(server, ack_wait_ms)).await
}

/// The settings of a JetStream ingress on `server`'s `ORDERS` (durable `switchyard`).
fn consumer_config(server: &NatsServer, ack_wait_ms: u64) -> NatsIngressConfig {
    NatsIngressConfig {
        url: server.address(),
        stream: Some(STREAM.into()),
        ack_wait_ms: Some(ack_wait_ms),
        ..NatsIngressConfig::default()
    }
}

/// A JetStream ingress of `host` with `config`, serving until the sender is used.
async fn consume_with(
    host: &Host,
    config: NatsIngressConfig,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let ingress = within(NatsIngress::connect(host.clone(), config)).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    (stop, tokio::spawn(ingress.serve(async move { drop(stopped.await) })))
}

fn jetstream_count(host: &Host, result: &str) -> f64 {
    let metrics = host.metrics().encode();
    sample(&metrics, "switchyard_jetstream_messages_total", &[("stream", STREAM), ("result", result)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_is_sent_while_the_destination_is_down_nor_is_the_message_given_again_and_one_is_once_it_delivered()
 {
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let down = free_addr();
    let host = embedded(dir.path(), down, "").await;
    let (stop, serving) = consume(&host, &server, 300).await;
    publish(&context, 1, 16).await;

    // Not acknowledged, but reported in progress while the host holds it: over four times
    // ack_wait, the server does not give it again (a copy would reach the destination twice).
    until(async || match pending(&context).await {
        (1, 0, 0) => Ok(()),
        seen => Err(seen),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pending(&context).await, (1, 0, 0), "(unacknowledged, not delivered, delivered again)");
    let metrics = host.metrics().encode();
    assert_eq!(sample(&metrics, "switchyard_jetstream_redelivered_total", &[("stream", STREAM)]), None);
    assert_eq!(jetstream_count(&host, "acked"), 0.0);

    // The destination comes back: the message is delivered once and acked.
    let sink = Sink::start(std::net::TcpListener::bind(down).unwrap(), Duration::ZERO);
    until(async || match pending(&context).await {
        (0, 0, _) if !sink.arrivals().is_empty() => Ok(()),
        seen => Err(seen),
    })
    .await;
    assert_eq!(sink.arrivals(), stored_ids(&context, [1]).await);
    drop(stop);
    within(serving).await.unwrap();
    within(host.shutdown()).await;
    assert!(jetstream_count(&host, "acked") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pulled_while_the_queue_is_full_are_kept_from_redelivery_and_each_delivered_once() {
    // Progress goes twice per ack_wait: a stall of the loaded machine up to half of it is no redelivery.
    const ACK_WAIT_MS: u64 = 3000;
    const COUNT: usize = 8;
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    // All published before the consumer is made: its first pull brings all eight.
    publish(&context, COUNT, 16).await;
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let config = "[host]\nqueue_capacity = 1\nworkers = 1\nbatch_size = 1";
    let (host, delivered) = gated_host(dir.path(), config, &entered, &gate).await;
    let (stop, serving) = consume(&host, &server, ACK_WAIT_MS).await;
    // One held in the destination, one in the queue, one waiting for room in it, five pulled
    // behind that one: all eight unacknowledged, two of them admitted.
    within(entered.notified()).await;
    until(async || match pending(&context).await {
        (COUNT, 0, 0) => Ok(()),
        seen => Err(seen),
    })
    .await;

    // Another host's pull on the durable consumer over twice ack_wait: the server gives it any
    // message whose ack_wait lapses meanwhile. The host reports every one it holds in progress,
    // admitted or not, so none.
    let stream = context.get_stream(STREAM).await.unwrap();
    let consumer: PullConsumer = stream.get_consumer("switchyard").await.unwrap();
    let window = Duration::from_millis(2 * ACK_WAIT_MS);
    let mut pulled = consumer.batch().max_messages(COUNT).expires(window).messages().await.unwrap();
    let mut given_again = Vec::new();
    while let Some(message) = pulled.next().await {
        given_again.push(message.unwrap().info().unwrap().stream_sequence);
    }
    assert_eq!(
        given_again,
        Vec::<u64>::new(),
        "stream sequences the server gave again while the host held them"
    );

    // Released: each delivered once, acknowledged, none given again.
    gate.add_permits(COUNT);
    let mut seqs = Vec::new();
    for _ in 0..COUNT {
        let message = next(&delivered).await;
        let seq = message.headers.iter().find(|(name, _)| name == STREAM_SEQ_HEADER).expect("a sequence");
        seqs.push(seq.1.parse::<u64>().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=COUNT as u64).collect::<Vec<_>>());
    until_all_acked(&context).await;
    drop(stop);
    within(serving).await.unwrap();
    within(host.shutdown()).await;
    assert!(delivered.try_recv().is_err(), "a message delivered twice");
    let metrics = host.metrics().encode();
    assert_eq!(sample(&metrics, "switchyard_jetstream_redelivered_total", &[("stream", STREAM)]), None);
    assert_eq!(jetstream_count(&host, "acked"), COUNT as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_acknowledges_nothing_it_did_not_finish_and_another_host_takes_it_over() {
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    // Its destination is down: what it pulled is unfinished when it stops.
    let host = embedded(dir.path(), free_addr(), "shutdown_grace_ms = 100").await;
    let (stop, serving) = consume(&host, &server, 2000).await;
    publish(&context, 5, 16).await;
    until(async || match pending(&context).await {
        (5, 0, _) => Ok(()),
        seen => Err(seen),
    })
    .await;
    drop(stop);
    within(serving).await.unwrap();
    within(host.shutdown()).await;
    assert_eq!((jetstream_count(&host, "acked"), jetstream_count(&host, "unacked")), (0.0, 5.0));
    assert_eq!(pending(&context).await.0, 5, "all five still unacknowledged");
    // Nor dead-lettered by the host's shutdown after: handed back (to an ingress no longer there).
    assert_eq!((host.stats().dead_lettered, host.stats().handed_back), (0, 5));

    // After the stop: a host whose destination works takes all five over (after ack_wait).
    let sink = Sink::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Duration::ZERO);
    let other_dir = plugin_dir(&[]);
    let other = embedded(other_dir.path(), sink.addr, "").await;
    let (stop, serving) = consume(&other, &server, 2000).await;
    until_all_acked(&context).await;
    let mut seqs: Vec<u64> = sink.arrivals().into_iter().map(|(seq, _)| seq).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    drop(stop);
    within(serving).await.unwrap();
    within(other.shutdown()).await;
}

/// `[[ingress.nats]]` lines for `server`'s `ORDERS` (durable `switchyard`).
fn ingress_config(server: &NatsServer, ack_wait_ms: u64) -> String {
    let url = server.address();
    format!("[[ingress.nats]]\nurl = \"{url}\"\nstream = \"{STREAM}\"\nack_wait_ms = {ack_wait_ms}\n")
}

fn dead_letters(host: &Host, reason: &str) -> f64 {
    let metrics = host.metrics().encode();
    let labels = [("route", "all"), ("reason", reason)];
    sample(&metrics, "switchyard_dead_letters_total", &labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_host_hands_stream_messages_it_did_not_deliver_back_and_another_takes_each_once() {
    // Long: a message handed back (nak'ed) comes back within a second, one left unacknowledged
    // only after this.
    const ACK_WAIT_MS: u64 = 30_000;
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    // Its destination is down: what it pulled waits in the destination's queue when it stops, as
    // does a message sent to it in code (which has no stream to go back to).
    let extra = format!("shutdown_grace_ms = 100\n{}", ingress_config(&server, ACK_WAIT_MS));
    let host = embedded(dir.path(), free_addr(), &extra).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let host = host.clone();
        async move { host.run(async move { drop(stopped.await) }).await }
    });
    within(host.send(switchyard::Message::new("local.note", "x"))).await.unwrap();
    publish(&context, 5, 16).await;
    // All five pulled (the consumer made by the host) and admitted with the local one.
    until(async || match host.stats().accepted {
        6 => Ok(()),
        accepted => Err(accepted),
    })
    .await;
    assert_eq!(pending(&context).await, (5, 0, 0), "(unacknowledged, not delivered, delivered again)");

    // The stop (as `switchyard run` stops, on SIGTERM): at the end of its grace, the host gives up
    // on all six. The local one is dead-lettered `shutdown`, as before; the stream's five are not
    // dead-lettered, nor acknowledged: they are handed back to the stream.
    drop(stop);
    within(running).await.unwrap().unwrap();
    assert_eq!(dead_letters(&host, "shutdown"), 1.0, "only the local message is dead-lettered");
    let stats = host.stats();
    assert_eq!((stats.dead_lettered, stats.handed_back, stats.in_flight()), (1, 5, 0), "{stats:?}");
    let metrics = host.metrics().encode();
    let outcome = |outcome| {
        sample(&metrics, "switchyard_route_messages_total", &[("route", "all"), ("outcome", outcome)])
    };
    assert_eq!(
        (outcome("dead_lettered"), outcome("handed_back")),
        (Some(1.0), Some(5.0)),
        "the route's outcomes add up"
    );
    assert_eq!(jetstream_count(&host, "acked"), 0.0, "nothing undelivered is acknowledged");
    // Each nak'ed once (never in a loop), none left unacknowledged: the ingress waited for the
    // host's stop, which handed them back.
    let (nacked, unacked) = (jetstream_count(&host, "nacked"), jetstream_count(&host, "unacked"));
    assert_eq!((nacked, unacked), (5.0, 0.0), "(nak'ed, left unacknowledged)");

    // Another host on the durable consumer takes the five over, each once, and dead-letters none.
    takes_each_once(&context, consumer_config(&server, ACK_WAIT_MS), 5).await;
}

/// Another host on the durable consumer of `config`, its destination up, takes the
/// `count` messages of the stream over, each once, well before `ack_wait_ms` (a message left
/// unacknowledged would come only then), and dead-letters none.
async fn takes_each_once(context: &jetstream::Context, config: NatsIngressConfig, count: u64) {
    let ack_wait = Duration::from_millis(config.ack_wait_ms.expect("an ack_wait_ms"));
    let sink = Sink::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Duration::ZERO);
    let other_dir = plugin_dir(&[]);
    let other = embedded(other_dir.path(), sink.addr, "").await;
    let taking = std::time::Instant::now();
    let (stop, serving) = consume_with(&other, config).await;
    until(async || match pending(context).await {
        (0, 0, _) if sink.arrivals().len() as u64 >= count => Ok(()),
        seen => Err((seen, sink.arrivals())),
    })
    .await;
    let took = taking.elapsed();
    assert!(took < ack_wait / 2, "taken over in {took:?}: not handed back, left for ack_wait");
    drop(stop);
    within(serving).await.unwrap();
    within(other.shutdown()).await;
    let mut arrivals = sink.arrivals();
    arrivals.sort();
    assert_eq!(arrivals, stored_ids(context, 1..=count).await);
    assert_eq!((jetstream_count(&other, "acked"), other.stats().dead_lettered), (count as f64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_host_with_every_ack_pending_permit_held_hands_each_held_message_back() {
    // The backlog: the destination is down and the host holds all max_ack_pending messages it may,
    // so its ingress waits for room, and leaves its loop the moment the stop comes.
    const ACK_WAIT_MS: u64 = 30_000;
    const MAX_ACK_PENDING: u32 = 3;
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let ingress = format!("{}max_ack_pending = {MAX_ACK_PENDING}\n", ingress_config(&server, ACK_WAIT_MS));
    let host = embedded(dir.path(), free_addr(), &format!("shutdown_grace_ms = 100\n{ingress}")).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn({
        let host = host.clone();
        async move { host.run(async move { drop(stopped.await) }).await }
    });
    publish(&context, 7, 16).await;
    // Three pulled (the consumer made by the host) and admitted; four wait in the stream.
    until(async || match host.stats().accepted {
        3 => Ok(()),
        accepted => Err(accepted),
    })
    .await;
    until(async || match pending(&context).await {
        (3, 4, 0) => Ok(()),
        seen => Err(seen),
    })
    .await;

    drop(stop);
    within(running).await.unwrap().unwrap();
    let stats = host.stats();
    assert_eq!((stats.dead_lettered, stats.handed_back, stats.in_flight()), (0, 3, 0), "{stats:?}");
    let counts = ["acked", "nacked", "unacked"].map(|result| jetstream_count(&host, result));
    assert_eq!(counts, [0.0, 3.0, 0.0], "(acked, nak'ed, left unacknowledged): each held one nak'ed");

    // Another host (same consumer settings) takes all seven, each once, without waiting ack_wait.
    let config =
        NatsIngressConfig { max_ack_pending: Some(MAX_ACK_PENDING), ..consumer_config(&server, ACK_WAIT_MS) };
    takes_each_once(&context, config, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_run_stopped_holding_every_ack_pending_message_hands_each_back_to_the_stream() {
    // `switchyard run` stopped its ingresses and gave them the grace period before its host began
    // stopping: the ingress, waiting for that with a timer of its own, raced the host's, and when
    // it won (most stops on one runtime thread) it left every held message unacknowledged (back
    // only after ack_wait) while the host's stats said they were handed back.
    const ACK_WAIT_MS: u64 = 30_000;
    const MAX_ACK_PENDING: u32 = 3;
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    publish(&context, 7, 16).await;
    let dir = plugin_dir(&[]);
    let config = format!(
        "[host]\nplugin_dir = \".\"\nstate_dir = \"state\"\nwatch = false\nio_threads = 1\n\
         shutdown_grace_ms = 200\n{}max_ack_pending = {MAX_ACK_PENDING}\n\
         [[destination]]\nname = \"sink\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
         queue = {{ timeout_ms = 600000 }}\n[[route]]\nname = \"all\"\nto = \"sink\"\n",
        ingress_config(&server, ACK_WAIT_MS),
        free_addr(),
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    host.line_where(|line| line.contains("consuming JetStream stream ORDERS"));
    // Three pulled and held (its destination is down), four waiting in the stream: the ingress
    // waits for room, and leaves its loop the moment the stop comes.
    until(async || match pending(&context).await {
        (3, 4, 0) => Ok(()),
        seen => Err(seen),
    })
    .await;

    let lines = tokio::task::spawn_blocking(move || host.stop_and_collect());
    let lines = within(lines).await.unwrap();
    let given_up = lines.iter().filter(|line| line.contains("stay unacknowledged"));
    assert_eq!(given_up.collect::<Vec<_>>(), Vec::<&String>::new(), "the ingress gave up on what it held");
    let stopped = lines.iter().find(|line| line.starts_with("switchyard: stopped")).expect("a stop line");
    assert!(stopped.contains("\"handed_back\":3"), "{stopped}");

    // Handed back: another host takes all seven, each once, without waiting for ack_wait.
    let config =
        NatsIngressConfig { max_ack_pending: Some(MAX_ACK_PENDING), ..consumer_config(&server, ACK_WAIT_MS) };
    takes_each_once(&context, config, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_host_cannot_admit_is_terminated_not_redelivered_forever() {
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let addr = free_addr();
    let sink = Sink::start(std::net::TcpListener::bind(addr).unwrap(), Duration::ZERO);
    let host = embedded(dir.path(), addr, "max_message_bytes = 1024").await;
    let (stop, serving) = consume(&host, &server, 300).await;
    publish(&context, 1, 4096).await;
    publish(&context, 1, 16).await;
    // Nothing pending, nothing left to deliver: the oversized one (seq 1) is done with for good.
    until(async || match pending(&context).await {
        (0, 0, _) if sink.arrivals().len() == 1 => Ok(()),
        seen => Err(seen),
    })
    .await;
    assert_eq!(sink.arrivals(), stored_ids(&context, [2]).await);
    drop(stop);
    within(serving).await.unwrap();
    // Counted once each answer was sent, which the server may have taken before: read once the
    // ingress has ended, its answers all sent and counted.
    assert_eq!((jetstream_count(&host, "terminated"), jetstream_count(&host, "acked")), (1.0, 1.0));
    within(host.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_most_headers_a_publisher_may_give_is_admitted_with_the_hosts_own() {
    // The ingress gives each message its id and stream sequence before admission, which counted
    // them among the publisher's headers: a message of 1024 was refused (and terminated) as "1026
    // headers; at most 1024".
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let state = dir.path().join("state");
    let config = format!(
        "{}[[route]]\nname = \"all\"\nto = \"out\"\n",
        crate::support::MEMORY_OUT.replacen(
            "[host]\n",
            &format!("[host]\nwatch = false\nstate_dir = {state:?}\n"),
            1
        )
    );
    let host = host(dir.path(), &config).await;
    let (stop, serving) = consume(&host, &server, 300).await;
    for count in [1024, 1025] {
        let mut headers = async_nats::HeaderMap::new();
        (0..count).for_each(|n| headers.insert(format!("x-{n}").as_str(), "v"));
        context.publish_with_headers("orders.eu", headers, "p".into()).await.unwrap().await.unwrap();
    }
    let delivered = next(&host.memory("out").unwrap()).await;
    assert_eq!(delivered.header(STREAM_SEQ_HEADER), Some("1"));
    assert_eq!(delivered.headers.len(), 1026, "the publisher's 1024, the host's id and stream sequence");
    // The one past the limit is done with for good.
    until_all_acked(&context).await;
    drop(stop);
    within(serving).await.unwrap();
    assert_eq!((jetstream_count(&host, "acked"), jetstream_count(&host, "terminated")), (1.0, 1.0));
    within(host.shutdown()).await;
}

/// Wait until `sink` has had a message of each of `seqs`.
async fn arrived(sink: &Sink, seqs: impl IntoIterator<Item = u64>) {
    let wanted: std::collections::BTreeSet<u64> = seqs.into_iter().collect();
    until(async || {
        let seen: std::collections::BTreeSet<u64> = sink.arrivals().into_iter().map(|(seq, _)| seq).collect();
        match wanted.is_subset(&seen) {
            true => Ok(()),
            false => Err(seen),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_made_again_and_what_is_published_after_is_delivered() {
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let sink = Sink::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Duration::ZERO);
    let host = embedded(dir.path(), sink.addr, "").await;
    let (stop, serving) = consume(&host, &server, 2000).await;
    publish(&context, 3, 16).await;
    arrived(&sink, 1..=3).await;

    // An operator deletes the consumer while the host pulls through it.
    let stream = context.get_stream(STREAM).await.unwrap();
    assert!(stream.delete_consumer("switchyard").await.unwrap().success);
    publish(&context, 3, 16).await;
    arrived(&sink, 4..=6).await;
    until_all_acked(&context).await;
    drop(stop);
    within(serving).await.unwrap();
    within(host.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_while_the_host_pulls_nothing_is_made_again_once_it_pulls() {
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let down = free_addr();
    let host = embedded(dir.path(), down, "").await;
    let config = NatsIngressConfig { max_ack_pending: Some(1), ..consumer_config(&server, 2000) };
    let (stop, serving) = consume_with(&host, config).await;
    // The host holds the one message it has room for, so no pull is out when the consumer goes:
    // the next pull goes to a consumer that is no more, and nothing answers it.
    publish(&context, 1, 16).await;
    until(async || match pending(&context).await {
        (1, 0, 0) => Ok(()),
        seen => Err(seen),
    })
    .await;
    let stream = context.get_stream(STREAM).await.unwrap();
    assert!(stream.delete_consumer("switchyard").await.unwrap().success);
    publish(&context, 1, 16).await;
    let sink = Sink::start(std::net::TcpListener::bind(down).unwrap(), Duration::ZERO);
    arrived(&sink, 1..=2).await;
    drop(stop);
    within(serving).await.unwrap();
    within(host.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_failing_after_the_stop_came_still_ends_the_ingress_gracefully() {
    let server = NatsServer::start_jetstream();
    let client = server.client().await;
    let context = create_stream(&client).await;
    let dir = plugin_dir(&[]);
    // Its destination is down: the one message it pulls is still held when it stops.
    let host = embedded(dir.path(), free_addr(), "shutdown_grace_ms = 100").await;
    // Its stop is an async block (as `consume` makes it), which must not be awaited once complete.
    let (stop, serving) = consume(&host, &server, 2000).await;
    publish(&context, 1, 16).await;
    until(async || match pending(&context).await {
        (1, 0, 0) => Ok(()),
        seen => Err(seen),
    })
    .await;

    // The stop comes while a pull is open (its request just reached the server, which ends it
    // only at its expiry, a second on), then the consumer is deleted, which ends it in an error.
    let mut pulls = client.subscribe(format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.switchyard")).await.unwrap();
    client.flush().await.unwrap();
    within(pulls.next()).await.expect("a pull");
    drop(stop);
    let stream = context.get_stream(STREAM).await.unwrap();
    assert!(stream.delete_consumer("switchyard").await.unwrap().success);
    within(serving).await.expect("the ingress ends without panicking");
    within(host.shutdown()).await;
    // Its graceful stop ran: it gave up on the held message (the host not stopping within its
    // grace), left unacknowledged.
    assert_eq!(jetstream_count(&host, "unacked"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_and_made_again_is_consumed_again() {
    let server = NatsServer::start_jetstream();
    let client = server.client().await;
    let context = create_stream(&client).await;
    let dir = plugin_dir(&[]);
    let sink = Sink::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Duration::ZERO);
    let host = embedded(dir.path(), sink.addr, "").await;
    let (stop, serving) = consume(&host, &server, 2000).await;
    publish(&context, 2, 16).await;
    arrived(&sink, 1..=2).await;
    let mut ids = stored_ids(&context, 1..=2).await;

    // The stream goes, with its consumer, and comes back empty: its sequences start again at 1.
    assert!(context.delete_stream(STREAM).await.unwrap().success);
    create_stream(&client).await;
    publish(&context, 3, 16).await;
    until(async || match sink.arrivals().len() {
        5 => Ok(()),
        seen => Err(seen),
    })
    .await;
    let mut arrivals = sink.arrivals();
    arrivals.sort();
    ids.extend(stored_ids(&context, 1..=3).await);
    ids.sort();
    assert_eq!(
        arrivals, ids,
        "two before, three in the stream made again, each with the id it was stored with"
    );
    let distinct: std::collections::HashSet<&str> = arrivals.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(distinct.len(), 5, "a message of the stream made again has an id of its own: {arrivals:?}");
    drop(stop);
    within(serving).await.unwrap();
    within(host.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_settings_differ_from_the_durable_consumers_is_refused_and_changes_none_of_them() {
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    let dir = plugin_dir(&[]);
    let host = embedded(dir.path(), free_addr(), "").await;
    let (stop, serving) = consume(&host, &server, 2000).await;

    // A second host on the same durable with another ack_wait_ms, max_ack_pending and filter.
    let other_dir = plugin_dir(&[]);
    let other = embedded(other_dir.path(), free_addr(), "").await;
    let config = NatsIngressConfig {
        max_ack_pending: Some(7),
        subjects: vec!["orders.eu".into()],
        ..consumer_config(&server, 5000)
    };
    let refused = within(NatsIngress::connect(other.clone(), config)).await.unwrap_err().to_string();
    for named in [
        "the durable consumer \"switchyard\" exists with other settings than this host's",
        "ack_wait_ms 2000 (this host: 5000)",
        "max_ack_pending 1000 (this host: 7)",
        "subjects [] (this host: [\"orders.eu\"])",
    ] {
        assert!(refused.contains(named), "{named:?} not in {refused:?}");
    }
    let stream = context.get_stream(STREAM).await.unwrap();
    let info = stream.consumer_info("switchyard").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_millis(2000));
    assert_eq!((info.config.max_ack_pending, info.config.filter_subject.as_str()), (1000, ""));

    // With the same settings, it joins.
    let (other_stop, other_serving) = consume(&other, &server, 2000).await;
    for (stop, serving, host) in [(stop, serving, host), (other_stop, other_serving, other)] {
        drop(stop);
        within(serving).await.unwrap();
        within(host.shutdown()).await;
    }
}

/// `switchyard run` config: the stream's durable consumer, delivering over HTTP to `sink`.
fn binary_config(server: &NatsServer, sink: SocketAddr) -> String {
    binary_config_with(server, sink, "")
}

/// [`binary_config`] with `[host]` lines `extra`.
fn binary_config_with(server: &NatsServer, sink: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[host]
plugin_dir = "."
state_dir = "state"
watch = false
{extra}
[[ingress.nats]]
url = "{}"
stream = "{STREAM}"
durable = "switchyard"
ack_wait_ms = 3000
max_ack_pending = 96
[[destination]]
name = "sink"
transport = "http"
endpoints = ["{sink}"]
queue = {{ timeout_ms = 600000, max_in_flight = 8 }}
[[route]]
name = "all"
to = "sink"
"#,
        server.address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_on_one_durable_consumer_deliver_every_message_when_one_is_killed() {
    const MESSAGES: usize = 3000;
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    // All in the stream before the hosts start, so the kill finds it mid-way.
    publish(&context, MESSAGES, 64).await;
    let sink = Sink::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Duration::from_millis(5));
    let sink_addr = sink.addr;
    let dirs: Vec<_> = (0..3).map(|_| plugin_dir(&[])).collect();
    let hosts: Vec<Running> = dirs
        .iter()
        .map(|dir| {
            std::fs::write(dir.path().join("switchyard.toml"), binary_config(&server, sink_addr)).unwrap();
            let host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
            host.line_where(|line| line.contains("consuming JetStream stream ORDERS as durable switchyard"));
            host
        })
        .collect();

    // Mid-stream: a third delivered, the rest on its way.
    let arrivals = tokio::task::spawn_blocking({
        let sink = sink.arrivals.clone();
        move || {
            eventually(|| match sink.lock().unwrap().len() {
                n if n >= MESSAGES / 3 => Ok(n),
                n => Err(n),
            })
        }
    });
    let at_kill = within(arrivals).await.unwrap();
    let mut hosts = hosts.into_iter();
    let killed = hosts.next().unwrap();
    drop(killed.kill());
    // What the killed host had unacknowledged is still pending now (ack_wait has not passed), with
    // what the others have in flight: a bound on what it can deliver twice.
    let (unacked_after_kill, _, _) = pending(&context).await;
    assert!(at_kill < MESSAGES * 2 / 3, "the kill came mid-stream ({at_kill} of {MESSAGES} delivered)");

    until_all_acked(&context).await;
    let arrivals = sink.arrivals();
    let ids: HashMap<u64, String> = stored_ids(&context, 1..=MESSAGES as u64).await.into_iter().collect();
    let mut times: HashMap<u64, usize> = HashMap::new();
    for (seq, id) in &arrivals {
        assert_eq!(id, &ids[seq], "a message keeps its id on every delivery");
        *times.entry(*seq).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=MESSAGES as u64).filter(|seq| !times.contains_key(seq)).collect();
    assert!(missing.is_empty(), "{} messages never delivered: {missing:?}", missing.len());
    let duplicates: usize = times.values().map(|count| count - 1).sum();
    eprintln!(
        "jetstream: {MESSAGES} published, {} arrivals, {duplicates} duplicates (bound: {unacked_after_kill} \
         unacknowledged just after the kill, {at_kill} delivered before it)",
        arrivals.len()
    );
    assert!(
        duplicates <= unacked_after_kill,
        "{duplicates} duplicates; {unacked_after_kill} were unacknowledged"
    );
    for host in hosts {
        let lines = host.stop_and_collect();
        assert!(!lines.iter().any(|line| line.contains("panicked")), "{lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooling_host_leaves_stream_messages_to_the_stream_and_killed_restarted_delivers_them_all() {
    const MESSAGES: usize = 40;
    let server = NatsServer::start_jetstream();
    let context = create_stream(&server.client().await).await;
    publish(&context, MESSAGES, 64).await;
    let dir = plugin_dir(&[]);
    let down = free_addr();
    let config = binary_config_with(&server, down, "durability = \"spool\"");
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let args = ["run", "--config", "switchyard.toml", "--admin", "127.0.0.1:0"];
    let first = Running::start(&args, dir.path());
    let admin = first.address("admin API listening on http://");

    // Everything pulled (fewer than max_ack_pending) and admitted; nothing settled, as the
    // destination is down, so nothing acknowledged to the server.
    let admitted = tokio::task::spawn_blocking(move || {
        eventually(|| {
            let metrics = http(admin, "GET", "/metrics", &[], b"").1;
            match sample(&metrics, "switchyard_messages_accepted_total", &[]) {
                Some(accepted) if accepted == MESSAGES as f64 => Ok(()),
                accepted => Err(accepted),
            }
        })
    });
    within(admitted).await.unwrap();
    assert_eq!(pending(&context).await.0, MESSAGES, "all pulled, none acknowledged");
    drop(first.kill());
    // The stream keeps them until they are acknowledged: the spool holds none of them.
    let state = dir.path().join("state");
    let (inspected, report, problem) = spool_command("inspect", &state);
    assert!(inspected, "{problem}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["depth"], 0, "{report}");

    // Restarted with its destination back: the server gives the unacknowledged messages again
    // (after ack_wait), each with the id of its stream, sequence and time stored, and the spool gives none.
    let sink = Sink::start(std::net::TcpListener::bind(down).unwrap(), Duration::ZERO);
    let second = Running::start(&args, dir.path());
    let admin = second.address("admin API listening on http://");
    until(async || match pending(&context).await {
        (0, 0, _) if sink.arrivals().len() >= MESSAGES => Ok(()),
        seen => Err((seen, sink.arrivals().len())),
    })
    .await;
    let metrics = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics", &[], b"").1);
    let metrics = within(metrics).await.unwrap();
    assert_eq!(sample(&metrics, "switchyard_spool_recovered_total", &[]), Some(0.0), "{metrics}");
    let lines = second.stop_and_collect();
    assert!(!lines.iter().any(|line| line.contains("panicked")), "{lines:?}");
    let arrivals = sink.arrivals();
    let ids: HashMap<u64, String> = stored_ids(&context, 1..=MESSAGES as u64).await.into_iter().collect();
    for (seq, id) in &arrivals {
        assert_eq!(id, &ids[seq], "a message keeps its id on every delivery");
    }
    let seqs: std::collections::BTreeSet<u64> = arrivals.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=MESSAGES as u64).collect(), "every message delivered");
    // Each once, unless the server gave one again (its ack slower than ack_wait on a loaded machine).
    eprintln!("jetstream + spool: {MESSAGES} published, {} arrivals after the restart", arrivals.len());
}
