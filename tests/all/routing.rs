//! Routing, stages, destinations and admission through the embedding API.

use crate::support::{builder, drain_and_account, host, http_raw, next, plugin_dir, within};
use std::sync::Arc;
use switchyard::{
    DeliveryError, Host, MemoryDestination, Message, PluginError, RequestError, RouteConfig, SendError,
    Verdict,
};
use switchyard_plugin_artifacts as artifacts;
use tokio::sync::{Notify, Semaphore};

const OUTS: &str = r#"
[host]
dead_letter = "dead"
[[destination]]
name = "a"
transport = "memory"
[[destination]]
name = "b"
transport = "memory"
[[destination]]
name = "dead"
transport = "memory"
"#;

#[tokio::test]
async fn unrouted_message_is_dead_lettered_with_no_route_reason() {
    let dir = plugin_dir(&[]);
    let host = host(
        dir.path(),
        &format!("{OUTS}[[route]]\nname = \"orders\"\nmatch = {{ topic = \"orders.*\" }}\nto = \"a\""),
    )
    .await;
    let id = host.send(Message::new("billing.eu", "x")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.id, id);
    assert_eq!(letter.header("x-sy-dead-letter"), Some("no-route"));
    assert_eq!(letter.header("x-sy-dead-letter-reason"), Some("no route matches topic \"billing.eu\""));
    drain_and_account(&host).await;
}

#[tokio::test]
async fn fan_out_delivers_a_copy_to_each_destination_and_priority_is_set_by_route() {
    let dir = plugin_dir(&[]);
    let route = "[[route]]\nname = \"both\"\nfan_out = [\"a\", \"b\"]\npriority = 7";
    let host = host(dir.path(), &format!("{OUTS}{route}")).await;
    let id = host.send(Message::new("audit.login", "who")).await.unwrap();
    let (a, b) = (next(&host.memory("a").unwrap()).await, next(&host.memory("b").unwrap()).await);
    assert_eq!((a.id, b.id, a.priority, b.priority), (id, id, 7, 7));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.created, stats.delivered), (1, 1, 2));
}

#[tokio::test]
async fn header_predicates_pick_the_route() {
    let dir = plugin_dir(&[]);
    let routes = r#"
[[route]]
name = "gold"
match = { topic = "orders.>", headers = { tier = "gold" } }
to = "a"
[[route]]
name = "rest"
to = "b"
"#;
    let host = host(dir.path(), &format!("{OUTS}{routes}")).await;
    host.send(Message::new("orders.eu.paid", "").with_header("Tier", "gold")).await.unwrap();
    host.send(Message::new("orders.eu.paid", "").with_header("tier", "silver")).await.unwrap();
    assert_eq!(next(&host.memory("a").unwrap()).await.header("tier"), Some("gold"));
    assert_eq!(next(&host.memory("b").unwrap()).await.header("tier"), Some("silver"));
    drain_and_account(&host).await;
}

#[tokio::test]
async fn native_and_wasm_stages_run_in_route_order() {
    let dir = plugin_dir(&[("redact", artifacts::REDACT_TRANSFORM)]);
    let (out, delivered) = MemoryDestination::new();
    let host = builder(dir.path())
        .destination("out", out)
        .filter("has-body", |m: &Message| {
            Ok(if m.payload.is_empty() { Verdict::Drop } else { Verdict::Keep })
        })
        .transform("stamp", |m: &Message| Ok(vec![m.clone().with_header("x-stamped", "native")]))
        .route(
            RouteConfig::new("r", ">", "out")
                .stage("filter:has-body")
                .stage("transform:redact")
                .stage("transform:stamp"),
        )
        .build()
        .await
        .unwrap();
    host.send(Message::new("t", "")).await.unwrap();
    host.send(Message::new("t", r#"{"a":1}"#)).await.unwrap();
    let message = next(&delivered).await;
    assert_eq!(message.header("x-transformed-by"), Some("redact-transform"));
    assert_eq!(message.header("x-stamped"), Some("native"));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.filtered), (1, 1));
}

#[tokio::test]
async fn a_name_registered_twice_on_the_builder_fails_the_build_and_kinds_keep_their_own_names() {
    // The second registration used to replace the first without a word: an application that wired
    // two destinations under one name sent the first one's traffic to the second.
    let dir = plugin_dir(&[]);
    let keep = |_: &Message| Ok(Verdict::Keep);
    let same = |m: &Message| Ok(vec![m.clone()]);
    let attempts = [
        (
            "destination",
            builder(dir.path())
                .destination("x", MemoryDestination::new().0)
                .destination("x", MemoryDestination::new().0),
        ),
        ("filter", builder(dir.path()).filter("x", keep).filter("x", keep)),
        ("transform", builder(dir.path()).transform("x", same).transform("x", same)),
    ];
    for (kind, twice) in attempts {
        let Err(err) = twice.build().await else { panic!("{kind} registered twice was built") };
        assert_eq!(err.to_string(), format!("{kind} \"x\" is registered twice on the builder"));
    }
    let (out, delivered) = MemoryDestination::new();
    let host = builder(dir.path())
        .destination("x", out)
        .filter("x", keep)
        .transform("x", |m: &Message| Ok(vec![m.clone().with_header("x-by", "transform")]))
        .route(RouteConfig::new("r", ">", "x").stage("filter:x").stage("transform:x"))
        .build()
        .await
        .unwrap();
    host.send(Message::new("t", "")).await.unwrap();
    assert_eq!(next(&delivered).await.header("x-by"), Some("transform"));
    drain_and_account(&host).await;
}

#[tokio::test]
async fn what_a_native_transform_makes_is_held_to_the_limits_a_plugin_output_is() {
    // A transform written in Rust could send `..` into a file destination's `{topic}` path, or a
    // message larger than `host.max_message_bytes` on: its outputs went unchecked.
    let dir = plugin_dir(&[]);
    let (out, _delivered) = MemoryDestination::new();
    let host = builder(dir.path())
        .config(
            "test.toml",
            switchyard::Config::from_toml("test.toml", "[host]\nmax_message_bytes = 1024\n").unwrap(),
        )
        .destination("out", out)
        .transform("retopic", |m: &Message| Ok(vec![Message::new(String::from_utf8_lossy(&m.payload), "x")]))
        .transform("grow", |m: &Message| Ok(vec![m.clone().with_header("x-pad", "p".repeat(2000))]))
        .route(RouteConfig::new("retopic", "retopic", "out").stage("transform:retopic"))
        .route(RouteConfig::new("grow", "grow", "out").stage("transform:grow"))
        .build()
        .await
        .unwrap();
    let refused = |answer: Result<Option<Message>, RequestError>| match answer {
        Err(RequestError::DeadLettered(reason)) => reason.to_string(),
        other => panic!("not dead-lettered: {other:?}"),
    };
    assert_eq!(
        refused(within(host.request(Message::new("retopic", "a..b"))).await),
        "plugin \"retopic\" (native) returned a malformed answer: an output's topic \"a..b\" has an empty segment"
    );
    let grown = refused(within(host.request(Message::new("grow", "x"))).await);
    assert!(
        grown.starts_with("plugin \"grow\" (native) went past its output limit: a message of 20"),
        "{grown}"
    );
    assert!(within(host.request(Message::new("retopic", "a.b"))).await.is_ok(), "a good topic goes on");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 2));
}

#[tokio::test]
async fn request_returns_the_reply_or_says_why_there_is_none() {
    let dir = plugin_dir(&[]);
    let failing = |_m: Message| async { Err(DeliveryError::Fatal("endpoint refused".into())) };
    let host = builder(dir.path())
        .destination("upper", |m: Message| async move {
            Ok(Some(Message::new(m.topic.clone(), String::from_utf8_lossy(&m.payload).to_uppercase())))
        })
        .destination("refuses", failing)
        .filter("drop-all", |_: &Message| Ok(Verdict::Drop))
        .route(RouteConfig::new("upper", "upper", "upper"))
        .route(RouteConfig::new("dropped", "dropped", "upper").stage("filter:drop-all"))
        .route(RouteConfig::new("refused", "refused", "refuses"))
        .build()
        .await
        .unwrap();
    let reply = within(host.request(Message::new("upper", "shout"))).await.unwrap().unwrap();
    assert_eq!(reply.payload, "SHOUT");
    let dropped = within(host.request(Message::new("dropped", "x"))).await;
    assert_eq!(dropped, Err(RequestError::Filtered { route: "dropped".into() }));
    let Err(RequestError::DeadLettered(reason)) = within(host.request(Message::new("refused", "x"))).await
    else {
        panic!("expected a dead letter");
    };
    assert_eq!(reason.to_string(), "destination \"refuses\": delivery failed: endpoint refused");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.filtered, stats.dead_lettered), (1, 1, 1));
}

#[tokio::test]
async fn oversized_and_malformed_messages_are_refused_not_accepted() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("[host]\nmax_message_bytes = 10\n{}", &OUTS[8..])).await;
    // The topic counts: "t" and 10 bytes of payload.
    let too_big = host.send(Message::new("t", "x".repeat(10))).await;
    assert_eq!(too_big, Err(SendError::TooLarge { size: 11, limit: 10 }));
    for topic in ["a..b", "", "a.*", "has space"] {
        assert!(
            matches!(host.try_send(Message::new(topic, "")).await, Err(SendError::Malformed(_))),
            "{topic:?}"
        );
    }
    assert_eq!(drain_and_account(&host).await.accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_pushes_back_to_the_api_and_the_http_ingress_and_loses_nothing() {
    let dir = plugin_dir(&[]);
    let entered = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let (host, delivered) =
        gated_host(dir.path(), "[host]\nqueue_capacity = 1\nworkers = 1", &entered, &gate).await;
    host.try_send(Message::new("t", "1")).await.unwrap();
    within(entered.notified()).await;
    host.try_send(Message::new("t", "2")).await.unwrap();
    assert_eq!(host.try_send(Message::new("t", "3")).await, Err(SendError::Backpressure));
    let addr = crate::support::start_ingress(&host).await;
    let refused = tokio::task::spawn_blocking(move || http_raw(addr, "POST", "/v1/messages/t", &[], b"4"));
    let refused = refused.await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    gate.add_permits(2);
    let payloads = [next(&delivered).await.payload, next(&delivered).await.payload];
    assert_eq!(payloads, ["1", "2"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_room_and_no_longer_polled_does_not_hold_up_shutdown() {
    // A send waiting for room held a clone of the intake's sender in its state, and the workers
    // stop only once every sender is gone: kept unpolled across a shutdown (a select loop), it
    // held the shutdown past its grace period for good.
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let text = "[host]\nqueue_capacity = 1\nworkers = 1\nshutdown_grace_ms = 100";
    let (host, delivered) = gated_host(dir.path(), text, &entered, &gate).await;
    host.try_send(Message::new("t", "1")).await.unwrap();
    within(entered.notified()).await;
    host.try_send(Message::new("t", "2")).await.unwrap();
    assert_eq!(host.try_send(Message::new("t", "3")).await, Err(SendError::Backpressure));
    let mut waiting = Box::pin(host.send(Message::new("t", "3")));
    assert!(futures_util::poll!(&mut waiting).is_pending());
    gate.add_permits(3);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), host.shutdown()).await;
    assert!(ended.is_ok(), "the shutdown waited for a send nobody polls");
    assert_eq!(within(waiting).await, Err(SendError::ShuttingDown), "refused, not accepted");
    let payloads: Vec<_> = delivered.drain().map(|m| m.payload).collect();
    assert_eq!(payloads, ["1", "2"]);
    let stats = host.stats();
    assert_eq!((stats.accepted, stats.delivered, stats.in_flight()), (2, 2, 0), "{stats:?}");
}

/// A host configured by `config` routing everything to a [`gated`] destination.
pub(crate) async fn gated_host(
    dir: &std::path::Path,
    config: &str,
    entered: &Arc<Notify>,
    gate: &Arc<Semaphore>,
) -> (Host, flume::Receiver<Message>) {
    let (blocking, delivered) = gated(entered, gate);
    let host = builder(dir)
        .config("t", switchyard::Config::from_toml("t", config).unwrap())
        .destination("slow", blocking)
        .route(RouteConfig::new("all", ">", "slow"))
        .build()
        .await
        .unwrap();
    (host, delivered)
}

/// A destination that says when a message `entered` it, then waits for a
/// permit of `gate` before it delivers to the returned receiver.
pub(crate) fn gated(
    entered: &Arc<Notify>,
    gate: &Arc<Semaphore>,
) -> (impl switchyard::Destination, flume::Receiver<Message>) {
    let (sink, delivered) = MemoryDestination::new();
    let (entered, gate) = (entered.clone(), gate.clone());
    let destination = move |m: Message| {
        let (entered, gate, sink) = (entered.clone(), gate.clone(), sink.clone());
        async move {
            entered.notify_one();
            gate.acquire().await.expect("gate open").forget();
            switchyard::Destination::deliver(&sink, m).await
        }
    };
    (destination, delivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_is_bounded_in_bytes_too() {
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let text = "[host]\nqueue_capacity = 1000\nqueue_bytes = 1048576\nworkers = 1\nbatch_size = 1";
    let (host, delivered) = gated_host(dir.path(), text, &entered, &gate).await;
    host.try_send(Message::new("t", "first")).await.unwrap();
    within(entered.notified()).await;
    let big = || Message::new("t", vec![b'x'; 600 << 10]);
    host.try_send(big()).await.unwrap();
    assert_eq!(
        host.try_send(big()).await,
        Err(SendError::Backpressure),
        "600 KiB more would pass 1 MiB queued"
    );
    let waiting = {
        let host = host.clone();
        tokio::spawn(async move { host.send(big()).await })
    };
    gate.add_permits(3);
    within(waiting).await.unwrap().unwrap();
    for _ in 0..3 {
        next(&delivered).await;
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_max_message_bytes_fits_an_intake_of_that_size() {
    // A message held its size rounded down plus one KiB, out of a budget of queue_bytes rounded
    // down: one of max_message_bytes never fitted an intake of that size (`send` waited for good,
    // the ingress answered 503 for ever), and with queue_bytes under 1 KiB nothing fitted.
    let dir = plugin_dir(&[]);
    for (limit, payload) in [(2048, 2045), (1000, 997)] {
        let config = format!(
            "[host]\nmax_message_bytes = {limit}\nqueue_bytes = {limit}\n[[destination]]\nname = \"out\"\n\
             transport = \"memory\"\n[[route]]\nname = \"all\"\nto = \"out\"\n"
        );
        let host = host(dir.path(), &config).await;
        let largest = Message::new("t.x", vec![b'x'; payload]);
        within(host.send(largest)).await.expect("a message of max_message_bytes is accepted");
        assert_eq!(next(&host.memory("out").unwrap()).await.payload.len(), payload);
        let stats = drain_and_account(&host).await;
        assert_eq!((stats.accepted, stats.delivered), (1, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_destination_nobody_reads_fills_then_holds_senders_back_and_loses_nothing() {
    let dir = plugin_dir(&[]);
    let config = "[host]\nqueue_capacity = 1\nworkers = 1\nbatch_size = 1\ndead_letter = \"log\"\n\
                  [[destination]]\nname = \"out\"\ntransport = \"memory\"\nqueue = { capacity = 2 }\n\
                  [[route]]\nname = \"all\"\nto = \"out\"\n";
    let host = host(dir.path(), config).await;
    let out = host.memory("out").unwrap();
    assert_eq!(out.capacity(), Some(2));
    // Two fill `out`, the worker holds a third, the intake a fourth: the
    // fifth waits until the reader reads.
    let sender = {
        let host = host.clone();
        tokio::spawn(async move {
            for n in 0..5 {
                host.send(Message::new("m", format!("{n}"))).await.unwrap();
            }
        })
    };
    crate::support::eventually(|| match (out.len(), host.stats().accepted) {
        (2, 4) => Ok(()),
        seen => Err(seen),
    });
    assert_eq!(host.try_send(Message::new("m", "more")).await, Err(SendError::Backpressure));
    for n in 0..5 {
        assert_eq!(next(&out).await.payload, format!("{n}"), "in order, none lost");
    }
    within(sender).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_answer_is_retried_at_most_three_calls_then_dead_lettered() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = plugin_dir(&[]);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (out, delivered) = MemoryDestination::new();
    let (dead, letters) = MemoryDestination::new();
    let mut config = switchyard::Config::default();
    config.host.dead_letter = "dead".into();
    let host = builder(dir.path())
        .config("t.toml", config)
        .destination("out", out)
        .destination("dead", dead)
        // Fails twice for a message whose payload is "flaky", always for "down".
        .filter("lookup", move |m: &Message| {
            let call = counted.fetch_add(1, Ordering::SeqCst);
            match (&m.payload[..], call) {
                (b"flaky", 0 | 1) | (b"down", _) => Err(PluginError::Retryable("lookup unavailable".into())),
                _ => Ok(Verdict::Keep),
            }
        })
        .route(RouteConfig::new("all", ">", "out").stage("filter:lookup"))
        .build()
        .await
        .unwrap();
    host.send(Message::new("a", "flaky")).await.unwrap();
    assert_eq!(next(&delivered).await.payload, "flaky", "the third call kept it");
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3);
    host.send(Message::new("b", "down")).await.unwrap();
    let letter = next(&letters).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("plugin-retryable"));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "three calls in all, then it gave up");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));
}

#[tokio::test]
async fn headers_count_toward_the_size_limit_and_their_number_is_capped() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("[host]\nmax_message_bytes = 10\n{}", &OUTS[8..])).await;
    // Topic "t", payload and header "pad": "ding".
    let padded = Message::new("t", "x".repeat(5)).with_header("pad", "ding");
    assert_eq!(host.send(padded).await, Err(SendError::TooLarge { size: 13, limit: 10 }));
    let fits = Message::new("t", "x".repeat(2)).with_header("pad", "ding");
    host.send(fits).await.unwrap();
    let mut crowded = Message::new("t", "");
    crowded.headers = (0..1025).map(|_| (String::new(), String::new())).collect();
    assert_eq!(host.send(crowded).await, Err(SendError::Malformed("1025 headers; at most 1024".into())));
    assert_eq!(drain_and_account(&host).await.accepted, 1);
}

#[tokio::test]
async fn the_header_limit_counts_the_senders_headers_not_the_hosts_id() {
    // A message sent with its own `x-sy-id` and 1024 headers besides was refused as "1025
    // headers": the limit counted the id, which is the host's header whoever set its value.
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{OUTS}[[route]]\nname = \"all\"\nto = \"a\"\n")).await;
    let headers = |count: usize| (0..count).map(|n| (format!("h{n}"), String::new())).collect::<Vec<_>>();
    let mut crowded = Message::new("t", "").with_header("x-sy-id", "mine");
    crowded.headers.extend(headers(1024));
    host.send(crowded).await.unwrap();
    let delivered = next(&host.memory("a").unwrap()).await;
    assert_eq!((delivered.headers.len(), delivered.unique_id()), (1025, Some("mine")));
    let mut over = Message::new("t", "").with_header("x-sy-id", "mine");
    over.headers.extend(headers(1025));
    assert_eq!(host.send(over).await, Err(SendError::Malformed("1025 headers; at most 1024".into())));
    assert_eq!(drain_and_account(&host).await.accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_max_message_bytes_is_admitted_with_the_hosts_id_and_one_byte_more_is_refused() {
    // The HTTP ingress gives a message its id before admission, whose size counted the id's 43
    // bytes: a client's message of max_message_bytes was refused 413.
    let dir = plugin_dir(&[]);
    let text = format!("{OUTS}[[route]]\nname = \"all\"\nto = \"a\"\n").replacen(
        "[host]\n",
        "[host]\nmax_message_bytes = 100\n",
        1,
    );
    let host = host(dir.path(), &text).await;
    let addr = crate::support::start_ingress(&host).await;
    // 100 bytes: the topic "t", the client's header `x-tenant: acme` (12) and 87 of payload.
    let post = |payload: usize| {
        let body = vec![b'p'; payload];
        let headers = [("x-tenant", "acme")];
        tokio::task::spawn_blocking(move || crate::support::post(addr, "/v1/messages/t", &headers, &body))
    };
    let (status, body) = post(87).await.unwrap();
    assert_eq!(status, 202, "a message of max_message_bytes is accepted: {body}");
    let (status, body) = post(88).await.unwrap();
    assert_eq!(status, 413, "one byte more is refused: {body}");
    // Through `Host::send`, with the embedder's own id.
    let message = |payload: usize| {
        Message::new("t", vec![b'p'; payload]).with_header("x-tenant", "acme").with_header("x-sy-id", "mine")
    };
    within(host.send(message(87))).await.expect("a message of max_message_bytes is accepted");
    assert_eq!(within(host.send(message(88))).await, Err(SendError::TooLarge { size: 101, limit: 100 }));
    let out = host.memory("a").unwrap();
    assert_eq!([next(&out).await.payload.len(), next(&out).await.payload.len()], [87, 87]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test]
async fn a_message_of_the_most_headers_passes_a_transform_that_sends_it_on_unchanged() {
    // Admission took 1024 headers and added the host's id; the check of what a transform makes
    // counted the id too, so a transform sending such a message on was refused (output limit).
    let dir = plugin_dir(&[]);
    let host = builder(dir.path())
        .config("t", switchyard::Config::from_toml("t", OUTS).unwrap())
        .transform("same", |m: &Message| Ok(vec![m.clone()]))
        .route(RouteConfig::new("all", "t", "a").stage("transform:same"))
        .build()
        .await
        .unwrap();
    let mut crowded = Message::new("t", "");
    crowded.headers = (0..1024).map(|n| (format!("h{n}"), String::new())).collect();
    host.send(crowded).await.unwrap();
    assert_eq!(next(&host.memory("a").unwrap()).await.headers.len(), 1025, "with the host's id");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test]
async fn a_message_admitted_at_the_size_limit_passes_stages_that_send_it_on_unchanged() {
    // Admission checks a message's size, then adds the host's 43-byte id header; a stage's
    // budget (here host.max_message_bytes, queue_bytes / batch_size being less) charged that
    // header too, so a message within 43 bytes of the limit was an output-limit fault at any
    // transform or middleware that kept its headers, and dead-lettered.
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD), ("pass", artifacts::FAULTY_MIDDLEWARE)]);
    let config = OUTS.replacen("[host]\n", "[host]\nmax_message_bytes = 2048\nqueue_bytes = 2048\n", 1)
        + "[[plugin]]\nname = \"flood\"\nconfig = { trigger = \"x-never\" }\n";
    let host = builder(dir.path())
        .config("t", switchyard::Config::from_toml("t", &config).unwrap())
        .transform("same", |m: &Message| Ok(vec![m.clone()]))
        .route(RouteConfig::new("native", "native", "a").stage("transform:same"))
        .route(RouteConfig::new("wasm", "wasm", "a").stage("transform:flood"))
        .route(RouteConfig::new("middleware", "middleware", "a").stage("middleware:pass"))
        .build()
        .await
        .unwrap();
    let (out, dead) = (host.memory("a").unwrap(), host.memory("dead").unwrap());
    for topic in ["native", "wasm", "middleware"] {
        // Topic and payload: 2048 bytes.
        let id = host.send(Message::new(topic, "x".repeat(2048 - topic.len()))).await.unwrap();
        let landed = within(async {
            tokio::select! {
                delivered = out.recv_async() => Ok(delivered.unwrap()),
                letter = dead.recv_async() => Err(letter.unwrap()),
            }
        })
        .await;
        let delivered = landed.unwrap_or_else(|letter| {
            panic!("{topic}: dead-lettered: {:?}", letter.header("x-sy-dead-letter-reason"))
        });
        assert_eq!(delivered.id, id, "{topic}");
        assert!(delivered.unique_id().is_some(), "{topic}: with the host's id");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_destination_that_fills_in_the_middle_of_a_batch_gets_the_rest_in_order_once_read() {
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (held, held_out) = gated(&entered, &gate);
    let config = "[host]\nworkers = 1\nbatch_size = 64\ndead_letter = \"log\"\n\
                  [[destination]]\nname = \"out\"\ntransport = \"memory\"\nqueue = { capacity = 4 }\n";
    let host = builder(dir.path())
        .config("t", switchyard::Config::from_toml("t", config).unwrap())
        .destination("held", held)
        .route(RouteConfig::new("hold", "hold", "held"))
        .route(RouteConfig::new("all", "m", "out"))
        .build()
        .await
        .unwrap();
    let out = host.memory("out").unwrap();
    // The only worker waits in the held destination while 30 messages queue up: it then takes
    // them in one batch, of which `out` has room for 4.
    host.send(Message::new("hold", "hold")).await.unwrap();
    within(entered.notified()).await;
    for n in 0..30 {
        host.send(Message::new("m", format!("{n}"))).await.unwrap();
    }
    gate.add_permits(1);
    crate::support::eventually(|| match out.len() {
        4 => Ok(()),
        seen => Err(seen),
    });
    for n in 0..30 {
        assert_eq!(next(&out).await.payload, format!("{n}"), "in order, none lost");
    }
    assert_eq!(next(&held_out).await.payload, "hold");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (31, 31));
}
