//! The `http` destination against real servers on 127.0.0.1: failover,
//! ejection, retries, final errors, connection reuse, and nothing lost.

use crate::support::{drain_and_account, eventually, host, next, plugin_dir, within};
use axum::http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchyard::{DeadLetterReason, Host, Message, RequestError};
use switchyard_plugin_artifacts as artifacts;

/// A server answering every POST with `status` and the upper-cased body;
/// returns its address and its hit counter.
async fn server(status: StatusCode) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            (status, [("x-served-by", "test-server")], body.to_uppercase())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

/// An address nothing listens on any more.
fn dead_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn config(endpoints: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|addr| format!("\"{addr}\"")).collect();
    format!(
        r#"
[host]
dead_letter = "dead"
[[destination]]
name = "dead"
transport = "memory"
[[destination]]
name = "api-dead"
transport = "memory"
[[destination]]
name = "api"
transport = "http"
dead_letter = "api-dead"
endpoints = [{}]
options = {{ path = "/ingest" }}
idempotent = true
retry = {{ attempts = 3, base_ms = 1, max_ms = 5 }}
breaker = {{ consecutive_failures = 2, open_ms = 60000 }}
[[route]]
name = "all"
to = "api"
"#,
        endpoints.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_skips_dead_and_failing_endpoints_and_ejects_them() {
    let (ok, ok_hits) = server(StatusCode::OK).await;
    let (other_ok, other_ok_hits) = server(StatusCode::OK).await;
    let (failing, failing_hits) = server(StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = plugin_dir(&[]);
    // Two of four out (the dead one refusing connections, the failing one
    // ejected) is within the ejection cap (half), and two healthy of four
    // keeps the destination out of panic mode.
    let host = host(dir.path(), &config(&[dead_address(), failing, ok, other_ok])).await;
    for n in 0..30 {
        let reply = within(host.request(Message::new("orders", format!("order {n}")))).await;
        let reply = reply.unwrap().expect("the endpoint replies");
        assert_eq!(reply.payload, format!("ORDER {n}"));
        assert_eq!(reply.header("x-served-by"), Some("test-server"));
    }
    assert_eq!(ok_hits.load(Ordering::SeqCst) + other_ok_hits.load(Ordering::SeqCst), 30);
    // Two consecutive failures eject an endpoint for a minute: the failing
    // one is not asked again after that.
    assert!(failing_hits.load(Ordering::SeqCst) <= 2, "failing endpoint hit {failing_hits:?} times");
    let api = host.destinations().into_iter().find(|destination| destination.name == "api").unwrap();
    let endpoints = api.endpoints;
    let breakers: Vec<&str> = endpoints.iter().map(|endpoint| endpoint.breaker).collect();
    assert_eq!(breakers, ["closed", "open", "closed", "closed"], "the failing endpoint is ejected");
    assert!(endpoints[0].refusing && !endpoints[0].serving(), "the dead one refused once: left out");
    assert_eq!(endpoints[2].address, ok.to_string());
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (30, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter_with_the_last_error() {
    let (failing, failing_hits) = server(StatusCode::SERVICE_UNAVAILABLE).await;
    let dir = plugin_dir(&[]);
    let dead = dead_address();
    let host = host(dir.path(), &config(&[dead, failing])).await;
    let answer = within(host.request(Message::new("orders", "lost cause"))).await;
    let Err(RequestError::DeadLettered(DeadLetterReason::Delivery { destination, error })) = answer else {
        panic!("expected a delivery dead letter, got {answer:?}");
    };
    assert_eq!(destination, "api");
    assert!(error.to_string().contains("gave up after 3 attempts; last: "), "{error}");
    let letter = next(&host.memory("api-dead").unwrap()).await;
    assert_eq!(
        letter.header("x-sy-dead-letter"),
        Some("delivery-failed"),
        "in the destination's own dead letter"
    );
    assert!(host.memory("dead").unwrap().is_empty());
    assert_eq!(letter.payload, "lost cause");
    assert_eq!(letter.header("x-sy-attempts"), Some("3"));
    let last_error = letter.header("x-sy-last-error").expect("the last error");
    let endpoint_said = |addr: SocketAddr| last_error.starts_with(&format!("{addr}: "));
    assert!(endpoint_said(dead) || endpoint_said(failing), "names the endpoint: {last_error}");
    assert!(error.to_string().ends_with(last_error), "{error} / {last_error}");
    assert!(failing_hits.load(Ordering::SeqCst) >= 1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_is_not_retried() {
    let (rejecting, hits) = server(StatusCode::BAD_REQUEST).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[rejecting])).await;
    let answer = within(host.request(Message::new("orders", "malformed"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 400 is final: no retry");
    let letter = next(&host.memory("api-dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    assert_eq!(letter.header("x-sy-attempts"), Some("1"));
    let last_error = letter.header("x-sy-last-error").expect("the last error");
    assert!(last_error.starts_with(&format!("{rejecting}: ")), "names the endpoint: {last_error}");
    assert!(last_error.contains("400"), "quotes the status: {last_error}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_is_delivered_with_no_reply() {
    let (empty, hits) = server(StatusCode::NO_CONTENT).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[empty])).await;
    let answer = within(host.request(Message::new("orders", "fire and forget"))).await;
    assert_eq!(answer.unwrap(), None, "no content, no reply");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_header_that_frames_a_request_is_not_copied_into_it() {
    // Headers the transport owns: a message's content-length cut its body short.
    let (echo, hits) = server(StatusCode::OK).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[echo])).await;
    let framing = [("content-length", "3"), ("Content-Length", "0"), ("Transfer-Encoding", "chunked")];
    for (name, value) in framing {
        let message = Message::new("orders", "hello-world").with_header(name, value);
        let reply = within(host.request(message)).await.unwrap().expect("a reply");
        assert_eq!(&reply.payload[..], b"HELLO-WORLD", "the whole body went out despite {name}: {value}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_endpoint_took_by_its_queue_timeout_says_why_the_last_try_failed() {
    let dir = plugin_dir(&[]);
    let text = config(&[dead_address()]).replace("idempotent = true", "queue = { timeout_ms = 200 }");
    let host = host(dir.path(), &text).await;
    let answer = within(host.request(Message::new("orders", "nobody listens"))).await;
    let Err(RequestError::DeadLettered(reason)) = answer else { panic!("{answer:?}") };
    let reason = reason.to_string();
    assert!(reason.contains("past its timeout; not sent (the last try: "), "{reason}");
    assert!(reason.to_ascii_lowercase().contains("refused"), "the refused connection: {reason}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_carries_the_requests_id_and_no_host_header_an_endpoint_forged() {
    let app = axum::Router::new().fallback(|| async {
        let forged = [("x-sy-id", "forged"), ("x-sy-dead-letter", "nope"), ("x-kept", "yes")];
        (StatusCode::OK, forged, "answer")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[endpoint])).await;
    let ingress = crate::support::start_ingress(&host).await;
    let response = tokio::task::spawn_blocking(move || {
        crate::support::http_raw(ingress, "POST", "/v1/messages/orders?wait=true", &[], b"question")
    });
    let response = within(response).await.unwrap().to_ascii_lowercase();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.1 200") && body == "answer", "{response}");
    assert!(head.contains("\r\nx-kept: yes"), "{head}");
    assert!(!head.contains("forged") && !head.contains("x-sy-dead-letter"), "{head}");
    let id = head.split("\r\nx-sy-id: ").nth(1).map(|rest| &rest[..36]);
    assert!(id.is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()), "the request's id: {head}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_pooled_connection() {
    use axum::serve::ListenerExt;
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap, body: String| async move {
        let host = headers.get("host").and_then(|host| host.to_str().ok()).unwrap_or_default().to_owned();
        ([("x-host", host)], body.to_uppercase())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |_| _ = counted.fetch_add(1, Ordering::SeqCst));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[addr])).await;
    for n in 0..20 {
        let reply = within(host.request(Message::new("orders", format!("order {n}")))).await;
        let reply = reply.unwrap().expect("the endpoint replies");
        assert_eq!(reply.payload, format!("ORDER {n}"));
        assert_eq!(
            reply.header("x-host"),
            Some(addr.to_string().as_str()),
            "the Host header names the endpoint"
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "sequential requests share one pooled connection");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0));
}

/// A server that answers one request per connection, 200 with no body and no
/// `connection: close`, then closes it; it reports the connection's number
/// once closed.
async fn one_request_per_connection_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for connection in 1.. {
            let (mut stream, _) = listener.accept().await.unwrap();
            // The request's head, then as many body bytes as its content-length says.
            let mut request = Vec::new();
            let head_end = loop {
                let mut chunk = [0; 4096];
                let read = stream.read(&mut chunk).await.unwrap();
                assert!(read > 0, "the client hung up before a whole request");
                request.extend_from_slice(&chunk[..read]);
                if let Some(at) = request.windows(4).position(|window| window == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            while request.len() < head_end + length {
                let mut chunk = [0; 4096];
                let read = stream.read(&mut chunk).await.unwrap();
                assert!(read > 0, "the client hung up before a whole body");
                request.extend_from_slice(&chunk[..read]);
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            drop(stream);
            let _ = report.send(connection);
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_endpoint_closed_is_not_reused_and_no_attempt_fails() {
    let (addr, mut closed) = one_request_per_connection_server().await;
    let dir = plugin_dir(&[]);
    // One attempt a message: a request sent into the closed connection would be dead-lettered.
    let host = host(dir.path(), &config(&[addr]).replacen("attempts = 3", "attempts = 1", 1)).await;
    for n in 1..=3 {
        let reply = within(host.request(Message::new("orders", format!("order {n}")))).await;
        assert!(matches!(reply, Ok(Some(_))), "message {n} is delivered at its one attempt: {reply:?}");
        // The endpoint has closed the connection that message used, which went back to the pool
        // first: the next message must go out on a new one, not into the closed one.
        assert_eq!(within(closed.recv()).await, Some(n), "message {n} went out on connection {n}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_endpoints_get_messages_in_proportion_to_their_configured_weights() {
    let (heavy, heavy_hits) = server(StatusCode::OK).await;
    let (light, light_hits) = server(StatusCode::OK).await;
    let endpoints = format!(r#"[{{ address = "{heavy}", weight = 3 }}, "{light}"]"#);
    let config = format!(
        "{}[[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = {endpoints}\n\
         balancer = \"weighted\"\n[[route]]\nname = \"all\"\nto = \"api\"\n",
        crate::support::MEMORY_OUT
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config).await;
    let api = host.destinations().into_iter().find(|destination| destination.name == "api").unwrap();
    let weights: Vec<(u32, u32)> =
        api.endpoints.iter().map(|endpoint| (endpoint.configured_weight, endpoint.weight)).collect();
    assert_eq!(weights, [(3, 300), (1, 100)], "the admin API shows both weights");
    for n in 0..40 {
        let reply = within(host.request(Message::new("orders", format!("order {n}")))).await;
        assert_eq!(reply.unwrap().expect("the endpoint replies").payload, format!("ORDER {n}"));
        let hits = (heavy_hits.load(Ordering::SeqCst), light_hits.load(Ordering::SeqCst));
        if (n + 1) % 4 == 0 {
            // Smooth weighted round-robin gives each endpoint exactly its share of every 4 picks.
            assert_eq!(hits, (3 * (n + 1) / 4, (n + 1) / 4), "after {} messages", n + 1);
        }
    }
    assert_eq!((heavy_hits.load(Ordering::SeqCst), light_hits.load(Ordering::SeqCst)), (30, 10));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (40, 0));
}

/// A server that answers each request's headers 200, then streams an endless chunked body until
/// the client goes; returns its address, its request counter, and the bytes it wrote to the first.
async fn endless_reply_server() -> (SocketAddr, Arc<AtomicUsize>, tokio::sync::oneshot::Receiver<u64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let (report, written) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut report = Some(report);
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0; 4096];
            let _ = stream.read(&mut request).await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let report = report.take();
            tokio::spawn(async move {
                stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                let mut total = 0_u64;
                // Up to 1 GiB, unless the client hangs up first.
                while total < 1 << 30 && stream.write_all(chunk.as_bytes()).await.is_ok() {
                    total += 0x10000;
                }
                if let Some(report) = report {
                    let _ = report.send(total);
                }
            });
        }
    });
    (addr, requests, written)
}

/// The endpoints of destination `api`: (breaker, serving) each.
fn api_endpoints(host: &switchyard::Host) -> Vec<(&'static str, bool)> {
    let api = host.destinations().into_iter().find(|destination| destination.name == "api").unwrap();
    api.endpoints.iter().map(|endpoint| (endpoint.breaker, endpoint.serving())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_body_past_max_message_bytes_is_cut_unread_and_the_message_counted_delivered() {
    // The 200 says the endpoint took the message: only its reply is refused. Dead-lettered, a
    // redrive would deliver it twice.
    let (addr, requests, written) = endless_reply_server().await;
    let dir = plugin_dir(&[]);
    // One failure would eject the endpoint: a refused reply is none.
    let text = config(&[addr]).replacen("[host]", "[host]\nmax_message_bytes = 1048576", 1);
    let text = text.replacen("consecutive_failures = 2", "consecutive_failures = 1", 1);
    let host = host(dir.path(), &text).await;
    let answer = within(host.request(Message::new("orders", "{}"))).await;
    let Err(RequestError::ReplyRefused { destination, problem }) = answer else {
        panic!("delivered, its reply refused: {answer:?}")
    };
    assert_eq!(destination, "api");
    let refused = format!("{addr}: HTTP 200 OK: a reply of more than 1048576 bytes, not read");
    assert_eq!(problem, refused);
    let written = within(written).await.unwrap();
    assert!(written < 64 << 20, "the host hung up early, not after {written} bytes");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "delivered once: not sent again");
    assert_eq!(api_endpoints(&host), [("closed", true)], "an answer from a working endpoint");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
    assert!(host.memory("api-dead").unwrap().is_empty() && host.memory("dead").unwrap().is_empty());
}

/// A server that answers each request 200 with a body of 100 bytes it sends only 7 of, then holds
/// the connection until the client goes; returns its address and a channel told of each request
/// as it arrives.
async fn stalled_body_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for request in 1.. {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let _ = arrived.send(request);
            tokio::spawn(async move {
                let mut buffer = [0; 4096];
                let _ = stream.read(&mut buffer).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial";
                stream.write_all(head.as_bytes()).await.unwrap();
                // Held until the client hangs up: the rest of the body never comes.
                while matches!(stream.read(&mut buffer).await, Ok(1..)) {}
            });
        }
    });
    (addr, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_body_that_stalls_after_a_200_is_not_sent_again_and_the_requester_is_told_it_was_delivered() {
    // Idempotent, three attempts: an attempt cut at its deadline with no answer would be sent
    // again, but the 200 came, so the endpoint took it, and a client must not send it again either.
    let (addr, mut arrivals) = stalled_body_server().await;
    let dir = plugin_dir(&[]);
    // One failure would eject the endpoint: a refused reply is none.
    let text = config(&[addr])
        .replacen("idempotent = true\n", "idempotent = true\ntimeout_ms = 300\n", 1)
        .replacen("consecutive_failures = 2", "consecutive_failures = 1", 1);
    let host = host(dir.path(), &text).await;
    let ingress = crate::support::start_ingress(&host).await;
    let answer = tokio::task::spawn_blocking(move || {
        crate::support::http(ingress, "POST", "/v1/messages/orders?wait=true", &[], b"question")
    });
    let (status, body) = within(answer).await.unwrap();
    assert_eq!(status, 502, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["delivered"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("delivered to \"api\", but its reply was refused: "), "{error}");
    assert!(error.ends_with(&format!("{addr}: its reply not read in full within 300ms")), "{error}");
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok(), "{body}");
    assert_eq!(api_endpoints(&host), [("closed", true)], "an answer from a working endpoint");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
    assert!(host.memory("api-dead").unwrap().is_empty() && host.memory("dead").unwrap().is_empty());
    assert_eq!(within(arrivals.recv()).await, Some(1));
    assert!(arrivals.try_recv().is_err(), "exactly one request reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_stages_to_a_network_destination_is_served_while_the_only_worker_is_held() {
    // The one worker sleeps in a plugin for 10 s on route `slow`. Route `all` has no stages and
    // one network destination: admission puts its message into that destination's queue.
    let (served, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |body: String| {
        let _ = served.send(body);
        async { StatusCode::OK }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = plugin_dir(&[("sleepy", artifacts::FAULTY_SLEEP)]);
    let slow = "[[plugin]]\nname = \"sleepy\"\nlimits = { timeout_ms = 60000 }\n\
                config = { trigger = \"x-poison\", sleep_ms = \"10000\" }\n\
                [[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
                [[route]]\nname = \"slow\"\nmatch = { topic = \"slow.*\" }\nstages = [\"filter:sleepy\"]\nto = \"out\"\n\
                [[route]]\nname = \"all\"\n";
    let config = config(&[addr]).replacen("[host]\n", "[host]\nworkers = 1\n", 1).replacen(
        "[[route]]\nname = \"all\"\n",
        slow,
        1,
    );
    let host = host(dir.path(), &config).await;
    let out = host.memory("out").unwrap();
    host.send(Message::new("slow.job", "asleep").with_header("x-poison", "1")).await.unwrap();
    host.send(Message::new("fast", "straight")).await.unwrap();
    assert_eq!(within(arrivals.recv()).await.as_deref(), Some("straight"));
    // Through the worker it would have come after the sleeping message, settled first.
    assert!(out.is_empty(), "the sleeping message was settled before the other reached its server");
    assert_eq!(next(&out).await.payload, "asleep".as_bytes());
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (2, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_on_a_route_without_stages_whose_destination_queue_is_full_queues_for_the_workers() {
    // The server holds every request until the test opens the gate; one delivery at a time, and
    // a destination queue of one, so the third message finds it full.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (served, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let held = gate.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let (gate, served) = (held.clone(), served.clone());
        async move {
            let _ = served.send(body);
            gate.acquire().await.unwrap().forget();
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = config(&[addr]).replacen(
        "idempotent = true\n",
        "idempotent = true\nqueue = { capacity = 1, max_in_flight = 1 }\n",
        1,
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config).await;
    host.try_send(Message::new("orders", "1")).await.unwrap();
    assert_eq!(within(arrivals.recv()).await.as_deref(), Some("1"), "the first is at the server, held");
    host.try_send(Message::new("orders", "2")).await.unwrap();
    // The destination's queue holds the second: the third goes to the workers' queue, not refused.
    host.try_send(Message::new("orders", "3")).await.unwrap();
    assert_eq!(host.stats().accepted, 3);
    gate.add_permits(3);
    let mut rest = [within(arrivals.recv()).await.unwrap(), within(arrivals.recv()).await.unwrap()];
    rest.sort();
    assert_eq!(rest, ["2", "3"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (3, 3, 0));
}

/// A server answering its first POST 429 with `Retry-After: 1` (and a body longer than the host
/// reads) and every later one 200; each request's arrival is sent on the channel.
async fn rate_limiting_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>) {
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let first = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback(move || {
        let (arrived, first) = (arrived.clone(), first.clone());
        async move {
            let _ = arrived.send(std::time::Instant::now());
            match first.fetch_add(1, Ordering::SeqCst) {
                0 => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down ".repeat(1000)),
                _ => (StatusCode::OK, [("retry-after", "0")], String::new()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_even_when_not_idempotent_and_its_retry_after_holds_every_message_back() {
    // A 429 says the endpoint did not take the message: safe to send again to a destination that
    // is not idempotent. Its `Retry-After` leaves the endpoint out for that long, for every message
    // (they wait in the queue, spending no attempt), and its body, past `max_message_bytes`, is
    // only the error's text.
    let (limited, mut arrivals) = rate_limiting_server().await;
    let dir = plugin_dir(&[]);
    let text = config(&[limited])
        .replace("idempotent = true", "idempotent = false")
        .replace("[host]\n", "[host]\nmax_message_bytes = 4096\n");
    let host = host(dir.path(), &text).await;
    let first = tokio::spawn({
        let host = host.clone();
        async move { within(host.request(Message::new("orders", "first"))).await }
    });
    let refused_at = within(arrivals.recv()).await.unwrap();
    // Once the host has read the 429, the second message waits too.
    tokio::task::block_in_place(|| {
        eventually(|| {
            let api = host.destinations().into_iter().find(|destination| destination.name == "api");
            match api.unwrap().endpoints[0].refusing {
                true => Ok(()),
                false => Err("not left out yet"),
            }
        })
    });
    let second = within(host.request(Message::new("orders", "second")));
    let (first, second) = (first.await.unwrap(), second.await);
    assert!(first.is_ok() && second.is_ok(), "both delivered: {first:?} {second:?}");
    for _ in 0..2 {
        let arrived = arrivals.try_recv().expect("each message arrived once more");
        let waited = arrived - refused_at;
        assert!(
            waited >= std::time::Duration::from_secs(1),
            "sent {waited:?} after the 429's Retry-After: 1"
        );
    }
    assert!(arrivals.try_recv().is_err(), "three requests in all");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_a_request_sent_before_a_429_does_not_end_the_pause_it_asked_for() {
    // "slow" is held at the endpoint while "limited" gets its 429 (Retry-After: 1); "slow" then
    // answers 200, and the endpoint stays out for the rest of the pause (that answer ended it).
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let limited_once = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().fallback({
        let release = release.clone();
        move |body: String| {
            let (arrived, release, limited_once) = (arrived.clone(), release.clone(), limited_once.clone());
            async move {
                let _ = arrived.send((body.clone(), std::time::Instant::now()));
                match body.as_str() {
                    "slow" => release.notified().await,
                    "limited" if limited_once.fetch_add(1, Ordering::SeqCst) == 0 => {
                        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]);
                    }
                    _ => {}
                }
                (StatusCode::OK, [("retry-after", "0")])
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[addr]).replace("idempotent = true", "idempotent = false")).await;
    let request = |body: &'static str| {
        let host = host.clone();
        tokio::spawn(async move { within(host.request(Message::new("orders", body))).await })
    };
    let slow = request("slow");
    assert_eq!(within(arrivals.recv()).await.unwrap().0, "slow");
    let limited = request("limited");
    let (body, refused_at) = within(arrivals.recv()).await.unwrap();
    assert_eq!(body, "limited");
    let refusing = || {
        let api = host.destinations().into_iter().find(|destination| destination.name == "api");
        api.unwrap().endpoints[0].refusing
    };
    tokio::task::block_in_place(|| eventually(|| refusing().then_some(()).ok_or("not left out yet")));
    release.notify_one();
    assert!(slow.await.unwrap().is_ok());
    assert!(refusing(), "still left out: the 200 answered a request sent before the 429");
    assert!(limited.await.unwrap().is_ok(), "delivered after the pause");
    let (body, arrived) = arrivals.try_recv().expect("sent once more");
    assert_eq!(body, "limited");
    assert!(arrived - refused_at >= std::time::Duration::from_secs(1), "sent again within the pause");
    drain_and_account(&host).await;
}

/// A server whose first connection answers `first` (a status line and headers that promise a body
/// of 100 bytes, and 4 of them) and then, after `then_hang_up`, closes, or else holds the connection
/// until the client goes; every later connection answers 200 "ok". Returns its address and a channel
/// told of each request as it arrives.
async fn failure_with_short_body_server(
    first: &'static str,
    then_hang_up: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for request in 1.. {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn({
                let arrived = arrived.clone();
                async move {
                    let mut buffer = [0; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let _ = arrived.send(request);
                    if request > 1 {
                        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        stream.write_all(ok.as_bytes()).await.unwrap();
                    } else {
                        stream
                            .write_all(format!("{first}\r\ncontent-length: 100\r\n\r\nbusy").as_bytes())
                            .await
                            .unwrap();
                        if then_hang_up {
                            return;
                        }
                    }
                    // Held until the client hangs up.
                    while matches!(stream.read(&mut buffer).await, Ok(1..)) {}
                }
            });
        }
    });
    (addr, arrivals)
}

/// Request a message of `host`, whose endpoint refuses the first request (its body cut off or
/// stalled) and answers the second "ok": the reply is the second's, and there were two requests.
async fn answered_by_the_second_request(
    host: &Host,
    arrivals: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let reply = within(host.request(Message::new("orders", "question"))).await;
    assert_eq!(reply.unwrap().expect("the second attempt's reply").payload, "ok");
    assert_eq!((within(arrivals.recv()).await, within(arrivals.recv()).await), (Some(1), Some(2)));
    assert!(arrivals.try_recv().is_err(), "two requests in all");
    let stats = drain_and_account(host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_whose_body_is_cut_off_is_still_a_refusal_and_retried_when_not_idempotent() {
    // The status line said the endpoint did not take the message: the body is only the error's
    // text, and losing it does not make the message "maybe delivered".
    let first = "HTTP/1.1 429 Too Many Requests\r\nretry-after: 0";
    let (addr, mut arrivals) = failure_with_short_body_server(first, true).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[addr]).replace("idempotent = true\n", "")).await;
    answered_by_the_second_request(&host, &mut arrivals).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_whose_body_stalls_past_the_deadline_is_still_a_refusal() {
    // Cut at its deadline while its body was read, the attempt had its answer: a refusal, not an
    // attempt that went out and heard nothing.
    let first = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0";
    let (addr, mut arrivals) = failure_with_short_body_server(first, false).await;
    let dir = plugin_dir(&[]);
    let text = config(&[addr]).replace("idempotent = true\n", "timeout_ms = 300\n");
    let host = host(dir.path(), &text).await;
    answered_by_the_second_request(&host, &mut arrivals).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_whose_body_is_cut_off_is_not_retried() {
    // Idempotent, three attempts: a 404 is final whatever becomes of its body.
    let (addr, mut arrivals) = failure_with_short_body_server("HTTP/1.1 404 Not Found", true).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[addr])).await;
    let answer = within(host.request(Message::new("orders", "question"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("api-dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-attempts"), Some("1"));
    let last_error = letter.header("x-sy-last-error").expect("the last error");
    assert!(last_error.starts_with(&format!("{addr}: HTTP 404 Not Found: ")), "{last_error}");
    assert_eq!(within(arrivals.recv()).await, Some(1));
    assert!(arrivals.try_recv().is_err(), "one request in all");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}
