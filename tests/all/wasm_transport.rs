//! WASM transport plugins delivering for real: the Redis transport against
//! real `redis-server`s, the echo transport against an echo server, and a
//! faulty transport cut at its deadline and denied addresses outside its
//! endpoints. These drive `PluginTransport` itself, as a destination does.

use crate::support::{RedisServer, echo_server, eventually, open_descriptors, within};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::Message;
use switchyard::config::{PluginConfig, PluginLimits};
use switchyard::metrics::Metrics;
use switchyard::plugin::{CompiledPlugin, PluginEngine, PluginRegistry, load_file};
use switchyard::resilience::{FatalReason, Outcome, RetryReason};
use switchyard::transport::plugin::{PluginTransport, PluginTransportConfig};
use switchyard::transport::{AttemptResult, PoolConfig, Transport};
use switchyard_plugin_artifacts as artifacts;

/// A transport plugin loaded into a registry of its own, its calls counted in `metrics`.
struct Loaded {
    engine: Arc<PluginEngine>,
    registry: Arc<PluginRegistry>,
    metrics: Arc<Metrics>,
    name: String,
}

impl Loaded {
    fn new(name: &str, artifact: &str, config: &[(&str, &str)]) -> Loaded {
        Loaded::with_config(PluginConfig { name: name.into(), ..PluginConfig::default() }, artifact, config)
    }

    /// [`Loaded::new`] with `plugin`'s limits and grants.
    fn with_config(plugin: PluginConfig, artifact: &str, config: &[(&str, &str)]) -> Loaded {
        let engine = Arc::new(PluginEngine::new(None).unwrap());
        let name = plugin.name.clone();
        let loaded = Loaded { engine, registry: Arc::default(), metrics: Arc::default(), name };
        loaded.load(PluginConfig { config: Self::entries(config), ..plugin }, artifact);
        loaded
    }

    fn entries(config: &[(&str, &str)]) -> BTreeMap<String, String> {
        config.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    /// Load `artifact` with `config` and make it the serving version.
    fn swap_in(&self, artifact: &str, config: &[(&str, &str)]) -> Arc<CompiledPlugin> {
        let config = Self::entries(config);
        self.load(PluginConfig { name: self.name.clone(), config, ..PluginConfig::default() }, artifact)
    }

    /// Load `artifact` as `plugin_config` says and make it the serving version.
    fn load(&self, plugin_config: PluginConfig, artifact: &str) -> Arc<CompiledPlugin> {
        let plugin = load_file(&self.engine, Path::new(artifact), Some(&plugin_config)).unwrap();
        self.registry.replace(BTreeMap::from([(self.name.clone(), plugin.clone())]));
        plugin
    }

    /// A transport over `endpoints` with `lanes` lanes and a per-attempt timeout.
    fn transport(&self, endpoints: &[SocketAddr], lanes: usize, timeout: Duration) -> PluginTransport {
        let endpoints: Vec<String> = endpoints.iter().map(SocketAddr::to_string).collect();
        self.transport_to(&endpoints, lanes, timeout)
    }

    /// [`Loaded::transport`] over `endpoints` as configured (`host:port`).
    fn transport_to(&self, endpoints: &[String], lanes: usize, timeout: Duration) -> PluginTransport {
        self.transport_pooled(endpoints, lanes, timeout, PoolConfig::default())
    }

    /// [`Loaded::transport_to`] with each endpoint's connections pooled as `pool` says.
    fn transport_pooled(
        &self,
        endpoints: &[String],
        lanes: usize,
        timeout: Duration,
        pool: PoolConfig,
    ) -> PluginTransport {
        let config = PluginTransportConfig {
            destination: "test".into(),
            plugin: self.name.clone(),
            endpoints: endpoints.to_vec(),
            timeout,
            pool,
            lanes,
            max_reply_bytes: switchyard::config::HostSection::default().max_message_bytes,
        };
        PluginTransport::new(config, self.registry.clone(), self.engine.clone(), self.metrics.clone())
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn redis_transport() {
    let (left, right) = (RedisServer::start(), RedisServer::start());
    let plugin = Loaded::new("redis", artifacts::REDIS_TRANSPORT, &[("key", "jobs")]);
    let transport = plugin.transport(&[left.addr, right.addr], 2, TIMEOUT);
    for n in 1..=50 {
        for redis in [&left, &right] {
            let message = Message::new("jobs", format!("job {n}"));
            let reply = within(transport.attempt(&redis.addr.to_string(), &message)).await.unwrap().unwrap();
            assert_eq!(reply.payload, n.to_string(), "RPUSH answers the list's length");
        }
    }
    for redis in [&left, &right] {
        assert_eq!(redis.command(&["LLEN", "jobs"]), "50");
        assert_eq!(redis.command(&["LINDEX", "jobs", "-1"]), "job 50");
        let stats = transport.pool_stats(&redis.addr.to_string()).unwrap();
        assert_eq!((stats.size, stats.idle), (1, 1), "one connection, kept open across sends");
    }
    let health = switchyard::config::HealthSettings::default();
    assert_eq!(within(transport.probe(&left.addr.to_string(), &health)).await, Ok(()), "PING answered");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let to_closed = plugin.transport(&[closed], 1, TIMEOUT);
    let down = within(to_closed.probe(&closed.to_string(), &health)).await.unwrap_err();
    assert!(down.starts_with("the plugin's probe asked for a retry: connect: "), "{down}");

    let streams = Loaded::new("redis", artifacts::REDIS_TRANSPORT, &[("key", "events"), ("command", "xadd")]);
    let transport = streams.transport(&[left.addr], 1, TIMEOUT);
    let message = Message::new("events", "hello").with_header("x-sy-id", "0190-abc");
    let reply = within(transport.attempt(&left.addr.to_string(), &message)).await.unwrap().unwrap();
    let entry = String::from_utf8(reply.payload.to_vec()).unwrap();
    assert!(
        entry.split_once('-').is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq == "0"),
        "{entry}"
    );
    assert_eq!(
        left.command(&["XRANGE", "events", "-", "+"]),
        format!("{entry}\npayload\nhello\nid\n0190-abc")
    );

    // A server that takes the connection and never answers: the plugin, blocked reading its
    // socket inside WASI, is cut at the per-attempt deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let transport = plugin.transport(&[silent_addr], 1, Duration::from_millis(300));
    let (outcome, error) = cut(&transport, silent_addr, &Message::new("jobs", "unanswered")).await;
    assert_eq!(
        (outcome, error.as_str()),
        (Outcome::Retryable(RetryReason::Timeout), "the plugin gave no answer in 300ms")
    );
    held.abort();

    // XADD to a key holding a list: Redis refuses, the message is rejected with its text.
    let wrong = Loaded::new("redis", artifacts::REDIS_TRANSPORT, &[("key", "jobs"), ("command", "xadd")]);
    let transport = wrong.transport(&[left.addr], 1, TIMEOUT);
    let refused = within(transport.attempt(&left.addr.to_string(), &message)).await.unwrap_err();
    assert_eq!(refused.0, Outcome::Fatal(FatalReason::Rejected));
    assert!(refused.1.contains("rejected the message: redis: WRONGTYPE"), "{}", refused.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn echo_transport() {
    let (server, echoed) = echo_server().await;
    let plugin = Loaded::new("echo", artifacts::ECHO_TRANSPORT, &[]);
    let transport = plugin.transport(&[server], 1, TIMEOUT);
    let message = Message::new("greet", "hello, echo").with_header("x-kept", "yes");
    let reply = within(transport.attempt(&server.to_string(), &message)).await.unwrap().unwrap();
    assert_eq!((reply.topic.as_str(), &reply.payload[..]), ("greet", &b"hello, echo"[..]));
    assert_eq!(reply.header("x-kept"), Some("yes"));
    assert_eq!(reply.header("x-echoed-by"), Some(server.to_string().as_str()));
    assert_eq!(echoed.load(std::sync::atomic::Ordering::SeqCst), 11, "it went through the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_plugin_reaches_an_endpoint_named_by_host_name_and_looks_up_no_other_name() {
    let (server, echoed) = echo_server().await;
    let endpoint = format!("localhost:{}", server.port());
    let plugin = Loaded::new("echo", artifacts::ECHO_TRANSPORT, &[]);
    let transport = plugin.transport_to(std::slice::from_ref(&endpoint), 1, TIMEOUT);
    let message = Message::new("greet", "hello, localhost");
    let reply = within(transport.attempt(&endpoint, &message)).await.unwrap().unwrap();
    assert_eq!(reply.payload, "hello, localhost");
    assert_eq!(reply.header("x-echoed-by"), Some(endpoint.as_str()), "the plugin opened the name");
    assert_eq!(echoed.load(std::sync::atomic::Ordering::SeqCst), 16, "it went through the server");
    let health = switchyard::config::HealthSettings::default();
    assert_eq!(within(transport.probe(&endpoint, &health)).await, Ok(()), "probed by name too");

    // The name resolves to what the host resolved it to, for the endpoint's port only; no other
    // name is looked up.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = format!("localhost:{}", elsewhere.local_addr().unwrap().port());
    let faulty = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT, &[]);
    let transport = faulty.transport_to(std::slice::from_ref(&endpoint), 1, TIMEOUT);
    for wandering in [other_port.as_str(), "ungranted.invalid:80"] {
        let message = Message::new("jobs", "x").with_header("x-fault", format!("connect:{wandering}"));
        let (outcome, error) = within(transport.attempt(&endpoint, &message)).await.unwrap_err();
        assert_eq!(outcome, Outcome::Fatal(FatalReason::Rejected), "{error}");
        let denied = format!("the plugin rejected the message: connect to {wandering}: ");
        assert!(error.starts_with(&denied), "{error}");
        assert!(error.to_lowercase().contains("denied"), "the sandbox denied it: {error}");
    }
    assert!(
        tokio::time::timeout(Duration::ZERO, elsewhere.accept()).await.is_err(),
        "nothing reached the port outside the endpoint"
    );
}

/// One attempt that must fail within the deadline plus a margin; its error.
async fn cut(transport: &PluginTransport, address: SocketAddr, message: &Message) -> (Outcome, String) {
    let started = Instant::now();
    let failed = within(transport.attempt(&address.to_string(), message)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "cut at its deadline, took {:?}", started.elapsed());
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn faulty_transport() {
    let (server, _) = echo_server().await;
    let plugin = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT, &[]);
    // One lane: a plugin stuck past its deadline would hold up every later call.
    let transport = plugin.transport(&[server], 1, Duration::from_millis(300));
    let fine = Message::new("jobs", "fine");
    for fault in ["sleep", "spin"] {
        let stuck = Message::new("jobs", "stuck").with_header("x-fault", fault);
        let (outcome, error) = cut(&transport, server, &stuck).await;
        assert_eq!(outcome, Outcome::Retryable(RetryReason::Timeout), "{fault}: {error}");
        assert_eq!(error, "the plugin gave no answer in 300ms");
        let reply = within(transport.attempt(&server.to_string(), &fine)).await;
        assert_eq!(reply.unwrap().unwrap().payload, "fine", "after a {fault}, the lane serves again");
    }

    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let wandering = Message::new("jobs", "x").with_header("x-fault", format!("connect:{elsewhere_addr}"));
    let (outcome, error) = within(transport.attempt(&server.to_string(), &wandering)).await.unwrap_err();
    assert_eq!(outcome, Outcome::Fatal(FatalReason::Rejected));
    assert!(
        error.starts_with(&format!("the plugin rejected the message: connect to {elsewhere_addr}: ")),
        "{error}"
    );
    assert!(error.to_lowercase().contains("denied"), "the sandbox denied it: {error}");
    assert!(
        tokio::time::timeout(Duration::ZERO, elsewhere.accept()).await.is_err(),
        "nothing reached the address outside the endpoints"
    );
    // Counted as a route stage's would be: two deadline hits, the refusal an error answer.
    let counts = plugin.metrics.plugin_counts("faulty");
    let (faults, deadline_hits, errors) = (counts.faults(), counts.deadline_hits(), counts.errors());
    assert_eq!((faults, deadline_hits, errors), (2, 2, 1), "{counts:?}");
    assert_eq!(plugin.metrics.last_fault("faulty").map(|fault| fault.kind), Some("timed_out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn faulty_transport_reply() {
    // A reply of two messages, or of one and bytes that are none, was taken for its first message
    // and the rest dropped unread, though the WIT says a reply is a one-message batch (and
    // `switchyard plugin call` printed both, or failed on the bytes).
    let plugin = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT_REPLY, &[]);
    // The plugin reaches no endpoint: the address is only where it would send.
    let endpoint = "127.0.0.1:9".to_owned();
    let transport = plugin.transport_to(std::slice::from_ref(&endpoint), 1, TIMEOUT);
    let reply = within(transport.attempt(&endpoint, &Message::new("jobs", "fine"))).await;
    assert_eq!(reply.unwrap().unwrap().payload, "fine");
    for shape in ["two", "trailing"] {
        let message = Message::new("jobs", "x").with_header("x-reply", shape);
        let (outcome, error) = within(transport.attempt(&endpoint, &message)).await.unwrap_err();
        let expected = "the plugin's reply is malformed: expected exactly one message";
        assert_eq!((outcome, error.as_str()), (Outcome::ReplyRefused, expected), "{shape}");
    }
    let big = Message::new("jobs", "x").with_header("x-reply", "big");
    let (outcome, error) = within(transport.attempt(&endpoint, &big)).await.unwrap_err();
    assert_eq!(outcome, Outcome::ReplyRefused);
    assert!(
        error.starts_with("a reply of ") && error.ends_with(" bytes: more than 1048576 bytes"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_blocked_in_a_stream_read_is_cut_at_its_deadline_and_its_lane_serves_again() {
    // The echo server answers only what it is sent: a read before any write waits for good.
    let (server, _) = echo_server().await;
    let plugin = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT, &[]);
    // One lane: had the read held it, every later send would wait behind it.
    let transport = plugin.transport(&[server], 1, Duration::from_millis(200));
    let blocked = Message::new("jobs", "stuck").with_header("x-fault", "raw-read");
    let (outcome, error) = cut(&transport, server, &blocked).await;
    assert_eq!(
        (outcome, error.as_str()),
        (Outcome::Retryable(RetryReason::Timeout), "the plugin gave no answer in 200ms")
    );
    assert_eq!(plugin.metrics.last_fault("faulty").map(|fault| fault.kind), Some("timed_out"));
    let fine = Message::new("jobs", "fine");
    let reply = within(transport.attempt(&server.to_string(), &fine)).await;
    assert_eq!(reply.unwrap().unwrap().payload, "fine", "the lane serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_that_creates_sockets_without_end_is_refused_past_its_cap_and_keeps_few_open() {
    let (server, _) = echo_server().await;
    let plugin = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT, &[]);
    let transport = plugin.transport(&[server], 1, TIMEOUT);
    let fine = Message::new("jobs", "fine");
    within(transport.attempt(&server.to_string(), &fine)).await.unwrap();
    let before = open_descriptors();
    // Each socket is a descriptor of the host's: 2000 of them kept would take a good share of its
    // limit, and a few such instances all of it (ingress accepts, spool and dead-letter writes fail).
    let hoarding = Message::new("jobs", "x").with_header("x-fault", "sockets:2000");
    let (outcome, error) = within(transport.attempt(&server.to_string(), &hoarding)).await.unwrap_err();
    assert_eq!(outcome, Outcome::Fatal(FatalReason::Rejected), "{error}");
    assert!(error.contains("new-socket-limit"), "refused at the instance's socket cap: {error}");
    let kept = open_descriptors().saturating_sub(before);
    assert!(kept < 1000, "the instance keeps {kept} more descriptors open");
    let reply = within(transport.attempt(&server.to_string(), &fine)).await;
    assert_eq!(reply.unwrap().unwrap().payload, "fine", "its connection still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_that_leaks_is_renewed_between_calls_before_its_memory_cap_and_no_send_fails() {
    // 1 MiB kept for good per send under a 16 MiB cap: without renewal, a
    // send fails at the cap within sixteen messages.
    let (server, echoed) = echo_server().await;
    let limits = PluginLimits { memory_mb: 16, ..PluginLimits::default() };
    let config = PluginConfig { name: "leaky".into(), limits, ..PluginConfig::default() };
    let plugin = Loaded::with_config(config, artifacts::FAULTY_TRANSPORT, &[]);
    let transport = plugin.transport(&[server], 1, TIMEOUT);
    let mut sent = 0;
    for n in 0..48 {
        let message = Message::new("jobs", format!("job {n}")).with_header("x-fault", "leak:1024");
        let reply = within(transport.attempt(&server.to_string(), &message)).await;
        assert_eq!(reply.unwrap().unwrap().payload, format!("job {n}"), "send {n} went through");
        sent += message.payload.len();
    }
    assert_eq!(echoed.load(std::sync::atomic::Ordering::SeqCst), sent, "each message went out once");
    let counts = plugin.metrics.plugin_counts("leaky");
    assert_eq!(counts.faults(), 0, "no call failed at the cap: {counts:?}");
    assert!(counts.calls >= 48, "every call counted, the connections' opening too: {counts:?}");
    let renewed = plugin.metrics.plugin_renewals("leaky");
    assert!((3..48).contains(&renewed), "renewed every few sends, not on every one: {renewed}");
    let exposition = plugin.metrics.encode();
    let leaked =
        format!("switchyard_plugin_counter_total{{plugin=\"leaky\",name=\"leaked_kib\"}} {}", 48 * 1024);
    assert!(
        exposition.lines().any(|line| line == leaked),
        "the plugin's counts reached the metrics:\n{exposition}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_serves_new_connections_and_the_old_one_drains_away() {
    let (server, _) = echo_server().await;
    let plugin = Loaded::new("echo", artifacts::ECHO_TRANSPORT, &[]);
    let old = plugin.registry.snapshot()["echo"].clone();
    let transport = plugin.transport(&[server], 2, TIMEOUT);
    let message = Message::new("greet", "hello");
    within(transport.attempt(&server.to_string(), &message)).await.unwrap();
    let instances = |plugin: &CompiledPlugin, expected: usize| {
        eventually(|| match plugin.live_instances() {
            live if live == expected => Ok(()),
            live => Err(live),
        })
    };
    instances(&old, 2); // one per lane
    let new = plugin.swap_in(artifacts::ECHO_TRANSPORT, &[("version", "2")]);
    within(transport.attempt(&server.to_string(), &message)).await.unwrap();
    instances(&new, 2);
    let stats = transport.pool_stats(&server.to_string()).unwrap();
    assert_eq!((stats.size, stats.idle), (1, 1), "the old version's connection was closed, not reused");
    instances(&old, 0); // its lanes ended with its last connection
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_transport_plugin_sends_nothing_more_and_its_lanes_and_connections_end() {
    let (server, echoed) = echo_server().await;
    let plugin = Loaded::new("echo", artifacts::ECHO_TRANSPORT, &[]);
    let removed = plugin.registry.snapshot()["echo"].clone();
    let transport = plugin.transport(&[server], 2, TIMEOUT);
    let message = Message::new("greet", "hello");
    within(transport.attempt(&server.to_string(), &message)).await.unwrap();
    let sent = echoed.load(std::sync::atomic::Ordering::SeqCst);
    plugin.registry.replace(BTreeMap::new()); // its file deleted
    let refused = within(transport.attempt(&server.to_string(), &message)).await.unwrap_err();
    assert_eq!(
        refused,
        (Outcome::Retryable(RetryReason::Connect), "transport plugin \"echo\" is not loaded".to_owned()),
        "not sent: it waits for a version to serve, as for an endpoint that refuses"
    );
    assert_eq!(echoed.load(std::sync::atomic::Ordering::SeqCst), sent, "nothing more went out");
    // Its lanes held an instance each and its pool an open connection until the destination was
    // rebuilt or another version served.
    let stats = transport.pool_stats(&server.to_string()).unwrap();
    assert_eq!(stats.size, 0, "the removed version's idle connection was closed");
    eventually(|| match removed.live_instances() {
        0 => Ok(()),
        live => Err(live),
    });
    plugin.swap_in(artifacts::ECHO_TRANSPORT, &[]); // put back
    let reply = within(transport.attempt(&server.to_string(), &message)).await.unwrap().unwrap();
    assert_eq!(reply.payload, "hello", "a version put back serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_whose_plugin_call_is_stuck_holds_up_no_other_endpoint() {
    let ((stuck, _), (good, _)) = (echo_server().await, echo_server().await);
    let plugin = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT, &[]);
    // One lane per endpoint, and a deadline far longer than a good exchange.
    let transport = Arc::new(plugin.transport(&[stuck, good], 1, Duration::from_secs(3)));
    let fine = Message::new("jobs", "fine");
    within(transport.attempt(&stuck.to_string(), &fine)).await.unwrap();
    let stuck_call = tokio::spawn({
        let transport = transport.clone();
        async move {
            let sleeping = Message::new("jobs", "stuck").with_header("x-fault", "sleep");
            transport.attempt(&stuck.to_string(), &sleeping).await
        }
    });
    // The stuck call holds the stuck endpoint's one connection: it is in its lane.
    eventually(|| match transport.pool_stats(&stuck.to_string()).unwrap().in_use {
        1 => Ok(()),
        in_use => Err(in_use),
    });
    let reply = within(transport.attempt(&good.to_string(), &fine)).await.unwrap().unwrap();
    assert_eq!(reply.payload, "fine");
    assert!(!stuck_call.is_finished(), "the other endpoint answered while the stuck call still waited");
    let (outcome, _) = within(stuck_call).await.unwrap().unwrap_err();
    assert_eq!(outcome, Outcome::Retryable(RetryReason::Timeout));
}

/// An echo server that echoes only while its gate (the sender returned) is open: what it reads
/// meanwhile waits, and so does the plugin reading its echo, holding its connection.
async fn gated_echo_server() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (gate, open) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut open = open.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 4096];
                while let Ok(read @ 1..) = stream.read(&mut buffer).await {
                    let opened = open.wait_for(|open| *open).await.is_ok();
                    if !opened || stream.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, gate)
}

/// `count` attempts to `address` at once, each begun (its idle connection taken, or a new one
/// asked of a lane) while `gate` holds every echo, so that none gives its connection back for
/// another to take; then the gate opened until all have ended, and their results.
async fn all_at_once(
    transport: &PluginTransport,
    address: &str,
    gate: &tokio::sync::watch::Sender<bool>,
    count: usize,
) -> Vec<AttemptResult> {
    let message = Message::new("jobs", "at once");
    let mut attempts: Vec<_> = (0..count).map(|_| transport.attempt(address, &message)).collect();
    for attempt in &mut attempts {
        assert!(futures_util::poll!(attempt).is_pending(), "it waits for its echo at least");
    }
    gate.send_replace(true);
    let results = within(futures_util::future::join_all(attempts)).await;
    gate.send_replace(false);
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_remade_after_a_lane_faulted_take_the_emptier_lane_and_none_meets_the_socket_cap() {
    let (server, gate) = gated_echo_server().await;
    let address = server.to_string();
    let plugin = Loaded::new("faulty", artifacts::FAULTY_TRANSPORT, &[]);
    // Two lanes and a pool within what they hold (127 connections each); a deadline only as a
    // safety net, for attempts that wait their turn behind a hundred others on their lane.
    let pool = PoolConfig { max_size: 254, max_idle: 254, ..PoolConfig::default() };
    let transport = plugin.transport_pooled(std::slice::from_ref(&address), 2, Duration::from_secs(30), pool);
    let none_refused = |results: Vec<AttemptResult>| {
        let refused: Vec<_> = results.into_iter().filter_map(Result::err).collect();
        assert!(refused.is_empty(), "{} refused, the first: {:?}", refused.len(), refused.first());
    };
    none_refused(all_at_once(&transport, &address, &gate, 200).await); // 100 connections on each lane
    assert_eq!(transport.pool_stats(&address).unwrap().idle, 200);

    // One lane's instance hits its memory cap: it is replaced, and its 100 connections are gone.
    let fault = Message::new("jobs", "x").with_header("x-fault", "leak:1048576");
    let (outcome, error) = within(transport.attempt(&address, &fault)).await.unwrap_err();
    assert_eq!(outcome, Outcome::Retryable(RetryReason::Reset), "{error}");
    assert_eq!(plugin.metrics.last_fault("faulty").map(|fault| fault.kind), Some("memory_cap"));

    // 200 at once again: 100 on the other lane's connections, 100 on new ones, 200 sockets in
    // all. Had the new ones taken the lanes in turn, the other lane would have been asked for
    // 150, past its instance's 128 sockets.
    none_refused(all_at_once(&transport, &address, &gate, 200).await);
    let stats = transport.pool_stats(&address).unwrap();
    assert_eq!((stats.size, stats.idle), (200, 200));
}
