//! The NATS ingress against a real `nats-server`: published messages are admitted with their
//! headers, a request gets the host's reply (or its failure), a full queue holds the subscription
//! back without losing anything (the host reading at most a batch's bytes ahead), and two `switchyard run` processes in one queue group split a
//! stream with none lost and none twice while one of them stops mid-stream.

use crate::cli::Running;
use crate::fake_nats_server::{FakeConnection, FakeNatsServer, Published};
use crate::nats_server::{NatsServer, fence};
use crate::routing::{gated, gated_host};
use crate::support::{MEMORY_OUT, builder, drain_and_account, eventually, host, next, plugin_dir, within};
use std::collections::BTreeSet;
use std::sync::Arc;
use switchyard::config::NatsIngressConfig;
use switchyard::{Config, Host, Message, NatsIngress, RouteConfig};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

/// A NATS ingress of `host` subscribed to `subjects` on `server` (returns once it is), serving until
/// the returned sender is dropped or sent on.
async fn serve(host: &Host, server: &NatsServer, subjects: &[&str]) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let config = NatsIngressConfig {
        url: server.address(),
        subjects: subjects.iter().map(|subject| subject.to_string()).collect(),
        ..NatsIngressConfig::default()
    };
    serving(within(NatsIngress::connect(host.clone(), config)).await.unwrap())
}

/// `ingress` serving until the returned sender is dropped or sent on.
fn serving(ingress: NatsIngress) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    (stop, tokio::spawn(ingress.serve(async move { drop(stopped.await) })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_to_the_subjects_are_admitted_with_their_headers() {
    let server = NatsServer::start();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{MEMORY_OUT}\n[[route]]\nname = \"all\"\nto = \"out\"\n")).await;
    let (stop, serving) = serve(&host, &server, &["orders.>"]).await;
    let client = server.client().await;
    client.publish("elsewhere.eu", "not subscribed".into()).await.unwrap();
    for n in 0..100 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("x-trace", n.to_string().as_str());
        headers.insert("x-sy-id", "forged");
        client.publish_with_headers(format!("orders.eu.{n}"), headers, n.to_string().into()).await.unwrap();
    }
    let out = host.memory("out").unwrap();
    let mut traces = BTreeSet::new();
    for _ in 0..100 {
        let message = next(&out).await;
        let n = message.header("x-trace").expect("the publisher's header").to_owned();
        assert_eq!(message.topic, format!("orders.eu.{n}"), "the subject is the topic");
        assert_eq!(message.payload, n);
        let ids: Vec<_> = message.headers.iter().filter(|(name, _)| name == "x-sy-id").collect();
        assert_eq!(ids.len(), 1, "only the host's own id: {:?}", message.headers);
        assert_ne!(ids[0].1, "forged");
        traces.insert(n.parse::<u32>().unwrap());
    }
    assert_eq!(traces, (0..100).collect());
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (100, 100));
}

/// A host whose route `echo.>` answers each message with its payload in capitals and a header
/// `x-echo`; other topics have no route.
async fn echo_host(dir: &std::path::Path) -> Host {
    let echo = |message: Message| async move {
        let payload = message.payload.to_ascii_uppercase();
        Ok(Some(Message::new(message.topic, payload).with_header("x-echo", "yes")))
    };
    builder(dir)
        .config("t", Config::from_toml("t", MEMORY_OUT).unwrap())
        .destination("echo", echo)
        .route(RouteConfig::new("echo", "echo.>", "echo"))
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_hosts_reply_or_the_reason_it_has_none() {
    let server = NatsServer::start();
    let dir = plugin_dir(&[]);
    let host = echo_host(dir.path()).await;
    let (stop, serving) = serve(&host, &server, &["echo.>", "nowhere.>"]).await;
    let client = server.client().await;
    let answer = within(client.request("echo.hi", "hello".into())).await.unwrap();
    let headers = answer.headers.expect("headers");
    assert_eq!(answer.payload, "HELLO");
    assert_eq!(headers.get("x-echo").map(|value| value.as_str()), Some("yes"));
    assert!(headers.get("x-sy-id").is_some(), "the answer names the message it answers");
    let failure = within(client.request("nowhere.x", "hello".into())).await.unwrap();
    let headers = failure.headers.expect("headers");
    assert_eq!(headers.get("x-sy-error-code").map(|value| value.as_str()), Some("no-route"));
    assert!(headers.get("x-sy-error").is_some_and(|error| error.as_str().contains("dead-lettered")));
    assert!(failure.payload.is_empty());
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_most_headers_a_publisher_may_give_is_admitted_with_the_hosts_id() {
    // The ingress gives each message its id before admission, which counted it among the
    // publisher's headers: a message of 1024 was refused as "1025 headers; at most 1024".
    let server = NatsServer::start();
    let dir = plugin_dir(&[]);
    let host = echo_host(dir.path()).await;
    let (stop, serving) = serve(&host, &server, &["echo.>"]).await;
    let client = server.client().await;
    let headers = |count: usize| {
        let mut headers = async_nats::HeaderMap::new();
        (0..count).for_each(|n| headers.insert(format!("x-{n}").as_str(), "v"));
        headers
    };
    let answer = within(client.request_with_headers("echo.full", headers(1024), "hi".into())).await.unwrap();
    let error = answer.headers.as_ref().and_then(|headers| headers.get("x-sy-error").cloned());
    assert_eq!((answer.payload.as_ref(), error), (&b"HI"[..], None), "1024 headers are within the limit");
    let refused = within(client.request_with_headers("echo.over", headers(1025), "hi".into())).await.unwrap();
    let error = refused.headers.expect("headers").get("x-sy-error").map(|error| error.as_str().to_owned());
    assert!(error.as_deref().is_some_and(|error| error.ends_with("1025 headers; at most 1024")), "{error:?}");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_subscribes_again_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let dir = plugin_dir(&[]);
    let host = echo_host(dir.path()).await;
    let (stop, serving) = serve(&host, &server, &["echo.>"]).await;
    let client = server.client().await;
    within(client.request("echo.before", "one".into())).await.unwrap();
    server.restart();
    // Until the ingress is subscribed again, the server answers "no responders".
    let answer = within(async {
        loop {
            match client.request("echo.after", "two".into()).await {
                Ok(answer) => break answer,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert_eq!(answer.payload, "TWO");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_the_subscription_back_and_loses_nothing() {
    let server = NatsServer::start();
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let config = "[host]\nqueue_capacity = 4\nworkers = 1\nbatch_size = 1";
    let (host, delivered) = gated_host(dir.path(), config, &entered, &gate).await;
    let (stop, serving) = serve(&host, &server, &["load.>"]).await;
    let client = server.client().await;
    for n in 0..2000 {
        client.publish(format!("load.{n}"), n.to_string().into()).await.unwrap();
    }
    fence(&client).await;
    within(entered.notified()).await;
    // One message in the destination, four in the queue, one waiting for room: the rest stay
    // with the server, unread.
    let accepted = host.stats().accepted;
    assert!(accepted <= 6, "the ingress reads no faster than the host admits: {accepted} accepted");
    gate.add_permits(2000);
    for n in 0..2000 {
        assert_eq!(next(&delivered).await.payload, n.to_string(), "in order, none lost");
    }
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2000, 2000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_ahead_of_a_full_queue_hold_at_most_a_batchs_bytes() {
    // The messages read together were bounded by count alone (256): while the queue was full, the
    // host held what the socket's buffers had, megabytes of large messages read and not admitted.
    const COUNT: usize = 192;
    const PAYLOAD: usize = 128 << 10;
    // A batch is at most 1 MiB of messages (or one message); one message more is read ahead of it,
    // and the reader's buffer holds up to about two more, in part.
    const HELD_AT_MOST: u64 = (1 << 20) + 4 * FRAME as u64;
    const FRAME: usize = "MSG load.big 1 131072\r\n".len() + PAYLOAD + 2;
    let server = NatsServer::start();
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let config = "[host]\nqueue_capacity = 1\nworkers = 1\nbatch_size = 1";
    let (host, delivered) = gated_host(dir.path(), config, &entered, &gate).await;
    let (stop, serving) = serve(&host, &server, &["load.big"]).await;
    let ingress = server.only_connection();
    let handshake = ingress.read();
    let client = server.client().await;
    for n in 0..COUNT {
        let mut payload = format!("{n:08}").into_bytes();
        payload.resize(PAYLOAD, b'.');
        client.publish("load.big", payload.into()).await.unwrap();
    }
    fence(&client).await;
    // One message at a time through the destination: after each, what the host has read and not
    // admitted (what its socket gave, less the messages accepted) is within the bound. What it
    // admitted are in the queue (one) and the destination (one), which the host bounds apart.
    let mut held_most = 0;
    for n in 0..COUNT {
        // Read first, accepted after: a message admitted in between is counted as not held.
        let read = ingress.read() - handshake;
        let held = read.saturating_sub(host.stats().accepted * FRAME as u64);
        held_most = held_most.max(held);
        gate.add_permits(1);
        let message = next(&delivered).await;
        assert_eq!(&message.payload[..8], format!("{n:08}").as_bytes(), "in order, none lost");
    }
    assert!(held_most <= HELD_AT_MOST, "{held_most} bytes read and not admitted, at most {HELD_AT_MOST}");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (COUNT as u64, COUNT as u64));
}

/// A `switchyard run` in a directory of its own, in queue group `switchyard` on `server`, writing
/// what it takes to `delivered.jsonl` there.
fn queue_member(server: &NatsServer) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[host]\nplugin_dir = \"plugins\"\nstate_dir = \"state\"\nwatch = false\n\
         [[ingress.nats]]\nurl = \"{}\"\nsubjects = [\"load.>\"]\nqueue_group = \"switchyard\"\n\
         [[destination]]\nname = \"sink\"\ntransport = \"file\"\n\
         options = {{ path = \"delivered.jsonl\", fsync = \"never\" }}\n\
         [[route]]\nname = \"all\"\nto = \"sink\"\n",
        server.address()
    );
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let running = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    running.line_where(|line| line.contains("NATS ingress subscribed to load.>"));
    (running, dir)
}

/// The payloads a member wrote, in order: whole lines only, as a running member may be in the
/// middle of writing its last one.
fn payloads(dir: &tempfile::TempDir) -> Vec<u32> {
    let text = std::fs::read_to_string(dir.path().join("delivered.jsonl")).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let lines = whole.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap());
    lines.map(|line| line["payload"].as_str().unwrap().parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_in_one_queue_group_split_a_stream_losing_none_while_one_stops_mid_stream() {
    const STREAM: u32 = 20_000;
    let server = NatsServer::start();
    let (mut stopping, stopping_dir) = queue_member(&server);
    let (mut staying, staying_dir) = queue_member(&server);
    let client = server.client().await;
    for n in 0..STREAM {
        if n == STREAM / 2 {
            fence(&client).await;
            stopping.terminate();
        }
        client.publish(format!("load.{n}"), n.to_string().into()).await.unwrap();
    }
    fence(&client).await;
    tokio::task::spawn_blocking(move || {
        stopping.stopped();
        eventually(|| match payloads(&stopping_dir).len() + payloads(&staying_dir).len() {
            total if total >= STREAM as usize => Ok(()),
            total => Err(total),
        });
        staying.stop();
        let (stopped, stayed) = (payloads(&stopping_dir), payloads(&staying_dir));
        assert!(
            !stopped.is_empty() && !stayed.is_empty(),
            "both took a share: {} / {}",
            stopped.len(),
            stayed.len()
        );
        let all: BTreeSet<u32> = stopped.iter().chain(&stayed).copied().collect();
        assert_eq!(all.len(), stopped.len() + stayed.len(), "none delivered twice");
        assert_eq!(all, (0..STREAM).collect(), "none lost");
    })
    .await
    .unwrap();
}

/// How often the ingresses on a [`FakeNatsServer`] ping it when it is silent: a server silent for
/// three times as long is counted lost.
const PING_INTERVAL_MS: u64 = 250;

/// A NATS ingress of `host` subscribed to `orders.>` on `fake` and to `sized.>`, pinging it every
/// [`PING_INTERVAL_MS`]: its first connection, the handshake done with `INFO {info}`, and the
/// ingress serving until the sender is dropped or sent on.
async fn serve_on_fake(
    host: &Host,
    fake: &FakeNatsServer,
    info: &str,
) -> (FakeConnection, oneshot::Sender<()>, JoinHandle<()>) {
    let config = NatsIngressConfig {
        url: fake.address(),
        subjects: vec!["orders.>".into(), "sized.>".into()],
        ping_interval_ms: Some(PING_INTERVAL_MS),
        ..NatsIngressConfig::default()
    };
    let connecting = tokio::spawn(NatsIngress::connect(host.clone(), config));
    let mut first = fake.accept().await;
    first.handshake(info).await;
    let (stop, serving) = serving(within(connecting).await.unwrap().unwrap());
    (first, stop, serving)
}

/// A host whose route `sized.>` answers each message with as many bytes as its payload says, and
/// whose route `orders.>` delivers to the memory destination `out`.
async fn sized_host(dir: &std::path::Path) -> Host {
    let sized = |message: Message| async move {
        let size: usize = std::str::from_utf8(&message.payload).unwrap().parse().unwrap();
        Ok(Some(Message::new(message.topic, vec![b'a'; size])))
    };
    builder(dir)
        .config("t", Config::from_toml("t", MEMORY_OUT).unwrap())
        .destination("sized", sized)
        .route(RouteConfig::new("sized", "sized.>", "sized"))
        .route(RouteConfig::new("orders", "orders.>", "out"))
        .build()
        .await
        .unwrap()
}

/// `connection` shakes hands and delivers `hello` on `orders.eu`, then serves on: the host must
/// deliver it to `out`. Then the ingress stops, and everything it admitted is accounted for.
async fn hello_arrives_through(
    host: &Host,
    mut connection: FakeConnection,
    (stop, serving): (oneshot::Sender<()>, JoinHandle<()>),
) -> switchyard::Stats {
    connection.handshake("{}").await;
    connection.send(b"MSG orders.eu 1 5\r\nhello\r\n").await;
    let _published = connection.serve();
    assert_eq!(next(&host.memory("out").unwrap()).await.payload, "hello");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    drain_and_account(host).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_silent_is_given_up_on_and_connected_again() {
    let fake = FakeNatsServer::start().await;
    let dir = plugin_dir(&[]);
    let host = sized_host(dir.path()).await;
    // As a server whose machine died: the connection stays open, and nothing comes.
    let (_silent, stop, serving) = serve_on_fake(&host, &fake, "{}").await;
    let stats = hello_arrives_through(&host, fake.accept().await, (stop, serving)).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_says_info_is_given_up_on_and_the_next_attempt_works() {
    let fake = FakeNatsServer::start().await;
    let dir = plugin_dir(&[]);
    let host = sized_host(dir.path()).await;
    let (first, stop, serving) = serve_on_fake(&host, &fake, "{}").await;
    drop(first);
    let _mute = fake.accept().await;
    let stats = hello_arrives_through(&host, fake.accept().await, (stop, serving)).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_is_given_up_on_and_connected_again() {
    let fake = FakeNatsServer::start().await;
    let dir = plugin_dir(&[]);
    let host = sized_host(dir.path()).await;
    let (mut stalled, stop, serving) = serve_on_fake(&host, &fake, "{}").await;
    // A request whose 16 MiB answer the server never reads: the answer's write stalls, holding
    // the connection's writer.
    stalled.send(b"MSG sized.big 2 _INBOX.big 8\r\n16777216\r\n").await;
    let stats = hello_arrives_through(&host, fake.accept().await, (stop, serving)).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_servers_max_payload_is_replaced_by_an_error_answer() {
    let fake = FakeNatsServer::start().await;
    let dir = plugin_dir(&[]);
    let host = sized_host(dir.path()).await;
    let (mut connection, stop, serving) = serve_on_fake(&host, &fake, r#"{"max_payload":1024}"#).await;
    // Answers of 900 and 1000 bytes of payload, and about 60 bytes of headers (`x-sy-id`): the
    // second is over the limit only with its headers, as the server counts.
    connection.send(b"MSG sized.a 2 _INBOX.small 3\r\n900\r\nMSG sized.b 2 _INBOX.large 4\r\n1000\r\n").await;
    let published = connection.serve();
    let mut answers = [next_published(&published).await, next_published(&published).await];
    answers.sort_by(|a, b| a.subject.cmp(&b.subject));
    let [large, small] = &answers;
    assert_eq!(
        (small.subject.as_str(), small.payload.len()),
        ("_INBOX.small", 900),
        "under the limit: whole"
    );
    assert_eq!(large.subject, "_INBOX.large");
    assert!(large.payload.is_empty(), "nats-server would refuse it and close the connection");
    let error = large.header("x-sy-error").expect("the reason");
    assert!(error.contains("max_payload") && error.contains("1024"), "{error}");
    assert_eq!(large.header("x-sy-delivered"), Some("true"));
    assert!(large.header("x-sy-id").is_some(), "the answer names the message it answers");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_info_on_the_connection_sets_the_max_payload_answers_are_held_to() {
    // Only the handshake's INFO was read: a server whose later INFO says 1024 got an answer of
    // 1059 bytes, which it would refuse, closing the connection.
    let fake = FakeNatsServer::start().await;
    let dir = plugin_dir(&[]);
    let host = sized_host(dir.path()).await;
    let (mut connection, stop, serving) = serve_on_fake(&host, &fake, r#"{"max_payload":4096}"#).await;
    connection.send(b"INFO {\"max_payload\":1024}\r\nMSG sized.b 2 _INBOX.large 4\r\n1000\r\n").await;
    let published = connection.serve();
    let large = next_published(&published).await;
    assert_eq!(large.subject, "_INBOX.large");
    assert!(large.payload.is_empty(), "over the latest max_payload: {} bytes", large.payload.len());
    let error = large.header("x-sy-error").expect("the reason");
    assert!(error.contains("max_payload of 1024"), "{error}");
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

/// `MSG` frames of the messages `numbers` on `orders.eu`, each with its number as its payload.
fn orders(numbers: std::ops::RangeInclusive<usize>) -> String {
    numbers.map(|n| format!("MSG orders.eu 1 {}\r\n{n}\r\n", n.to_string().len())).collect()
}

/// A host with one worker and a queue of one message, which answers `asks.>` once `answer` is
/// notified, and delivers `orders.>` through `gate` to the returned receiver; its NATS ingress on
/// `fake`, its first connection (the handshake done), and the ingress serving until the sender is
/// dropped or sent on. The ingress pings a silent server seldom: the tests break its connections.
async fn one_at_a_time_host(
    fake: &FakeNatsServer,
) -> (
    Host,
    FakeConnection,
    (oneshot::Sender<()>, JoinHandle<()>),
    Arc<Notify>,
    Arc<Semaphore>,
    flume::Receiver<Message>,
) {
    let dir = plugin_dir(&[]);
    let (answer, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (slow, delivered) = gated(&Arc::new(Notify::new()), &gate);
    let answering = {
        let answer = answer.clone();
        move |_: Message| {
            let answer = answer.clone();
            async move {
                answer.notified().await;
                Ok(None)
            }
        }
    };
    let config = "[host]\nqueue_capacity = 1\nworkers = 1\nbatch_size = 1";
    let host = builder(dir.path())
        .config("t", Config::from_toml("t", config).unwrap())
        .destination("slow", slow)
        .destination("answering", answering)
        .route(RouteConfig::new("orders", "orders.>", "slow"))
        .route(RouteConfig::new("asks", "asks.>", "answering"))
        .build()
        .await
        .unwrap();
    let config = NatsIngressConfig {
        url: fake.address(),
        subjects: vec!["orders.>".into(), "asks.>".into()],
        ping_interval_ms: Some(60_000),
        ..NatsIngressConfig::default()
    };
    let connecting = tokio::spawn(NatsIngress::connect(host.clone(), config));
    let mut connection = fake.accept().await;
    connection.handshake("{}").await;
    let serving = serving(within(connecting).await.unwrap().unwrap());
    (host, connection, serving, answer, gate, delivered)
}

/// Once `host` accepted `count` messages more than `before` (polled without blocking a thread of
/// the runtime, which the host may need).
async fn accepted_since(host: &Host, before: u64, count: u64) {
    within(async {
        while host.stats().accepted < before + count {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Make the ingress of a [`one_at_a_time_host`] hold a message read ahead on `connection`: send
/// the messages `first..=first + 256` at once, of which it reads 256 as a batch and the next ahead
/// of them, and wait until it waits for room for the batch (its first one is accepted only once
/// the batch and the message after it were read).
async fn hold_a_message_read_ahead(host: &Host, connection: &mut FakeConnection, first: usize) {
    let before = host.stats().accepted;
    connection.send(orders(first..=first + 256).as_bytes()).await;
    accepted_since(host, before, 1).await;
}

/// The payloads `delivered` gives up to the one `last`, as numbers.
async fn numbers_up_to(delivered: &flume::Receiver<Message>, last: &str) -> Vec<usize> {
    let mut numbers = Vec::new();
    loop {
        let message = next(delivered).await;
        if message.payload == last {
            return numbers;
        }
        numbers.push(std::str::from_utf8(&message.payload).unwrap().parse().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_read_ahead_is_admitted_when_a_stop_cannot_unsubscribe() {
    // The stop ended where its UNSUB could not be written, dropping the message read ahead of the
    // last batch with the connection.
    let fake = FakeNatsServer::start().await;
    let (host, mut connection, (stop, serving), _answer, gate, delivered) = one_at_a_time_host(&fake).await;
    hold_a_message_read_ahead(&host, &mut connection, 1).await;
    connection.reset();
    stop.send(()).unwrap();
    gate.add_permits(257);
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    let numbers: Vec<usize> =
        delivered.drain().map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap()).collect();
    let lost: Vec<_> = (1..=257).filter(|n| !numbers.contains(n)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(numbers, (1..=257).collect::<Vec<_>>(), "in order");
    assert_eq!((stats.accepted, stats.delivered), (257, 257));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_read_ahead_is_admitted_when_the_connection_is_lost() {
    // The connection was made again as soon as the ingress heard it lost, dropping the message read
    // ahead of the last batch whenever the reading loop, with both ready, heard of the loss first:
    // as likely as not (`tokio::select!` picks at random), so the test loses a connection in that
    // state round after round.
    const ROUNDS: usize = 10;
    let fake = FakeNatsServer::start().await;
    let (host, mut connection, (stop, serving), answer, gate, delivered) = one_at_a_time_host(&fake).await;
    for round in 0..ROUNDS {
        // A request, which the worker holds until its answer is let go: its answer, the only
        // thing the ingress writes, fails on the reset connection.
        let before = host.stats().accepted;
        connection.send(b"MSG asks.x 2 _INBOX.x 1\r\nx\r\n").await;
        accepted_since(&host, before, 1).await;
        let numbers = round * 257 + 1..=round * 257 + 257;
        hold_a_message_read_ahead(&host, &mut connection, *numbers.start()).await;
        connection.reset();
        answer.notify_one();
        // The batch, the message read ahead of it, and a last one on the next connection.
        gate.add_permits(258);
        connection = fake.accept().await;
        connection.handshake("{}").await;
        connection.send(b"MSG orders.eu 1 4\r\nnext\r\n").await;
        let delivered = numbers_up_to(&delivered, "next").await;
        let lost: Vec<_> = numbers.clone().filter(|n| !delivered.contains(n)).collect();
        assert!(lost.is_empty(), "round {round}: lost {lost:?}");
        assert_eq!(delivered, numbers.collect::<Vec<_>>(), "in order");
    }
    let _published = connection.serve();
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    let messages = (ROUNDS * 259) as u64;
    assert_eq!((stats.accepted, stats.delivered), (messages, messages));
}

/// The next message the ingress published on a [`FakeConnection`] it serves.
async fn next_published(published: &flume::Receiver<Published>) -> Published {
    within(published.recv_async()).await.expect("the connection is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_together_share_a_spool_fsync_and_each_is_on_disk_once_accepted() {
    // Each message waited for its own fsync before the next was read: a subscription that
    // delivered faster than one message per fsync fell behind until the server cut it off as a
    // slow consumer, dropping what it held for the host.
    const COUNT: usize = 64;
    let fake = FakeNatsServer::start().await;
    let state = tempfile::tempdir().unwrap();
    // The gate holds every message in the pipeline, so none leaves the spool while the test looks.
    let (open, gate) = crate::spool::gate();
    let (host, delivered) = crate::spool::host(state.path(), Some(gate), |_| {}).await;
    let config = NatsIngressConfig {
        url: fake.address(),
        subjects: vec!["t.>".into()],
        ..NatsIngressConfig::default()
    };
    let connecting = tokio::spawn(NatsIngress::connect(host.clone(), config));
    let mut connection = fake.accept().await;
    connection.handshake("{}").await;
    let (stop, serving) = serving(within(connecting).await.unwrap().unwrap());
    // In one write: the ingress reads them together.
    let frames = (0..COUNT).map(|n| format!("MSG t.x 1 {}\r\n{n}\r\n", n.to_string().len()));
    connection.send(frames.collect::<String>().as_bytes()).await;
    let _published = connection.serve();
    eventually(|| match host.stats().accepted {
        accepted if accepted == COUNT as u64 => Ok(()),
        accepted => Err(accepted),
    });
    crate::spool::assert_written_together(&host, COUNT);
    drop(open);
    let mut payloads = BTreeSet::new();
    for _ in 0..COUNT {
        payloads.insert(String::from_utf8(next(&delivered).await.payload.to_vec()).unwrap());
    }
    assert_eq!(payloads, (0..COUNT).map(|n| n.to_string()).collect());
    stop.send(()).unwrap();
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (COUNT as u64, COUNT as u64));
}
