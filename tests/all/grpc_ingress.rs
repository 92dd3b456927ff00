//! gRPC ingress (`switchyard.v1.Ingress`) through the generated client over real HTTP/2: Publish,
//! Publish with wait, PublishStream with a bad message among good ones, a stream cut mid-way, one
//! that breaks off, runs past its cap, pauses or is stopped, idle connections, and the ingress token.

use crate::support::{builder, drain_and_account, eventually, next, plugin_dir, within};
use futures_util::StreamExt;
use std::collections::HashMap;
use switchyard::ingress::{
    IngressClient, PublishOutcome, PublishRequest, PublishResult, PublishStreamReply, Refusal,
};
use switchyard::{Config, GrpcIngress, Host, Message, RouteConfig};

/// Serve `host`'s gRPC ingress on 127.0.0.1 (any free port) while the test's runtime lives; where.
async fn serve(host: &Host) -> std::net::SocketAddr {
    let ingress = GrpcIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    tokio::spawn(ingress.serve(std::future::pending()));
    addr
}

/// [`serve`] `host`'s gRPC ingress; a client.
async fn client(host: &Host) -> IngressClient<tonic::transport::Channel> {
    let addr = serve(host).await;
    IngressClient::connect(format!("http://{addr}")).await.unwrap()
}

/// The body frames of a raw HTTP/2 request.
type Frames = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>
            + Send,
    >,
>;

/// A call of `method` (`Publish`, `PublishStream`) to the ingress at `addr` over a connection of its
/// own whose body is `frames`, as no gRPC client sends it (cut short, never ending, trickled); its
/// answer, with the connection's sender and task.
async fn call_raw(
    addr: std::net::SocketAddr,
    method: &str,
    frames: Frames,
) -> (
    hyper::Response<hyper::body::Incoming>,
    hyper::client::conn::http2::SendRequest<http_body_util::StreamBody<Frames>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{addr}/switchyard.v1.Ingress/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let answer = within(sender.send_request(request)).await.expect("an answer");
    (answer, sender, connection)
}

fn publish(topic: &str, payload: &str) -> PublishRequest {
    PublishRequest { topic: topic.into(), payload: payload.into(), ..PublishRequest::default() }
}

async fn host(text: &str) -> (Host, tempfile::TempDir) {
    let dir = plugin_dir(&[]);
    let config = Config::from_toml("t.toml", text).unwrap();
    let host = builder(dir.path())
        .config("t.toml", config)
        .destination("echo", |message: Message| async move {
            Ok(Some(Message::new("echoed", message.payload).with_header("x-echo", "yes")))
        })
        .route(RouteConfig::new("echo", "echo.>", "echo"))
        .build()
        .await
        .unwrap();
    (host, dir)
}

const CONFIG: &str = "[host]\nworkers = 2\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
                      queue = { capacity = 10000 }\n[[route]]\nname = \"orders\"\nmatch = { topic = \"orders.>\" }\nto = \"out\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_admits_a_message_and_with_wait_answers_with_its_reply() {
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let mut request = publish("orders.eu", "one");
    request.headers = HashMap::from([("x-tenant".to_owned(), "a".to_owned())]);
    let id = client.publish(request).await.unwrap().into_inner().id;
    let delivered = next(&host.memory("out").unwrap()).await;
    assert_eq!(delivered.unique_id(), Some(id.as_str()));
    assert_eq!(delivered.header("x-tenant"), Some("a"));
    let waited = PublishRequest { wait: true, ..publish("echo.q", "ping") };
    let reply = client.publish(waited).await.unwrap().into_inner().reply.expect("the echo's reply");
    assert_eq!(
        (reply.payload.as_slice(), reply.headers.get("x-echo").map(String::as_str)),
        (&b"ping"[..], Some("yes"))
    );
    let mut spoofed = publish("orders.eu", "x");
    spoofed.headers.insert("x-sy-id".into(), "mine".into());
    let refused = client.publish(spoofed).await.expect_err("an x-sy- header");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_admitted_message_by_message_with_a_result_for_each() {
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let requests = (0..1000).map(|n| match n {
        500 => publish("bad..topic", "refused"),
        n => publish("orders.eu", &format!("order {n}")),
    });
    let reply = client.publish_stream(futures_util::stream::iter(requests)).await.unwrap().into_inner();
    assert_eq!(reply.accepted, 999);
    assert_eq!(reply.results.len(), 1000);
    let refused = &reply.results[500];
    let Some(switchyard::ingress::PublishOutcome::Refused(refusal)) = &refused.outcome else {
        panic!("{refused:?}")
    };
    assert_eq!(refusal.status, 400, "{refusal:?}");
    let ids: Vec<&PublishResult> = reply.results.iter().filter(|result| result != &refused).collect();
    assert_eq!(ids.len(), 999);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (999, 999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_call_needs_it() {
    let text = format!("{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n");
    let (host, _dir) = host(&text).await;
    let mut client = client(&host).await;
    let refused = client.publish(publish("orders.eu", "x")).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(publish("orders.eu", "x"));
    request.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    client.publish(request).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_the_token_is_refused_on_its_headers_before_its_message_comes() {
    // The token was checked once the whole message was read and decoded: a call without it made the
    // host read and hold its message, or wait for one that never came. Here none comes, and the pause
    // limit is far off: only a check on the headers answers.
    let text = format!(
        "{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\nheader_timeout_ms = 3600000\n"
    );
    let (host, _dir) = host(&text).await;
    let addr = serve(&host).await;
    let (answer, ..) = call_raw(addr, "Publish", Box::pin(futures_util::stream::pending())).await;
    let status = answer.headers().get("grpc-status").and_then(|status| status.to_str().ok());
    assert_eq!(status, Some("16"), "UNAUTHENTICATED: {answer:?}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_mid_way_keeps_what_it_admitted_and_a_new_stream_is_served() {
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let (requests, mut stream) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..100 {
        requests.send(publish("orders.eu", &format!("order {n}"))).unwrap();
    }
    // The stream stays open (its sender lives) until the call is dropped: a client that goes away.
    let call = tokio::spawn({
        let mut client = client.clone();
        let stream = futures_util::stream::poll_fn(move |context| stream.poll_recv(context));
        async move { client.publish_stream(stream).await }
    });
    crate::support::eventually(|| match host.stats().accepted {
        100 => Ok(()),
        accepted => Err(accepted),
    });
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    drop(requests);
    let again = (100..200).map(|n| publish("orders.eu", &format!("order {n}")));
    let reply = client.publish_stream(futures_util::stream::iter(again)).await.unwrap().into_inner();
    assert_eq!(reply.accepted, 100);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (200, 200));
    let delivered: std::collections::HashSet<_> =
        host.memory("out").unwrap().try_iter().map(|message| message.payload).collect();
    assert_eq!(delivered.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_part_of_the_preface_are_cut_and_a_client_is_still_served() {
    // Idle connections were held for good: enough of them took every descriptor of the process.
    // So were connections that sent the HTTP/2 preface's first bytes only.
    let text = format!(
        "{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4\nheader_timeout_ms = 200\n"
    );
    let (host, _dir) = host(&text).await;
    let addr = serve(&host).await;
    let silent: Vec<std::net::TcpStream> = (0..8)
        .map(|n| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            if n % 2 == 1 {
                std::io::Write::write_all(&mut stream, b"PRI * HTTP/2.0\r\n").unwrap();
            }
            stream
        })
        .collect();
    let cut = tokio::task::spawn_blocking(move || {
        silent.into_iter().all(|mut stream| {
            use std::io::Read;
            stream.set_read_timeout(Some(crate::support::PATIENCE)).unwrap();
            // Ok once the server closed it; an error when it was held past PATIENCE.
            stream.read_to_end(&mut Vec::new()).is_ok()
        })
    });
    let mut client = IngressClient::connect(format!("http://{addr}")).await.unwrap();
    let answer = crate::support::within(client.publish(publish("orders.eu", "served"))).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(cut.await.unwrap(), "every silent connection was closed");
    assert_eq!(next(&host.memory("out").unwrap()).await.payload, "served");
    drain_and_account(&host).await;
}

/// The refusal `result` holds (the test fails if it holds an id).
fn refusal(result: &PublishResult) -> &Refusal {
    match &result.outcome {
        Some(PublishOutcome::Refused(refusal)) => refusal,
        other => panic!("not a refusal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_most_headers_a_client_may_give_is_admitted_with_the_hosts_id() {
    // The ingress gives each message its id before admission, which counted it among the
    // client's headers: a message of 1024 was refused as "1025 headers; at most 1024".
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let headers = |count: usize| (0..count).map(|n| (format!("x-{n}"), "v".to_owned())).collect();
    let full = PublishRequest { headers: headers(1024), ..publish("orders.eu", "full") };
    let id = client.publish(full).await.expect("1024 headers are within the limit").into_inner().id;
    let delivered = next(&host.memory("out").unwrap()).await;
    assert_eq!((delivered.headers.len(), delivered.unique_id()), (1025, Some(id.as_str())));
    let over = PublishRequest { headers: headers(1025), ..publish("orders.eu", "over") };
    let refused = client.publish(over).await.expect_err("too many headers");
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::InvalidArgument, "1025 headers; at most 1024")
    );
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_more_headers_than_the_host_takes_is_refused_for_their_count_before_any_is_built() {
    // Every header of a request was decoded into its map, and checked one by one, before admission
    // counted them: tiny headers by the hundred thousand within max_message_bytes made the host
    // build far more than it read, and a bad one among them (here the host's own x-sy-id) was the
    // error, where the other ingresses refuse such a message for its count.
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let mut crowded = publish("orders.eu", "crowded");
    crowded.headers = (0..2000).map(|n| (format!("x-{n}"), "v".to_owned())).collect();
    crowded.headers.insert("x-sy-id".into(), "mine".into());
    let refused = client.publish(crowded).await.expect_err("too many headers");
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::InvalidArgument, "2001 headers; at most 1024"),
        "as the bulk and WebSocket ingresses refuse it: {refused:?}"
    );
    client.publish(publish("orders.eu", "after")).await.expect("the connection serves on");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_refuses_a_message_with_more_headers_than_the_host_takes_alone_and_reads_on() {
    // The count was refused as a decode error, after which tonic reads nothing more of a stream:
    // the stream broke off at it, and the messages after it were never read, where a message with
    // a bad header is refused alone.
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let mut crowded = publish("orders.eu", "crowded");
    crowded.headers = (0..2000).map(|n| (format!("x-{n}"), "v".to_owned())).collect();
    // Refused for the count, not for this one: none of its headers is built, let alone checked.
    crowded.headers.insert("x-sy-id".into(), "mine".into());
    let mut spoofed = publish("orders.eu", "spoofed");
    spoofed.headers.insert("x-sy-id".into(), "mine".into());
    let requests = [
        publish("orders.eu", "1"),
        crowded.clone(),
        publish("orders.eu", "2"),
        spoofed,
        crowded,
        publish("orders.eu", "3"),
    ];
    let reply = client.publish_stream(futures_util::stream::iter(requests)).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.results.len()), (3, 6), "{reply:?}");
    for at in [1, 4] {
        let refused = refusal(&reply.results[at]);
        assert_eq!((refused.status, refused.error.as_str()), (400, "2001 headers; at most 1024"));
    }
    assert_eq!(refusal(&reply.results[3]).status, 400, "as the message with a bad header");
    let out = host.memory("out").unwrap();
    let mut payloads = [next(&out).await.payload, next(&out).await.payload, next(&out).await.payload];
    // Two workers: delivered in any order.
    payloads.sort();
    assert_eq!(payloads, ["1", "2", "3"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_off_is_answered_with_what_it_admitted_and_a_refusal_where_it_broke() {
    // A message over the decode limit (max_message_bytes + 64 KiB) failed the whole call with
    // OUT_OF_RANGE while the three before it were admitted: a client that sent them again sent
    // them twice.
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let too_large = PublishRequest {
        topic: "orders.eu".into(),
        payload: vec![b'x'; (1 << 20) + (64 << 10) + 1],
        ..PublishRequest::default()
    };
    let mut requests: Vec<PublishRequest> =
        (0..3).map(|n| publish("orders.eu", &format!("order {n}"))).collect();
    requests.extend([too_large, publish("orders.eu", "after")]);
    let reply = client.publish_stream(futures_util::stream::iter(requests)).await;
    let reply = reply.expect("an answer, not a failed call").into_inner();
    assert_eq!((reply.accepted, reply.results.len()), (3, 4), "{reply:?}");
    assert!(reply.results[..3].iter().all(|result| matches!(result.outcome, Some(PublishOutcome::Id(_)))));
    assert_eq!(refusal(&reply.results[3]).status, 413, "{reply:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_admitted_up_to_the_bulk_cap_and_the_message_past_it_refused() {
    // Uncapped, some 110 000 results made an answer past the client's 4 MiB decode limit: the call
    // failed with everything admitted. 10 000 is the bulk ingress's MAX_BATCH.
    let (host, _dir) = host(CONFIG).await;
    let mut client = client(&host).await;
    let requests = (0..10_003).map(|n| publish("orders.eu", &format!("order {n}")));
    let reply = client.publish_stream(futures_util::stream::iter(requests)).await.unwrap().into_inner();
    assert_eq!((reply.accepted, reply.results.len()), (10_000, 10_001));
    let past = refusal(&reply.results[10_000]);
    assert_eq!(past.status, 413, "{past:?}");
    assert!(past.error.contains("10000"), "{past:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (10_000, 10_000));
}

#[tokio::test(start_paused = true)]
async fn streams_that_send_nothing_are_answered_and_their_idle_connections_closed() {
    // Two such streams held both connections for good: a third client was never served. The clock
    // is paused: header_timeout_ms passes only once every task waits, never while a client is slow
    // to send its preface or its call on a loaded machine.
    let text = format!(
        "{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\nheader_timeout_ms = 200\n"
    );
    let (host, _dir) = host(&text).await;
    let addr = serve(&host).await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let client = IngressClient::connect(format!("http://{addr}")).await.unwrap();
        stalled.push(client);
    }
    let calls = stalled
        .iter_mut()
        .map(|client| client.publish_stream(futures_util::stream::pending::<PublishRequest>()));
    for reply in within(futures_util::future::join_all(calls)).await {
        let reply = reply.expect("an answer").into_inner();
        assert_eq!((reply.accepted, reply.results.len()), (0, 1), "{reply:?}");
        let paused = refusal(&reply.results[0]);
        assert_eq!(paused.status, 400, "{paused:?}");
        assert!(paused.error.contains("no message for 200 ms"), "{paused:?}");
    }
    // The two clients live on, their connections idle: closed, they let a third one in.
    let mut client = IngressClient::connect(format!("http://{addr}")).await.unwrap();
    within(client.publish(publish("orders.eu", "served"))).await.unwrap();
    // The delivery and the stop wait on the workers: on the real clock, so that the safety nets do
    // not pass while they work.
    tokio::time::resume();
    assert_eq!(next(&host.memory("out").unwrap()).await.payload, "served");
    drop(stalled);
    drain_and_account(&host).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_request_stalls_fails_and_its_idle_connection_is_closed() {
    // A Publish whose message never came whole waited for it for good, holding its connection. The
    // clock is paused, as above.
    let text = format!(
        "{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\nheader_timeout_ms = 200\n"
    );
    let (host, _dir) = host(&text).await;
    let addr = serve(&host).await;
    // A gRPC frame announcing 10 bytes, 2 of them sent, and nothing more.
    let frame = bytes::Bytes::from_static(&[0, 0, 0, 0, 10, 1, 2]);
    let frames =
        futures_util::stream::iter([Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(frame))]);
    let (answer, sender, connection) =
        call_raw(addr, "Publish", Box::pin(frames.chain(futures_util::stream::pending()))).await;
    let status = answer.headers().get("grpc-status").and_then(|status| status.to_str().ok());
    assert!(status.is_some_and(|status| status != "0"), "{answer:?}");
    // Its connection, no call open, is closed (the client still holds it).
    within(connection).await.unwrap().unwrap();
    let mut client = IngressClient::connect(format!("http://{addr}")).await.unwrap();
    within(client.publish(publish("orders.eu", "served"))).await.unwrap();
    drop(sender);
    tokio::time::resume();
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_trickled_within_each_pause_is_refused_at_its_allowance() {
    // A byte every 100 ms never paused the 2 s allowed: a Publish took as long as its client liked
    // (each of 200 calls a connection), and so did each message of a stream; its 75 bytes took 7.5 s
    // and were admitted. Now a message has 2 s and a second a KiB from its first byte. On the real
    // clock (a paused one moved on while a byte was on its way through the client's tasks), with a
    // pause twenty times as long as the client's, so that only a slow message is cut.
    let text = format!("{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 2000\n");
    let (host, _dir) = host(&text).await;
    let addr = serve(&host).await;
    let trickled = || trickled(&publish("orders.eu", &"x".repeat(60)), std::time::Duration::from_millis(100));
    let (answer, ..) = call_raw(addr, "Publish", trickled()).await;
    let status = answer.headers().get("grpc-status").and_then(|status| status.to_str().ok());
    assert_eq!(status, Some("4"), "DEADLINE_EXCEEDED: {answer:?}");
    // A stream: its first message whole, its second trickled.
    let whole = hyper::body::Frame::data(grpc_frame(&publish("orders.eu", "whole")));
    let whole = futures_util::stream::iter([Ok(whole)]);
    let (answer, ..) = call_raw(addr, "PublishStream", Box::pin(whole.chain(trickled()))).await;
    let body = within(http_body_util::BodyExt::collect(answer.into_body())).await.unwrap().to_bytes();
    let reply: PublishStreamReply = prost::Message::decode(&body[5..]).unwrap();
    assert_eq!((reply.accepted, reply.results.len()), (1, 2), "{reply:?}");
    let slow = refusal(&reply.results[1]);
    assert_eq!(slow.status, 408, "{slow:?}");
    assert!(slow.error.contains("not sent within 2000 ms"), "{slow:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1, "nothing of the trickled messages was accepted");
}

/// `request` as a gRPC message on the wire: its length prefix, then its encoding.
fn grpc_frame(request: &PublishRequest) -> bytes::Bytes {
    let encoded = prost::Message::encode_to_vec(request);
    let mut frame = vec![0];
    frame.extend(u32::try_from(encoded.len()).unwrap().to_be_bytes());
    frame.extend(encoded);
    frame.into()
}

/// `request` as a gRPC message sent a byte `every` so long, the first at once, then nothing more, the
/// body never ending.
fn trickled(request: &PublishRequest, every: std::time::Duration) -> Frames {
    let bytes = futures_util::stream::iter(grpc_frame(request)).enumerate();
    let trickle = bytes.then(move |(n, byte)| async move {
        if n > 0 {
            tokio::time::sleep(every).await;
        }
        Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![byte])))
    });
    Box::pin(trickle.chain(futures_util::stream::pending()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_a_stream_waiting_for_its_next_message_at_once() {
    // The stop waited for the stream (the host's whole grace period); it is answered instead, with
    // what it admitted. The pause limit is far off: only the stop can end the wait.
    let text = format!("{CONFIG}[ingress.grpc]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 3600000\n");
    let (host, _dir) = host(&text).await;
    let ingress = GrpcIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ingress.serve(async move {
        let _ = stopped.await;
    }));
    let mut client = IngressClient::connect(format!("http://{addr}")).await.unwrap();
    let requests =
        futures_util::stream::iter([publish("orders.eu", "first")]).chain(futures_util::stream::pending());
    let call = tokio::spawn(async move { client.publish_stream(requests).await });
    eventually(|| match host.stats().accepted {
        1 => Ok(()),
        accepted => Err(accepted),
    });
    stop.send(()).unwrap();
    let reply = within(call).await.unwrap().expect("an answer").into_inner();
    assert_eq!((reply.accepted, reply.results.len()), (1, 2), "{reply:?}");
    assert_eq!(refusal(&reply.results[1]).status, 503, "{reply:?}");
    within(serving).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

/// A stream of messages on topic `t.x` whose payload is their number, but for the `refused` ones,
/// sent at once (the ingress reads them together) to `host`'s gRPC ingress; its answer, a result
/// for each.
async fn stream_together(
    host: &Host,
    count: usize,
    refused: &[(usize, PublishRequest)],
) -> Vec<PublishResult> {
    let requests = (0..count).map(|n| match refused.iter().find(|(at, _)| *at == n) {
        Some((_, request)) => request.clone(),
        None => publish("t.x", &n.to_string()),
    });
    let requests: Vec<_> = requests.collect();
    let reply = client(host).await.publish_stream(futures_util::stream::iter(requests)).await;
    let reply = reply.unwrap().into_inner();
    assert_eq!(reply.results.len(), count, "{reply:?}");
    let accepted =
        reply.results.iter().filter(|result| matches!(result.outcome, Some(PublishOutcome::Id(_))));
    assert_eq!(reply.accepted, accepted.count() as u64, "{reply:?}");
    reply.results
}

/// The (payload, id) of each message `results` says was accepted (a message's payload is its
/// number, its place in the stream).
fn accepted(results: &[PublishResult]) -> Vec<(String, String)> {
    let ids = results.iter().enumerate().filter_map(|(n, result)| match &result.outcome {
        Some(PublishOutcome::Id(id)) => Some((n.to_string(), id.clone())),
        _ => None,
    });
    ids.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_stream_read_together_share_a_spool_fsync_and_each_is_answered_once_on_disk() {
    // Each message was admitted, waiting for its own fsync, before the next was read: a client
    // streaming messages got about one per fsync.
    const COUNT: usize = 64;
    let state = tempfile::tempdir().unwrap();
    // The gate holds every message in the pipeline, so none leaves the spool while the test looks.
    let (open, gate) = crate::spool::gate();
    let (host, delivered) = crate::spool::host(state.path(), Some(gate), |_| {}).await;
    let results = stream_together(&host, COUNT, &[]).await;
    let accepted = accepted(&results);
    assert_eq!(accepted.len(), COUNT, "{results:?}");
    crate::spool::assert_written_together(&host, COUNT);
    drop(open);
    crate::spool::assert_delivered_as_answered(&delivered, &accepted).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (COUNT as u64, COUNT as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_refused_among_messages_read_together_are_answered_alone_and_the_others_accepted() {
    const COUNT: usize = 64;
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = crate::spool::gate();
    let (host, delivered) =
        crate::spool::host(state.path(), Some(gate), |config| config.host.max_message_bytes = 4096).await;
    let mut spoofed = publish("t.x", "40");
    spoofed.headers.insert("x-sy-id".into(), "mine".into());
    let refused = [
        (10, publish("bad..topic", "10")),
        (20, publish("t.x", &"x".repeat(5000))),
        (30, PublishRequest { priority: 300, ..publish("t.x", "30") }),
        (40, spoofed),
    ];
    let results = stream_together(&host, COUNT, &refused).await;
    let statuses: Vec<_> = [10, 20, 30, 40].map(|n| refusal(&results[n]).status).into();
    assert_eq!(statuses, [400, 413, 400, 400], "{results:?}");
    assert!(refusal(&results[30]).error.contains("priority 300"), "{:?}", results[30]);
    assert!(refusal(&results[40]).error.contains("x-sy-"), "{:?}", results[40]);
    let accepted = accepted(&results);
    assert_eq!(accepted.len(), COUNT - refused.len(), "the others are accepted: {results:?}");
    crate::spool::assert_written_together(&host, accepted.len());
    drop(open);
    crate::spool::assert_delivered_as_answered(&delivered, &accepted).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (accepted.len() as u64, accepted.len() as u64));
}
