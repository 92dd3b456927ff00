//! `transport = "plugin:NAME"` destinations in a running host: the Redis
//! transport delivering 10 000 messages to two real redis-servers while one
//! is killed, a stuck plugin cut at its deadline and retried on the other
//! endpoint, an address outside the endpoints denied, the echo transport's
//! reply coming back through `Host::request`, and hot swaps under load.

use crate::support::{
    RedisServer, drain_and_account, echo_server, event_where, eventually, host, http, next, plugin_dir,
    replace_file, within,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use switchyard::admin::AdminServer;
use switchyard::{DestinationEvent, Host, HostEvent, Message, RequestError};
use switchyard_plugin_artifacts as artifacts;

/// A host delivering every message to destination `to`, through plugin
/// `name` (its file) to `endpoints`, with `settings` lines added to the
/// destination; dead letters go to the memory destination `dead`.
async fn plugin_host(
    plugins: &[(&str, &str)],
    endpoints: &[SocketAddr],
    settings: &str,
    extra: &str,
) -> (tempfile::TempDir, Host) {
    let dir = plugin_dir(plugins);
    let endpoints: Vec<String> = endpoints.iter().map(|addr| format!("\"{addr}\"")).collect();
    let config = format!(
        "[host]\ndead_letter = \"dead\"\n[[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"to\"\ntransport = \"plugin:{}\"\nendpoints = [{}]\n{settings}\n\
         {extra}\n[[route]]\nname = \"all\"\nto = \"to\"\n",
        plugins[0].0,
        endpoints.join(", "),
    );
    let host = host(dir.path(), &config).await;
    (dir, host)
}

/// Everything a Redis list holds, one element per entry.
fn list(redis: &RedisServer, key: &str) -> Vec<String> {
    let all = redis.command(&["LRANGE", key, "0", "-1"]);
    all.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_reach_two_redis_servers_through_the_plugin_and_none_is_lost_when_one_is_killed()
 {
    const MESSAGES: usize = 10_000;
    let (kept, mut killed) = (RedisServer::start(), RedisServer::start());
    let settings = "idempotent = true\ntimeout_ms = 2000\nretry = { attempts = 20, base_ms = 2, max_ms = 50 }\n\
                    breaker = { consecutive_failures = 3, open_ms = 200 }\n\
                    health = { interval_ms = 100, timeout_ms = 500, rise = 2, fall = 2 }\n\
                    options = { lanes = 2 }";
    let plugin = "[[plugin]]\nname = \"redis\"\nconfig = { key = \"jobs\" }";
    let (_dir, host) =
        plugin_host(&[("redis", artifacts::REDIS_TRANSPORT)], &[kept.addr, killed.addr], settings, plugin)
            .await;
    let mut events = host.subscribe();
    let killed_addr = killed.addr.to_string();
    let sender = {
        let host = host.clone();
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                host.send(Message::new("jobs", n.to_string())).await.unwrap();
            }
        })
    };
    let killed = tokio::task::spawn_blocking(move || {
        eventually(|| match killed.command(&["LLEN", "jobs"]).parse::<usize>().unwrap() {
            taken if taken >= MESSAGES / 5 => Ok(()),
            taken => Err(taken),
        });
        killed.kill();
        killed
    });
    let mut killed = within(killed).await.unwrap();
    event_where(&mut events, |event| {
        matches!(event, HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, .. }) if *endpoint == killed_addr)
    })
    .await;
    within(sender).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered + stats.dead_lettered), (MESSAGES as u64, MESSAGES as u64));

    killed.restart();
    let dead = host.memory("dead").unwrap();
    let dead_letters: Vec<String> =
        dead.try_iter().map(|message| String::from_utf8_lossy(&message.payload).into_owned()).collect();
    let (in_kept, in_killed) = (list(&kept, "jobs"), list(&killed, "jobs"));
    let reached: BTreeSet<&String> = in_kept.iter().chain(&in_killed).chain(&dead_letters).collect();
    let lost: Vec<usize> = (0..MESSAGES).filter(|n| !reached.contains(&n.to_string())).collect();
    assert!(lost.is_empty(), "lost {} messages, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert_eq!(dead_letters.len() as u64, stats.dead_lettered);
    assert!(in_kept.len() > MESSAGES / 2, "the kept server took the rest: {}", in_kept.len());
    let duplicates = in_kept.len() + in_killed.len() + dead_letters.len() - MESSAGES;
    eprintln!(
        "kept {} + killed {} (acknowledged before the kill) + dead letters {}; duplicates {duplicates}",
        in_kept.len(),
        in_killed.len(),
        dead_letters.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_or_spinning_transport_plugin_is_cut_at_its_deadline_and_the_message_delivered_elsewhere()
{
    let ((stuck, stuck_echoed), (good, good_echoed)) = (echo_server().await, echo_server().await);
    // One lane per endpoint: the stuck endpoint's lane holds up nothing of the good one's.
    // Attempts alternate between the endpoints; five leave room for a slow machine.
    let settings = "idempotent = true\ntimeout_ms = 500\nbalancer = \"round-robin\"\n\
                    retry = { attempts = 5, base_ms = 1, max_ms = 2 }\noptions = { lanes = 1 }";
    let (_dir, host) =
        plugin_host(&[("faulty", artifacts::FAULTY_TRANSPORT)], &[stuck, good], settings, "").await;
    for fault in ["sleep", "spin", "sleep", "spin"] {
        let message = Message::new("jobs", format!("{fault} at {stuck}"))
            .with_header("x-fault", fault)
            .with_header("x-fault-at", stuck.to_string());
        let started = Instant::now();
        let reply = within(host.request(message)).await.unwrap().unwrap();
        assert_eq!(reply.payload, format!("{fault} at {stuck}"), "delivered by the other endpoint");
        // The plugin sleeps 10 s: well before that, it was cut and the message went elsewhere.
        assert!(started.elapsed() < Duration::from_secs(5), "cut at 500 ms, took {:?}", started.elapsed());
    }
    assert_eq!(stuck_echoed.load(Ordering::SeqCst), 0, "nothing went out on the stuck endpoint");
    assert!(good_echoed.load(Ordering::SeqCst) > 0);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.responded + stats.delivered, stats.dead_lettered), (4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cut_at_their_deadline_while_they_wait_for_a_busy_lane_were_never_sent_and_go_on() {
    // One lane: a sleeping call holds it until its 300 ms deadline, and the
    // messages sent right after wait behind it; those whose deadline passes
    // while they wait were never handed to the plugin, so they are no attempt
    // (not `delivery-uncertain`) and go out once the lane is free.
    let (endpoint, echoed) = echo_server().await;
    let settings = "timeout_ms = 300\noptions = { lanes = 1 }";
    let (_dir, host) =
        plugin_host(&[("faulty", artifacts::FAULTY_TRANSPORT)], &[endpoint], settings, "").await;
    host.send(Message::new("jobs", "asleep").with_header("x-fault", "sleep")).await.unwrap();
    let fine: Vec<String> = (0..20).map(|n| format!("fine {n:02}")).collect();
    for payload in &fine {
        host.send(Message::new("jobs", payload.clone())).await.unwrap();
    }
    let stats = drain_and_account(&host).await;
    let letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    let dead: Vec<(&[u8], Option<&str>)> =
        letters.iter().map(|letter| (&letter.payload[..], letter.header("x-sy-dead-letter"))).collect();
    assert_eq!(dead, [(&b"asleep"[..], Some("delivery-uncertain"))], "only the one the plugin had");
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 1));
    let sent: usize = fine.iter().map(String::len).sum();
    assert_eq!(echoed.load(Ordering::SeqCst), sent, "each fine message went out once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_plugin_connecting_outside_its_endpoints_is_denied_and_dead_lettered_with_its_error() {
    let (endpoint, _) = echo_server().await;
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let (_dir, host) = plugin_host(&[("faulty", artifacts::FAULTY_TRANSPORT)], &[endpoint], "", "").await;
    let wandering = Message::new("jobs", "x").with_header("x-fault", format!("connect:{elsewhere_addr}"));
    let refused = within(host.request(wandering)).await.unwrap_err();
    assert!(matches!(refused, RequestError::DeadLettered(_)), "{refused:?}");
    let dead = next(&host.memory("dead").unwrap()).await;
    assert_eq!(dead.header("x-sy-dead-letter"), Some("delivery-failed"));
    let reason = dead.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.contains(&format!("connect to {elsewhere_addr}: ")), "{reason}");
    assert!(reason.to_lowercase().contains("denied"), "the sandbox denied it: {reason}");
    assert!(tokio::time::timeout(Duration::ZERO, elsewhere.accept()).await.is_err(), "nothing reached it");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_transport_plugin_answers_host_requests_with_what_the_echo_server_sent_back() {
    let (server, echoed) = echo_server().await;
    let (_dir, host) = plugin_host(&[("echo", artifacts::ECHO_TRANSPORT)], &[server], "", "").await;
    for n in 0..20 {
        let reply = within(host.request(Message::new("greet", format!("hello {n}")))).await.unwrap().unwrap();
        assert_eq!(reply.payload, format!("hello {n}"));
        assert_eq!(reply.header("x-echoed-by"), Some(server.to_string().as_str()));
    }
    let sent: usize = (0..20).map(|n| format!("hello {n}").len()).sum();
    assert_eq!(echoed.load(Ordering::SeqCst), sent, "every byte went through the server");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.responded + stats.delivered, stats.dead_lettered), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_plugin_s_reply_past_max_message_bytes_is_refused_and_the_message_counted_delivered() {
    // The echo server took the message: only the plugin's reply (the 1000 bytes echoed, plus the
    // header the plugin adds) is past what the host takes. Sending it again would deliver it twice.
    let (server, echoed) = echo_server().await;
    let config = format!(
        "[host]\nmax_message_bytes = 1024\n\
         [[destination]]\nname = \"echo\"\ntransport = \"plugin:echo\"\nendpoints = [\"{server}\"]\n\
         [[route]]\nname = \"all\"\nto = \"echo\"\n"
    );
    let dir = plugin_dir(&[("echo", artifacts::ECHO_TRANSPORT)]);
    let host = host(dir.path(), &config).await;
    let answer = within(host.request(Message::new("greet", vec![b'x'; 1000]))).await;
    let Err(RequestError::ReplyRefused { destination, problem }) = answer else {
        panic!(
            "delivered, its reply refused: {:?}",
            answer.map(|reply| reply.map(|reply| reply.payload.len()))
        )
    };
    assert_eq!(destination, "echo");
    assert!(problem.contains("more than 1024 bytes"), "{problem}");
    assert_eq!(echoed.load(Ordering::SeqCst), 1000, "delivered once: not sent again");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_transport_plugin_sends_nothing_and_its_messages_wait_until_their_queue_timeout() {
    let (server, echoed) = echo_server().await;
    let queue = "queue = { timeout_ms = 300 }";
    let (dir, host) = plugin_host(&[("echo", artifacts::ECHO_TRANSPORT)], &[server], queue, "").await;
    within(host.request(Message::new("greet", "hello"))).await.unwrap().unwrap();
    let mut events = host.subscribe();
    std::fs::remove_file(dir.path().join("echo.wasm")).unwrap();
    event_where(&mut events, |e| matches!(e, HostEvent::PluginRemoved { name, .. } if name == "echo")).await;
    let id = host.send(Message::new("greet", "after")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!((letter.id, letter.header("x-sy-dead-letter")), (id, Some("queue-timeout")), "{letter:?}");
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.contains("transport plugin \"echo\" is not loaded"), "{reason}");
    assert_eq!(echoed.load(Ordering::SeqCst), "hello".len(), "nothing more went out");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.responded + stats.delivered, stats.dead_lettered), (1, 1));
}

/// `GET /ready` of `admin`: its status and the problems it names.
async fn ready(admin: SocketAddr) -> (u16, Vec<String>) {
    let (status, body) =
        within(tokio::task::spawn_blocking(move || http(admin, "GET", "/ready", &[], b""))).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{err}: {body}"));
    let problems = body["problems"].as_array().map(Vec::as_slice).unwrap_or_default();
    (status, problems.iter().map(|problem| problem.as_str().unwrap().to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_not_ready_while_a_destination_s_transport_or_balancer_plugin_is_missing_or_of_another_kind()
 {
    let (server, _echoed) = echo_server().await;
    // "pick" is a transform, not the balancer the destination names; "echo" is not there yet.
    let dir = plugin_dir(&[("pick", artifacts::STAMP_TRANSFORM)]);
    let config = format!(
        "[[destination]]\nname = \"q\"\ntransport = \"plugin:echo\"\nbalancer = \"plugin:pick\"\n\
         endpoints = [\"{server}\"]\n[[route]]\nname = \"all\"\nto = \"q\"\n"
    );
    let host = host(dir.path(), &config).await;
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let mut events = host.subscribe();
    let transport_missing = "destination q: transport plugin \"echo\" is not loaded";
    let not_a_balancer =
        "destination q: balancer plugin \"pick\": is a transform, not a balancer (p2c picks meanwhile)";
    // Before any message: the previous host said ready until a delivery failed.
    assert_eq!(ready(addr).await, (503, vec![transport_missing.to_owned(), not_a_balancer.to_owned()]));

    replace_file(&dir.path().join("echo.wasm"), &std::fs::read(artifacts::ECHO_TRANSPORT).unwrap());
    event_where(&mut events, |e| matches!(e, HostEvent::PluginLoaded { name, .. } if name == "echo")).await;
    assert_eq!(ready(addr).await, (503, vec![not_a_balancer.to_owned()]));

    replace_file(&dir.path().join("pick.wasm"), &std::fs::read(artifacts::LEAST_LOADED_BALANCER).unwrap());
    event_where(&mut events, |e| matches!(e, HostEvent::PluginReplaced { name, .. } if name == "pick")).await;
    assert_eq!(ready(addr).await, (200, vec![]));
    let reply = within(host.request(Message::new("greet", "hello"))).await.unwrap().unwrap();
    assert_eq!(reply.payload, "hello");
    drain_and_account(&host).await;
}

/// `component` with a custom section appended: the same plugin, another version.
fn another_version(component: &[u8], tag: u8) -> Vec<u8> {
    let name = b"switchyard-test-version";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.push(tag);
    let mut bytes = component.to_vec();
    bytes.push(0);
    bytes.push(section.len() as u8);
    bytes.extend_from_slice(&section);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_plugin_swapped_ten_times_under_load_loses_nothing() {
    let redis = RedisServer::start();
    let settings = "idempotent = true\nretry = { attempts = 10, base_ms = 2, max_ms = 20 }";
    let plugin = "[[plugin]]\nname = \"redis\"\nconfig = { key = \"jobs\" }";
    let (dir, host) =
        plugin_host(&[("redis", artifacts::REDIS_TRANSPORT)], &[redis.addr], settings, plugin).await;
    let mut events = host.subscribe();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sender = {
        let host = host.clone();
        tokio::spawn(async move {
            let mut sent = 0_usize;
            while !*stopped.borrow() {
                host.send(Message::new("jobs", sent.to_string())).await.unwrap();
                sent += 1;
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    let original = std::fs::read(artifacts::REDIS_TRANSPORT).unwrap();
    for swap in 0..10 {
        replace_file(&dir.path().join("redis.wasm"), &another_version(&original, swap));
        event_where(
            &mut events,
            |event| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "redis"),
        )
        .await;
    }
    stop.send(true).unwrap();
    let sent = within(sender).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.dead_lettered), (sent as u64, 0));
    let stored: BTreeSet<String> = list(&redis, "jobs").into_iter().collect();
    let lost: Vec<usize> = (0..sent).filter(|n| !stored.contains(&n.to_string())).collect();
    assert!(lost.is_empty(), "lost {} of {sent}: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    assert_eq!(host.event_counts().replaced, 10);
}
