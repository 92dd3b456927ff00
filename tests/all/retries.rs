//! Retries that finish the job: attempts counted in full across endpoints,
//! back to an endpoint tried before when the others are out, never on one
//! that refuses connections, a queue that holds while no endpoint can take
//! traffic and times out on time, and no re-send of what may have been taken
//! unless the destination is idempotent.

use crate::endpoint::{Mode, TestEndpoint};
use crate::exposition::sample;
use crate::support::{builder, drain_and_account, host, plugin_dir, within};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;
use switchyard::{DeliveryError, Host, Message, RequestError, RouteConfig};
use tokio::time::Instant;

/// A config with one `http` destination `api` over `endpoints` with `extra`
/// lines, dead letters to memory destination `dead`.
fn config(endpoints: &[&TestEndpoint], extra: &str) -> String {
    let addresses: Vec<String> = endpoints.iter().map(|endpoint| endpoint.addr.to_string()).collect();
    config_at(&addresses, extra)
}

/// [`config`] with endpoints at `addresses`.
fn config_at(addresses: &[String], extra: &str) -> String {
    let endpoints: Vec<String> = addresses.iter().map(|address| format!("\"{address}\"")).collect();
    format!(
        "[host]\ndead_letter = \"dead\"\nworkers = 1\n[[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [{}]\n{extra}\n\
         [[route]]\nname = \"all\"\nto = \"api\"\n",
        endpoints.join(", ")
    )
}

/// The dead letter `request` ended in, with its headers.
async fn dead_letter_of(host: &Host, request: Message) -> Message {
    let answer = within(host.request(request)).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    within(host.memory("dead").unwrap().recv_async()).await.unwrap()
}

/// How many times `endpoint` saw a message with `body`.
fn copies(endpoint: &TestEndpoint, body: &str) -> usize {
    endpoint.seen().iter().filter(|seen| seen.body == body).count()
}

/// Attempts by outcome at `endpoint` of `api`, from the metrics.
fn attempts(host: &Host, endpoint: &TestEndpoint, outcome: &str) -> f64 {
    let address = endpoint.addr.to_string();
    let labels = [("destination", "api"), ("endpoint", address.as_str()), ("outcome", outcome)];
    sample(&host.metrics().encode(), "switchyard_endpoint_attempts_total", &labels).unwrap_or(0.0)
}

/// Whether the breaker of `endpoint` of `api` is open.
fn ejected(host: &Host, endpoint: &TestEndpoint) -> bool {
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    api.endpoints.iter().any(|status| status.address == endpoint.addr.to_string() && status.breaker == "open")
}

/// The health of each endpoint of `api`.
fn health(host: &Host) -> Vec<&'static str> {
    let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
    api.endpoints.iter().map(|endpoint| endpoint.health).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_attempts_reach_endpoints_three_times_and_the_dead_letter_says_three() {
    let (a, b, gone) = (
        TestEndpoint::start(Mode::Fail).await,
        TestEndpoint::start(Mode::Fail).await,
        TestEndpoint::start(Mode::Answer).await,
    );
    gone.stop().await;
    let dir = plugin_dir(&[]);
    let extra = "idempotent = true\nretry = { attempts = 3, base_ms = 1, max_ms = 5 }\n\
                 breaker = { consecutive_failures = 100, open_ms = 60000 }";
    let host = host(dir.path(), &config(&[&a, &b, &gone], extra)).await;
    for n in 0..3 {
        let body = format!("m{n}");
        let letter = dead_letter_of(&host, Message::new("orders", body.clone())).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
        assert_eq!(letter.header("x-sy-attempts"), Some("3"), "{letter:?}");
        assert!(letter.header("x-sy-last-error").unwrap().contains("503"), "{letter:?}");
        assert_eq!(copies(&a, &body) + copies(&b, &body), 3, "a refused connection is no attempt");
    }
    assert_eq!(attempts(&host, &gone, "retryable"), 1.0, "refused once, then left out");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_back_to_an_endpoint_already_tried_when_the_others_are_ejected() {
    let (a, b) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Fail).await);
    let dir = plugin_dir(&[]);
    let extra = "idempotent = true\nretry = { attempts = 3, base_ms = 1, max_ms = 5 }\n\
                 breaker = { consecutive_failures = 1, open_ms = 60000 }";
    let host = host(dir.path(), &config(&[&a, &b], extra)).await;
    // Until b fails once and is ejected, messages fail over to a.
    let mut warm_up = 0;
    while !ejected(&host, &b) {
        within(host.request(Message::new("orders", format!("warm-up {warm_up}")))).await.unwrap();
        warm_up += 1;
    }
    a.set(Mode::Fail);
    let letter = dead_letter_of(&host, Message::new("orders", "only a")).await;
    assert_eq!(letter.header("x-sy-attempts"), Some("3"), "{letter:?}");
    assert_eq!(copies(&a, "only a"), 3, "every retry went back to a");
    assert_eq!(copies(&b, "only a"), 0, "b is ejected");
    // The quiet neighbour: once a answers again, a retry there delivers.
    a.set(Mode::Alternate);
    for n in 0..4 {
        within(host.request(Message::new("orders", format!("after {n}")))).await.unwrap();
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (warm_up + 4, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_skips_endpoints_that_refuse_connections() {
    let (up, down_1, down_2) = (
        TestEndpoint::start(Mode::Answer).await,
        TestEndpoint::start(Mode::Answer).await,
        TestEndpoint::start(Mode::Answer).await,
    );
    down_1.stop().await;
    down_2.stop().await;
    let dir = plugin_dir(&[]);
    // Two of three down by health checks: too few healthy, so panic mode
    // admits all three.
    let extra = "health = { interval_ms = 50, timeout_ms = 500, rise = 1, fall = 1 }\n\
                 breaker = { open_ms = 60000 }";
    let host = host(dir.path(), &config(&[&up, &down_1, &down_2], extra)).await;
    within(async {
        while health(&host).into_iter().filter(|health| *health == "down").count() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for n in 0..30 {
        within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
    }
    assert_eq!(up.seen().len(), 30);
    for down in [&down_1, &down_2] {
        assert!(attempts(&host, down, "retryable") <= 1.0, "tried again within its window");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (30, 0));
}

/// `switchyard_destination_retries_total` of `api`.
fn retries(host: &Host) -> f64 {
    sample(&host.metrics().encode(), "switchyard_destination_retries_total", &[("destination", "api")])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_not_counted_as_a_retry() {
    // Round-robin tries the stopped endpoint first: its connection refused, the message goes to the
    // other at its one attempt. The previous main counted a retry.
    let (gone, up) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    gone.stop().await;
    let dir = plugin_dir(&[]);
    let extra = "balancer = \"round-robin\"\nretry = { attempts = 1 }";
    let host = host(dir.path(), &config(&[&gone, &up], extra)).await;
    within(host.request(Message::new("orders", "m"))).await.unwrap();
    assert_eq!((attempts(&host, &gone, "retryable"), up.seen().len()), (1.0, 1), "refused, then delivered");
    assert_eq!(retries(&host), 0.0);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_connection_is_refused_counts_once() {
    // Round-robin: the failing endpoint answers 503, the retry goes to the stopped one, is refused
    // there, and goes on to the third. One retry; the previous main counted two.
    let (failing, up, gone) = (
        TestEndpoint::start(Mode::Fail).await,
        TestEndpoint::start(Mode::Answer).await,
        TestEndpoint::start(Mode::Answer).await,
    );
    gone.stop().await;
    let dir = plugin_dir(&[]);
    let extra =
        "balancer = \"round-robin\"\nidempotent = true\nretry = { attempts = 2, base_ms = 1, max_ms = 5 }";
    let host = host(dir.path(), &config(&[&failing, &up, &gone], extra)).await;
    within(host.request(Message::new("orders", "m"))).await.unwrap();
    let tried = [&failing, &gone].map(|endpoint| attempts(&host, endpoint, "retryable"));
    assert_eq!((tried, up.seen().len()), ([1.0, 1.0], 1), "failed, refused, then delivered");
    assert_eq!(retries(&host), 1.0);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

/// Send `n` messages while every endpoint of `endpoints` is down for
/// `outage`, then bring them back on the same ports.
async fn outage(host: &Host, endpoints: &[&TestEndpoint], n: usize, outage: Duration) -> (Instant, Instant) {
    for endpoint in endpoints {
        endpoint.stop().await;
    }
    let down = Instant::now();
    for i in 0..n {
        host.send(Message::new("orders", format!("during {i}"))).await.unwrap();
    }
    let sent = Instant::now();
    // The outage lasts this long whatever the host does: nothing waits on it.
    tokio::time::sleep_until(down + outage).await;
    for endpoint in endpoints {
        endpoint.revive().await;
    }
    (down, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_down_for_two_seconds_messages_wait_and_none_is_dead_lettered() {
    let (a, b) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    // Retries, breaker and queue timeout (30 s) at their defaults.
    let host = host(dir.path(), &config(&[&a, &b], "")).await;
    for i in 0..20 {
        within(host.request(Message::new("orders", format!("before {i}")))).await.unwrap();
    }
    outage(&host, &[&a, &b], 200, Duration::from_secs(2)).await;
    within(async {
        while a.seen().len() + b.seen().len() < 220 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (220, 0));
    assert_eq!(a.seen().len() + b.seen().len(), 220, "each message taken once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_down_past_the_queue_timeout_messages_are_dead_lettered_on_time() {
    let (a, b) = (TestEndpoint::start(Mode::Answer).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let timeout = Duration::from_millis(500);
    let host = host(dir.path(), &config(&[&a, &b], "queue = { timeout_ms = 500 }")).await;
    within(host.request(Message::new("orders", "before"))).await.unwrap();
    let (down, sent) = outage(&host, &[&a, &b], 50, Duration::from_secs(4)).await;
    let letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    assert_eq!(letters.len(), 50, "all dead-lettered within the 4 s outage");
    // Each waited its 500 ms timeout, and not much more (the bound leaves a loaded machine
    // time): the time it waited is in its reason.
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"), "{letter:?}");
        let reason = letter.header("x-sy-dead-letter-reason").unwrap();
        let waited: u64 = reason.split("waited ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!((500..500 + 1500).contains(&waited), "waited {waited} ms on a 500 ms timeout");
    }
    let margin = Duration::from_secs(4) - timeout - Duration::from_millis(1500);
    assert!(sent - down < margin, "sent {:?} into the outage: some may not have waited in it", sent - down);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 50));
    assert_eq!(a.seen().len() + b.seen().len(), 1, "none sent during the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_timeout_fires_while_the_dispatcher_waits_for_a_delivery_slot() {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let host =
        host(dir.path(), &config(&[&endpoint], "queue = { max_in_flight = 1, timeout_ms = 1000 }")).await;
    host.send(Message::new("orders", "first")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    let dead = host.memory("dead").unwrap();
    let mut sent = Vec::new();
    for n in 0..3 {
        host.send(Message::new("orders", format!("late {n}"))).await.unwrap();
        sent.push(Instant::now());
    }
    // Nothing is released: the dispatcher stays blocked on its only slot.
    for sent in sent {
        let letter = tokio::time::timeout(Duration::from_secs(5), dead.recv_async()).await;
        let letter = letter.expect("dead-lettered while the dispatcher is blocked").unwrap();
        let late = sent.elapsed();
        assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"));
        assert!(late < Duration::from_millis(1000 + 1500), "dead-lettered {late:?} after it was sent");
    }
    endpoint.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_timeout_fires_while_a_message_waits_for_a_delivery_slot_of_the_host() {
    // The host's one delivery slot is held by `api`'s message; `other`'s
    // message, taken from its queue, waits for it past its 300 ms timeout.
    let (held, other) = (TestEndpoint::start(Mode::Hold).await, TestEndpoint::start(Mode::Answer).await);
    let dir = plugin_dir(&[]);
    let text = config(&[&held], "timeout_ms = 600000")
        .replacen("[host]", "[host]\nmax_in_flight = 1", 1)
        .replacen("[[route]]\nname = \"all\"", "[[route]]\nname = \"all\"\nmatch = { topic = \"api\" }", 1)
        + &format!(
            "[[destination]]\nname = \"other\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
             queue = {{ timeout_ms = 300 }}\n[[route]]\nname = \"other\"\nmatch = {{ topic = \"other\" }}\nto = \"other\"\n",
            other.addr
        );
    let host = host(dir.path(), &text).await;
    host.send(Message::new("api", "holding")).await.unwrap();
    within(held.arrivals(1)).await;
    let sent = Instant::now();
    host.send(Message::new("other", "late")).await.unwrap();
    let letter = within(host.memory("dead").unwrap().recv_async()).await.unwrap();
    assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"), "{letter:?}");
    assert!(
        sent.elapsed() < Duration::from_millis(300 + 1500),
        "dead-lettered {:?} after it was sent",
        sent.elapsed()
    );
    assert_eq!(other.arrived(), 0, "never sent");
    held.set(Mode::Answer);
    held.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_not_idempotent_does_not_send_again_what_an_endpoint_took_without_answering() {
    let endpoint = TestEndpoint::start(Mode::TakeThenReset).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&endpoint], "breaker = { consecutive_failures = 100 }")).await;
    for n in 0..5 {
        let body = format!("m{n}");
        let letter = dead_letter_of(&host, Message::new("orders", body.clone())).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-uncertain"), "{letter:?}");
        assert_eq!(letter.header("x-sy-attempts"), Some("1"));
        assert!(letter.header("x-sy-dead-letter-reason").unwrap().contains("may have been delivered"));
        assert_eq!(copies(&endpoint, &body), 1, "taken once, never sent again");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_destination_sends_again_after_a_reset() {
    let endpoint = TestEndpoint::start(Mode::TakeThenReset).await;
    let dir = plugin_dir(&[]);
    let extra = "idempotent = true\nretry = { attempts = 3, base_ms = 1, max_ms = 5 }\n\
                 breaker = { consecutive_failures = 100 }";
    let host = host(dir.path(), &config(&[&endpoint], extra)).await;
    let letter = dead_letter_of(&host, Message::new("orders", "again")).await;
    assert_eq!(letter.header("x-sy-attempts"), Some("3"));
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-uncertain"));
    assert_eq!(copies(&endpoint, "again"), 3);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failure_unless_the_destination_says_redirects_are_ok() {
    let endpoint = TestEndpoint::start(Mode::Redirect).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&endpoint], "")).await;
    let letter = dead_letter_of(&host, Message::new("orders", "moved")).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    assert_eq!(letter.header("x-sy-attempts"), Some("1"), "a redirect is final");
    assert!(letter.header("x-sy-last-error").unwrap().contains("302"), "{letter:?}");
    drain_and_account(&host).await;

    let host =
        crate::support::host(dir.path(), &config(&[&endpoint], "options = { redirects_ok = true }")).await;
    within(host.request(Message::new("orders", "moved"))).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_no_connection_free_in_time_waits_for_one_rather_than_dead_letter() {
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let extra = "pool = { max_size = 1, acquire_timeout_ms = 50 }";
    let host = host(dir.path(), &config(&[&endpoint], extra)).await;
    host.send(Message::new("orders", "first")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    host.send(Message::new("orders", "second")).await.unwrap();
    // The second waits for the only connection, and is shed more than once.
    within(async {
        loop {
            let api = host.destinations().into_iter().find(|d| d.name == "api").unwrap();
            if api.endpoints[0].pool.is_some_and(|pool| pool.waits >= 3) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    endpoint.set(Mode::Answer);
    endpoint.release(1);
    within(endpoint.arrivals(2)).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_waits_count_on_when_a_settings_change_rebuilds_the_destination() {
    // A changed destination is built anew, its pools too: the waits counted so far must not fall
    // back to 0, which Prometheus reads as a counter reset.
    let endpoint = TestEndpoint::start(Mode::Hold).await;
    let dir = plugin_dir(&[]);
    let pool = "pool = { max_size = 1, acquire_timeout_ms = 50 }";
    let host = host(dir.path(), &config(&[&endpoint], pool)).await;
    let waits = |host: &Host| {
        let address = endpoint.addr.to_string();
        let labels = [("destination", "api"), ("endpoint", address.as_str())];
        sample(&host.metrics().encode(), "switchyard_endpoint_pool_waits_total", &labels).unwrap_or(0.0)
    };
    host.send(Message::new("orders", "first")).await.unwrap();
    within(endpoint.arrivals(1)).await;
    host.send(Message::new("orders", "second")).await.unwrap();
    crate::support::eventually(|| match waits(&host) {
        1.0.. => Ok(()),
        none => Err(format!("{none} waits")),
    });
    endpoint.set(Mode::Answer);
    endpoint.release(1);
    within(endpoint.arrivals(2)).await;
    let before = waits(&host);

    let retry = format!("{pool}\nretry = {{ attempts = 4 }}");
    let change = within(host.replace_config(&config(&[&endpoint], &retry))).await.unwrap().change;
    assert_eq!(change, switchyard::ConfigChange::Applied);
    assert!(waits(&host) >= before, "{} waits after the change, {before} before", waits(&host));
    drain_and_account(&host).await;
}

/// An address that neither accepts nor refuses a connection: its listener's
/// queue is full (one connection, never accepted), so the kernel drops a
/// new connection's SYN and the connect waits until it is given up.
async fn black_hole() -> (tokio::net::TcpListener, tokio::net::TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let filler = within(tokio::net::TcpStream::connect(&address)).await.unwrap();
    (listener, filler, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_at_its_deadline_before_it_sent_is_no_attempt_and_never_called_uncertain() {
    // One message connects to the black hole (its connect is cut at the
    // attempt's 100 ms), the other waits for the pool's only connection
    // meanwhile (cut at its 100 ms too): neither sent anything, so neither
    // may be dead-lettered as possibly delivered. Both wait out their queue
    // timeout for an endpoint that can take them.
    let (_listener, _filler, address) = black_hole().await;
    let dir = plugin_dir(&[]);
    let extra =
        "timeout_ms = 100\nqueue = { timeout_ms = 700 }\npool = { max_size = 1, acquire_timeout_ms = 5000 }";
    let host = host(dir.path(), &config_at(&[address], extra)).await;
    let (first, second) = tokio::join!(
        host.request(Message::new("orders", "first")),
        host.request(Message::new("orders", "second"))
    );
    for answer in [first, second] {
        assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    }
    let letters: Vec<Message> = host.memory("dead").unwrap().drain().collect();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"), "never sent: {letter:?}");
    }
    let text = host.metrics().encode();
    let labels = [("transport", "http"), ("destination", "api"), ("outcome", "retryable")];
    let timed_out = sample(&text, "switchyard_transport_attempts_total", &labels).unwrap_or(0.0);
    assert!(timed_out >= 1.0, "the connect cut at its deadline counts against the endpoint:\n{text}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 2));
}

#[tokio::test]
async fn a_destination_in_code_that_answers_retryable_is_retried() {
    let dir = plugin_dir(&[]);
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let flaky = move |_message: Message| {
        let call = counted.fetch_add(1, SeqCst) + 1;
        async move {
            match call {
                1 | 2 => Err(DeliveryError::Retryable(format!("busy ({call})"))),
                _ => Ok(None),
            }
        }
    };
    let host = builder(dir.path())
        .destination("flaky", flaky)
        .route(RouteConfig::new("flaky", "flaky", "flaky"))
        .build()
        .await
        .unwrap();
    within(host.request(Message::new("flaky", "x"))).await.unwrap();
    assert_eq!(calls.load(SeqCst), 3);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_refusal_window_ends_one_message_finds_out_whether_the_endpoint_is_back_not_every_one() {
    // 20 messages wait for an endpoint that refuses connections, its refusal window 100 ms, their
    // queue timeout 2 s: each time the window ends, one of them tries it (at most 20 tries, and
    // the 20 of the first moment), not all 20 (400 tries; the previous main made 277 with a 50 ms
    // window and a 1 s timeout, against 39 now). Meanwhile they all count as queued (but the one
    // trying), in the queue or taken from it to wait.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let dir = plugin_dir(&[]);
    let extra = "breaker = { open_ms = 100 }\nqueue = { timeout_ms = 2000 }";
    let host = host(dir.path(), &config_at(std::slice::from_ref(&refusing), extra)).await;
    for n in 0..20 {
        host.send(Message::new("orders", format!("m{n}"))).await.unwrap();
    }
    tokio::task::block_in_place(|| {
        crate::support::eventually(|| {
            let api = host.destinations().into_iter().find(|destination| destination.name == "api").unwrap();
            match api.queued {
                Some(19 | 20) => Ok(()),
                queued => Err(queued),
            }
        })
    });
    let dead = host.memory("dead").unwrap();
    for _ in 0..20 {
        let letter = within(dead.recv_async()).await.unwrap();
        assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"), "{letter:?}");
    }
    let text = host.metrics().encode();
    let labels = [("destination", "api"), ("endpoint", refusing.as_str()), ("outcome", "retryable")];
    let tries = sample(&text, "switchyard_endpoint_attempts_total", &labels).unwrap();
    assert!(tries <= 20.0 + 2000.0 / 100.0 + 2.0, "{tries} tries to connect in 2 s");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 20));
}
