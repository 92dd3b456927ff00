//! The destination core against real HTTP endpoints on 127.0.0.1 that the
//! tests make hold, fail, reset or die: priority queues, queue timeouts,
//! backpressure up to the HTTP ingress, health checks and endpoint events,
//! and a delivery oracle under trouble.

use crate::endpoint::{Mode, TestEndpoint};
use crate::exposition::{parse, sample};
use crate::support::{
    builder, drain_and_account, event_where, eventually, host, next, plugin_dir, post, within,
};
use futures_util::future::{BoxFuture, FutureExt};
use std::collections::{HashMap, HashSet};
use switchyard::{DestinationEvent, Host, HostEvent, Message};
use tokio::sync::broadcast::Receiver;

/// A config with one `http` destination `api` over `endpoints`, dead letters
/// to memory destination `dead`, and `extra` lines inside the destination.
fn config(endpoints: &[&TestEndpoint], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|endpoint| format!("\"{}\"", endpoint.addr)).collect();
    format!(
        r#"
[host]
dead_letter = "dead"
workers = 1
[[destination]]
name = "dead"
transport = "memory"
[[destination]]
name = "api"
transport = "http"
endpoints = [{}]
{extra}
[[route]]
name = "all"
to = "api"
"#,
        endpoints.join(", ")
    )
}

/// Wait until destination `name` of `host` has `n` messages queued.
pub(crate) async fn queued(host: &Host, name: &str, n: usize) {
    within(async {
        loop {
            let depth = host.destinations().into_iter().find(|d| d.name == name).and_then(|d| d.queued);
            if depth == Some(n) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// A host with a 200 ms shutdown grace whose destination `api` (with `queue` settings) has sent
/// one message to an endpoint that holds it for good (an attempt would wait ten minutes) and
/// queued another behind it.
async fn one_held_and_one_queued(queue: &str) -> (TestEndpoint, tempfile::TempDir, Host) {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let extra = format!("timeout_ms = 600000\n{queue}");
    let text = config(&[&endpoint], &extra).replacen("[host]", "[host]\nshutdown_grace_ms = 200", 1);
    let host = host(dir.path(), &text).await;
    host.send(Message::new("orders", "in flight")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    host.send(Message::new("orders", "queued")).await.unwrap();
    queued(&host, "api", 1).await;
    (endpoint, dir, host)
}

/// The next event of `events` named `name`.
async fn next_event(events: &mut Receiver<HostEvent>, name: &str) -> HostEvent {
    within(async {
        loop {
            let event = events.recv().await.expect("the host is up");
            if event.name() == name {
                return event;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_destination_sends_the_most_urgent_class_first_then_the_oldest() {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&endpoint], "queue = { max_in_flight = 1 }")).await;
    // The first message takes the only delivery slot and is held there.
    host.send(Message::new("orders", "first")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    let waiting = [(0, "low-1"), (5, "mid-1"), (0, "low-2"), (9, "high-1"), (5, "mid-2")];
    for (priority, body) in waiting {
        host.send(Message::new("orders", body).with_priority(priority)).await.unwrap();
    }
    queued(&host, "api", waiting.len()).await;
    let text = host.metrics().encode();
    let api = [("destination", "api")];
    assert_eq!(sample(&text, "switchyard_destination_queued", &api), Some(5.0));
    let address = endpoint.addr.to_string();
    let at_endpoint = [("destination", "api"), ("endpoint", address.as_str())];
    assert_eq!(sample(&text, "switchyard_endpoint_in_flight", &at_endpoint), Some(1.0));
    assert_eq!(sample(&text, "switchyard_endpoint_serving", &at_endpoint), Some(1.0));
    let open = [("destination", "api"), ("endpoint", address.as_str()), ("state", "open")];
    assert_eq!(sample(&text, "switchyard_endpoint_pool_connections", &open), Some(1.0));
    endpoint.set(Mode::Answer);
    endpoint.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, 6);
    let order: Vec<String> = endpoint.seen().into_iter().map(|seen| seen.body).collect();
    assert_eq!(order, ["first", "high-1", "mid-1", "mid-2", "low-1", "low-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_queue_that_fills_in_the_middle_of_a_batch_gets_the_rest_in_order_as_it_drains() {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    // A route with a stage goes through the worker, which hands a batch's messages to the
    // destination's queue back to back while it has room, then waits for room for the rest.
    let text = config(&[&endpoint], "timeout_ms = 600000\nqueue = { capacity = 2, max_in_flight = 1 }")
        .replace("workers = 1", "workers = 1\nbatch_size = 64")
        .replace("to = \"api\"", "to = \"api\"\nstages = [\"filter:gate\"]");
    let (open, gate) = flume::unbounded::<()>();
    let host = builder(dir.path())
        .config("t", switchyard::Config::from_toml("t", &text).unwrap())
        .filter("gate", move |_: &Message| {
            let _ = gate.recv();
            Ok(switchyard::Verdict::Keep)
        })
        .build()
        .await
        .unwrap();
    // The only worker waits in the gate with the first message (or the first few) while the rest
    // queue up behind it; once the gate opens it takes them in batches of up to 64, far more than
    // the queue's room for 2 beside the one delivery in flight.
    host.send(Message::new("orders", "0")).await.unwrap();
    for n in 1..30 {
        host.send(Message::new("orders", format!("{n}"))).await.unwrap();
    }
    drop(open);
    within(endpoint.arrivals(1)).await;
    queued(&host, "api", 2).await;
    endpoint.set(Mode::Answer);
    endpoint.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (30, 30));
    let order: Vec<String> = endpoint.seen().into_iter().map(|seen| seen.body).collect();
    let sent: Vec<String> = (0..30).map(|n| n.to_string()).collect();
    assert_eq!(order, sent, "in order, none lost, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_wait_past_the_queue_timeout_are_dead_lettered_unsent() {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    // Long enough for the first message, which finds the queue idle, even
    // on a loaded machine.
    let extra = "queue = { max_in_flight = 1, timeout_ms = 1000 }";
    let host = host(dir.path(), &config(&[&endpoint], extra)).await;
    host.send(Message::new("orders", "first")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    for n in 0..3 {
        host.send(Message::new("orders", format!("late {n}"))).await.unwrap();
    }
    queued(&host, "api", 3).await;
    // Time passes past the timeout (measured from the enqueue); nothing
    // waits on this sleep to happen first.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    endpoint.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 3));
    let dead = host.memory("dead").unwrap();
    let letters: Vec<Message> = dead.drain().collect();
    assert_eq!(letters.len(), 3);
    for letter in letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"));
        assert!(letter.header("x-sy-dead-letter-reason").unwrap().contains("in the queue"), "{letter:?}");
    }
    assert_eq!(endpoint.seen().len(), 1, "timed-out messages are never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_dead_letters_what_outlasts_its_grace_period_instead_of_waiting_on_it() {
    let (endpoint, _dir, host) = one_held_and_one_queued("queue = { max_in_flight = 1 }").await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 2));
    let letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    let mut payloads: Vec<&[u8]> = letters.iter().map(|letter| &letter.payload[..]).collect();
    payloads.sort();
    assert_eq!(payloads, [&b"in flight"[..], b"queued"]);
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("shutdown"), "{letter:?}");
        // The one sent says it may have been delivered; the one never sent says it was not.
        let reason = letter.header("x-sy-dead-letter-reason").unwrap();
        let sent = &letter.payload[..] == b"in flight";
        assert_eq!(reason.contains("it may have been delivered"), sent, "{reason}");
        assert_eq!(reason.contains("before it was delivered"), !sent, "{reason}");
    }
    assert_eq!(endpoint.arrived(), 1, "the queued message was never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_says_a_message_whose_every_try_was_refused_was_never_delivered() {
    // Taken from the queue, tried once (the connection refused), then waiting for the endpoint:
    // nothing left, so its dead letter must not say it may have been delivered.
    let live = TestEndpoint::start(Mode::Answer).await;
    let (_, refused) = live_and_refused(&live, "queue = { timeout_ms = 600000 }");
    let refused = refused.replacen("[host]", "[host]\nshutdown_grace_ms = 200", 1);
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &refused).await;
    for n in 0..2 {
        host.send(Message::new("orders", format!("refused {n}"))).await.unwrap();
    }
    let refusals = || {
        let text = host.metrics().encode();
        sample(
            &text,
            "switchyard_endpoint_attempts_total",
            &[("destination", "api"), ("outcome", "retryable")],
        )
    };
    crate::support::eventually(|| match refusals() {
        Some(tries) if tries >= 1.0 => Ok(()),
        tries => Err(tries),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 2));
    for letter in host.memory("dead").unwrap().drain() {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("shutdown"), "{letter:?}");
        let reason = letter.header("x-sy-dead-letter-reason").unwrap();
        assert!(reason.contains("before it was delivered"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_hands_its_dead_letters_to_a_network_dead_letter_destination_that_answers() {
    // Made at the grace period's end, they went straight to the dead-letter file.
    let (held, letters) = (TestEndpoint::start(Mode::Hold).await, TestEndpoint::start(Mode::Answer).await);
    let dlq = format!(
        "[[destination]]\nname = \"dlq\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n",
        letters.addr
    );
    let text = config(&[&held], "").replacen(
        "dead_letter = \"dead\"",
        "dead_letter = \"dlq\"\nshutdown_grace_ms = 200",
        1,
    ) + &dlq;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &text).await;
    host.send(Message::new("orders", "held")).await.unwrap();
    within(held.arrivals(1)).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
    assert_eq!(letters.arrived(), 1, "at the dead-letter destination");
    assert_eq!(host.dead_letters(1).unwrap().count, 0, "not in the dead-letter file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_refuses_a_send_waiting_for_room_in_a_full_destination_queue() {
    // The third message waits for room that only the queued one's 30 s queue timeout would make;
    // it was never accepted, so the shutdown refuses it rather than dead-letter it.
    let (endpoint, _dir, host) = one_held_and_one_queued("queue = { max_in_flight = 1, capacity = 1 }").await;
    let mut waiting = {
        let host = host.clone();
        Box::pin(async move { host.send(Message::new("orders", "waiting")).await })
    };
    assert!(futures_util::poll!(&mut waiting).is_pending());
    let waiting = tokio::spawn(waiting);
    within(host.shutdown()).await;
    assert_eq!(within(waiting).await.unwrap(), Err(switchyard::SendError::ShuttingDown));
    let stats = host.stats();
    assert_eq!(
        (stats.accepted, stats.delivered, stats.dead_lettered, stats.dead_letter_failures),
        (2, 0, 2, 0)
    );
    let letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    let mut payloads: Vec<&[u8]> = letters.iter().map(|letter| &letter.payload[..]).collect();
    payloads.sort();
    assert_eq!(payloads, [&b"in flight"[..], b"queued"]);
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("shutdown"), "not the queue timeout: {letter:?}");
    }
    assert_eq!(endpoint.arrived(), 1, "only the first was ever sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_dropped_while_waiting_for_room_in_a_destination_queue_is_not_counted_by_its_route() {
    // A route without stages to a network destination counted a message before it waited for room
    // in the destination's queue: one dropped there was counted accepted and never settled.
    let (_endpoint, _dir, host) =
        one_held_and_one_queued("queue = { max_in_flight = 1, capacity = 1 }").await;
    let gave_up =
        tokio::time::timeout(std::time::Duration::ZERO, host.send(Message::new("orders", "dropped"))).await;
    assert!(gave_up.is_err(), "the queue is full: the send waits");
    let accepted = sample(&host.metrics().encode(), "switchyard_route_accepted_total", &[("route", "all")]);
    assert_eq!(accepted, Some(2.0), "one in flight, one queued");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.dead_lettered), (2, 2));
    let text = host.metrics().encode();
    let outcomes = ["delivered", "filtered", "responded", "dead_lettered", "handed_back", "lost"];
    let settled = outcomes.iter().filter_map(|outcome| {
        sample(&text, "switchyard_route_messages_total", &[("route", "all"), ("outcome", outcome)])
    });
    let accepted = sample(&text, "switchyard_route_accepted_total", &[("route", "all")]);
    assert_eq!(accepted, Some(settled.sum::<f64>()), "the route settled all it counted: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_room_in_a_destination_rebuilt_then_removed_goes_where_its_route_now_leads() {
    // A send waiting for room in its route's destination kept the topology it found the route in.
    // A reload that rebuilt the destination handed its queue over to the new instance's, and one
    // that removed it closed that one: the send found the queue full (closed), and room in it at
    // once, round and round without yielding its thread. The send runs on a thread and a runtime
    // of its own, so that such a spin fails the test rather than taking a thread of the host's.
    let queue = "queue = { max_in_flight = 1, capacity = 1 }";
    let (endpoint, _dir, host) = one_held_and_one_queued(queue).await;
    let graced = |text: String| text.replacen("[host]", "[host]\nshutdown_grace_ms = 200", 1);
    let ((tell_waiting, waiting), (tell_sent, sent)) =
        (tokio::sync::oneshot::channel(), tokio::sync::oneshot::channel());
    let sender = host.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut send = Box::pin(sender.send(Message::new("orders", "waiting")));
            let _ = tell_waiting.send(futures_util::poll!(&mut send).is_pending());
            let _ = tell_sent.send(send.await);
        });
    });
    assert!(within(waiting).await.unwrap(), "the queue is full: the send waits");
    // `in flight` stays under way on the old instance, holding the one delivery slot: `queued`
    // fills the new instance's queue.
    apply(&host, &graced(config(&[&endpoint], &format!("timeout_ms = 599999\n{queue}")))).await;
    queued(&host, "api", 1).await;
    apply(&host, &graced(without_api("all"))).await;
    let sent = tokio::time::timeout(std::time::Duration::from_secs(10), sent).await;
    assert!(matches!(sent, Ok(Ok(Ok(_)))), "the send did not end: {sent:?}");
    let arrived = next(&host.memory("dead").unwrap()).await;
    assert_eq!(arrived.payload, "waiting");
    assert_eq!(arrived.header("x-sy-dead-letter"), None, "delivered, not dead-lettered: {arrived:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (3, 1, 2), "{stats:?}");
    assert_eq!(endpoint.arrived(), 1, "only `in flight` was ever sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_waiting_for_room_in_a_removed_destination_and_no_longer_polled_does_not_hold_up_shutdown() {
    // A send waiting for room in its route's destination kept the topology it found the route in,
    // and that topology the destination's queue: a reload that removed the destination left the
    // queue open and its dispatcher running, and a shutdown, which closes the queues of the
    // topology it runs, waited for that dispatcher for as long as the send was kept unpolled.
    let live = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[]);
    let (_, refused) =
        live_and_refused(&live, "queue = { max_in_flight = 1, capacity = 1, timeout_ms = 600000 }");
    let host = host(dir.path(), &refused).await;
    // `old 0` waits for the endpoint in the one delivery slot, `old 1` fills the queue.
    for n in 0..2 {
        host.send(Message::new("orders", format!("old {n}"))).await.unwrap();
    }
    queued(&host, "api", 1).await;
    let mut waiting = Box::pin(host.send(Message::new("orders", "waiting")));
    assert!(futures_util::poll!(&mut waiting).is_pending(), "the queue is full: the send waits");
    apply(&host, &without_api("all")).await;
    // Well before any queue timeout: `next` gives up after a minute.
    let reasons = dead_letter_reasons(&host, 2).await;
    let expected = [("old 0", "destination-removed"), ("old 1", "destination-removed")];
    assert_eq!(reasons, expected.map(|(body, reason)| (body.to_owned(), reason.to_owned())).into());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), host.shutdown()).await;
    assert!(ended.is_ok(), "the shutdown waited for a send nobody polls");
    assert_eq!(within(waiting).await, Err(switchyard::SendError::ShuttingDown), "refused, not accepted");
    let stats = host.stats();
    assert_eq!((stats.accepted, stats.dead_lettered, stats.in_flight()), (2, 2, 0), "{stats:?}");
    assert_eq!(live.arrived(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_dead_letters_what_an_in_place_destination_holds_past_its_grace_period() {
    // A memory destination nobody reads (full at two) and a destination in
    // code that never answers hold the only worker; the shutdown still ends
    // at its grace period, and what they held is dead-lettered `shutdown`.
    let text = "[host]\nworkers = 1\nshutdown_grace_ms = 200\ndead_letter = \"dead\"\n\
                [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
                [[destination]]\nname = \"out\"\ntransport = \"memory\"\nqueue = { capacity = 2 }\n\
                [[route]]\nname = \"full\"\nmatch = { topic = \"full.*\" }\nto = \"out\"\n";
    let dir = plugin_dir(&[]);
    let never =
        |_message: Message| std::future::pending::<Result<Option<Message>, switchyard::DeliveryError>>();
    let host = builder(dir.path())
        .config("test.toml", switchyard::Config::from_toml("test.toml", text).unwrap())
        .destination("stuck", never)
        .route(switchyard::RouteConfig::new("stuck", "stuck.*", "stuck"))
        .build()
        .await
        .unwrap();
    for n in 0..3 {
        host.send(Message::new("full.x", format!("full {n}"))).await.unwrap();
    }
    // The third waits for room in `out`, holding the worker.
    let route = [("route", "full")];
    crate::support::eventually(|| {
        match sample(&host.metrics().encode(), "switchyard_route_accepted_total", &route) {
            Some(3.0) => Ok(()),
            seen => Err(seen),
        }
    });
    host.send(Message::new("stuck.x", "stuck")).await.unwrap();
    within(host.shutdown()).await;
    let stats = host.stats();
    assert_eq!(
        (stats.accepted, stats.delivered, stats.dead_lettered, stats.dead_letter_failures),
        (4, 2, 2, 0),
        "{stats:?}"
    );
    let out: Vec<Message> = host.memory("out").unwrap().drain().collect();
    assert_eq!(out.iter().map(|m| &m.payload[..]).collect::<Vec<_>>(), [&b"full 0"[..], b"full 1"]);
    let letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    let mut payloads: Vec<&[u8]> = letters.iter().map(|letter| &letter.payload[..]).collect();
    payloads.sort();
    assert_eq!(payloads, [&b"full 2"[..], b"stuck"]);
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("shutdown"), "{letter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_destination_queue_pushes_back_to_the_http_ingress() {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let mut config = config(&[&endpoint], "queue = { max_in_flight = 1, capacity = 2 }");
    config = config.replace("workers = 1", "workers = 1\nqueue_capacity = 1\nbatch_size = 1");
    let host = host(dir.path(), &config).await;
    let ingress = switchyard::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ingress.serve(async move { drop(stopped.await) }));
    let post_one = move || tokio::task::spawn_blocking(move || post(addr, "/v1/messages/orders", &[], b"m"));
    // One held at the endpoint, then two filling the destination's queue.
    assert_eq!(post_one().await.unwrap().0, 202);
    within(endpoint.arrivals(1)).await;
    for _ in 0..2 {
        assert_eq!(post_one().await.unwrap().0, 202);
    }
    queued(&host, "api", 2).await;
    // Room is left for one message in the worker (waiting for queue room)
    // and one in the admission queue: then the ingress refuses.
    let mut accepted = 3;
    let refusal = within(async {
        loop {
            match post_one().await.unwrap() {
                (202, _) => accepted += 1,
                refusal => return refusal,
            }
        }
    })
    .await;
    assert_eq!(refusal.0, 503, "{refusal:?}");
    assert!(accepted <= 5, "accepted {accepted} with room for 5");
    endpoint.set(Mode::Answer);
    endpoint.release(1);
    drop(stop);
    serving.await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (accepted, accepted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_an_endpoint_out_and_bring_it_back_with_events() {
    let (flaky, steady) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra =
        "balancer = \"round-robin\"\nhealth = { path = \"/health\", interval_ms = 10, rise = 2, fall = 2 }";
    let host = host(dir.path(), &config(&[&flaky, &steady], extra)).await;
    // One message each: both endpoints keep an idle pooled connection.
    for n in 0..2 {
        within(host.request(Message::new("orders", format!("warm-up {n}")))).await.unwrap();
    }
    assert_eq!(pool_size(&host, 0), 1);
    let mut events = host.subscribe();
    flaky.set(Mode::Fail);
    let HostEvent::Destination(DestinationEvent::EndpointDown { destination, endpoint, reason }) =
        next_event(&mut events, "endpoint-down").await
    else {
        unreachable!()
    };
    assert_eq!((destination.as_str(), endpoint), ("api", flaky.addr.to_string()));
    assert!(reason.contains("health check failed: GET /health: HTTP 503"), "{reason}");
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    let health: Vec<&str> = api.endpoints.iter().map(|endpoint| endpoint.health).collect();
    assert_eq!(health, ["down", "up"]);
    assert_eq!(pool_size(&host, 0), 0, "an endpoint that went down has its idle connections closed");
    // Down: no traffic, though the endpoint would answer now.
    flaky.set(Mode::Answer);
    let sent_while_down = 20;
    for n in 0..sent_while_down {
        host.send(Message::new("orders", format!("m{n}"))).await.unwrap();
    }
    let HostEvent::Destination(DestinationEvent::EndpointUp { endpoint, .. }) =
        next_event(&mut events, "endpoint-up").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, flaky.addr.to_string());
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, sent_while_down + 2);
    assert_eq!(steady.seen().len() + flaky.seen().len(), sent_while_down as usize + 2);
}

/// The events `events` has received by now, of those named `names`.
fn received(events: &mut Receiver<HostEvent>, names: &[&str]) -> Vec<HostEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).filter(|event| names.contains(&event.name())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_told_down_is_told_up_after_config_applied_by_a_reload_to_another_transport() {
    // A reload that changes a destination's transport starts its endpoints afresh, up, and sends
    // them traffic; one told down before used to stay down for whoever follows the events. Then
    // the new instance told it up as the reload built it, before the reload told `config-applied`:
    // of a config not applied yet.
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[]);
    let health = "health = { path = \"/health\", interval_ms = 10, rise = 2, fall = 2 }";
    let host = host(dir.path(), &config(&[&endpoint], health)).await;
    let mut events = host.subscribe();
    endpoint.set(Mode::Fail);
    next_event(&mut events, "endpoint-down").await;
    apply(&host, &config(&[&endpoint], "").replace("transport = \"http\"", "transport = \"tcp\"")).await;
    // Both are told by the time the change returns.
    let told = received(&mut events, &["config-applied", "endpoint-up"]);
    let [
        HostEvent::ConfigApplied { .. },
        HostEvent::Destination(DestinationEvent::EndpointUp { destination, endpoint: up }),
    ] = &told[..]
    else {
        panic!("{told:?}")
    };
    assert_eq!((destination.as_str(), up.as_str()), ("api", endpoint.addr.to_string().as_str()));
}

/// A host whose destination `api` has two endpoints checked for health, the first of them told
/// down, and its events from before it was told down on.
async fn one_of_two_told_down() -> ([TestEndpoint; 2], tempfile::TempDir, Host, Receiver<HostEvent>) {
    let (down, up) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let health = "health = { path = \"/health\", interval_ms = 10, rise = 2, fall = 2 }";
    let host = host(dir.path(), &config(&[&down, &up], health)).await;
    let mut events = host.subscribe();
    down.set(Mode::Fail);
    next_event(&mut events, "endpoint-down").await;
    ([down, up], dir, host, events)
}

/// Assert that the endpoint events `events` received by now, and `config-applied`, are
/// `config-applied` then `endpoint-removed` of `removed`, of `api`.
fn told_applied_then_removed(events: &mut Receiver<HostEvent>, removed: &TestEndpoint) {
    let told = received(events, &["config-applied", "endpoint-down", "endpoint-up", "endpoint-removed"]);
    let told: Vec<serde_json::Value> =
        told.iter().map(|event| serde_json::to_value(event).unwrap()).collect();
    let applied = serde_json::json!({"event": "config-applied", "file": "test.toml"});
    let endpoint = removed.addr.to_string();
    let removed =
        serde_json::json!({"event": "endpoint-removed", "destination": "api", "endpoint": endpoint});
    assert_eq!(told, [applied, removed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_told_down_that_a_reload_removes_is_told_removed_once() {
    // Its `endpoint-down` used to be the last word on it: whoever follows the events kept it down
    // for good. Over the same transport, the new instance leaves what was known of it behind; over
    // another, it leaves what was last told.
    for transport in ["http", "tcp"] {
        let ([down, up], _dir, host, mut events) = one_of_two_told_down().await;
        let to = format!("transport = \"{transport}\"");
        apply(&host, &config(&[&up], "").replace("transport = \"http\"", &to)).await;
        told_applied_then_removed(&mut events, &down);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_told_down_of_a_destination_a_reload_removes_are_told_removed() {
    // Only the endpoint told down is told removed: one told up needs no closing word.
    let ([down, _up], _dir, host, mut events) = one_of_two_told_down().await;
    let without_api = "[host]\ndead_letter = \"dead\"\nworkers = 1\n\
                       [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
                       [[route]]\nname = \"all\"\nto = \"dead\"\n";
    apply(&host, without_api).await;
    told_applied_then_removed(&mut events, &down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failing_on_the_instance_a_reload_to_another_transport_replaced_tells_nothing() {
    // The new instance starts the endpoint afresh, up; a delivery under way finishes on the old one,
    // over the old transport. Its failure tripping the old breaker used to tell `endpoint-down` of
    // an endpoint the new instance sends traffic to (and a failure there told it down again), and
    // then to count the old breaker's opening in the endpoint's series, which count the new
    // instance's breaker: closed, as the admin API shows.
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let extra = "timeout_ms = 600000\nretry = { attempts = 1 }\nbreaker = { consecutive_failures = 1 }";
    let host = host(dir.path(), &config(&[&endpoint], extra)).await;
    let mut events = host.subscribe();
    let (_, reply) = host.send_request(Message::new("orders", "held")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    apply(&host, &config(&[&endpoint], extra).replace("transport = \"http\"", "transport = \"tcp\"")).await;
    // Its connection closes unanswered: the attempt fails on the old instance, tripping its breaker,
    // before the message is dead-lettered and its reply told.
    endpoint.stop().await;
    assert!(within(reply).await.unwrap().is_err());
    let told: Vec<HostEvent> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|event| event.name().starts_with("endpoint-"))
        .collect();
    assert!(told.is_empty(), "{told:?}");
    let address = endpoint.addr.to_string();
    let text = host.metrics().encode();
    let failed = [("destination", "api"), ("endpoint", address.as_str()), ("outcome", "retryable")];
    assert_eq!(sample(&text, "switchyard_endpoint_attempts_total", &failed), Some(1.0), "the attempt counts");
    for to in ["open", "half-open", "closed"] {
        let transitions = [("destination", "api"), ("endpoint", address.as_str()), ("to", to)];
        let counted = sample(&text, "switchyard_endpoint_breaker_transitions_total", &transitions);
        assert_eq!(counted, Some(0.0), "to {to}");
    }
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    assert_eq!(api.endpoints[0].breaker, "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_back_by_its_health_checks_is_told_up_only_once_its_breaker_closes() {
    // Its health checks passing again used to tell `endpoint-up` while its breaker still ejected it
    // (the operator saw it up while it got no traffic), and its health going down after its breaker
    // had taken it out told `endpoint-down` a second time.
    let (flaky, steady) =
        (TestEndpoint::start(Mode::Alternate).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra = "balancer = \"round-robin\"\nidempotent = true\nretry = { attempts = 2, base_ms = 1, max_ms = 5 }\n\
                 breaker = { consecutive_failures = 1, open_ms = 300 }\n\
                 health = { path = \"/health\", interval_ms = 10, rise = 2, fall = 2 }";
    let host = host(dir.path(), &config(&[&flaky, &steady], extra)).await;
    let mut events = host.subscribe();
    let flaky_status =
        || host.destinations().into_iter().find(|d| d.name == "api").unwrap().endpoints[0].clone();
    let flaky_until = |health: &str, ejected: bool| {
        tokio::task::block_in_place(|| {
            eventually(|| match flaky_status() {
                status if status.health == health && (status.breaker != "closed") == ejected => Ok(()),
                status => Err(status),
            })
        })
    };
    // Its second message fails while its health checks pass: its breaker ejects it.
    for n in 0.. {
        assert!(n < 10, "round-robin gave it two messages");
        within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
        if flaky_status().breaker != "closed" {
            break;
        }
    }
    // Its health checks fail, then pass again: health takes it down and brings it back while its
    // breaker still ejects it (open, or half-open once the ejection is over: no message probed it).
    flaky.set(Mode::Fail);
    flaky_until("down", true);
    flaky.set(Mode::Answer);
    flaky_until("up", true);
    // The next message it gets is the probe that closes its breaker.
    let before = flaky.arrived();
    while flaky.arrived() == before {
        within(host.request(Message::new("orders", "probe?"))).await.unwrap();
    }
    assert_eq!(flaky_status().breaker, "closed");
    let address = flaky.addr.to_string();
    let mut told = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event {
            HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, reason, .. })
                if endpoint == address =>
            {
                told.push(format!("down: {reason}"))
            }
            HostEvent::Destination(DestinationEvent::EndpointUp { endpoint, .. }) if endpoint == address => {
                told.push("up".to_owned())
            }
            _ => {}
        }
    }
    assert_eq!(told.len(), 2, "one down, one up: {told:?}");
    assert!(told[0].starts_with("down: circuit breaker opened (1 failure in a row)"), "{told:?}");
    assert_eq!(told[1], "up", "told up as the probe closed its breaker: {told:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 0);
    assert!(steady.arrived() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_held_down_by_health_checks_a_reload_removes_is_told_up_and_down_again() {
    // Without checks nothing brings its health back, so a reload that removes them forgets it: the
    // endpoint takes traffic again, and is told up; its breaker ejecting it later is told down.
    let (flaky, steady) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let unchecked = "balancer = \"round-robin\"\nidempotent = true\nretry = { attempts = 2, base_ms = 1, max_ms = 5 }\n\
                     breaker = { consecutive_failures = 1, open_ms = 60000 }";
    let checked =
        format!("{unchecked}\nhealth = {{ path = \"/health\", interval_ms = 10, rise = 2, fall = 2 }}");
    let host = host(dir.path(), &config(&[&flaky, &steady], &checked)).await;
    let mut events = host.subscribe();
    flaky.set(Mode::Fail);
    let HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, reason, .. }) =
        next_event(&mut events, "endpoint-down").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, flaky.addr.to_string());
    assert!(reason.starts_with("health check failed"), "{reason}");
    apply(&host, &config(&[&flaky, &steady], unchecked)).await;
    let HostEvent::Destination(DestinationEvent::EndpointUp { endpoint, .. }) =
        next_event(&mut events, "endpoint-up").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, flaky.addr.to_string());
    // Its next message fails: its breaker ejects it.
    for n in 0..2 {
        within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
    }
    let HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, reason, .. }) =
        next_event(&mut events, "endpoint-down").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, flaky.addr.to_string());
    assert!(reason.starts_with("circuit breaker opened"), "{reason}");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 0);
}

/// Connections open in the pool of endpoint `index` of destination `api`.
fn pool_size(host: &Host, index: usize) -> usize {
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    api.endpoints[index].pool.map_or(0, |pool| pool.size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_health_check_takes_out_an_endpoint_that_stops_listening() {
    let (doomed, survivor) =
        (TestEndpoint::start_tcp(Mode::Answer).await, TestEndpoint::start_tcp(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra = "health = { interval_ms = 10, rise = 2, fall = 2 }";
    let config = config(&[&doomed, &survivor], extra).replace("transport = \"http\"", "transport = \"tcp\"");
    let host = host(dir.path(), &config).await;
    let mut events = host.subscribe();
    doomed.stop().await;
    let HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, reason, .. }) =
        next_event(&mut events, "endpoint-down").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, doomed.addr.to_string());
    assert!(reason.contains("health check failed: connect"), "{reason}");
    for n in 0..20 {
        within(host.request(Message::new("jobs", format!("j{n}")))).await.unwrap();
    }
    assert_eq!(survivor.seen().len(), 20);
    let text = host.metrics().encode();
    let doomed = doomed.addr.to_string();
    let failed = [("destination", "api"), ("endpoint", doomed.as_str()), ("outcome", "retryable")];
    let failed = sample(&text, "switchyard_endpoint_attempts_total", &failed);
    assert_eq!(failed.unwrap_or(0.0), 0.0, "no attempt went to the endpoint that is down");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_with_an_event_and_traffic_fails_over() {
    let (doomed, survivor) =
        (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra = "retry = { attempts = 3, base_ms = 1, max_ms = 5 }\nbreaker = { consecutive_failures = 1, open_ms = 60000 }";
    let host = host(dir.path(), &config(&[&doomed, &survivor], extra)).await;
    let mut events = host.subscribe();
    doomed.stop().await;
    for n in 0..20 {
        let reply = within(host.request(Message::new("orders", format!("m{n}")))).await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    let HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, reason, .. }) =
        next_event(&mut events, "endpoint-down").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, doomed.addr.to_string());
    assert!(reason.starts_with("circuit breaker opened (1 failure in a row); last: "), "{reason}");
    assert_eq!(survivor.seen().len(), 20);
    let text = host.metrics().encode();
    let (doomed, survivor) = (doomed.addr.to_string(), survivor.addr.to_string());
    let attempts = |endpoint: &str, outcome| {
        let labels = [("destination", "api"), ("endpoint", endpoint), ("outcome", outcome)];
        sample(&text, "switchyard_endpoint_attempts_total", &labels)
    };
    assert_eq!(attempts(&survivor, "ok"), Some(20.0));
    assert_eq!(attempts(&doomed, "retryable"), Some(1.0), "ejected after its first failure");
    let opened = [("destination", "api"), ("endpoint", doomed.as_str()), ("to", "open")];
    assert_eq!(sample(&text, "switchyard_endpoint_breaker_transitions_total", &opened), Some(1.0));
    let retries = sample(&text, "switchyard_destination_retries_total", &[("destination", "api")]);
    assert_eq!(retries, Some(0.0), "a refused connection is no attempt, so no retry");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_or_dead_lettered_while_http_endpoints_fail_reset_slow_down_and_die() {
    let mut endpoints = Vec::new();
    for _ in 0..4 {
        endpoints.push(TestEndpoint::start(Mode::Answer).await);
    }
    delivery_oracle(endpoints, "http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_delivered_or_dead_lettered_while_tcp_endpoints_fail_reset_slow_down_and_die() {
    let mut endpoints = Vec::new();
    for _ in 0..4 {
        endpoints.push(TestEndpoint::start_tcp(Mode::Answer).await);
    }
    delivery_oracle(endpoints, "tcp").await;
}

/// Waves of concurrent requests to a destination over `endpoints` (four,
/// reached by `transport`) while they fail, reset, go slow and die: every
/// message is delivered or dead-lettered, exactly once, and no endpoint got
/// more copies of a message than the retry policy allows.
async fn delivery_oracle(endpoints: Vec<TestEndpoint>, transport: &str) {
    let dir = plugin_dir(&[]);
    // Slow answers come after the 250 ms deadline: the attempt is retried,
    // so the endpoint may have taken a message that is delivered elsewhere
    // too. On a loaded machine a healthy answer can be late as well.
    let extra = "idempotent = true\nretry = { attempts = 3, base_ms = 1, max_ms = 5 }\nbreaker = { consecutive_failures = 3, open_ms = 5 }\ntimeout_ms = 250";
    let config = config(&endpoints.iter().collect::<Vec<_>>(), extra);
    let host =
        host(dir.path(), &config.replace("transport = \"http\"", &format!("transport = \"{transport}\"")))
            .await;
    // Trouble changes between waves of 100 concurrent requests, each wave
    // settled before the next; a wave's trouble runs (as a future does) once awaited.
    let waves: [BoxFuture<()>; 7] = [
        async {}.boxed(),
        async { endpoints[0].set(Mode::Fail) }.boxed(),
        async { endpoints[1].set(Mode::Reset) }.boxed(),
        async { endpoints[3].set(Mode::Slow) }.boxed(),
        async {
            endpoints[2].stop().await;
            endpoints[0].set(Mode::Answer);
        }
        .boxed(),
        async {
            endpoints[1].set(Mode::Answer);
            endpoints[3].set(Mode::Answer);
        }
        .boxed(),
        async {}.boxed(),
    ];
    let total = 100 * waves.len() as u64;
    // What each caller was told, by message body.
    let (mut delivered, mut dead_lettered) = (HashSet::new(), HashSet::new());
    for (wave, trouble) in waves.into_iter().enumerate() {
        trouble.await;
        let requests: Vec<_> = (0..100)
            .map(|n| {
                let host = host.clone();
                let body = format!("w{wave}-{n}");
                tokio::spawn(async move { (host.request(Message::new("orders", body.clone())).await, body) })
            })
            .collect();
        for request in requests {
            match within(request).await.unwrap() {
                (Ok(_), body) => assert!(delivered.insert(body)),
                (Err(switchyard::RequestError::DeadLettered(_)), body) => assert!(dead_lettered.insert(body)),
                (Err(other), _) => panic!("{other:?}"),
            }
        }
    }
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, total);
    assert_eq!((stats.delivered, stats.dead_lettered), (delivered.len() as u64, dead_lettered.len() as u64));
    assert_eq!(stats.delivered + stats.dead_lettered, total, "{stats:?}");
    let dead: HashSet<String> = host
        .memory("dead")
        .unwrap()
        .drain()
        .map(|letter| String::from_utf8(letter.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(dead, dead_lettered, "the dead letters are the messages their callers were told of");
    // Who got what: every delivered message was answered by some endpoint,
    // and no message reached the endpoints more often than it was attempted.
    let mut received: HashMap<String, usize> = HashMap::new();
    let mut answered = HashSet::new();
    for seen in endpoints.iter().flat_map(TestEndpoint::seen) {
        *received.entry(seen.body.clone()).or_default() += 1;
        if seen.answered {
            answered.insert(seen.body);
        }
    }
    assert!(delivered.iter().all(|body| answered.contains(body)), "a delivery no endpoint answered");
    assert!(received.values().all(|&times| times <= 3), "more copies than attempts");
    // Retries past the budget wait rather than give up: few messages run
    // out of attempts.
    assert!(stats.delivered >= total * 8 / 10, "{stats:?}");
    assert!(endpoints[3].seen().iter().any(|seen| seen.slow), "the slow wave reached the slow endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_plugin_steers_traffic_away_from_a_busy_endpoint() {
    let (busy, free) = (TestEndpoint::start(Mode::Hold).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[("least-loaded", switchyard_plugin_artifacts::LEAST_LOADED_BALANCER)]);
    let extra = "balancer = \"plugin:least-loaded\"\nqueue = { max_in_flight = 2 }";
    let host = host(dir.path(), &config(&[&busy, &free], extra)).await;
    // Ties go to the first endpoint: the first message is held there, and
    // the others go one at a time.
    host.send(Message::new("orders", "first")).await.unwrap();
    within(busy.arrivals(1)).await;
    for n in 0..50 {
        host.send(Message::new("orders", format!("m{n}"))).await.unwrap();
    }
    within(free.arrivals(50)).await;
    busy.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, 51);
    assert_eq!((busy.seen().len(), free.seen().len()), (1, 50), "one in flight makes the busy one dearer");
    assert_eq!(host.event_counts().balancer_fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_missing_balancer_plugin_falls_back_to_p2c_with_an_event() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[("wrong", switchyard_plugin_artifacts::FAULTY_BALANCER)]);
    let plugin = "[[plugin]]\nname = \"wrong\"\nconfig = { mode = \"out-of-range\" }\n";
    let mut config = config(&[&endpoint], "balancer = \"plugin:wrong\"");
    config.push_str(plugin);
    config.push_str("[[destination]]\nname = \"lost\"\ntransport = \"http\"\nbalancer = \"plugin:absent\"\n");
    config.push_str(&format!("endpoints = [\"{}\"]\n", endpoint.addr));
    config.push_str("[[route]]\nname = \"lost\"\nmatch = { topic = \"lost\" }\nto = \"lost\"\n");
    let config = config.replace(
        "[[route]]\nname = \"all\"\n",
        "[[route]]\nname = \"all\"\nmatch = { topic = \"orders\" }\n",
    );
    let host = host(dir.path(), &config).await;
    let mut events = host.subscribe();
    host.send(Message::new("orders", "a")).await.unwrap();
    let HostEvent::Destination(DestinationEvent::BalancerFallback { destination, plugin, reason }) =
        next_event(&mut events, "balancer-fallback").await
    else {
        unreachable!()
    };
    assert_eq!((destination.as_str(), plugin.as_str()), ("api", "wrong"));
    assert!(reason.contains("not one of the 1 eligible endpoints"), "{reason}");
    let invalid = [("plugin", "wrong"), ("problem", "invalid")];
    let counted = sample(&host.metrics().encode(), "switchyard_plugin_problems_total", &invalid);
    assert!(counted >= Some(1.0), "an unusable answer is counted as the plugin's problem: {counted:?}");
    host.send(Message::new("lost", "b")).await.unwrap();
    let HostEvent::Destination(DestinationEvent::BalancerFallback { destination, reason, .. }) =
        next_event(&mut events, "balancer-fallback").await
    else {
        unreachable!()
    };
    assert_eq!(destination, "lost");
    assert_eq!(reason, "plugin \"absent\" is not loaded");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0), "p2c delivered both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_balancer_plugin_lets_go_of_its_thread_and_instance() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[("lb", switchyard_plugin_artifacts::LEAST_LOADED_BALANCER)]);
    let host = host(dir.path(), &config(&[&endpoint], "balancer = \"plugin:lb\"")).await;
    host.send(Message::new("orders", "picked by lb")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    assert_eq!(host.event_counts().balancer_fallbacks, 0, "lb picked");
    // The balancer's thread and its instance each hold the plugin: once both are gone, nothing does.
    let lb =
        std::sync::Arc::downgrade(&host.plugins().into_iter().find(|plugin| plugin.name == "lb").unwrap());
    let mut events = host.subscribe();
    std::fs::remove_file(dir.path().join("lb.wasm")).unwrap();
    event_where(&mut events, |event| matches!(event, HostEvent::PluginRemoved { name, .. } if name == "lb"))
        .await;
    host.send(Message::new("orders", "picked by p2c")).await.unwrap();
    let HostEvent::Destination(DestinationEvent::BalancerFallback { reason, .. }) =
        next_event(&mut events, "balancer-fallback").await
    else {
        unreachable!()
    };
    assert_eq!(reason, "plugin \"lb\" is not loaded");
    within(endpoint.arrivals(2)).await;
    eventually(|| if lb.strong_count() == 0 { Ok(()) } else { Err(lb.strong_count()) });
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_plugin_that_could_not_start_is_tried_again_and_picks_once_it_can() {
    // Its granted directory gone, its instance cannot be made: p2c picks and the host is not
    // ready. Once the directory is back, a later pick (at most one a second) starts it again.
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[("lb", switchyard_plugin_artifacts::LEAST_LOADED_BALANCER)]);
    let data = tempfile::tempdir().unwrap();
    let granted = data.path().join("d");
    std::fs::create_dir(&granted).unwrap();
    let plugin = format!("[[plugin]]\nname = \"lb\"\ndirs = {{ \"/d\" = \"{}:ro\" }}\n", granted.display());
    let config = format!("{}{plugin}", config(&[&endpoint], "balancer = \"plugin:lb\""));
    let host = host(dir.path(), &config).await;
    let mut events = host.subscribe();
    std::fs::remove_dir(&granted).unwrap();
    host.send(Message::new("orders", "placed by p2c")).await.unwrap();
    let HostEvent::Destination(DestinationEvent::BalancerFallback { reason, .. }) =
        next_event(&mut events, "balancer-fallback").await
    else {
        unreachable!()
    };
    assert!(reason.contains("cannot instantiate"), "{reason}");
    within(endpoint.arrivals(1)).await;
    assert_eq!(
        host.unready(),
        ["destination api: balancer plugin \"lb\" cannot balance (p2c picks meanwhile)"]
    );
    std::fs::create_dir(&granted).unwrap();
    // Each request's pick may be the one that tries again; the pause only paces the polling.
    within(async {
        while !host.unready().is_empty() {
            host.request(Message::new("orders", "placed by either")).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let calls = host.metrics().plugin_counts("lb").calls;
    host.request(Message::new("orders", "placed by lb")).await.unwrap();
    assert_eq!(host.metrics().plugin_counts("lb").calls, calls + 1, "lb picked");
    assert!(host.unready().is_empty(), "{:?}", host.unready());
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_spinning_balancer_plugin_stalls_only_its_own_deliveries_on_a_current_thread_runtime() {
    let (stuck, api) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[("spin", switchyard_plugin_artifacts::FAULTY_BALANCER)]);
    let mut config = config(&[&api], "");
    config.push_str("[[plugin]]\nname = \"spin\"\nconfig = { mode = \"spin\", trigger = \"x-poison\" }\n");
    config.push_str("limits = { timeout_ms = 3000 }\n");
    config.push_str("[[destination]]\nname = \"stuck\"\ntransport = \"http\"\nbalancer = \"plugin:spin\"\n");
    config.push_str(&format!("endpoints = [\"{}\"]\n", stuck.addr));
    config.push_str("[[route]]\nname = \"stuck\"\nmatch = { topic = \"stuck\" }\nto = \"stuck\"\n");
    let config = config.replace(
        "[[route]]\nname = \"all\"\n",
        "[[route]]\nname = \"all\"\nmatch = { topic = \"orders\" }\n",
    );
    let host = host(dir.path(), &config).await;
    // The plugin spins on this one until its 3 s deadline; then p2c places it.
    host.send(Message::new("stuck", "poison").with_header("x-poison", "1")).await.unwrap();
    for n in 0..3 {
        let reply = within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
        assert_eq!(reply.expect("the endpoint echoes").payload, format!("m{n}"));
    }
    assert_eq!(
        (stuck.seen().len(), host.event_counts().balancer_fallbacks),
        (0, 0),
        "the other destination delivered while the plugin still spun, on the runtime's only thread"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (4, 0), "p2c placed the poisoned one in the end");
    assert_eq!((stuck.seen().len(), host.event_counts().balancer_fallbacks), (1, 1));
    // The plugin's thread counts the spin once its deadline cuts it; on a loaded machine, where the
    // epoch ticks come late, the pick may have stopped waiting (its patience) before that. It keeps
    // the fault as the last just after it counts it: both are waited for.
    let fault =
        eventually(|| match (host.metrics().plugin_counts("spin"), host.metrics().last_fault("spin")) {
            (counts, Some(fault)) if counts.deadline_hits() == 1 => Ok(fault),
            seen => Err(seen),
        });
    assert_eq!((fault.kind, fault.message.as_str()), ("timed_out", "timed out after 3s"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_whose_balancer_plugin_pick_outlasts_its_queue_timeout_is_dead_lettered_unsent() {
    // The plugin spins on the poisoned message until its 2 s deadline, and its one thread serves
    // picks in turn, so the message behind it waits as long for its pick. Neither may wait past
    // its 300 ms queue timeout: both are dead-lettered `queue-timeout`, never sent. On a runtime
    // of one thread the poisoned message's pick reaches the plugin first.
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[("spin", switchyard_plugin_artifacts::FAULTY_BALANCER)]);
    let mut config = config(&[&endpoint], "balancer = \"plugin:spin\"\nqueue = { timeout_ms = 300 }");
    config.push_str("[[plugin]]\nname = \"spin\"\nconfig = { mode = \"spin\", trigger = \"x-poison\" }\n");
    config.push_str("limits = { timeout_ms = 2000 }\n");
    let host = host(dir.path(), &config).await;
    // Its thread started, the plugin places a plain message well within the queue timeout.
    within(host.request(Message::new("orders", "plain"))).await.unwrap();
    host.send(Message::new("orders", "poison").with_header("x-poison", "1")).await.unwrap();
    host.send(Message::new("orders", "behind")).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 2), "only the plain one delivered");
    let mut letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    letters.sort_by(|a, b| a.payload.cmp(&b.payload));
    let payloads: Vec<&[u8]> = letters.iter().map(|letter| &letter.payload[..]).collect();
    assert_eq!(payloads, [&b"behind"[..], b"poison"]);
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"), "{letter:?}");
        let reason = letter.header("x-sy-dead-letter-reason").unwrap();
        assert!(reason.contains("the balancer had not picked an endpoint"), "{reason}");
    }
    let seen: Vec<String> = endpoint.seen().into_iter().map(|seen| seen.body).collect();
    assert_eq!(seen, ["plain"], "neither was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_keeps_unchanged_destinations_with_their_endpoint_state() {
    let (doomed, survivor) =
        (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    doomed.stop().await;
    let dir = plugin_dir(&[]);
    let extra = "retry = { attempts = 2, base_ms = 1, max_ms = 5 }\nbreaker = { consecutive_failures = 1, open_ms = 60000 }";
    let text = config(&[&doomed, &survivor], extra);
    let host = host(dir.path(), &text).await;
    for n in 0..4 {
        within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
    }
    let breakers = |host: &Host| {
        let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
        api.endpoints.iter().map(|endpoint| endpoint.breaker).collect::<Vec<_>>()
    };
    assert_eq!(breakers(&host), ["open", "closed"]);
    // Another route changes; the destination does not: its state stays.
    let unchanged =
        format!("{text}[[route]]\nname = \"more\"\nmatch = {{ topic = \"more\" }}\nto = \"dead\"\n");
    within(host.apply_config("test.toml", switchyard::Config::from_toml("test.toml", &unchanged).unwrap()))
        .await
        .unwrap();
    assert_eq!(breakers(&host), ["open", "closed"], "an unchanged destination keeps its breakers");
    // The destination itself changes and gains an endpoint: it is built anew, and what it knew of
    // the endpoints it keeps goes on; the new one starts afresh.
    let added = TestEndpoint::start(Mode::Answer).await;
    let changed = text
        .replace("attempts = 2", "attempts = 3")
        .replace(&format!("\"{}\"]", survivor.addr), &format!("\"{}\", \"{}\"]", survivor.addr, added.addr));
    within(host.apply_config("test.toml", switchyard::Config::from_toml("test.toml", &changed).unwrap()))
        .await
        .unwrap();
    assert_eq!(breakers(&host), ["open", "closed", "closed"], "the dead endpoint stays ejected");
    for n in 4..8 {
        within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
    }
    let doomed = doomed.addr.to_string();
    let refused = [("destination", "api"), ("endpoint", doomed.as_str()), ("outcome", "retryable")];
    let refused = sample(&host.metrics().encode(), "switchyard_endpoint_attempts_total", &refused);
    assert_eq!(refused, Some(1.0), "refused once before the reload, left out after it");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, 8);
    assert_eq!(survivor.seen().len() + added.seen().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_a_destination_keeps_an_endpoint_its_health_checks_took_down_out() {
    // A silent endpoint takes TCP and never answers: each health check fails only at its 3 s
    // deadline. (A closed port fails one at once, so the rebuilt destination's first check found
    // it down again within a millisecond, and only a message quicker than that showed the defect.)
    let (silent, steady) = (crate::support::Silent::start(), TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra = "balancer = \"round-robin\"\ntimeout_ms = 500\n\
                 health = { interval_ms = 100, timeout_ms = 3000, rise = 1, fall = 1 }";
    let text =
        config(&[&steady], extra).replace("endpoints = [", &format!("endpoints = [\"{}\", ", silent.addr));
    let host = host(dir.path(), &text).await;
    let health = |host: &Host| {
        let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
        api.endpoints.iter().map(|endpoint| endpoint.health).collect::<Vec<_>>()
    };
    within(async {
        while health(&host) != ["down", "up"] {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // Any change rebuilds the destination; the silent endpoint is still known down. (Taken for up,
    // it got the first message, round-robin, which was dead-lettered unanswered.)
    apply(&host, &text.replace("timeout_ms = 500", "timeout_ms = 600")).await;
    for n in 0..4 {
        let reply = within(host.request(Message::new("orders", format!("m{n}")))).await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    assert_eq!(steady.seen().len(), 4);
    let silent = silent.addr.to_string();
    let exposition = host.metrics().encode();
    for outcome in ["ok", "retryable", "fatal", "shed"] {
        let labels = [("destination", "api"), ("endpoint", silent.as_str()), ("outcome", outcome)];
        let tried = sample(&exposition, "switchyard_endpoint_attempts_total", &labels).unwrap_or(0.0);
        assert_eq!(tried, 0.0, "no attempt at the endpoint that is down ({outcome})");
    }
    assert_eq!(health(&host), ["down", "up"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_after_shutdown_is_refused_and_starts_nothing() {
    // After a shutdown, reload, apply_config and replace_config still applied a config, starting
    // health checks and dispatchers that nothing would ever stop.
    let text = "[host]\nworkers = 1\n[[destination]]\nname = \"api\"\ntransport = \"http\"\n\
                endpoints = [\"127.0.0.1:1\"]\ntimeout_ms = 1000\nhealth = { interval_ms = 50 }\n\
                [[route]]\nname = \"all\"\nto = \"api\"\n";
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), text).await;
    within(host.shutdown()).await;
    let changed = text.replace("timeout_ms = 1000", "timeout_ms = 2000");
    let config = switchyard::Config::from_toml("test.toml", &changed).unwrap();
    let refusals = [
        within(host.apply_config("test.toml", config)).await.map(|_| ()),
        within(host.replace_config(&changed)).await.map(|_| ()),
        within(host.reload()).await.map(|_| ()),
    ];
    for refused in refusals {
        let error = refused.expect_err("refused after a shutdown").to_string();
        assert!(error.contains("shutting down"), "{error}");
    }
    let api = host.config().destinations.iter().find(|d| d.name == "api").map(|d| d.timeout_ms);
    assert_eq!(api, Some(1000), "nothing applied");
}

/// A config of [`config`] over `live` with `queue` settings, and the same with `live`'s address
/// replaced by one that refuses connections.
fn live_and_refused(live: &TestEndpoint, queue: &str) -> (String, String) {
    let text = config(&[live], queue);
    let refused = text.replace(&live.addr.to_string(), "127.0.0.1:1");
    (text, refused)
}

/// A config without destination `api`: one route, `route`, to the memory destination `dead`.
fn without_api(route: &str) -> String {
    format!(
        "[host]\ndead_letter = \"dead\"\nworkers = 1\n[[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[route]]\nname = \"{route}\"\nto = \"dead\"\n"
    )
}

/// Apply the config `text` to `host`.
async fn apply(host: &Host, text: &str) {
    let config = switchyard::Config::from_toml("test.toml", text).unwrap();
    within(host.apply_config("test.toml", config)).await.unwrap();
}

/// A host whose `api` holds three messages (`old 0` to `old 2`) for an endpoint that refuses
/// connections: one taken by its only delivery slot, waiting for the endpoint, two queued. No queue
/// timeout passes during a test: only a reload can get them out. The live endpoint, and the config
/// that sends to it.
async fn three_waiting_for_a_refusing_endpoint() -> (TestEndpoint, tempfile::TempDir, Host, String) {
    let live = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[]);
    let (text, refused) = live_and_refused(&live, "queue = { max_in_flight = 1, timeout_ms = 600000 }");
    let host = host(dir.path(), &refused).await;
    for n in 0..3 {
        host.send(Message::new("orders", format!("old {n}"))).await.unwrap();
    }
    queued(&host, "api", 2).await;
    (live, dir, host, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_a_destination_hands_what_waits_for_it_to_the_new_instance() {
    let (live, _dir, host, text) = three_waiting_for_a_refusing_endpoint().await;
    apply(&host, &text).await;
    for n in 0..2 {
        host.send(Message::new("orders", format!("new {n}"))).await.unwrap();
    }
    within(live.arrivals(5)).await;
    queued(&host, "api", 0).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (5, 0));
    let mut bodies: Vec<String> = live.seen().into_iter().map(|seen| seen.body).collect();
    bodies.sort();
    assert_eq!(bodies, ["new 0", "new 1", "old 0", "old 1", "old 2"]);
}

/// A host whose `api`, with `limits`, has sent `m1` to an endpoint that holds it; then a reload
/// rebuilds `api` (its `timeout_ms` changes) while `m1` is under way on the old instance, and `m2`
/// is sent to the new one.
async fn one_held_across_a_rebuild(limits: &str) -> (TestEndpoint, tempfile::TempDir, Host) {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let text = config(&[&endpoint], &format!("timeout_ms = 600000\n{limits}"));
    let host = host(dir.path(), &text).await;
    host.send(Message::new("orders", "m1")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    apply(&host, &text.replace("timeout_ms = 600000", "timeout_ms = 599999")).await;
    host.send(Message::new("orders", "m2")).await.unwrap();
    (endpoint, dir, host)
}

/// Let `endpoint` answer `m1` (and from then on every message): `m2` follows it, each delivered
/// once, never two at the endpoint at once.
async fn release_one_at_a_time(endpoint: &TestEndpoint, host: &Host) {
    endpoint.set(Mode::Answer);
    endpoint.release(1);
    within(endpoint.arrivals(2)).await;
    let stats = drain_and_account(host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
    assert_eq!(endpoint.arrived_bodies(), ["m1", "m2"]);
    assert_eq!(endpoint.most_at_once(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_a_destination_keeps_its_deliveries_within_max_in_flight() {
    // The endpoint has room (64 connections): only the destination's one delivery slot, which
    // `m1` holds on the old instance, keeps `m2` back. Each instance had slots of its own.
    let (endpoint, _dir, host) = one_held_across_a_rebuild("queue = { max_in_flight = 1 }").await;
    let mut second = Box::pin(endpoint.arrivals(2));
    assert!(crate::support::still_pending(&mut second).await, "m2 went beside m1");
    drop(second);
    queued(&host, "api", 1).await;
    release_one_at_a_time(&endpoint, &host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_a_destination_keeps_an_endpoint_within_its_connection_limit() {
    // The destination has a slot free for `m2`; its endpoint's one connection is `m1`'s, on the old
    // instance's pool. The new instance's pool had room for a second connection.
    let limits = "pool = { max_size = 1, acquire_timeout_ms = 600000 }\nqueue = { max_in_flight = 2 }";
    let (endpoint, _dir, host) = one_held_across_a_rebuild(limits).await;
    let address = endpoint.addr.to_string();
    let labels = [("destination", "api"), ("endpoint", address.as_str())];
    let waits = || sample(&host.metrics().encode(), "switchyard_endpoint_pool_waits_total", &labels);
    // `m2` waits for the endpoint's connection, or (the defect) arrives beside `m1`.
    eventually(|| match (waits(), endpoint.arrived()) {
        (Some(1.0..), _) | (_, 2..) => Ok(()),
        seen => Err(seen),
    });
    assert_eq!(endpoint.arrived(), 1, "m2 went beside m1");
    release_one_at_a_time(&endpoint, &host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_destination_dead_letters_what_waits_for_it_at_once() {
    let (live, _dir, host, _) = three_waiting_for_a_refusing_endpoint().await;
    let dead = host.memory("dead").unwrap();
    apply(&host, &without_api("all")).await;
    // Well before any queue timeout: `next` gives up after a minute.
    let mut letters = Vec::new();
    for _ in 0..3 {
        let letter = next(&dead).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some("destination-removed"), "{letter:?}");
        letters.push(String::from_utf8_lossy(&letter.payload).into_owned());
    }
    letters.sort();
    assert_eq!(letters, ["old 0", "old 1", "old 2"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 3));
    assert_eq!(live.arrived(), 0);
}

/// The samples of `host`'s metrics whose label `label` is `value`, each named with its labels.
fn series_with(host: &Host, label: &str, value: &str) -> Vec<String> {
    let samples = parse(&host.metrics().encode()).into_iter();
    let matching = samples.filter(|s| s.labels.get(label).is_some_and(|v| v == value));
    matching.map(|s| format!("{}{:?}", s.name, s.labels)).collect()
}

/// Wait until `host`'s metrics have no sample whose label `label` is `value`.
fn no_series_with(host: &Host, label: &str, value: &str) {
    eventually(|| match series_with(host, label, value) {
        left if left.is_empty() => Ok(()),
        left => Err(left),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_a_reload_removes_loses_its_series_once_its_deliveries_end_and_its_destination_counts_on()
{
    // A config rotating endpoint addresses (pods) left the series of every address it ever listed
    // in /metrics for good. Now they go once the old instance's last delivery ended, not before, so
    // that delivery is counted; the destination, kept by name, counts on.
    let (old, new) = (TestEndpoint::start(Mode::Hold).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&old], "timeout_ms = 600000")).await;
    host.send(Message::new("orders", "held")).await.unwrap();
    within(old.arrivals(1)).await;
    apply(&host, &config(&[&new], "timeout_ms = 600000")).await;
    within(host.request(Message::new("orders", "after"))).await.unwrap();
    let old_address = old.addr.to_string();
    let held = series_with(&host, "endpoint", &old_address);
    assert!(!held.is_empty(), "gone while its instance still delivers");
    old.release(1);
    no_series_with(&host, "endpoint", &old_address);
    let text = host.metrics().encode();
    let api_ok = [("destination", "api"), ("result", "ok")];
    assert_eq!(sample(&text, "switchyard_destination_deliveries_total", &api_ok), Some(2.0));
    let new_address = new.addr.to_string();
    let new_ok = [("endpoint", new_address.as_str()), ("outcome", "ok")];
    assert_eq!(sample(&text, "switchyard_endpoint_attempts_total", &new_ok), Some(1.0));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_and_a_destination_a_reload_removes_lose_their_series() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&endpoint], "")).await;
    within(host.request(Message::new("orders", "once"))).await.unwrap();
    assert!(!series_with(&host, "destination", "api").is_empty());
    apply(&host, &without_api("rest")).await;
    no_series_with(&host, "destination", "api");
    no_series_with(&host, "route", "all");
    assert!(!series_with(&host, "route", "rest").is_empty(), "the route kept has its series");
    assert!(!series_with(&host, "destination", "dead").is_empty(), "the destination kept has its series");
}

/// A config with a route `other` to destination `ok` over `answering`, and a route `all` to
/// destination `api` over `endpoint` (one connection to it, no retry, no deadline that passes in
/// a test; an `affinity` balancer, so that a rebuilt `api` sends nothing until its predecessor's
/// deliveries end; three delivery slots, over its instances together), or to the dead letters when
/// `endpoint` is `None`: a reload that removed `api`.
fn one_connection_to(endpoint: Option<&TestEndpoint>, answering: &TestEndpoint) -> String {
    let (api, all) = match endpoint {
        Some(endpoint) => (
            format!(
                "[[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
                 balancer = \"affinity:header:x-stream\"\ntimeout_ms = 600000\nretry = {{ attempts = 1 }}\n\
                 pool = {{ max_size = 1, acquire_timeout_ms = 600000 }}\n\
                 queue = {{ max_in_flight = 3, timeout_ms = 600000 }}\n",
                endpoint.addr
            ),
            "api",
        ),
        None => (String::new(), "dead"),
    };
    format!(
        r#"
[host]
dead_letter = "dead"
workers = 1
shutdown_grace_ms = 2000
[[destination]]
name = "dead"
transport = "memory"
[[destination]]
name = "ok"
transport = "http"
endpoints = ["{}"]
{api}
[[route]]
name = "other"
match = {{ topic = "other" }}
to = "ok"
[[route]]
name = "all"
to = "{all}"
"#,
        answering.addr
    )
}

/// A host of [`one_connection_to`] whose `api` has sent `held` to its endpoint, which holds it,
/// and taken `waiting` (neither of a stream) from its queue, which waits for the endpoint's one
/// connection: a delivery under way that no endpoint has seen yet. Then a reload rebuilds `api`
/// over another endpoint: `waiting` stays under way on the old instance, and the new one sends
/// nothing while it is. The old endpoint, the new one, the one of `ok`.
async fn waiting_on_a_rebuilt_destination()
-> (TestEndpoint, TestEndpoint, TestEndpoint, tempfile::TempDir, Host) {
    let (old, new) = (TestEndpoint::start(Mode::Hold).await, TestEndpoint::start(Mode::Answer).await);
    let answering = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &one_connection_to(Some(&old), &answering)).await;
    host.send(Message::new("orders", "held")).await.unwrap();
    within(old.arrivals(1)).await;
    host.send(Message::new("orders", "waiting")).await.unwrap();
    within(async {
        loop {
            let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
            if api.endpoints[0].pool.is_some_and(|pool| pool.waits == 1) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    apply(&host, &one_connection_to(Some(&new), &answering)).await;
    (old, new, answering, dir, host)
}

/// The dead-letter reason (`x-sy-dead-letter`) of each of the next `n` letters of `host`'s memory
/// destination `dead`, by payload.
async fn dead_letter_reasons(host: &Host, n: usize) -> HashMap<String, String> {
    let dead = host.memory("dead").unwrap();
    let mut reasons = HashMap::new();
    for _ in 0..n {
        let letter = next(&dead).await;
        let reason = letter.header("x-sy-dead-letter").unwrap_or_default().to_owned();
        reasons.insert(String::from_utf8_lossy(&letter.payload).into_owned(), reason);
    }
    reasons
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_rebuilt_destination_dead_letters_what_waited_on_its_old_instance_destination_removed() {
    // `waiting` goes back to the new instance's queue once it stops waiting on the old one; a second
    // reload removed the destination, so that queue is closed. That is no shutdown: the host goes on.
    let (old, _new, answering, _dir, host) = waiting_on_a_rebuilt_destination().await;
    apply(&host, &one_connection_to(None, &answering)).await;
    // The old endpoint goes: `held` is cut, sent; `waiting` gets the connection's slot, is refused,
    // and stops waiting for the retired instance's endpoint.
    old.stop().await;
    let reasons = dead_letter_reasons(&host, 2).await;
    assert_eq!(reasons["waiting"], "destination-removed", "{reasons:?}");
    assert_eq!(reasons["held"], "delivery-uncertain", "{reasons:?}");
    assert_eq!(old.arrived(), 1, "`waiting` was never sent");
    // The host serves its other routes, and the rest is quiet: nothing more is dead-lettered.
    let reply = within(host.request(Message::new("other", "still served"))).await.unwrap();
    assert_eq!(reply.map(|reply| reply.payload), Some("still served".into()));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (3, 1, 2));
    assert!(host.memory("dead").unwrap().is_empty());
    assert_eq!(answering.arrived(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_after_a_rebuild_dead_letters_what_waited_on_the_old_instance_shutdown() {
    // The same delivery when the host stops instead: the new instance's queue is closed by the
    // shutdown, so `waiting` is dead-lettered `shutdown`.
    let (old, new, _answering, _dir, host) = waiting_on_a_rebuilt_destination().await;
    // Held back by the new instance until `held` and `waiting` end, or until its queue is closed.
    host.send(Message::new("orders", "after")).await.unwrap();
    queued(&host, "api", 1).await;
    let mut stopping = Box::pin(host.shutdown());
    assert!(futures_util::poll!(&mut stopping).is_pending());
    // Sent once the shutdown closed the new instance's queue.
    within(new.arrivals(1)).await;
    old.stop().await;
    let reasons = dead_letter_reasons(&host, 2).await;
    assert_eq!(reasons["waiting"], "shutdown", "{reasons:?}");
    assert_eq!(reasons["held"], "delivery-uncertain", "{reasons:?}");
    within(stopping).await;
    let stats = host.stats();
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered, stats.in_flight()), (3, 1, 2, 0));
    assert_eq!(new.arrived_bodies(), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_is_probed_after_its_ejection_and_comes_back() {
    let (flaky, steady) = (TestEndpoint::start(Mode::Fail).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra = "idempotent = true\nretry = { attempts = 2, base_ms = 1, max_ms = 5 }\nbreaker = { consecutive_failures = 1, open_ms = 20 }";
    let host = host(dir.path(), &config(&[&flaky, &steady], extra)).await;
    let mut events = host.subscribe();
    within(host.request(Message::new("orders", "first"))).await.unwrap();
    let HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, .. }) =
        next_event(&mut events, "endpoint-down").await
    else {
        unreachable!()
    };
    assert_eq!(endpoint, flaky.addr.to_string());
    flaky.set(Mode::Answer);
    // Once its ejection ends, one request probes it and it is back.
    let up = within(async {
        loop {
            host.request(Message::new("orders", "probe?")).await.unwrap();
            match events.try_recv() {
                Ok(HostEvent::Destination(DestinationEvent::EndpointUp { endpoint, .. })) => return endpoint,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert_eq!(up, flaky.addr.to_string());
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    assert_eq!(api.endpoints[0].breaker, "closed");
    let text = host.metrics().encode();
    let address = flaky.addr.to_string();
    let transitions: Vec<Option<f64>> = ["open", "half-open", "closed"]
        .into_iter()
        .map(|to| {
            let labels = [("destination", "api"), ("endpoint", address.as_str()), ("to", to)];
            sample(&text, "switchyard_endpoint_breaker_transitions_total", &labels)
        })
        .collect();
    assert_eq!(transitions, [Some(1.0); 3], "tripped, probed once, closed");
    let weights: Vec<u32> = api.endpoints.iter().map(|endpoint| endpoint.weight).collect();
    assert!(
        weights[0] < 20 && weights[1] == 100,
        "back, it starts slowly (30 s ramp from 10 %): {weights:?}"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 0);
}

/// Which of `endpoints` took `message`, sent as a request to `host` when each of them answers.
async fn taker(host: &Host, endpoints: &[&TestEndpoint], message: Message) -> usize {
    let before: Vec<usize> = endpoints.iter().map(|endpoint| endpoint.arrived()).collect();
    within(host.request(message)).await.unwrap();
    let took = endpoints.iter().zip(before).position(|(endpoint, before)| endpoint.arrived() > before);
    took.expect("an endpoint took it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_keys_stay_between_two_endpoints_while_a_third_trips_and_slowly_starts_again() {
    // Ketama's promise: only the keys of an endpoint that leaves or joins move. The third endpoint's
    // slow start after its ejection changes its share of traffic for `weighted` and `p2c-ewma`, not
    // its share of the ring.
    let endpoints = [
        TestEndpoint::start(Mode::Answer).await,
        TestEndpoint::start(Mode::Answer).await,
        TestEndpoint::start(Mode::Answer).await,
    ];
    let endpoints: Vec<&TestEndpoint> = endpoints.iter().collect();
    let dir = plugin_dir(&[]);
    let weighted: Vec<String> = endpoints
        .iter()
        .map(|endpoint| format!("{{ address = \"{}\", weight = 10 }}", endpoint.addr))
        .collect();
    let extra = "balancer = \"hash:header:x-key\"\nidempotent = true\n\
                 retry = { attempts = 2, base_ms = 1, max_ms = 5 }\n\
                 breaker = { consecutive_failures = 1, open_ms = 20 }";
    let text =
        config(&[], extra).replace("endpoints = []", &format!("endpoints = [{}]", weighted.join(", ")));
    let host = host(dir.path(), &text).await;
    let mut events = host.subscribe();
    let keyed = |key: &str| Message::new("orders", key.to_owned()).with_header("x-key", key);
    let keys: Vec<String> = (0..300).map(|n| format!("user-{n}")).collect();
    let mut first = Vec::new();
    for key in &keys {
        first.push(taker(&host, &endpoints, keyed(key)).await);
    }
    // The third endpoint fails one of its keys and is ejected; the retry goes to another.
    let third = keys.iter().zip(&first).find(|&(_, &taker)| taker == 2).expect("a key of the third").0;
    endpoints[2].set(Mode::Fail);
    within(host.request(keyed(third))).await.unwrap();
    next_event(&mut events, "endpoint-down").await;
    // Once its ejection ends, its key probes it and it is back, slowly starting.
    endpoints[2].set(Mode::Answer);
    within(async {
        loop {
            host.request(keyed(third)).await.unwrap();
            match events.try_recv() {
                Ok(HostEvent::Destination(DestinationEvent::EndpointUp { .. })) => return,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    assert!(api.endpoints[2].weight < 1000, "slowly starting: {:?}", api.endpoints[2]);
    let mut again = Vec::new();
    for key in &keys {
        again.push(taker(&host, &endpoints, keyed(key)).await);
    }
    let between_the_two = |(&before, &now): (&usize, &usize)| before != 2 && now != 2 && before != now;
    let moved = first.iter().zip(&again).filter(|&pair| between_the_two(pair)).count();
    assert_eq!(moved, 0, "keys moved between the first two endpoints");
    assert_eq!(again, first, "each key where it went before, the third's own back on it");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_failure_rate_ejects_an_endpoint_that_never_fails_twice_in_a_row() {
    let (flaky, steady) =
        (TestEndpoint::start(Mode::Alternate).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let extra = "idempotent = true\nretry = { attempts = 2, base_ms = 1, max_ms = 5 }\n\
                 breaker = { consecutive_failures = 0, open_ms = 60000, failure_percent = 40, window = 10, min_volume = 10 }";
    let host = host(dir.path(), &config(&[&flaky, &steady], extra)).await;
    let mut events = host.subscribe();
    let reason = within(async {
        loop {
            host.request(Message::new("orders", "m")).await.unwrap();
            match events.try_recv() {
                Ok(HostEvent::Destination(DestinationEvent::EndpointDown { endpoint, reason, .. })) => {
                    return (endpoint, reason);
                }
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert_eq!(reason.0, flaky.addr.to_string());
    assert!(reason.1.contains("attempts failed); last: "), "{}", reason.1);
    assert!(flaky.seen().len() >= 10, "not before the window is full");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_plugin_sees_the_head_of_the_message_it_places() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let dir = plugin_dir(&[("picky", switchyard_plugin_artifacts::FAULTY_BALANCER)]);
    // It answers wrong only for messages carrying header `x-odd`.
    let plugin = "[[plugin]]\nname = \"picky\"\nconfig = { mode = \"out-of-range\", trigger = \"x-odd\" }\n";
    let config = format!("{}{plugin}", config(&[&endpoint], "balancer = \"plugin:picky\""));
    let host = host(dir.path(), &config).await;
    let mut events = host.subscribe();
    within(host.request(Message::new("orders", "plain"))).await.unwrap();
    assert_eq!(host.event_counts().balancer_fallbacks, 0, "a plain message is placed by the plugin");
    within(host.request(Message::new("orders", "odd").with_header("x-odd", "1"))).await.unwrap();
    let HostEvent::Destination(DestinationEvent::BalancerFallback { reason, .. }) =
        next_event(&mut events, "balancer-fallback").await
    else {
        unreachable!()
    };
    assert!(reason.contains("not one of the 1 eligible endpoints"), "{reason}");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_destinations_hold_none_of_the_hosts_delivery_slots() {
    let (idle, busy) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    // One host-wide slot, two destinations: the idle one must not sit on it.
    let mut config = config(&[&idle], "").replace("workers = 1", "workers = 1\nmax_in_flight = 1");
    config.push_str(&format!(
        "[[destination]]\nname = \"other\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
         [[route]]\nname = \"other\"\nmatch = {{ topic = \"other\" }}\nto = \"other\"\n",
        busy.addr
    ));
    let config = config.replace(
        "[[route]]\nname = \"all\"\n",
        "[[route]]\nname = \"all\"\nmatch = { topic = \"orders\" }\n",
    );
    let host = host(dir.path(), &config).await;
    for n in 0..5 {
        within(host.request(Message::new("other", format!("m{n}")))).await.unwrap();
    }
    assert_eq!((idle.seen().len(), busy.seen().len()), (0, 5));
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_at_its_connection_limit_is_passed_over_while_another_has_room() {
    let (busy, free) = (TestEndpoint::start(Mode::Hold).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    // Round-robin would give the busy endpoint every other message, and its
    // one connection stays taken far longer than an acquisition may wait.
    let extra = "balancer = \"round-robin\"\npool = { max_size = 1, acquire_timeout_ms = 50 }";
    let host = host(dir.path(), &config(&[&busy, &free], extra)).await;
    host.send(Message::new("orders", "held")).await.unwrap();
    within(busy.arrivals(1)).await;
    for n in 0..10 {
        let reply = within(host.request(Message::new("orders", format!("m{n}")))).await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    assert_eq!(free.seen().len(), 10, "the busy endpoint's turns went to the one with room");
    busy.set(Mode::Answer);
    busy.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (11, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_waiting_for_its_probe_is_down_in_the_metrics_yet_takes_the_next_message() {
    // Its breaker opens on a 503 and is half-open a millisecond later: until a probe closes it, the
    // endpoint is down, as its `endpoint-down` event (and no `endpoint-up`) says; yet the host is
    // ready, for the next message goes to it as that probe.
    let failing = TestEndpoint::start(Mode::Fail).await;
    let dir = plugin_dir(&[]);
    let host =
        host(dir.path(), &config(&[&failing], "breaker = { consecutive_failures = 1, open_ms = 1 }")).await;
    let answer = within(host.request(Message::new("orders", "refused"))).await;
    assert!(answer.is_err(), "{answer:?}");
    let half_open = tokio::task::block_in_place(|| {
        crate::support::eventually(|| {
            let api = host.destinations().into_iter().find(|destination| destination.name == "api").unwrap();
            match api.endpoints[0].breaker {
                "half-open" => Ok(api.endpoints[0].clone()),
                breaker => Err(breaker),
            }
        })
    });
    assert!(half_open.serving() && !half_open.up(), "{half_open:?}");
    let text = host.metrics().encode();
    let address = failing.addr.to_string();
    let at_endpoint = [("destination", "api"), ("endpoint", address.as_str())];
    assert_eq!(sample(&text, "switchyard_endpoint_serving", &at_endpoint), Some(0.0));
    assert!(host.unready().is_empty(), "{:?}", host.unready());
    failing.set(Mode::Answer);
    within(host.request(Message::new("orders", "probe"))).await.unwrap();
    let text = host.metrics().encode();
    assert_eq!(sample(&text, "switchyard_endpoint_serving", &at_endpoint), Some(1.0), "closed by the probe");
    drain_and_account(&host).await;
}
