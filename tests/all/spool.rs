//! The durable spool through the embedded host: a message is on disk when `send` returns and
//! leaves the spool once settled, whatever its outcome, and only then (one dropped with the tasks
//! of a runtime shut down before its host stays for the next start); a host started on a spool
//! delivers what it held (its `x-sy-id` unchanged); a torn tail is cut off quietly and what
//! precedes it delivered; corrupt bytes mid-segment, or at the end of a segment before the last,
//! are reported and skipped, and what follows them delivered; a full spool is backpressure, never
//! loss. And through `switchyard run`: a stop while an ingress drains stops the recovery at once,
//! leaving what it had not admitted in the spool.

use crate::cli::Running;
use crate::exposition::sample;
use crate::jetstream::{create_stream, pending, publish, until};
use crate::nats_server::NatsServer;
use crate::support::{
    HungFile, drain_and_account, eventually, next, plugin_dir, post, start_ingress, within,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use switchyard::config::Durability;
use switchyard::{Config, Host, MemoryDestination, Message, NativeFilter, RouteConfig, SendError, Verdict};

/// A filter that keeps each message once the test lets one through (all of them once the sender
/// is dropped): messages wait in the pipeline, held in the spool, as long as the test wants.
pub(crate) fn gate() -> (flume::Sender<()>, impl NativeFilter) {
    let (open, gate) = flume::unbounded::<()>();
    (open, move |_: &Message| {
        let _ = gate.recv();
        Ok(Verdict::Keep)
    })
}

/// A spooling host on `state` routing `t.*` through `gate` (if any) to memory destination `out`.
pub(crate) async fn host(
    state: &Path,
    gate: Option<impl NativeFilter>,
    tune: impl FnOnce(&mut Config),
) -> (Host, flume::Receiver<Message>) {
    let plugins = plugin_dir(&[]);
    let mut config = Config::default();
    config.host.durability = Durability::Spool;
    config.host.watch = false;
    tune(&mut config);
    let (out, delivered) = MemoryDestination::new();
    let mut route = RouteConfig::new("all", "t.*", "out");
    let mut builder = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state);
    if let Some(gate) = gate {
        builder = builder.filter("gate", gate);
        route = route.stage("filter:gate");
    }
    let host = builder.destination("out", out).route(route).build().await.unwrap();
    (host, delivered)
}

/// A waker that tells the test when it is woken: for a future polled by hand, step by step.
#[derive(Default)]
struct Woken(tokio::sync::Notify);

impl std::task::Wake for Woken {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify_one();
    }
}

/// Assert that the `count` messages a spooling `host` accepted (and holds: none settled), read
/// together by an ingress (sent at once), are each on disk and took one spool commit (one fsync),
/// the host's only one: read apart, or admitted one by one, they would take more.
pub(crate) fn assert_written_together(host: &Host, count: usize) {
    assert_eq!(host.spool().unwrap().depth, count as u64, "every message accepted is on disk");
    let metrics = host.metrics().encode();
    assert_eq!(sample(&metrics, "switchyard_spool_writes_total", &[]), Some(count as f64));
    let commits = sample(&metrics, "switchyard_spool_commit_seconds_count", &[]).unwrap();
    assert_eq!(commits, 1.0, "spool commits (one fsync each) for {count} messages read together");
}

/// Assert that `delivered` brings the messages `answered` lists, each answered accepted with its
/// `x-sy-id` and carrying its payload (the pairs' order is the answers': any order of delivery).
pub(crate) async fn assert_delivered_as_answered(
    delivered: &flume::Receiver<Message>,
    answered: &[(String, String)],
) {
    let mut came = Vec::new();
    for _ in answered {
        let message = next(delivered).await;
        came.push((
            String::from_utf8(message.payload.to_vec()).unwrap(),
            message.unique_id().unwrap().to_owned(),
        ));
    }
    came.sort();
    let mut answered = answered.to_vec();
    answered.sort();
    assert_eq!(came, answered, "each message delivered with the id it was answered with");
}

/// A copy of `state`'s spool as it is on disk now (as a crash would leave it) in a new state
/// directory: one host holds a spool directory at a time.
fn crash_copy(state: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("spool")).unwrap();
    for path in segments(state) {
        std::fs::copy(&path, copy.path().join("spool").join(path.file_name().unwrap())).unwrap();
    }
    copy
}

fn segments(state: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(state.join("spool")).unwrap().map(|e| e.unwrap().path()).collect();
    found.retain(|path| path.extension().is_some_and(|ext| ext == "seg"));
    found.sort();
    found
}

/// The `x-sy-id`s of the next `count` messages of `delivered`, sorted (two workers: any order).
async fn ids_of(delivered: &flume::Receiver<Message>, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(next(delivered).await.unique_id().unwrap().to_owned());
    }
    ids.sort();
    ids
}

fn message(n: usize) -> Message {
    Message::new("t.x", format!("payload {n}")).with_header("x-sy-id", format!("mine-{n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_is_on_disk_until_its_outcome_is_recorded() {
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (host, delivered) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        host.send(message(n)).await.unwrap();
    }
    let spooled = host.spool().expect("durability = spool");
    assert_eq!(spooled.depth, 3, "{spooled:?}");
    assert!(spooled.bytes > 3 * 9 && spooled.oldest_age_ms.is_some(), "{spooled:?}");
    let on_disk: u64 = segments(state.path()).iter().map(|path| path.metadata().unwrap().len()).sum();
    assert!(on_disk >= spooled.bytes, "the records are in the segment files: {on_disk} bytes");

    (0..3).for_each(|_| open.send(()).unwrap());
    assert_eq!(ids_of(&delivered, 3).await, ["mine-0", "mine-1", "mine-2"]);
    eventually(|| match host.spool().unwrap() {
        status if status.depth == 0 && status.oldest_age_ms.is_none() => Ok(()),
        status => Err(status),
    });
    drain_and_account(&host).await;

    let (again, delivered) = host_again(state.path()).await;
    assert_eq!(again.spool().unwrap().recovered, 0, "settled messages are not delivered again");
    drain_and_account(&again).await;
    assert!(delivered.is_empty());
}

async fn host_again(state: &Path) -> (Host, flume::Receiver<Message>) {
    host_again_with(state, |_| {}).await
}

/// A spooling host on `state` with no gate, `tune`d.
async fn host_again_with(state: &Path, tune: impl FnOnce(&mut Config)) -> (Host, flume::Receiver<Message>) {
    host(state, None::<fn(&Message) -> Result<Verdict, switchyard::PluginError>>, tune).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_on_a_spool_delivers_what_it_held_with_its_unique_ids_unchanged() {
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    // The first host never settles its messages: a copy of its spool is what a crash leaves.
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..5 {
        stuck.send(message(n)).await.unwrap();
    }

    let state = crash_copy(state.path());
    let (host, delivered) = host_again(state.path()).await;
    assert_eq!(host.spool().unwrap().recovered, 5);
    assert_eq!(ids_of(&delivered, 5).await, (0..5).map(|n| format!("mine-{n}")).collect::<Vec<_>>());
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (5, 5), "recovered messages are counted as accepted");

    let (third, delivered) = host_again(state.path()).await;
    assert_eq!(third.spool().unwrap().recovered, 0, "the second host recorded their outcomes");
    drain_and_account(&third).await;
    assert!(delivered.is_empty());
    // The first host delivers them too once let through: its own spool still held them.
    drop(open);
    assert_eq!(ids_of(&stuck_out, 5).await.len(), 5);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_admission_was_given_up_on_leaves_nothing_in_the_spool() {
    // Its caller gone while the writer fsync'd its record (a timeout, a client that hung up), the
    // record stayed with nothing to remove it: the spool's depth never went back to 0 and the
    // next start delivered a message whose caller never heard it accepted.
    let state = tempfile::tempdir().unwrap();
    let (host, delivered) = host_again(state.path()).await;
    // Polled once (it waits for the writer's fsync), then given up on.
    let mut given_up = Box::pin(host.try_send(message(0)));
    assert!(futures_util::poll!(&mut given_up).is_pending());
    drop(given_up);
    // Written after it, by the one writer: its put was written (or refused) by the time this returns.
    host.try_send(message(1)).await.unwrap();
    assert_eq!(ids_of(&delivered, 1).await, ["mine-1"]);
    eventually(|| match host.spool().unwrap() {
        status if status.depth == 0 && status.oldest_age_ms.is_none() => Ok(()),
        status => Err(status),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));

    let (again, delivered) = host_again(state.path()).await;
    assert_eq!(again.spool().unwrap().recovered, 0, "nothing its caller did not see accepted");
    drain_and_account(&again).await;
    assert!(delivered.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_recovery_leaves_the_messages_not_yet_redelivered_in_the_spool() {
    // The recovery went on admitting through a stop, which waited for every recovered message to
    // be admitted and, past its grace period, dead-lettered each (`shutdown`): out of the spool.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..50 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    // One worker taking one message at a time and queues of one, to a destination nobody reads: a
    // few messages fill them, and the next waits until the grace period ends. (A worker's batch
    // takes what the queue holds and what a sender waiting on it puts in meanwhile: with batches of
    // up to 64, a loaded machine let 18 in before the stop.)
    let config = Config::from_toml(
        "test.toml",
        "[host]\ndurability = \"spool\"\nwatch = false\nqueue_capacity = 1\nworkers = 1\nbatch_size = 1\n\
         shutdown_grace_ms = 0\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
         queue = { capacity = 1 }\n[[route]]\nname = \"all\"\nmatch = { topic = \"t.*\" }\nto = \"out\"\n",
    )
    .unwrap();
    let plugins = plugin_dir(&[]);
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.build().await.unwrap();
    assert_eq!(host.spool().unwrap().recovered, 50);
    let stats = drain_and_account(&host).await;
    let left = switchyard::spool::inspect(&state.path().join("spool")).unwrap();
    assert!(left.depth >= 40, "only the few the queues hold were admitted again: {left:?} {stats:?}");
    assert_eq!(stats.accepted + left.depth, 50, "each was settled or left in the spool: {stats:?}");
    drop(host);

    let (again, delivered) = host_again(state.path()).await;
    assert_eq!(again.spool().unwrap().recovered, left.depth);
    assert_eq!(ids_of(&delivered, left.depth as usize).await.len() as u64, left.depth);
    let stats = drain_and_account(&again).await;
    assert_eq!(stats.delivered, left.depth);
    drop(open);
    assert_eq!(ids_of(&stuck_out, 50).await.len(), 50);
    drain_and_account(&stuck).await;
}

/// An HTTP endpoint, on a runtime of its own, that holds every request until the test lets them
/// through, counting those that arrived.
struct HeldSink {
    addr: std::net::SocketAddr,
    arrivals: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    /// Taken on drop: shut down in the background, as the test's own runtime may be the one dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl HeldSink {
    fn start() -> HeldSink {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (arrivals, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Semaphore::new(0)));
        let app = axum::Router::new().fallback({
            let (arrivals, gate) = (arrivals.clone(), gate.clone());
            move || {
                let (arrivals, gate) = (arrivals.clone(), gate.clone());
                async move {
                    arrivals.fetch_add(1, Ordering::Relaxed);
                    drop(gate.acquire().await);
                    "taken"
                }
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        HeldSink { addr, arrivals, gate, runtime: Some(runtime) }
    }

    fn arrivals(&self) -> usize {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// Answer every request held, and every one to come.
    fn let_through(&self) {
        self.gate.add_permits(1);
    }
}

impl Drop for HeldSink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_run_stopped_while_an_ingress_drains_leaves_the_recovered_messages_not_yet_admitted_in_the_spool()
 {
    // `switchyard run` began its host's stop only once its ingresses had drained (or the grace
    // period ended): meanwhile the recovery went on admitting what the spool held, and what of it
    // was still queued at the grace's end was dead-lettered (`shutdown`) out of the spool.
    const HELD: u64 = 50;
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..HELD as usize {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    // A JetStream ingress holding a message keeps draining once the stop comes, until the message
    // is settled: it goes to a sink that holds it.
    let server = NatsServer::start_jetstream();
    let stream = create_stream(&server.client().await).await;
    publish(&stream, 1, 16).await;
    // The recovered messages go to a sink that holds them too: one worker and queues of one fill
    // at once.
    let (recovered, aside) = (HeldSink::start(), HeldSink::start());
    let config = format!(
        "[host]\nplugin_dir = \".\"\nstate_dir = {:?}\nwatch = false\ndurability = \"spool\"\n\
         workers = 1\nqueue_capacity = 1\nshutdown_grace_ms = 10000\n\
         [[ingress.nats]]\nurl = \"{}\"\nstream = \"ORDERS\"\nack_wait_ms = 30000\n\
         [[destination]]\nname = \"recovered\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
         timeout_ms = 600000\nqueue = {{ capacity = 1, timeout_ms = 600000, max_in_flight = 1 }}\n\
         [[destination]]\nname = \"aside\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
         timeout_ms = 600000\nqueue = {{ timeout_ms = 600000 }}\n\
         [[route]]\nname = \"recovered\"\nmatch = {{ topic = \"t.*\" }}\nto = \"recovered\"\n\
         [[route]]\nname = \"aside\"\nmatch = {{ topic = \"orders.*\" }}\nto = \"aside\"\n",
        state.path(),
        server.address(),
        recovered.addr,
        aside.addr,
    );
    let dir = plugin_dir(&[]);
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    host.line_where(|line| line.contains("consuming JetStream stream ORDERS"));
    // The stream's message pulled (waiting for room in the queue), a recovered one at its sink.
    until(async || match (pending(&stream).await, recovered.arrivals()) {
        ((1, 0, _), 1) => Ok(()),
        seen => Err(seen),
    })
    .await;

    // The stop (said once begun): the recovery stops at once, though the ingress drains and what
    // was admitted goes on meanwhile.
    host.terminate();
    host.line_where(|line| line.starts_with("switchyard: stopping"));
    recovered.let_through();
    let line = host.line_where(|line| {
        line.contains("the spool keeps the messages not yet delivered again")
            || line.starts_with("switchyard: stopped")
    });
    assert!(line.contains("the spool keeps"), "the recovery went on through the stop: {line}");
    let not_admitted: u64 = line.rsplit("messages=").next().unwrap().parse().unwrap();
    aside.let_through();
    let stopped = host.stopped();
    let stats: serde_json::Value = serde_json::from_str(stopped.split_once("; ").unwrap().1).unwrap();
    let outcomes = (stats["dead_lettered"].as_u64(), stats["handed_back"].as_u64());
    assert_eq!(outcomes, (Some(0), Some(0)), "{stopped}");
    assert_eq!(stats["delivered"], stats["accepted"], "{stopped}");
    assert_eq!(
        stats["accepted"].as_u64(),
        Some(HELD - not_admitted + 1),
        "and the stream's message: {stopped}"
    );
    assert_eq!(pending(&stream).await.0, 0, "the stream's message acknowledged");

    // What was not admitted again when the stop began stays for the next start.
    let left = switchyard::spool::inspect(&state.path().join("spool")).unwrap();
    assert_eq!(left.depth, not_admitted, "{left:?} {stopped}");
    drop(open);
    assert_eq!(ids_of(&stuck_out, HELD as usize).await.len() as u64, HELD);
    drain_and_account(&stuck).await;
}

/// Where each record of the segment file `path` starts, read from the length fields (the file
/// is intact), with the kind byte of each.
fn records(path: &Path) -> Vec<(usize, u8)> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut found = Vec::new();
    while at < bytes.len() {
        found.push((at, bytes[at + 8]));
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    found
}

/// Flip byte `at` of the file `path`, as bit rot does.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_tail_is_cut_off_quietly_and_the_messages_before_it_delivered() {
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    let last = segments(state.path()).pop().unwrap();
    flip(&last, last.metadata().unwrap().len() as usize - 3);

    let (host, delivered) = host_again(state.path()).await;
    assert_eq!(host.event_counts().spool_damaged, 0, "what a crash leaves is no alarm");
    assert_eq!(host.spool().unwrap().recovered, 2);
    assert_eq!(ids_of(&delivered, 2).await, ["mine-0", "mine-1"]);
    let aside = last.with_extension("seg.damaged");
    assert!(aside.metadata().unwrap().len() > 0, "the unreadable record is kept aside");
    host.send(message(3)).await.unwrap();
    assert_eq!(ids_of(&delivered, 1).await, ["mine-3"], "the spool goes on taking messages");
    drain_and_account(&host).await;
    assert!(delivered.is_empty());
    drop(open);
    assert_eq!(ids_of(&stuck_out, 3).await.len(), 3);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_mid_segment_is_reported_and_the_messages_after_it_delivered() {
    let state = tempfile::tempdir().unwrap();
    let (open, first_gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(first_gate), |_| {}).await;
    for n in 0..5 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    let segment = segments(state.path()).pop().unwrap();
    let records = records(&segment);
    assert_eq!(records.len(), 5, "one segment, one put a message");
    // The third put, mine-2, in its body: bit rot in the middle of the segment.
    let (start, end) = (records[2].0, records[3].0);
    flip(&segment, start + 30);

    // The operator's view before any host touches it.
    let report = switchyard::spool::inspect(&state.path().join("spool")).unwrap();
    assert_eq!(report.depth, 4, "the messages after the corrupt record are counted: {report:?}");
    let damage: Vec<_> =
        report.damage.iter().map(|damage| (damage.kind, damage.offset, damage.lost)).collect();
    assert_eq!(damage, [(switchyard::DamageKind::Corrupt, start as u64, (end - start) as u64)]);
    let (inspected, json, said) = crate::crash_recovery::spool_command("inspect", state.path());
    assert!(inspected, "{said}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((&json["depth"], &json["damage"][0]["kind"]), (&4.into(), &"corrupt".into()), "{json}");
    let told = format!("{} corrupt bytes at offset {start}", end - start);
    assert!(said.contains(&told) && said.contains(segment.to_str().unwrap()), "{said}");

    let (recovering, delivered) = host_again(state.path()).await;
    assert_eq!(recovering.event_counts().spool_damaged, 1, "corruption is reported");
    assert_eq!(recovering.spool().unwrap().recovered, 4);
    assert_eq!(ids_of(&delivered, 4).await, ["mine-0", "mine-1", "mine-3", "mine-4"]);
    drain_and_account(&recovering).await;
    drop(recovering);
    // The spool goes on: a message held at the next crash is there at the next start.
    let (open_again, held) = gate();
    let (again, again_out) = host(state.path(), Some(held), |_| {}).await;
    assert_eq!(again.spool().unwrap().recovered, 0, "settled, and the damage reported once");
    assert_eq!(again.event_counts().spool_damaged, 0);
    again.send(message(5)).await.unwrap();
    let later = crash_copy(state.path());
    let (third, delivered) = host_again(later.path()).await;
    assert_eq!(third.spool().unwrap().recovered, 1);
    assert_eq!(ids_of(&delivered, 1).await, ["mine-5"]);
    drain_and_account(&third).await;
    drop(open_again);
    assert_eq!(ids_of(&again_out, 1).await, ["mine-5"]);
    drain_and_account(&again).await;
    drop(open);
    assert_eq!(ids_of(&stuck_out, 5).await.len(), 5);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_last_record_of_a_segment_before_the_last_is_reported_not_cut_quietly() {
    let state = tempfile::tempdir().unwrap();
    let (open, first_gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(first_gate), |_| {}).await;
    for n in 0..3 {
        stuck.send(message(n)).await.unwrap();
    }
    let first = crash_copy(state.path());
    // A host on the crashed spool writes its message to a segment of its own, after the first.
    let (open_second, second_gate) = gate();
    let (second, second_out) = host(first.path(), Some(second_gate), |_| {}).await;
    second.send(message(3)).await.unwrap();
    let state = crash_copy(first.path());
    let [sealed, later] = &segments(state.path())[..] else { panic!("{:?}", segments(state.path())) };
    let later_bytes = std::fs::read(later).unwrap();
    // The last put of the first segment, mine-2, in its body: bit rot, not a torn write.
    let (last, sealed_len) = (records(sealed).pop().unwrap().0, sealed.metadata().unwrap().len());
    flip(sealed, last + 30);

    let report = switchyard::spool::inspect(&state.path().join("spool")).unwrap();
    let damage: Vec<_> =
        report.damage.iter().map(|damage| (damage.kind, damage.offset, damage.lost)).collect();
    assert_eq!(damage, [(switchyard::DamageKind::Corrupt, last as u64, sealed_len - last as u64)]);
    // Gated, so that no segment is settled and deleted before it is looked at.
    let (open_third, third_gate) = gate();
    let (host, delivered) = host(state.path(), Some(third_gate), |_| {}).await;
    assert_eq!(host.event_counts().spool_damaged, 1, "fsync'd bytes gone bad are reported");
    assert_eq!(host.spool().unwrap().recovered, 3);
    let aside = sealed.with_extension("seg.damaged");
    assert_eq!(aside.metadata().unwrap().len(), sealed_len - last as u64, "the bytes are set aside");
    assert_eq!(sealed.metadata().unwrap().len(), last as u64, "and taken out of their segment");
    assert_eq!(std::fs::read(later).unwrap(), later_bytes, "the later segment is whole");
    drop(open_third);
    assert_eq!(ids_of(&delivered, 3).await, ["mine-0", "mine-1", "mine-3"]);
    drain_and_account(&host).await;
    drop(open_second);
    assert_eq!(ids_of(&second_out, 4).await.len(), 4);
    drain_and_account(&second).await;
    drop(open);
    assert_eq!(ids_of(&stuck_out, 3).await.len(), 3);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_settle_record_delivers_its_message_again_and_loses_none_after_it() {
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    // The first goes through the gate alone (a batch is delivered once all of it passed the gate:
    // sent with the others, it could share their batch and wait with them).
    stuck.send(message(0)).await.unwrap();
    open.send(()).unwrap();
    assert_eq!(ids_of(&stuck_out, 1).await, ["mine-0"]);
    // Its remove is written once the spool's figures show it settled.
    eventually(|| match stuck.spool().unwrap().depth {
        0 => Ok(()),
        depth => Err(depth),
    });
    for n in 1..4 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    let segment = segments(state.path()).pop().unwrap();
    let records = records(&segment);
    let kinds: Vec<u8> = records.iter().map(|(_, kind)| *kind).collect();
    assert_eq!(kinds, [1, 2, 1, 1, 1], "a put, its remove, three puts");
    // The remove's sequence number.
    flip(&segment, records[1].0 + 10);

    let (host, delivered) = host_again(state.path()).await;
    assert_eq!(host.event_counts().spool_damaged, 1);
    assert_eq!(host.spool().unwrap().recovered, 4, "the settled message again, and the one after the remove");
    let ids = ids_of(&delivered, 4).await;
    assert_eq!(ids, ["mine-0", "mine-1", "mine-2", "mine-3"]);
    drain_and_account(&host).await;
    drop(open);
    assert_eq!(ids_of(&stuck_out, 3).await.len(), 3);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_is_backpressure_and_every_message_it_took_is_delivered() {
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (host, delivered) = host(state.path(), Some(gate), |config| {
        config.host.max_message_bytes = 2048;
        config.host.spool_max_bytes = 8 * 1024;
    })
    .await;
    let mut accepted = 0;
    let refused = loop {
        match host.try_send(message(accepted)).await {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted <= 8, "8 KiB hold at most 8 records");
    };
    assert_eq!(refused, SendError::Backpressure);
    assert_eq!(accepted, 8, "each small record holds 1 KiB of the budget");
    let ingress = start_ingress(&host).await;
    let (status, body) =
        tokio::task::spawn_blocking(move || post(ingress, "/v1/messages/t.x", &[], b"{}")).await.unwrap();
    assert_eq!(status, 503, "the HTTP ingress refuses with backpressure: {body}");
    let waiting = tokio::spawn({
        let host = host.clone();
        async move { host.send(message(99)).await }
    });

    (0..=accepted).for_each(|_| open.send(()).unwrap());
    within(waiting).await.unwrap().expect("accepted once the spool has room");
    for _ in 0..=accepted {
        next(&delivered).await;
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (9, 9));
    assert_eq!(host.spool().unwrap().depth, 0);
}

#[tokio::test]
async fn a_send_waiting_for_room_in_a_spool_full_of_recovered_messages_holds_up_none_of_them() {
    // A send took its room in the intake, then waited for room in the spool. In a spool full of
    // recovered messages, sends waiting there held all of the intake, which the recovery needed to
    // send those messages on, whose delivery alone makes room in the spool: nothing moved, for good.
    let spool_limits = |config: &mut Config| {
        config.host.max_message_bytes = 2048;
        config.host.spool_max_bytes = 8 * 1024;
    };
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), spool_limits).await;
    let mut held = 0;
    while stuck.try_send(message(held)).await.is_ok() {
        held += 1;
    }
    assert_eq!(held, 8, "each small record holds 1 KiB of the 8 KiB spool");
    let state = crash_copy(state.path());
    let (host, delivered) = host_again_with(state.path(), |config| {
        spool_limits(config);
        config.host.queue_bytes = 4 * 1024;
    })
    .await;
    assert_eq!(host.spool().unwrap().recovered, 8);
    // More sends than the intake has room for (4 KiB, 1 KiB each), each polled once before this
    // task first yields (a current-thread runtime), so before the recovery's task runs: each
    // takes what room it can find, then waits, as the spool is full.
    let mut sends: Vec<_> = (100..116).map(|n| Box::pin(host.send(message(n)))).collect();
    for send in &mut sends {
        assert!(futures_util::poll!(send).is_pending(), "the spool is full");
    }
    let (sent, ids) =
        within(async { tokio::join!(futures_util::future::join_all(sends), ids_of(&delivered, 24)) }).await;
    assert!(sent.iter().all(Result::is_ok), "{sent:?}");
    let mut expected: Vec<_> = (0..8).chain(100..116).map(|n| format!("mine-{n}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every recovered message and every send delivered");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (24, 24));
    assert_eq!(host.spool().unwrap().depth, 0);
    drop(open);
    assert_eq!(ids_of(&stuck_out, 8).await.len(), 8);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_the_state_directory_of_a_spooling_one_is_refused_until_it_stopped() {
    let state = tempfile::tempdir().unwrap();
    let (first, _) = host_again(state.path()).await;
    let plugins = plugin_dir(&[]);
    let mut config = Config::default();
    config.host.durability = Durability::Spool;
    let second =
        Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let error = second.build().await.expect_err("the spool is taken").to_string();
    let expected = format!("state directory {}: in use by another host", state.path().display());
    assert!(error.starts_with(&expected), "{error}");
    drain_and_account(&first).await;
    drop(first);
    let (again, _) = host_again(state.path()).await;
    drain_and_account(&again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_record_exceeds_the_whole_spool_is_refused_as_too_large_not_waited_on() {
    let state = tempfile::tempdir().unwrap();
    let (host, delivered) = host_again_with(state.path(), |config| {
        config.host.max_message_bytes = 2048;
        config.host.spool_max_bytes = 3072;
    })
    .await;
    // Its payload within max_message_bytes, its topic long: once not counted, the record was larger
    // than the whole spool and waited for room it could never have; counted, it is too large at once.
    let long = Message::new(format!("t.{}", "x".repeat(1000)), vec![b'p'; 2000]);
    let refused = within(host.send(long)).await;
    assert_eq!(refused, Err(SendError::TooLarge { size: 3002, limit: 2048 }));
    host.send(message(1)).await.expect("a message that fits is accepted");
    assert_eq!(next(&delivered).await.unique_id(), Some("mine-1"));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_fails_to_start_leaves_what_its_spool_held_for_the_next_start() {
    // A start that failed after opening the spool (here, a plugin directory that is a file) dropped
    // the messages it had recovered as if they were settled: their records went, undelivered.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    let not_a_dir = tempfile::NamedTempFile::new().unwrap();
    let mut config = Config::default();
    config.host.durability = Durability::Spool;
    config.host.watch = false;
    let failed =
        Host::builder().config("test.toml", config).plugin_dir(not_a_dir.path()).state_dir(state.path());
    let error = failed.build().await.expect_err("the plugin directory is a file").to_string();
    assert!(error.starts_with("plugin directory"), "{error}");

    let (host, delivered) = host_again(state.path()).await;
    assert_eq!(host.spool().unwrap().recovered, 3);
    assert_eq!(ids_of(&delivered, 3).await, ["mine-0", "mine-1", "mine-2"]);
    drain_and_account(&host).await;
    drop(open);
    assert_eq!(ids_of(&stuck_out, 3).await.len(), 3);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dropped_without_a_shutdown_leaves_its_unsettled_messages_for_the_next_start() {
    // As a crash does. Before, its spool went on removing the records of messages settled after
    // the drop, or dropped unsettled with the host's queues, as if they had reached an outcome.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (dropped, dropped_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        dropped.send(message(n)).await.unwrap();
    }
    drop(dropped);
    // Its workers, still holding the messages, deliver them now: too late for its spool.
    drop(open);
    assert_eq!(ids_of(&dropped_out, 3).await, ["mine-0", "mine-1", "mine-2"]);

    let (host, delivered) = host_again(state.path()).await;
    assert_eq!(host.spool().unwrap().recovered, 3);
    assert_eq!(ids_of(&delivered, 3).await, ["mine-0", "mine-1", "mine-2"]);
    drain_and_account(&host).await;
}

#[tokio::test]
async fn a_host_dropped_leaves_its_state_directory_to_the_next_host_at_once() {
    // The dropped host's re-delivery task held the dead-letter file, and with it the state
    // directory's lock, until the runtime next polled it: on a runtime of one thread, a host built
    // at once on the same directory was refused `in use by another host`.
    let state = tempfile::tempdir().unwrap();
    let (dropped, dropped_out) = host_again(state.path()).await;
    dropped.send(message(0)).await.unwrap();
    assert_eq!(ids_of(&dropped_out, 1).await, ["mine-0"]);
    drop(dropped);
    let (again, _) = host_again(state.path()).await;
    drain_and_account(&again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_dropped_while_a_worker_is_busy_leaves_its_state_directory_to_the_next_host_at_once() {
    // A worker busy with a message as its host was dropped held the dead-letter file, and with
    // it the state directory's lock, until it was done: the next host was refused `in use by
    // another host` however long that took.
    let state = tempfile::tempdir().unwrap();
    let (entered, busy) = flume::unbounded();
    let (open, gate) = flume::unbounded::<()>();
    let held = move |_: &Message| {
        let _ = entered.send(());
        let _ = gate.recv();
        Ok(Verdict::Keep)
    };
    let (dropped, dropped_out) = host(state.path(), Some(held), |_| {}).await;
    dropped.send(message(0)).await.unwrap();
    within(busy.recv_async()).await.unwrap();
    drop(dropped);

    let (again, delivered) = host_again(state.path()).await;
    assert_eq!(again.spool().unwrap().recovered, 1, "unsettled when its host was dropped");
    assert_eq!(ids_of(&delivered, 1).await, ["mine-0"]);
    drain_and_account(&again).await;
    // The dropped host's worker goes on with the message, too late for its spool.
    drop(open);
    assert_eq!(ids_of(&dropped_out, 1).await, ["mine-0"]);
}

/// An HTTP endpoint that answers every request `200` with its body, while the test's runtime lives.
async fn answering() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|body: String| async move { body });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leaves_the_spool_whatever_its_outcome() {
    // A message's record goes only where its outcome is recorded (one dropped before, as a
    // runtime shut down drops its tasks, stays for the next start): every kind of outcome, by
    // every way to it, must record it, or its record stays and its share of the spool is never
    // given back.
    let state = tempfile::tempdir().unwrap();
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "[host]\ndurability = \"spool\"\nwatch = false\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{api}\"]\n\
         [[destination]]\nname = \"down\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n\
         queue = {{ timeout_ms = 100 }}\nfallback = \"out\"\n\
         [[destination]]\nname = \"gone\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n\
         queue = {{ timeout_ms = 100 }}\n\
         [[route]]\nname = \"direct\"\nmatch = {{ topic = \"direct\" }}\nto = \"api\"\n\
         [[route]]\nname = \"queued\"\nmatch = {{ topic = \"queued\" }}\nstages = [\"filter:pass\"]\nto = \"api\"\n\
         [[route]]\nname = \"fan\"\nmatch = {{ topic = \"fan\" }}\nfan_out = [\"out\", \"api\"]\n\
         [[route]]\nname = \"split\"\nmatch = {{ topic = \"split\" }}\nstages = [\"transform:split\"]\nto = \"out\"\n\
         [[route]]\nname = \"filtered\"\nmatch = {{ topic = \"filtered\" }}\nstages = [\"filter:drop\"]\nto = \"out\"\n\
         [[route]]\nname = \"fallback\"\nmatch = {{ topic = \"fallback\" }}\nto = \"down\"\n\
         [[route]]\nname = \"failed\"\nmatch = {{ topic = \"failed\" }}\nto = \"gone\"\n",
        api = answering().await,
    );
    let plugins = plugin_dir(&[("annotate", switchyard_plugin_artifacts::ANNOTATE_MIDDLEWARE)]);
    let host = Host::builder()
        .config("test.toml", Config::from_toml("test.toml", &text).unwrap())
        .plugin_dir(plugins.path())
        .state_dir(state.path())
        .filter("pass", |_: &Message| Ok(Verdict::Keep))
        .filter("drop", |_: &Message| Ok(Verdict::Drop))
        // Two outputs of each message, none of one whose payload is "none".
        .transform("split", |message: &Message| match &message.payload[..] {
            b"none" => Ok(vec![]),
            _ => Ok(vec![message.clone(), message.clone()]),
        })
        .destination("echo", |message: Message| async move { Ok(Some(message)) })
        .route(RouteConfig::new("in-place", "in-place", "echo"))
        .route(RouteConfig::new("answered", "answered", "echo").stage("middleware:annotate"))
        .build()
        .await
        .unwrap();
    for (topic, payload) in [
        ("direct", "x"),
        ("queued", "x"),
        ("in-place", "x"),
        ("fan", "x"),
        ("split", "x"),
        ("split", "none"),
        ("filtered", "x"),
        ("fallback", "x"),
        ("failed", "x"),
        ("nowhere", "x"),
    ] {
        within(host.send(Message::new(topic, payload))).await.unwrap();
    }
    let reply = within(host.request(Message::new("queued", "asked"))).await.unwrap().unwrap();
    assert_eq!(reply.payload, "asked");
    let short = Message::new("answered", "asked").with_header("x-short-circuit", "1");
    let reply = within(host.request(short)).await.unwrap().unwrap();
    assert_eq!(reply.header("x-replied-by"), Some("annotate-middleware"));

    eventually(|| match (host.stats(), host.spool().unwrap()) {
        (stats, spool) if stats.in_flight() == 0 && spool.depth == 0 => Ok(()),
        seen => Err(Box::new(seen)),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created), (12, 2), "{stats:?}");
    let outcomes = (stats.delivered, stats.filtered, stats.responded, stats.dead_lettered);
    assert_eq!(outcomes, (9, 2, 1, 2), "{stats:?}");
    drop(host);

    let (again, _) = host_again(state.path()).await;
    assert_eq!(again.spool().unwrap().recovered, 0, "every record was removed");
    drain_and_account(&again).await;
}

/// A listener that takes every connection and never answers: each first chunk a peer sends on one
/// comes out of the receiver. It reads each connection until the peer closes it.
fn unanswering() -> (std::net::SocketAddr, flume::Receiver<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (heard, hearing) = flume::unbounded();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let (mut connection, heard) = (connection.unwrap(), heard.clone());
            std::thread::spawn(move || {
                let mut chunk = vec![0; 4096];
                if let Ok(read @ 1..) = connection.read(&mut chunk) {
                    chunk.truncate(read);
                    let _ = heard.send(chunk);
                    while matches!(connection.read(&mut [0; 4096]), Ok(1..)) {}
                }
            });
        }
    });
    (addr, hearing)
}

#[test]
fn a_runtime_dropped_before_its_host_leaves_a_delivery_under_way_for_the_next_start() {
    // An embedder's runtime shut down before its host (or a host in a static) drops the host's
    // tasks first: the delivery task dropped its message as if it had been delivered, its record
    // was removed before the host closed its spool, and the next start recovered nothing.
    let state = tempfile::tempdir().unwrap();
    let (peer, heard) = unanswering();
    let text = format!(
        "[host]\ndurability = \"spool\"\nwatch = false\n[[destination]]\nname = \"api\"\n\
         transport = \"http\"\nendpoints = [\"{peer}\"]\ntimeout_ms = 600000\n\
         queue = {{ timeout_ms = 600000 }}\n[[route]]\nname = \"all\"\nmatch = {{ topic = \"t.*\" }}\n\
         to = \"api\"\n"
    );
    let plugins = plugin_dir(&[]);
    // A runtime of one thread drops its tasks without polling them again. Of several threads, one
    // may yet poll the delivery after another dropped its connection's task: it fails, may have
    // been sent, and is dead-lettered `delivery-uncertain`, an outcome, not the one looked for here.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let host = runtime.block_on(async {
        let config = Config::from_toml("test.toml", &text).unwrap();
        let builder = Host::builder().config("test.toml", config).plugin_dir(plugins.path());
        let host = builder.state_dir(state.path()).build().await.unwrap();
        host.send(message(0)).await.unwrap();
        // The peer has the request and never answers: the delivery is under way.
        let request = within(heard.recv_async()).await.unwrap();
        assert!(request.starts_with(b"POST "), "{}", String::from_utf8_lossy(&request));
        host
    });
    drop(runtime);
    drop(host);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (again, delivered) = host_again(state.path()).await;
        assert_eq!(again.spool().unwrap().recovered, 1, "the delivery under way is delivered again");
        assert_eq!(ids_of(&delivered, 1).await, ["mine-0"]);
        drain_and_account(&again).await;
    });
}

#[test]
fn a_runtime_dropped_before_its_host_leaves_the_recovered_messages_not_yet_sent_on_for_the_next_start() {
    // The task that sends the recovered messages on holds the records of those it has not sent
    // yet: dropped with the runtime, it removed them, and the next start recovered only the few
    // the pipeline held.
    let state = tempfile::tempdir().unwrap();
    let first = tokio::runtime::Runtime::new().unwrap();
    let (open, stuck_gate) = gate();
    let (stuck, stuck_out) = first.block_on(async {
        let (stuck, stuck_out) = host(state.path(), Some(stuck_gate), |_| {}).await;
        for n in 0..20 {
            stuck.send(message(n)).await.unwrap();
        }
        (stuck, stuck_out)
    });
    let state = crash_copy(state.path());
    // One worker held by a gate that stays shut, and a queue of one: most of the recovered
    // messages wait in the recovery's task, whatever it did before the runtime goes.
    let (shut, held) = gate();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (recovering, _recovering_out) = runtime.block_on(host(state.path(), Some(held), |config| {
        config.host.workers = 1;
        config.host.queue_capacity = 1;
    }));
    assert_eq!(recovering.spool().unwrap().recovered, 20);
    drop(runtime);
    drop(recovering);
    drop(shut);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (again, delivered) = host_again(state.path()).await;
        assert_eq!(again.spool().unwrap().recovered, 20, "none was settled");
        assert_eq!(ids_of(&delivered, 20).await.len(), 20);
        drain_and_account(&again).await;
    });
    drop(open);
    first.block_on(async {
        assert_eq!(ids_of(&stuck_out, 20).await.len(), 20);
        drain_and_account(&stuck).await;
    });
}

#[test]
fn what_is_in_flight_as_the_hosts_runtime_ends_is_answered_host_gone_and_left_for_the_next_start() {
    // An embedder's runtime shut down under its host: a request whose delivery task went with it
    // was answered `WorkerFailed` (no worker failed), and one waiting in its destination's queue
    // (its dispatcher gone), in a worker waiting for room there, or in the intake behind it, was
    // never answered; a send waiting for room in the intake, or one made after, never returned.
    let state = tempfile::tempdir().unwrap();
    let (peer, heard) = unanswering();
    let text = format!(
        "[host]\ndurability = \"spool\"\nwatch = false\nworkers = 1\nqueue_capacity = 1\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{peer}\"]\n\
         timeout_ms = 600000\nqueue = {{ max_in_flight = 1, capacity = 1, timeout_ms = 600000 }}\n\
         [[route]]\nname = \"all\"\nmatch = {{ topic = \"t.*\" }}\nto = \"api\"\n"
    );
    let plugins = plugin_dir(&[]);
    // Of one thread, the runtime drops its tasks without polling them again (see
    // `a_runtime_dropped_before_its_host_leaves_a_delivery_under_way_for_the_next_start`).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (host, pending) = runtime.block_on(async {
        let config = Config::from_toml("test.toml", &text).unwrap();
        let builder = Host::builder().config("test.toml", config).plugin_dir(plugins.path());
        let host = builder.state_dir(state.path()).build().await.unwrap();
        // 0 is under way: the peer has it and never answers.
        let (_, under_way) = host.send_request(message(0)).await.unwrap();
        within(heard.recv_async()).await.unwrap();
        // 1 waits in the destination's queue for the one delivery slot.
        let (_, queued) = host.send_request(message(1)).await.unwrap();
        eventually(|| match host.destinations()[0].queued {
            Some(1) => Ok(()),
            queued => Err(queued),
        });
        // The worker takes 2 and waits for room in the full queue; 3, admitted once the worker
        // took 2 (the intake holds one), waits in the intake behind it.
        let (_, in_worker) = host.send_request(message(2)).await.unwrap();
        let (_, in_intake) = host.send_request(message(3)).await.unwrap();
        (host, [under_way, queued, in_worker, in_intake])
    });
    // A send from another thread waits for room in the full intake as the runtime ends.
    let ((tell_waiting, waiting), (tell_sent, sent)) = (flume::bounded(1), flume::bounded(1));
    let sender = host.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut send = Box::pin(sender.send(message(4)));
            let _ = tell_waiting.send(futures_util::poll!(&mut send).is_pending());
            let _ = tell_sent.send(send.await);
        });
    });
    assert!(waiting.recv().unwrap(), "the intake is full: the send waits");
    drop(runtime);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Each bounded by a safety net of its own: one that never ends shows with the others.
        let patience = std::time::Duration::from_secs(10);
        let mut answers = Vec::new();
        for reply in pending {
            answers.push(format!("{:?}", tokio::time::timeout(patience, reply).await));
        }
        answers.push(format!("{:?}", tokio::time::timeout(patience, sent.recv_async()).await));
        let after = tokio::time::timeout(patience, host.send(message(5))).await;
        answers.push(format!("{after:?}"));
        let host_gone = "Ok(Ok(Err(HostGone)))";
        let (waited_refused, refused) = ("Ok(Ok(Err(ShuttingDown)))", "Ok(Err(ShuttingDown))");
        assert_eq!(answers, [host_gone, host_gone, host_gone, host_gone, waited_refused, refused]);
    });
    drop(host);

    runtime.block_on(async {
        let (again, delivered) = host_again(state.path()).await;
        assert_eq!(again.spool().unwrap().recovered, 4, "every request accepted is delivered again");
        assert_eq!(ids_of(&delivered, 4).await, ["mine-0", "mine-1", "mine-2", "mine-3"]);
        drain_and_account(&again).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_message_larger_than_the_new_intake_is_delivered_and_the_stop_is_not_held() {
    // Spooled under larger limits, it waited for more of the intake's budget than there was: it and
    // every message behind it were never delivered, and a stop waited for it for good.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    stuck.send(Message::new("t.x", vec![b'x'; 100_000])).await.unwrap();
    stuck.send(message(1)).await.unwrap();
    let state = crash_copy(state.path());
    let (host, delivered) = host_again_with(state.path(), |config| {
        config.host.max_message_bytes = 10240;
        config.host.queue_bytes = 10240;
    })
    .await;
    assert_eq!(host.spool().unwrap().recovered, 2);
    // Two workers: either may deliver first.
    let mut got = [next(&delivered).await, next(&delivered).await];
    got.sort_by_key(|message| message.payload.len());
    assert_eq!((got[0].unique_id(), got[1].payload.len()), (Some("mine-1"), 100_000));
    let stats = within(drain_and_account(&host)).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
    drop(open);
    assert_eq!(ids_of(&stuck_out, 2).await.len(), 2);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_max_message_bytes_fits_a_spool_of_that_size_and_1_kib_more() {
    // The record's size was rounded down plus one KiB, the spool's budget rounded down: refused as
    // too large ("2114 bytes exceeds the limit of 3071"), though within every limit.
    let state = tempfile::tempdir().unwrap();
    let (host, delivered) = host_again_with(state.path(), |config| {
        config.host.max_message_bytes = 2047;
        config.host.spool_max_bytes = 3071;
    })
    .await;
    within(host.send(Message::new("t.x", vec![b'p'; 1950]))).await.expect("it fits");
    assert_eq!(next(&delivered).await.payload.len(), 1950);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_deleted_under_a_spooling_host_refuses_messages_rather_than_losing_them() {
    // Writes to the unlinked segment went on succeeding: each message was answered as on disk, and
    // a crash lost every one of them.
    let state = tempfile::tempdir().unwrap();
    let (host, delivered) = host_again(state.path()).await;
    host.send(message(1)).await.expect("the spool is there");
    assert_eq!(next(&delivered).await.unique_id(), Some("mine-1"));
    std::fs::remove_dir_all(state.path()).unwrap();
    let dir = state.path().display().to_string();
    for n in 2..4 {
        match within(host.send(message(n))).await {
            Err(SendError::Unrecorded(problem)) => {
                assert!(problem.contains(".seg was deleted while the host ran"), "{problem}");
                assert!(!problem.contains(&dir), "what clients are told names no directory: {problem}");
            }
            other => panic!("accepted with nothing on disk: {other:?}"),
        }
    }
    let ingress = start_ingress(&host).await;
    let (status, body) =
        tokio::task::spawn_blocking(move || post(ingress, "/v1/messages/t.x", &[], b"{}")).await.unwrap();
    assert_eq!(status, 503, "the HTTP ingress refuses it too: {body}");
    assert!(!body.contains(&dir), "nor does its answer: {body}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
    assert!(delivered.is_empty());
}

/// A spooling host on `state` (grace period 200 ms) whose spool's next write never ends: its
/// next segment is a [`HungFile`], and 17 messages of 1 MB, delivered, filled the first (sixteen
/// leave it short of full, removes being a few bytes), so the write of their removes opens it.
async fn host_whose_spool_hangs_on_its_next_write(state: &Path) -> (Host, HungFile) {
    let (host, delivered) = host_again_with(state, |config| config.host.shutdown_grace_ms = 200).await;
    let hung = HungFile::at(state.join("spool/0000000000000002.seg"));
    let payload = "x".repeat(1_000_000);
    for _ in 0..17 {
        host.send(Message::new("t.filler", payload.clone())).await.unwrap();
    }
    for _ in 0..17 {
        next(&delivered).await;
    }
    assert!(host.spool().unwrap().disk_bytes >= 16 << 20, "the first segment is full");
    (host, hung)
}

/// A shutdown does not wait for good on the spool's last removes (and its last fsync) that a hung
/// disk holds: a second past its grace period it stops without them, and keeps the state directory
/// locked, since they may still land there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_without_the_spools_last_removes_when_a_hung_disk_holds_them() {
    let state = tempfile::tempdir().unwrap();
    let (host, hung) = host_whose_spool_hangs_on_its_next_write(state.path()).await;

    within(host.shutdown()).await;
    assert_eq!(host.stats().delivered, 17);
    assert!(host.spool().unwrap().depth > 0, "the last removes are not on disk");
    let plugins = plugin_dir(&[]);
    let second = Host::builder().plugin_dir(plugins.path()).state_dir(state.path()).build().await;
    let refused = second.map(drop).expect_err("the state directory is still the first host's").to_string();
    assert!(refused.contains("in use by another host"), "{refused}");
    drop(hung);
}

/// A host dropped after a stop that gave up on its spool's last write, while the disk still holds
/// that write, is dropped at once: it leaves the spool's writer to its write, not joined, and the
/// state directory locked for the writer, which may still write there.
// On one thread: the stop's task, which holds a clone of the host, has ended when `shutdown`
// returns, so the drop below is the host's last (on more, that task's could be, on a runtime's
// thread).
#[tokio::test(flavor = "current_thread")]
async fn a_host_dropped_while_a_hung_disk_holds_its_spools_last_write_drops_and_keeps_the_state_locked() {
    let state = tempfile::tempdir().unwrap();
    let (host, hung) = host_whose_spool_hangs_on_its_next_write(state.path()).await;
    within(host.shutdown()).await;

    // On a thread of its own: a drop that waits for the writer blocks the thread it runs on.
    let (dropped, drop_ended) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        drop(host);
        let _ = dropped.send(());
    });
    within(drop_ended).await.expect("the host is dropped");
    let plugins = plugin_dir(&[]);
    let second = Host::builder().plugin_dir(plugins.path()).state_dir(state.path()).build().await;
    let refused =
        second.map(drop).expect_err("the spool's writer still holds the state directory").to_string();
    assert!(refused.contains("in use by another host"), "{refused}");
    // The disk back, the writer's write ends (refused), and so does the writer: the directory is
    // free.
    drop(hung);
    until(async || {
        let another = Host::builder().plugin_dir(plugins.path()).state_dir(state.path()).build().await;
        another.map(drop).map_err(|error| error.to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_its_caller_gave_up_on_goes_on_and_another_call_waits_for_it() {
    // The first call had taken the workers when it was cancelled: a second one found none to wait
    // for, closed the spool and returned while the messages were still in the pipeline.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (host, delivered) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        host.send(message(n)).await.unwrap();
    }
    // Polled once (the workers, held by the gate, cannot end yet), then given up on.
    let mut first = Box::pin(host.shutdown());
    assert!(futures_util::poll!(&mut first).is_pending());
    drop(first);
    let second = tokio::spawn({
        let host = host.clone();
        async move { host.shutdown().await }
    });
    drop(open);
    within(second).await.unwrap();
    let stats = host.stats();
    assert_eq!((stats.accepted, stats.delivered), (3, 3), "{stats:?}");
    assert_eq!(ids_of(&delivered, 3).await, ["mine-0", "mine-1", "mine-2"]);
    drop(host);
    let (again, _) = host_again(state.path()).await;
    assert_eq!(again.spool().unwrap().recovered, 0, "every outcome was recorded before the spool closed");
    drain_and_account(&again).await;
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_and_the_state_directory_the_host_creates_are_its_owners_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (open, gate) = gate();
    let (host, delivered) = host(&state, Some(gate), |_| {}).await;
    host.send(message(0)).await.unwrap();
    assert_eq!((mode(&state), mode(&state.join("spool"))), (0o700, 0o700));
    let mut files = segments(&state);
    assert!(!files.is_empty());
    files.extend([state.join("host.lock"), state.join("spool/lock")]);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    drop(open);
    assert_eq!(ids_of(&delivered, 1).await, ["mine-0"]);
    drain_and_account(&host).await;
    drop(host);

    // A state directory the operator made keeps the mode they gave it; what the host makes in it
    // is the host's alone.
    let operators = dir.path().join("operators");
    std::fs::create_dir(&operators).unwrap();
    std::fs::set_permissions(&operators, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let (host, _delivered) = host_again(&operators).await;
    assert_eq!((mode(&operators), mode(&operators.join("spool"))), (0o750, 0o700));
    for file in segments(&operators) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_into_a_file_fsyncs_the_file_before_it_removes_the_messages_from_the_spool() {
    // It flushed standard output and then fsync'd the removes: a crash between them left the
    // drained messages in neither place, the file's pages unwritten and the spool's records gone.
    // Then it fsync'd the file but not its directory: the file `> FILE` made could be missing
    // after a crash.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    let (drained, trace) = (state.path().join("drained.ndjson"), state.path().join("trace"));
    let status = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .args(["spool", "drain", "--state-dir"])
        .arg(state.path())
        .stdout(std::fs::File::create(&drained).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&drained).unwrap().lines().count(), 3);
    // `fsync(3</…/drained.ndjson>)`, `fsync(4</…>)` (its directory, the state directory here),
    // `fdatasync(5</…/spool/….seg>)`: the calls in order, with paths.
    let calls = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    let synced = |path: &Path| calls.iter().position(|call| call.contains(&format!("<{}>", path.display())));
    let (file_synced, directory_synced) = (synced(&drained), synced(state.path()));
    let removes_synced = calls.iter().rposition(|call| call.contains(".seg>"));
    assert!(
        matches!((file_synced, removes_synced), (Some(file), Some(removes)) if file < removes),
        "the file is fsync'd before the removes: {calls:#?}"
    );
    assert!(
        matches!((directory_synced, removes_synced), (Some(directory), Some(removes)) if directory < removes),
        "the file's name (its directory) is fsync'd before the removes: {calls:#?}"
    );
    assert_eq!(switchyard::spool::inspect(&state.path().join("spool")).unwrap().depth, 0);
    drop(open);
    assert_eq!(ids_of(&stuck_out, 3).await.len(), 3);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_spool_fsyncs_its_last_segment_before_it_starts_the_next() {
    // Removes are written without an fsync, the segment written to sealed (fsync'd) only before
    // the next starts, so that only the last segment can have a torn tail. A start did not seal the
    // last segment of the run before: after a machine crash the removes it read could be gone
    // from a segment others followed, their messages delivered again (or a torn record reported
    // as corruption). `switchyard spool drain` opens the spool as a host's start does.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (stuck, stuck_out) = host(state.path(), Some(gate), |_| {}).await;
    for n in 0..3 {
        stuck.send(message(n)).await.unwrap();
    }
    let state = crash_copy(state.path());
    let last = segments(state.path()).pop().unwrap();
    let number: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let next = format!("{:016}.seg", number + 1);
    let trace = state.path().join("trace");
    let status = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=openat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_switchyard"))
        .args(["spool", "drain", "--state-dir"])
        .arg(state.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status:?}");
    // `fdatasync(5</…/spool/0000000000000001.seg>)`, then `openat(…, "…/0000000000000002.seg", …)`:
    // the calls on the spool's files in order, with paths.
    let calls = std::fs::read_to_string(&trace).unwrap();
    let spool = state.path().join("spool");
    let calls: Vec<&str> = calls.lines().filter(|call| call.contains(&*spool.to_string_lossy())).collect();
    let sealed = calls
        .iter()
        .position(|call| call.contains("sync(") && call.contains(&format!("{}>", last.display())));
    let started = calls.iter().position(|call| call.contains(&next));
    assert!(
        matches!((sealed, started), (Some(sealed), Some(started)) if sealed < started),
        "{} is fsync'd before {next} is created: {calls:#?}",
        last.display()
    );
    drop(open);
    assert_eq!(ids_of(&stuck_out, 3).await.len(), 3);
    drain_and_account(&stuck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_put_is_answered_after_the_stop_closed_the_spool_is_told_what_the_next_start_does() {
    // Its record fsync'd, then refused as the host stopped (503 through the HTTP ingress), the
    // message was delivered all the same by the next start: a duplicate, since its sender, told
    // it was refused, sends it again. The spool closed, its record can no longer be taken back:
    // it is on disk, so the send is told it was accepted, and the next start delivers it once.
    let state = tempfile::tempdir().unwrap();
    let (host, _) = host_again(state.path()).await;
    // Polled once: its put is queued for the writer, and the stop's close after it.
    let mut send = Box::pin(host.send(message(0)));
    assert!(futures_util::poll!(&mut send).is_pending());
    within(host.shutdown()).await;
    let told = within(send).await;
    let (again, delivered) = host_again(state.path()).await;
    let recovered = again.spool().unwrap().recovered;
    assert!(told.is_ok() && recovered == 1, "told {told:?}, and the next start delivers {recovered}");
    assert_eq!(ids_of(&delivered, 1).await, ["mine-0"]);
    let stats = drain_and_account(&again).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_stop_refuses_after_its_put_leaves_the_spool_before_the_refusal_is_told() {
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (host, delivered) = host(state.path(), Some(gate), |config| {
        (config.host.workers, config.host.queue_capacity, config.host.batch_size) = (1, 1, 1);
    })
    .await;
    // The worker holds the first in the gate, the queue the second: the third waits for room.
    for n in 0..2 {
        host.send(message(n)).await.unwrap();
    }
    let waiting = tokio::spawn({
        let host = host.clone();
        async move { host.send(message(2)).await }
    });
    eventually(|| match host.spool().unwrap().depth {
        3 => Ok(()),
        depth => Err(depth),
    });
    // The stop waits for the worker the gate holds: the spool stays open meanwhile.
    let stopping = tokio::spawn({
        let host = host.clone();
        async move { host.shutdown().await }
    });
    let told = within(waiting).await.unwrap();
    assert!(matches!(told, Err(SendError::ShuttingDown)), "{told:?}");
    assert_eq!(host.spool().unwrap().depth, 2, "its record is gone once the refusal is told");
    // What a crash right after the refusal leaves.
    let crashed = crash_copy(state.path());
    drop(open);
    within(stopping).await.unwrap();
    assert_eq!(ids_of(&delivered, 2).await, ["mine-0", "mine-1"]);
    let (again, delivered) = host_again(crashed.path()).await;
    assert_eq!(ids_of(&delivered, 2).await, ["mine-0", "mine-1"], "the refused one is not delivered");
    let stats = drain_and_account(&again).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_room_and_no_longer_polled_holds_no_shutdown_up() {
    // A batch refused for room takes its spool records back (a write and an fsync) before it
    // answers; it did so holding a clone of the intake's sender, so one no longer polled there
    // kept the workers, and the shutdown waiting for them, waiting for good.
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = gate();
    let (host, delivered) = host(state.path(), Some(gate), |config| {
        (config.host.queue_capacity, config.host.workers, config.host.batch_size) = (1, 1, 1);
    })
    .await;
    // The worker holds the first at the gate; the second, in once the worker took the first,
    // fills the intake.
    host.send(Message::new("t.1", "1")).await.unwrap();
    host.send(Message::new("t.2", "2")).await.unwrap();
    // A batch polled by hand waits for its record's write, then, refused, for its withdrawal's:
    // pending again once woken by the write, it waits in the withdrawal. On a busy machine the
    // writer may finish either before the batch looks: it is answered at once, and tried again.
    let mut batch = None;
    for _ in 0..100 {
        let woken = std::sync::Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut context = std::task::Context::from_waker(&waker);
        let mut refused = Box::pin(host.try_send_batch(vec![Message::new("t.3", "3")]));
        let answer = match refused.as_mut().poll(&mut context) {
            Poll::Pending => {
                within(woken.0.notified()).await;
                match refused.as_mut().poll(&mut context) {
                    Poll::Pending => {
                        batch = Some(refused);
                        break;
                    }
                    Poll::Ready(answer) => answer,
                }
            }
            Poll::Ready(answer) => answer,
        };
        assert_eq!(answer, [Err(SendError::Backpressure)]);
    }
    let batch = batch.expect("a batch caught taking its record back");
    drop(open);
    within(host.shutdown()).await;
    assert_eq!((next(&delivered).await.payload, next(&delivered).await.payload), ("1".into(), "2".into()));
    assert_eq!(within(batch).await, [Err(SendError::Backpressure)]);
    let stats = host.stats();
    crate::support::assert_accounted(&stats);
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}
