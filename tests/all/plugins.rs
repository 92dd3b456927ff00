//! Each example plugin doing its job inside a running host.

use crate::support::{MEMORY_OUT, builder, drain_and_account, host, next, plugin_dir, within};
use switchyard::{Message, RequestError};
use switchyard_plugin_artifacts as artifacts;

#[tokio::test]
pub async fn header_filter() {
    keeps_one_tenants_orders(artifacts::HEADER_FILTER).await;
}

/// The filter component at `artifact`, configured to keep `orders.*` of
/// tenant `acme`, keeps one message of four in a route and counts both ways.
pub async fn keeps_one_tenants_orders(artifact: &str) {
    let dir = plugin_dir(&[("tenant-filter", artifact)]);
    let config = format!(
        r#"{MEMORY_OUT}
[[plugin]]
name = "tenant-filter"
config = {{ topic_prefix = "orders.", require_header = "x-tenant", require_value = "acme" }}
[[route]]
name = "all"
stages = ["filter:tenant-filter"]
to = "out"
"#
    );
    let host = host(dir.path(), &config).await;
    let out = host.memory("out").unwrap();
    let keep = Message::new("orders.eu", "big".repeat(1000)).with_header("X-Tenant", "acme");
    host.send(keep.clone()).await.unwrap();
    host.send(Message::new("orders.eu", "").with_header("x-tenant", "other")).await.unwrap();
    host.send(Message::new("billing.eu", "").with_header("x-tenant", "acme")).await.unwrap();
    host.send(Message::new("orders.us", "")).await.unwrap();
    let delivered = next(&out).await;
    assert_eq!((delivered.topic.as_str(), &delivered.payload), (keep.topic.as_str(), &keep.payload));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.filtered, stats.dead_lettered), (1, 3, 0));
    assert!(out.is_empty());
    let plugin = &host.plugins()[0];
    let counters = plugin.settings.counters();
    assert_eq!((counters.get("kept"), counters.get("dropped")), (Some(&1), Some(&3)));
}

#[tokio::test]
pub async fn redact_transform() {
    let dir = plugin_dir(&[("redact", artifacts::REDACT_TRANSFORM)]);
    let config = format!(
        r#"{MEMORY_OUT}
[[plugin]]
name = "redact"
config = {{ fields = "card,ssn", add_field = "source=switchyard", split_array = "items" }}
[[route]]
name = "all"
stages = ["transform:redact"]
to = "out"
"#
    );
    let host = host(dir.path(), &config).await;
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    let order = r#"{"id":7,"card":"4111","customer":{"ssn":"123","name":"Ann"}}"#;
    host.send(Message::new("orders.eu", order)).await.unwrap();
    let redacted = next(&out).await;
    let json: serde_json::Value = serde_json::from_slice(&redacted.payload).unwrap();
    assert_eq!(json["card"], "[redacted]");
    assert_eq!(json["customer"]["ssn"], "[redacted]");
    assert_eq!(json["customer"]["name"], "Ann");
    assert_eq!(json["source"], "switchyard");
    assert_eq!(redacted.header("x-transformed-by"), Some("redact-transform"));

    host.send(Message::new("orders.batch", r#"{"items":[{"n":1},{"n":2},{"n":3}]}"#)).await.unwrap();
    let parts: Vec<Message> = vec![next(&out).await, next(&out).await, next(&out).await];
    let ns: Vec<serde_json::Value> = parts
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["n"].clone())
        .collect();
    assert_eq!(ns, [1, 2, 3]);
    assert_eq!(parts.iter().map(|m| m.id).collect::<std::collections::BTreeSet<_>>().len(), 3);

    host.send(Message::new("orders.batch", r#"{"items":[]}"#)).await.unwrap();
    host.send(Message::new("orders.eu", "not json")).await.unwrap();
    let rejected = next(&dead).await;
    assert_eq!(rejected.header("x-sy-dead-letter"), Some("plugin-rejected"));
    assert!(rejected.header("x-sy-dead-letter-reason").unwrap().contains("payload is not JSON"));
    assert_eq!(rejected.payload, "not json");
    // JSON but for a byte that is not UTF-8: rejected too, by the parser, not passed on.
    let not_utf8: &[u8] = b"{\"card\":\"41\xff1\"}";
    host.send(Message::new("orders.eu", not_utf8)).await.unwrap();
    let rejected = next(&dead).await;
    assert!(rejected.header("x-sy-dead-letter-reason").unwrap().contains("payload is not JSON"));
    assert_eq!(rejected.payload, not_utf8);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created), (5, 2));
    assert_eq!((stats.delivered, stats.filtered, stats.dead_lettered), (4, 1, 2));
}

#[tokio::test]
pub async fn annotate_middleware() {
    let dir = plugin_dir(&[("annotate", artifacts::ANNOTATE_MIDDLEWARE)]);
    let echo = |message: Message| async move { Ok(Some(message.with_header("x-echo", "yes"))) };
    let config = switchyard::Config::from_toml("t", "").unwrap();
    let host = builder(dir.path())
        .config("t", config)
        .destination("echo", echo)
        .route(switchyard::RouteConfig::new("all", ">", "echo").stage("middleware:annotate"))
        .build()
        .await
        .unwrap();
    let reply = within(host.request(Message::new("greet", "hi"))).await.unwrap().unwrap();
    assert_eq!(reply.header("x-annotated-by"), Some("annotate-middleware"), "{reply:?}");
    assert_eq!(reply.header("x-echo"), Some("yes"));
    assert_eq!(reply.header("x-reply-annotated"), Some("true"));
    let short = Message::new("greet", "hi").with_header("x-short-circuit", "1");
    let reply = within(host.request(short)).await.unwrap().unwrap();
    assert_eq!(reply.header("x-replied-by"), Some("annotate-middleware"));
    assert_eq!(reply.payload, r#"{"short_circuit":true}"#);
    assert_eq!(reply.header("x-echo"), None, "a short-circuited request is not delivered");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.responded), (1, 1));
    let gone = within(host.request(Message::new("greet", ""))).await;
    assert_eq!(gone, Err(RequestError::NotAccepted(switchyard::SendError::ShuttingDown)));
}

/// A middleware's forward is held to what a transform's outputs are: the host's own headers stay
/// the host's, and a forward past `host.max_message_bytes` is dead-lettered, not delivered.
#[tokio::test]
pub async fn a_middleware_forward_cannot_forge_host_headers_or_pass_the_limits() {
    let annotate = artifacts::ANNOTATE_MIDDLEWARE;
    let dir = plugin_dir(&[("forger", annotate), ("bloater", annotate)]);
    // Its load trial's sample (topic `switchyard.trial`, payload `{}`) forwarded with `x-big` is
    // within the 1024 bytes (else the bloater is refused at load); a request of 200 bytes is not.
    let big = "x".repeat(900);
    let config = format!(
        r#"
[host]
dead_letter = "dead"
max_message_bytes = 1024
[[destination]]
name = "out"
transport = "memory"
[[destination]]
name = "dead"
transport = "memory"
[[plugin]]
name = "forger"
config = {{ header = "x-sy-attempts", value = "99" }}
[[plugin]]
name = "bloater"
config = {{ header = "x-big", value = "{big}" }}
[[route]]
name = "forged"
match = {{ topic = "forged" }}
stages = ["middleware:forger"]
to = "out"
[[route]]
name = "bloated"
match = {{ topic = "bloated" }}
stages = ["middleware:bloater"]
to = "out"
"#
    );
    let host = host(dir.path(), &config).await;
    let (out, dead) = (host.memory("out").unwrap(), host.memory("dead").unwrap());
    host.send(Message::new("forged", "1").with_header("x-tenant", "acme")).await.unwrap();
    let delivered = next(&out).await;
    assert_eq!(delivered.header("x-sy-attempts"), None, "{delivered:?}");
    assert_eq!(delivered.header("x-tenant"), Some("acme"));
    let ids = delivered.headers.iter().filter(|(name, _)| name.starts_with("x-sy-")).count();
    assert_eq!((ids, delivered.unique_id().is_some()), (1, true), "its id and no other: {delivered:?}");

    let request = "2".repeat(200);
    host.send(Message::new("bloated", request.clone())).await.unwrap();
    let letter = next(&dead).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-output-limit"), "{letter:?}");
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.contains("over host.max_message_bytes (1024)"), "{reason}");
    assert_eq!(
        (letter.payload.as_ref(), letter.header("x-big")),
        (request.as_bytes(), None),
        "the request as it came"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));
    assert!(out.is_empty(), "the oversized forward was not delivered");
}

/// A middleware's replies are held to what its forwards are: its own answer to a request, or the
/// reply it passes back, with more headers than a message a plugin makes may carry fails the
/// request as an output-limit fault and never reaches the caller; a destination's reply larger
/// than `host.max_message_bytes` may still be passed back, annotated.
#[tokio::test]
pub async fn a_middleware_reply_past_the_output_limits_is_an_output_limit_fault() {
    let annotate = artifacts::ANNOTATE_MIDDLEWARE;
    let dir = plugin_dir(&[("padder", annotate), ("annotate", annotate)]);
    let config = r#"
[host]
dead_letter = "dead"
max_message_bytes = 1024
[[destination]]
name = "dead"
transport = "memory"
[[plugin]]
name = "padder"
config = { reply_headers = "2000" }
"#;
    let echo = |message: Message| async move { Ok(Some(message)) };
    let large = |message: Message| async move { Ok(Some(Message::new(message.topic, "x".repeat(4096)))) };
    let host = builder(dir.path())
        .config("t", switchyard::Config::from_toml("t", config).unwrap())
        .destination("echo", echo)
        .destination("large", large)
        .route(switchyard::RouteConfig::new("padded", "padded", "echo").stage("middleware:padder"))
        .route(switchyard::RouteConfig::new("large", "large", "large").stage("middleware:annotate"))
        .build()
        .await
        .unwrap();
    // What a reply that got through is shown as: its header count (it has thousands).
    let headers =
        |answer: Result<Option<Message>, RequestError>| answer.map(|reply| reply.map(|r| r.headers.len()));
    let output_limit = |reason: &switchyard::DeadLetterReason| {
        assert_eq!(reason.code(), "plugin-output-limit", "{reason}");
        assert!(reason.to_string().contains("more than 1024 headers"), "{reason}");
    };
    match within(host.request(Message::new("padded", "hi"))).await {
        Err(RequestError::ReplyFailed(reason)) => output_limit(&reason),
        other => panic!("the reply passed back got through: {:?}", headers(other)),
    }
    let short = Message::new("padded", "hi").with_header("x-short-circuit", "1");
    match within(host.request(short)).await {
        Err(RequestError::DeadLettered(reason)) => output_limit(&reason),
        other => panic!("the middleware's own reply got through: {:?}", headers(other)),
    }
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-output-limit"), "{letter:?}");

    let reply = within(host.request(Message::new("large", "hi"))).await.unwrap().unwrap();
    assert_eq!((reply.payload.len(), reply.header("x-reply-annotated")), (4096, Some("true")));
}

/// Balancer plugins load and are recognised by kind.
async fn loads_as(artifact: &str, kind: switchyard::PluginKind) {
    let dir = plugin_dir(&[("p", artifact)]);
    let host = host(dir.path(), "").await;
    let plugins = host.plugins();
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0].kind, kind);
    assert_eq!(plugins[0].digest.len(), 64);
}

#[tokio::test]
pub async fn least_loaded_balancer() {
    loads_as(artifacts::LEAST_LOADED_BALANCER, switchyard::PluginKind::Balancer).await;
}

/// `allow_net` lets a plugin connect to exactly the addresses it names: a
/// granted connect reaches its listener, any other is denied, and a plugin
/// granted nothing reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn net_probe() {
    let granted = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (granted_addr, other_addr) = (granted.local_addr().unwrap(), other.local_addr().unwrap());
    // Granted too, and free: the plugin tries to listen on it.
    let free_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = plugin_dir(&[("probe", artifacts::NET_PROBE), ("closed", artifacts::NET_PROBE)]);
    let config = format!(
        "{}[[plugin]]\nname = \"probe\"\nallow_net = [\"{granted_addr}\", \"{free_addr}\"]\n\
         [[route]]\nname = \"granted\"\nmatch = {{ topic = \"granted\" }}\nstages = [\"filter:probe\"]\nto = \"out\"\n\
         [[route]]\nname = \"ungranted\"\nmatch = {{ topic = \"ungranted\" }}\nstages = [\"filter:closed\"]\nto = \"out\"\n",
        MEMORY_OUT
    );
    let host = host(dir.path(), &config).await;
    let out = host.memory("out").unwrap();
    let probe = |topic: &str, addr: std::net::SocketAddr| {
        Message::new(topic, "{}").with_header("x-connect", addr.to_string())
    };
    host.send(probe("granted", granted_addr)).await.unwrap();
    assert_eq!(next(&out).await.topic, "granted", "the granted connect succeeded: kept");
    within(granted.accept()).await.expect("the plugin's connection reached the listener");
    host.send(probe("granted", other_addr)).await.unwrap();
    host.send(probe("ungranted", granted_addr)).await.unwrap();
    // A grant is to connect, never to listen, not even on the granted address.
    let listen = Message::new("granted", "{}").with_header("x-listen", free_addr.to_string());
    host.send(listen).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!(
        (stats.delivered, stats.filtered),
        (1, 3),
        "an address not granted, a plugin granted none, and listening are denied"
    );
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, other.accept()).await.is_err(),
        "nothing reached the other listener"
    );
}

pub use crate::balancer_plugin::faulty_balancer;
pub use crate::faulty::{
    faulty_decisions, faulty_errors, faulty_flood, faulty_memory_hog, faulty_middleware, faulty_sleep,
    faulty_spin, faulty_trap, faulty_wrong_world, fs_probe,
};
pub use crate::language_plugins::{js_filter, js_transform, python_filter, python_transform};
pub use crate::native_plugins::{native_abi_mismatch, native_constructor};
pub use crate::reload::stamp_transform;
pub use crate::wasm_transport::{echo_transport, faulty_transport, faulty_transport_reply, redis_transport};
pub use crate::wire_format::{faulty_format_v0, faulty_format_v2};

/// Replies waiting for room in the reply middleware's queue when a shutdown's grace period ends are
/// answered then ("the host stopped before the reply passed back"), as any delivery's wait ends:
/// they waited for every reply queued before them, each up to the middleware's deadline, and held
/// the shutdown (the worker whose delivery answered) as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub async fn a_reply_waiting_for_a_slow_reply_middleware_at_the_end_of_the_grace_is_answered_then() {
    let dir = plugin_dir(&[("slow", artifacts::ANNOTATE_MIDDLEWARE)]);
    let config = r#"
[host]
workers = 1
queue_capacity = 1
shutdown_grace_ms = 200
[[plugin]]
name = "slow"
config = { reply_spin = "true" }
limits = { timeout_ms = 3000 }
"#;
    let config = switchyard::Config::from_toml("t", config).unwrap();
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let echo = {
        let delivered = delivered.clone();
        move |message: Message| {
            delivered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(Some(message)) }
        }
    };
    let host = builder(dir.path())
        .config("t", config)
        .destination("echo", echo)
        .route(switchyard::RouteConfig::new("all", ">", "echo").stage("middleware:slow"))
        .build()
        .await
        .unwrap();
    // The first reply spins in the middleware, the second waits in its queue (of one), the third
    // waits for room in it, holding the only worker.
    let request = |n: usize| {
        let host = host.clone();
        tokio::spawn(async move { host.request(Message::new("greet", n.to_string())).await })
    };
    let requests: Vec<_> = (0..3).map(request).collect();
    crate::support::eventually(|| match delivered.load(std::sync::atomic::Ordering::SeqCst) {
        3 => Ok(()),
        seen => Err(seen),
    });
    within(host.shutdown()).await;
    let mut refused = 0;
    for request in requests {
        match within(request).await.unwrap() {
            Err(RequestError::ReplyRefused { problem, .. }) => {
                assert!(problem.contains("the host stopped before the reply passed back"), "{problem}");
                refused += 1;
            }
            Err(RequestError::ReplyFailed(reason)) => {
                assert_eq!(reason.code(), "plugin-timed-out", "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 1, "the reply that waited for room at the grace's end");
}
