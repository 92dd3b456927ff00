//! WebSocket ingress, `GET /v1/ws`: frames in, acks (or replies) out, bad frames refused alone (a
//! `ref` too large and too many headers without being kept), backpressure by not reading, the ingress token guarding the upgrade, a client that drops and
//! reconnects, a socket counted among the listener's connections until it closes, a frame larger
//! than any message could need refused on its header, a silent socket pinged, then closed, one
//! that reads nothing cut, and one that reads no answers not read past its answer budget (the
//! answers its open `wait` messages may bring included), nor waited for by a stopping ingress.

use crate::routing::gated_host;
use crate::support::{
    MEMORY_OUT, builder, drain_and_account, next, plugin_dir, start_ingress, still_pending, within,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchyard::{Config, Host, Message, RouteConfig};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, token: Option<&str>) -> Result<Socket, String> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.map(|(socket, _)| socket).map_err(|err| err.to_string())
}

async fn answer(socket: &mut Socket) -> Value {
    loop {
        match within(socket.next()).await.expect("an answer").unwrap() {
            Frame::Text(text) => return serde_json::from_str(&text).unwrap(),
            _ => continue,
        }
    }
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Frame::text(frame.to_string())).await.unwrap();
}

/// A host whose destination `out` answers every message with its payload reversed.
async fn replying_host() -> (Host, tempfile::TempDir) {
    let dir = plugin_dir(&[]);
    let config = Config::from_toml("t.toml", "[host]\nworkers = 2\n").unwrap();
    let host = builder(dir.path())
        .config("t.toml", config)
        .destination("out", |message: Message| async move {
            let reversed: Vec<u8> = message.payload.iter().rev().copied().collect();
            Ok(Some(Message::new("reply", reversed)))
        })
        .route(RouteConfig::new("all", ">", "out"))
        .build()
        .await
        .unwrap();
    (host, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_acked_with_their_ids_and_a_wait_frame_gets_its_reply() {
    let (host, _dir) = replying_host().await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    for n in 0..300 {
        send(&mut socket, json!({ "topic": "orders.eu", "payload": format!("order {n}"), "ref": n })).await;
    }
    for n in 0..300 {
        let ack = answer(&mut socket).await;
        assert_eq!(ack["ref"], n, "acks come in order: {ack}");
        assert!(uuid::Uuid::parse_str(ack["id"].as_str().unwrap()).is_ok(), "{ack}");
    }
    send(&mut socket, json!({ "topic": "q", "payload": "abc", "ref": "question", "wait": true })).await;
    let reply = answer(&mut socket).await;
    assert_eq!(reply["ref"], "question");
    assert_eq!(reply["reply"]["payload"], "cba", "{reply}");
    send(&mut socket, json!({ "topic": "bad..topic", "ref": "bad" })).await;
    let refused = answer(&mut socket).await;
    assert_eq!((refused["ref"].as_str(), refused["status"].as_u64()), (Some("bad"), Some(400)), "{refused}");
    // A misspelt field is refused, not dropped (the message would go out without its payload).
    send(&mut socket, json!({ "topic": "t.typo", "paylod": "important", "ref": "typo" })).await;
    let refused = answer(&mut socket).await;
    assert_eq!((refused["ref"].as_str(), refused["status"].as_u64()), (Some("typo"), Some(400)), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("unknown field `paylod`"), "{refused}");
    send(&mut socket, json!({ "topic": "after", "ref": "after" })).await;
    assert!(answer(&mut socket).await["id"].is_string(), "the socket still serves after a bad frame");
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (302, 302));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_the_most_headers_a_client_may_give_is_admitted_with_the_hosts_id() {
    // The ingress gives each message its id before admission, which counted it among the
    // client's headers: a frame of 1024 was refused as "1025 headers; at most 1024".
    let (host, _dir) = replying_host().await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    let headers = |count: usize| -> serde_json::Map<String, Value> {
        (0..count).map(|n| (format!("x-{n}"), json!("v"))).collect()
    };
    send(&mut socket, json!({ "topic": "t", "headers": headers(1024), "ref": "full" })).await;
    let accepted = answer(&mut socket).await;
    assert_eq!(accepted["ref"], "full", "{accepted}");
    assert!(accepted["id"].is_string(), "{accepted}");
    send(&mut socket, json!({ "topic": "t", "headers": headers(1025), "ref": "over" })).await;
    let refused = answer(&mut socket).await;
    assert_eq!(
        (refused["ref"].as_str(), refused["status"].as_u64(), refused["error"].as_str()),
        (Some("over"), Some(400), Some("1025 headers; at most 1024")),
        "{refused}"
    );
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_is_refused_for_a_large_ref_or_too_many_headers_and_its_answer_stays_small() {
    let (host, _dir) = replying_host().await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    // Echoed in each answer and kept while a `wait` message is open: a 400 KiB ref was, whole.
    let large = "r".repeat(400 << 10);
    send(&mut socket, json!({ "topic": "t", "ref": large })).await;
    let refused = answer(&mut socket).await;
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("ref too large: "), "{:.200}", refused.to_string());
    assert_eq!((&refused["ref"], refused["status"].as_u64()), (&Value::Null, Some(400)));
    // So is the ref of a frame that is no message (no topic), refused for its ref.
    send(&mut socket, json!({ "ref": large })).await;
    let refused = answer(&mut socket).await;
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("ref too large: "), "{:.200}", refused.to_string());
    assert_eq!(refused["ref"], Value::Null);
    // A parser's error quotes what it refused, here a field's 400 KiB name: in part.
    socket.send(Frame::text(format!(r#"{{"topic":"t","{large}":1,"ref":"named"}}"#))).await.unwrap();
    let refused = answer(&mut socket).await;
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("not a message: unknown field `rrr") && error.len() < 1000, "{error:.200}");
    assert_eq!(refused["ref"], "named");
    // A number JSON allows but no f64 holds: refused, not echoed.
    socket.send(Frame::text(r#"{"topic":"t","ref":1e400}"#)).await.unwrap();
    let refused = answer(&mut socket).await;
    assert_eq!(
        refused["error"], "not a message: ref 1e400: number out of range at line 1 column 5",
        "{refused}"
    );
    // A ref within the limit, of any JSON, is echoed as before.
    let small = json!({ "batch": 7, "keys": ["a", "b"] });
    send(&mut socket, json!({ "topic": "t", "ref": small })).await;
    let accepted = answer(&mut socket).await;
    assert_eq!(accepted["ref"], small, "{accepted}");
    assert!(accepted["id"].is_string(), "the socket still serves after a refused ref: {accepted}");
    let headers: serde_json::Map<String, Value> = (0..2000).map(|n| (format!("x-{n}"), json!("v"))).collect();
    send(&mut socket, json!({ "topic": "t", "headers": headers, "ref": "crowded" })).await;
    let refused = answer(&mut socket).await;
    assert_eq!(
        (refused["ref"].as_str(), refused["status"].as_u64(), refused["error"].as_str()),
        (Some("crowded"), Some(400), Some("2000 headers; at most 1024")),
        "{refused}"
    );
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_socket_is_ended_when_the_ingress_stops_so_that_its_shutdown_finishes() {
    let (host, _dir) = replying_host().await;
    let ingress = switchyard::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ingress.serve(async move {
        let _ = stopped.await;
    }));
    let mut socket = connect(addr, None).await.unwrap();
    send(&mut socket, json!({ "topic": "orders.eu", "payload": "before", "ref": 1 })).await;
    assert!(answer(&mut socket).await["id"].is_string(), "the socket serves");
    stop.send(()).unwrap();
    // A graceful shutdown waits for open connections: the ingress must end the socket itself.
    within(serving).await.unwrap();
    loop {
        match within(socket.next()).await {
            None | Some(Err(_) | Ok(Frame::Close(_))) => break,
            Some(Ok(frame)) => assert!(!frame.is_text(), "no answer after the stop: {frame:?}"),
        }
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_stops_the_socket_being_read_and_loses_nothing() {
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (host, delivered) =
        gated_host(dir.path(), "[host]\nqueue_capacity = 1\nworkers = 1\nbatch_size = 1", &entered, &gate)
            .await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    for n in 0..5 {
        send(&mut socket, json!({ "topic": "t", "payload": format!("{n}"), "ref": n })).await;
    }
    within(entered.notified()).await;
    let first_two = [answer(&mut socket).await, answer(&mut socket).await];
    assert_eq!((first_two[0]["ref"].as_u64(), first_two[1]["ref"].as_u64()), (Some(0), Some(1)));
    gate.add_permits(5);
    for n in 2..5 {
        assert_eq!(answer(&mut socket).await["ref"], n, "accepted once room was made, never refused");
    }
    let payloads: Vec<_> = futures_util::future::join_all((0..5).map(|_| next(&delivered))).await;
    let payloads: Vec<_> = payloads.into_iter().map(|message| message.payload).collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_ingress_token_the_upgrade_needs_it() {
    let dir = plugin_dir(&[]);
    let text = "[ingress.http]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\
                [[destination]]\nname = \"out\"\ntransport = \"memory\"\n[[route]]\nname = \"all\"\nto = \"out\"\n";
    let host = crate::support::host(dir.path(), text).await;
    let addr = start_ingress(&host).await;
    let refused = connect(addr, None).await.expect_err("no token");
    assert!(refused.contains("401"), "{refused}");
    let mut socket = connect(addr, Some("s3cret")).await.unwrap();
    send(&mut socket, json!({ "topic": "t", "ref": 1 })).await;
    assert!(answer(&mut socket).await["id"].is_string());
    socket.close(None).await.unwrap();
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_let_in_with_a_replaced_ingress_token_is_closed_before_its_next_frame_is_admitted() {
    // The token was checked once, at the upgrade: a producer let in with a token since replaced
    // (it leaked) kept having its frames accepted for as long as it kept the socket open.
    let dir = plugin_dir(&[]);
    let text = |token: &str| {
        format!(
            "[ingress.http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
             [[destination]]\nname = \"out\"\ntransport = \"memory\"\n[[route]]\nname = \"all\"\nto = \"out\"\n"
        )
    };
    let host = crate::support::host(dir.path(), &text("old")).await;
    let addr = start_ingress(&host).await;
    let mut old = connect(addr, Some("old")).await.unwrap();
    send(&mut old, json!({ "topic": "t", "ref": "before" })).await;
    assert!(answer(&mut old).await["id"].is_string(), "admitted while its token holds");
    let replaced = Config::from_toml("test.toml", &text("new")).unwrap();
    within(host.apply_config("test.toml", replaced)).await.unwrap();
    send(&mut old, json!({ "topic": "t", "ref": "after" })).await;
    let close = loop {
        match within(old.next()).await.expect("a frame").unwrap() {
            Frame::Close(Some(close)) => break close,
            Frame::Text(text) => panic!("a frame served after its token was replaced: {text}"),
            _ => continue,
        }
    };
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("ingress token was replaced"), "{close:?}");
    let mut new = connect(addr, Some("new")).await.unwrap();
    send(&mut new, json!({ "topic": "t", "ref": "new" })).await;
    assert!(answer(&mut new).await["id"].is_string(), "a socket let in with the new token serves");
    new.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2), "the frame after the replacement was not admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_mid_stream_and_reconnects_loses_no_acked_message() {
    let dir = plugin_dir(&[]);
    let text = "[host]\nworkers = 2\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
                queue = { capacity = 10000 }\n[[route]]\nname = \"all\"\nto = \"out\"\n";
    let host = crate::support::host(dir.path(), text).await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    for n in 0..200 {
        send(&mut socket, json!({ "topic": "t", "payload": format!("{n}"), "ref": n })).await;
    }
    for n in 0..100 {
        assert_eq!(answer(&mut socket).await["ref"], n);
    }
    // Gone without a close frame; what it had not seen acked it sends again on a new connection.
    drop(socket);
    let mut socket = connect(addr, None).await.unwrap();
    for n in 100..300 {
        send(&mut socket, json!({ "topic": "t", "payload": format!("{n}"), "ref": n })).await;
    }
    for n in 100..300 {
        assert_eq!(answer(&mut socket).await["ref"], n);
    }
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, stats.delivered, "every message admitted was delivered: {stats:?}");
    assert!((300..=400).contains(&stats.accepted), "{stats:?}");
    let delivered: std::collections::HashSet<String> = host
        .memory("out")
        .unwrap()
        .try_iter()
        .map(|message| String::from_utf8(message.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(delivered.len(), 300, "every message delivered at least once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_holds_its_connection_slot_until_it_closes() {
    // The slot went back to the listener once the upgrade was done: with max_connections = 2, any
    // number of sockets opened and stayed open, each holding a descriptor.
    let dir = plugin_dir(&[]);
    let text = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host = crate::support::host(dir.path(), &text).await;
    let addr = start_ingress(&host).await;
    let mut open = Vec::new();
    for n in 0..2 {
        let mut socket = connect(addr, None).await.unwrap();
        send(&mut socket, json!({ "topic": "t", "ref": n })).await;
        assert!(answer(&mut socket).await["id"].is_string(), "socket {n} serves");
        open.push(socket);
    }
    let mut third = tokio::spawn(async move {
        let mut socket = connect(addr, None).await.unwrap();
        send(&mut socket, json!({ "topic": "t", "ref": "third" })).await;
        (answer(&mut socket).await, socket)
    });
    assert!(still_pending(&mut third).await, "a third socket was served while two held both slots");
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = within(first.next()).await {}
    let (answer, mut third) = within(third).await.unwrap();
    assert_eq!(answer["ref"], "third", "served once a socket closed: {answer}");
    third.close(None).await.unwrap();
    open[0].close(None).await.unwrap();
    assert_eq!(drain_and_account(&host).await.accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_ingress_waits_for_its_sockets_last_answers() {
    // The stop returned as soon as the requests of plain connections were done: a socket's task was
    // nobody's to wait for, and the host went on to shut down with its answers still to send.
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (host, delivered) = gated_host(dir.path(), "[host]\nworkers = 1", &entered, &gate).await;
    let ingress = switchyard::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(ingress.serve(async move {
        let _ = stopped.await;
    }));
    let mut socket = connect(addr, None).await.unwrap();
    send(&mut socket, json!({ "topic": "t", "payload": "held", "ref": 1, "wait": true })).await;
    within(entered.notified()).await;
    stop.send(()).unwrap();
    assert!(still_pending(&mut serving).await, "the ingress stopped with a socket's answer to send");
    gate.add_permits(1);
    let settled = answer(&mut socket).await;
    assert_eq!((&settled["ref"], &settled["reply"]), (&json!(1), &Value::Null), "{settled}");
    within(serving).await.unwrap();
    assert!(
        matches!(within(socket.next()).await, None | Some(Err(_) | Ok(Frame::Close(_)))),
        "the socket closed"
    );
    assert_eq!(next(&delivered).await.payload, "held");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_ingress_does_not_wait_on_a_client_that_reads_no_answers() {
    // The stop waited for every answer still due to be written, unless one waited for room in the
    // budget: a client that read nothing (or a byte at a time) of answers within their budget held
    // the ingress's stop for as long as its writes were not cut (here, ten minutes).
    let dir = plugin_dir(&[]);
    let text = "[host]\nmax_message_bytes = 8388608\n\
                [ingress.http]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 600000\n";
    let gate = Arc::new(Semaphore::new(0));
    let (host, _) = host_replying(dir.path(), text, 4 << 20, Some(gate.clone())).await;
    let ingress = switchyard::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ingress.serve(async move {
        let _ = stopped.await;
    }));
    let mut socket = with_small_receive_buffer(addr).await;
    for n in 0..4 {
        send(&mut socket, json!({ "topic": "t", "ref": n, "wait": true })).await;
    }
    // Four open (the destination holds their answers back): their answers fit the budget (32 MiB).
    accepted_reaches(&host, 4).await;
    stop.send(()).unwrap();
    // 16 MiB of answers come due, more than the kernel's buffers hold, and none is read.
    gate.add_permits(4);
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(20), serving).await;
    assert!(stopped.is_ok(), "the stop waited on a client that reads nothing");
    loop {
        match within(socket.next()).await {
            None | Some(Err(_) | Ok(Frame::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    // Unanswered, every message accepted is delivered all the same.
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (4, 4));
}

/// A frame as a client puts it on the wire (masked, with a key of zeros, which leaves the payload as
/// it is), saying it holds `length` bytes, of which `payload` are given.
pub(crate) fn raw_frame(opcode: u8, fin: bool, length: usize, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match length {
        0..126 => frame.push(0x80 | length as u8),
        126..65536 => frame.extend([0x80 | 126].into_iter().chain((length as u16).to_be_bytes())),
        _ => frame.extend([0x80 | 127].into_iter().chain((length as u64).to_be_bytes())),
    }
    frame.extend([0; 4].into_iter().chain(payload.iter().copied()));
    frame
}

/// Write `bytes` on the socket's connection as they are, past the client's framing.
pub(crate) async fn write_raw(socket: &mut Socket, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let tokio_tungstenite::MaybeTlsStream::Plain(stream) = socket.get_mut() else { panic!("not plain TCP") };
    stream.write_all(bytes).await.unwrap();
}

/// The close frame the host sends next, answers before it skipped.
pub(crate) async fn close_frame(socket: &mut Socket) -> (u16, String) {
    loop {
        match within(socket.next()).await.expect("a close frame").unwrap() {
            Frame::Close(Some(close)) => return (close.code.into(), close.reason.to_string()),
            Frame::Close(None) => panic!("closed without a code"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_larger_than_any_message_needs_is_refused_on_its_header() {
    // tungstenite's defaults held: a frame of up to 16 MiB was read whole, and a message of up to
    // 64 MiB gathered from frames, before max_message_bytes was looked at.
    let dir = plugin_dir(&[]);
    let text = format!(
        "{}[[route]]\nname = \"all\"\nto = \"out\"\n",
        MEMORY_OUT.replacen("[host]", "[host]\nmax_message_bytes = 1024", 1)
    );
    let host = crate::support::host(dir.path(), &text).await;
    let addr = start_ingress(&host).await;
    // The largest frame read: 6 × 1024 + 64 KiB.
    let largest = 6 * 1024 + (64 << 10);
    let mut socket = connect(addr, None).await.unwrap();
    send(&mut socket, json!({ "topic": "t", "payload": "a".repeat(2000), "ref": "large" })).await;
    let refused = answer(&mut socket).await;
    assert_eq!(
        (refused["ref"].as_str(), refused["status"].as_u64()),
        (Some("large"), Some(413)),
        "{refused}"
    );
    // Six bytes in the frame for each of the payload's (the message's x-sy-id counts in its size too).
    send(&mut socket, json!({ "topic": "t", "payload": "\u{1}".repeat(900), "ref": "escaped" })).await;
    let accepted = answer(&mut socket).await;
    assert!(accepted["id"].is_string(), "a message within the limit, however escaped: {accepted}");
    // A megabyte announced, sixteen bytes sent: refused at once, not waited for.
    write_raw(&mut socket, &raw_frame(0x1, true, 1 << 20, &[b' '; 16])).await;
    let (code, reason) = close_frame(&mut socket).await;
    assert_eq!((code, reason), (1009, format!("a message of 1048576 bytes: at most {largest}")));
    // Frames each within it, making a message past it.
    let mut socket = connect(addr, None).await.unwrap();
    let part = vec![b' '; 40 << 10];
    write_raw(&mut socket, &raw_frame(0x1, false, part.len(), &part)).await;
    write_raw(&mut socket, &raw_frame(0x0, true, part.len(), &part)).await;
    let (code, reason) = close_frame(&mut socket).await;
    assert_eq!((code, reason), (1009, format!("a message of {} bytes: at most {largest}", 80 << 10)));
    assert_eq!(drain_and_account(&host).await.accepted, 1);
}

/// A WebSocket opened by hand at `path`, so that nothing answers the host's pings: its connection,
/// once the host answered `101`.
pub(crate) async fn silent_socket(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within(stream.read_u8()).await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    stream
}

/// The frames the host sends on `stream` until it closes the connection, as (opcode, payload).
pub(crate) async fn frames_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    within(stream.read_to_end(&mut bytes)).await.unwrap();
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while let [first, length, after @ ..] = rest {
        assert!(*length < 126, "a short frame: {bytes:?}");
        let (payload, after) = after.split_at(*length as usize);
        frames.push((first & 0x0f, payload.to_vec()));
        rest = after;
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_pinged_then_closed_and_one_that_answers_stays() {
    // A socket was read with no deadline: one whose peer was gone (no FIN) held its connection,
    // and now its slot, for good.
    let dir = plugin_dir(&[]);
    let text = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\nping_ms = 1000\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host = crate::support::host(dir.path(), &text).await;
    let addr = start_ingress(&host).await;
    let opened = tokio::time::Instant::now();
    let mut silent = silent_socket(addr, "/v1/ws").await;
    let mut answering = connect(addr, None).await.unwrap();
    // A client that reads answers each ping (tungstenite does so as it reads): a second ping, not a
    // close, comes a ping interval after its pong, two after it last sent a frame.
    let mut pings = 0;
    while pings < 2 {
        match within(answering.next()).await.unwrap().unwrap() {
            Frame::Ping(_) => pings += 1,
            Frame::Text(_) => {}
            other => panic!("after {pings} pings: {other:?}"),
        }
    }
    send(&mut answering, json!({ "topic": "t", "ref": "alive" })).await;
    assert_eq!(answer(&mut answering).await["ref"], "alive");
    answering.close(None).await.unwrap();
    // Meanwhile the one that answers nothing was closed (what it was sent waits in its buffer).
    let frames = frames_until_closed(&mut silent).await;
    assert!(opened.elapsed() >= std::time::Duration::from_secs(2), "closed after two intervals");
    let mut close = b"\x03\xe9".to_vec();
    close.extend_from_slice(b"nothing received for 2000 ms");
    assert_eq!(frames, [(0x9, vec![]), (0x8, close)], "pinged, then closed (1001)");
    assert_eq!(drain_and_account(&host).await.accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_client_reads_nothing_is_cut_once_a_write_waits_the_header_timeout() {
    // A write to a client that took nothing waited for good: the socket, its slot and the
    // ingress's stop with it. Here its answers (8 MiB each) fill the connection's buffers, the
    // writer waits, and the only slot is held until the write is given up. The answer budget
    // (4 × max_message_bytes, here 128 MiB, a quarter reserved by each `wait` message open) is not
    // what is tested.
    let dir = plugin_dir(&[]);
    let text = "[host]\nmax_message_bytes = 33554432\n\
                [ingress.http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\nheader_timeout_ms = 300\n";
    let gate = Arc::new(Semaphore::new(0));
    let (host, _) = host_replying(dir.path(), text, 8 << 20, Some(gate.clone())).await;
    let addr = start_ingress(&host).await;
    let mut socket = with_small_receive_buffer(addr).await;
    // 32 MiB of answers: more than the kernel's buffers hold (tcp_wmem's largest is 4 MiB by default),
    // let through once every frame is read (else the writer may give up before the last are).
    for n in 0..4 {
        send(&mut socket, json!({ "topic": "t", "ref": n, "wait": true })).await;
    }
    accepted_reaches(&host, 4).await;
    gate.add_permits(5); // and the POST's
    let posted = tokio::task::spawn_blocking(move || crate::support::post(addr, "/v1/messages/t", &[], b"x"));
    assert_eq!(within(posted).await.unwrap().0, 202, "served once the socket was cut");
    while let Some(Ok(_)) = within(socket.next()).await {}
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_messages_opened_before_any_settles_are_not_read_past_the_answer_budget() {
    // The budget was looked at only for answers already queued: 256 `wait` messages opened before
    // any settled were all taken in, and their replies, of up to max_message_bytes each, were
    // held for a client that read none (64 MiB here, 256 MiB at 1 MiB replies).
    let dir = plugin_dir(&[]);
    let text = "[ingress.http]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 600000\n";
    let gate = Arc::new(Semaphore::new(0));
    let (host, _) = host_replying(dir.path(), text, 256 << 10, Some(gate.clone())).await;
    let addr = start_ingress(&host).await;
    let mut socket = with_small_receive_buffer(addr).await;
    let sent: usize = 300;
    for n in 0..sent {
        send(&mut socket, json!({ "topic": "t", "ref": n, "wait": true })).await;
    }
    // Each open `wait` message holds max_message_bytes (1 MiB) of the 4 MiB budget: 4 are open, and
    // the socket is not read on while none settles.
    accepted_reaches(&host, 4).await;
    let mut past_budget = Box::pin(accepted_reaches(&host, 5));
    assert!(
        still_pending(&mut past_budget).await,
        "read past the answers its open wait messages may bring: {} taken in",
        host.stats().accepted
    );
    // Once they settle, and the client reads, the rest are taken in and every one is answered.
    gate.add_permits(sent);
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..sent {
        let settled = answer(&mut socket).await;
        assert_eq!(settled["reply"]["payload"].as_str().map(str::len), Some(256 << 10));
        answered.insert(settled["ref"].as_u64().unwrap());
    }
    assert_eq!(answered, (0..sent as u64).collect());
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (sent as u64, sent as u64));
}

/// A WebSocket client of the ingress at `addr` whose connection's receive buffer is small (16 KiB),
/// so that answers it does not read soon fill the host's side.
async fn with_small_receive_buffer(addr: std::net::SocketAddr) -> Socket {
    let connection = tokio::net::TcpSocket::new_v4().unwrap();
    connection.set_recv_buffer_size(16 << 10).unwrap();
    let connection = tokio_tungstenite::MaybeTlsStream::Plain(connection.connect(addr).await.unwrap());
    let (socket, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws"), connection).await.unwrap();
    socket
}

/// Wait until `host` has accepted `count` messages.
async fn accepted_reaches(host: &Host, count: u64) {
    within(async {
        while host.stats().accepted < count {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The largest send buffer the kernel gives a connection (tcp_wmem's third figure: 4 MiB by
/// default): what the host may write to a client that reads nothing before its writes wait.
fn largest_send_buffer() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
    wmem.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// The messages a destination was sent, counted as they come.
#[derive(Clone, Default)]
struct Received(Arc<(AtomicUsize, Notify)>);

impl Received {
    fn count(&self) -> usize {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Completes once more than `count` came.
    fn more_than(&self, count: usize) -> impl Future<Output = ()> + use<> {
        let received = self.clone();
        async move {
            loop {
                let came = received.0.1.notified();
                if received.count() > count {
                    return;
                }
                came.await;
            }
        }
    }
}

/// A host configured by `text` whose destination `out` answers every message with a reply of
/// `bytes` bytes, once `gate` (if any) gives it a permit, and what it was sent.
async fn host_replying(
    dir: &std::path::Path,
    text: &str,
    bytes: usize,
    gate: Option<Arc<Semaphore>>,
) -> (Host, Received) {
    let (reply, received) = (bytes::Bytes::from(vec![b'r'; bytes]), Received::default());
    let host = builder(dir)
        .config("t.toml", Config::from_toml("t.toml", text).unwrap())
        .destination("out", {
            let received = received.clone();
            move |_: Message| {
                received.0.0.fetch_add(1, Ordering::SeqCst);
                received.0.1.notify_waiters();
                let (reply, gate) = (reply.clone(), gate.clone());
                async move {
                    if let Some(gate) = gate {
                        gate.acquire().await.unwrap().forget();
                    }
                    Ok(Some(Message::new("reply", reply)))
                }
            }
        })
        .route(RouteConfig::new("all", ">", "out"))
        .build()
        .await
        .unwrap();
    (host, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_answers_is_not_read_past_its_answer_budget() {
    // Each of the 256 `wait` messages a socket may have open held its answer until it was written:
    // with replies of max_message_bytes, a client that read nothing had 256 MiB held for it.
    let dir = plugin_dir(&[]);
    let text = "[ingress.http]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 600000\n";
    let (host, received) = host_replying(dir.path(), text, 256 << 10, None).await;
    let addr = start_ingress(&host).await;
    let mut socket = with_small_receive_buffer(addr).await;
    // The budget (4 × max_message_bytes, 4 MiB) takes in a frame while it has room for its
    // message's reservation (max_message_bytes) beside the answers unread (of 256 KiB and their
    // JSON each): 12 frames at least, however slowly the host takes them in.
    let within_budget = ((4 << 20) - (1 << 20)) / (256 << 10);
    for sent in 0..within_budget {
        send(&mut socket, json!({ "topic": "t", "ref": sent, "wait": true })).await;
        within(received.more_than(sent)).await;
    }
    // At most as many as answers fill the budget (16) and the kernel's send buffer (16 more by
    // default), and those read while the answers before were on their way (a few; 64 for a loaded
    // machine); without the budget, all of them. The rest up to one past that bound sent at once,
    // taken in until the host takes no more for 2 s (a shorter pause of a loaded machine is not
    // taken for the budget's).
    let bound = ((4 << 20) + largest_send_buffer()) / (256 << 10) + 64;
    for sent in within_budget..=bound {
        send(&mut socket, json!({ "topic": "t", "ref": sent, "wait": true })).await;
    }
    let sent = bound + 1;
    let mut taken = received.count();
    while taken < sent {
        let more = tokio::time::timeout(std::time::Duration::from_secs(2), received.more_than(taken));
        if more.await.is_err() {
            break;
        }
        taken = received.count();
    }
    assert!(taken <= bound, "read on past 4 MiB of answers nobody took: {taken} frames taken in");
    // Once the client reads, the rest is read, and every one answered with its reply.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..sent {
        let settled = answer(&mut socket).await;
        assert_eq!(settled["reply"]["payload"].as_str().map(str::len), Some(256 << 10));
        answered.insert(settled["ref"].as_u64().unwrap());
    }
    assert_eq!(answered, (0..sent as u64).collect());
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (sent as u64, sent as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_answers_longer_than_their_reservation_are_written_while_four_are_open() {
    // An open `wait` message held max_message_bytes of the budget (4 × max_message_bytes) for its
    // answer, but the answer carries its reply as JSON with the ref and id around it: longer. It
    // waited for the rest, and with four open each waited for room the others held: the socket
    // wrote none and read no more, for good.
    let dir = plugin_dir(&[]);
    let max = 64 << 10;
    let text = format!("[host]\nmax_message_bytes = {max}\n");
    let gate = Arc::new(Semaphore::new(0));
    // Replies of max_message_bytes: topic `reply` and the payload.
    let (host, _) = host_replying(dir.path(), &text, max - "reply".len(), Some(gate.clone())).await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    for n in 0..4 {
        send(&mut socket, json!({ "topic": "t", "ref": n, "wait": true })).await;
    }
    // All four open, the budget all reserved, before any settles.
    accepted_reaches(&host, 4).await;
    gate.add_permits(5);
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let settled = answer(&mut socket).await;
        assert_eq!(settled["reply"]["payload"].as_str().map(str::len), Some(max - "reply".len()));
        answered.insert(settled["ref"].as_u64().unwrap());
    }
    assert_eq!(answered, (0..4).collect());
    send(&mut socket, json!({ "topic": "t", "ref": "after" })).await;
    assert!(answer(&mut socket).await["id"].is_string(), "the socket serves on");
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_frame_is_admitted_before_the_frames_sent_after_it() {
    // A `wait` frame's message was admitted by a task of its own, while the socket was read on:
    // the frames sent after it were admitted first.
    const COUNT: usize = 8;
    let dir = plugin_dir(&[]);
    // Each message delivered, with its id: the host numbers the messages as it admits them.
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let host = builder(dir.path())
        .destination("out", {
            let delivered = delivered.clone();
            move |message: Message| {
                delivered.lock().unwrap().push((message.id, message.payload));
                async { Ok(None) }
            }
        })
        .route(RouteConfig::new("all", ">", "out"))
        .build()
        .await
        .unwrap();
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    // In one write: the socket reads the frames after the `wait` one at once.
    for n in 0..COUNT {
        let frame = json!({ "topic": "t", "payload": n.to_string(), "ref": n, "wait": n == 0 });
        socket.feed(Frame::text(frame.to_string())).await.unwrap();
    }
    socket.flush().await.unwrap();
    for _ in 0..COUNT {
        assert!(answer(&mut socket).await["id"].is_string());
    }
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.delivered, COUNT as u64);
    let mut delivered = delivered.lock().unwrap().clone();
    delivered.sort();
    let admitted: Vec<_> = delivered.iter().map(|(_, payload)| payload.clone()).collect();
    let sent: Vec<_> = (0..COUNT).map(|n| bytes::Bytes::from(n.to_string())).collect();
    assert_eq!(admitted, sent, "admitted in the order they were sent");
}

/// Frames of messages on topic `t.x` whose payload is their number (also their `ref`), but for the
/// `refused` ones, sent in one write (the ingress reads them together); the answers, in order.
async fn send_together(socket: &mut Socket, count: usize, refused: &[(usize, Value)]) -> Vec<Value> {
    for n in 0..count {
        let frame = match refused.iter().find(|(at, _)| *at == n) {
            Some((_, frame)) => frame.clone(),
            None => json!({ "topic": "t.x", "payload": n.to_string(), "ref": n }),
        };
        socket.feed(Frame::text(frame.to_string())).await.unwrap();
    }
    socket.flush().await.unwrap();
    let mut answers = Vec::new();
    for n in 0..count {
        let answer = answer(socket).await;
        assert_eq!(answer["ref"], n, "answers come in order: {answer}");
        answers.push(answer);
    }
    answers
}

/// The (payload, id) of each message `answers` says was accepted.
fn accepted(answers: &[Value]) -> Vec<(String, String)> {
    let ids = answers
        .iter()
        .filter_map(|answer| Some((answer["ref"].to_string(), answer["id"].as_str()?.to_owned())));
    ids.collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_read_together_share_a_spool_fsync_and_each_is_answered_once_on_disk() {
    // Each frame was admitted, waiting for its own fsync, before the next was read: a producer
    // sending frames back to back got about one message per fsync.
    const COUNT: usize = 64;
    let state = tempfile::tempdir().unwrap();
    // The gate holds every message in the pipeline, so none leaves the spool while the test looks.
    let (open, gate) = crate::spool::gate();
    let (host, delivered) = crate::spool::host(state.path(), Some(gate), |_| {}).await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    let answers = send_together(&mut socket, COUNT, &[]).await;
    let accepted = accepted(&answers);
    assert_eq!(accepted.len(), COUNT, "{answers:?}");
    crate::spool::assert_written_together(&host, COUNT);
    drop(open);
    crate::spool::assert_delivered_as_answered(&delivered, &accepted).await;
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (COUNT as u64, COUNT as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_refused_among_frames_read_together_are_answered_alone_and_the_others_accepted() {
    const COUNT: usize = 64;
    let state = tempfile::tempdir().unwrap();
    let (open, gate) = crate::spool::gate();
    let (host, delivered) =
        crate::spool::host(state.path(), Some(gate), |config| config.host.max_message_bytes = 4096).await;
    let addr = start_ingress(&host).await;
    let mut socket = connect(addr, None).await.unwrap();
    let refused = [
        (10, json!({ "topic": "bad..topic", "ref": 10 })),
        (20, json!({ "topic": "t.x", "payload": "x".repeat(5000), "ref": 20 })),
        (30, json!({ "topic": "t.x", "paylod": "30", "ref": 30 })),
        (40, json!({ "topic": "t.x", "headers": { "x-sy-id": "mine" }, "ref": 40 })),
    ];
    let answers = send_together(&mut socket, COUNT, &refused).await;
    let statuses: Vec<_> = [10, 20, 30, 40].map(|n| answers[n]["status"].as_u64()).into();
    assert_eq!(statuses, [Some(400), Some(413), Some(400), Some(400)], "{answers:?}");
    assert!(answers[30]["error"].as_str().unwrap().contains("unknown field `paylod`"), "{}", answers[30]);
    assert!(answers[40]["error"].as_str().unwrap().contains("x-sy-"), "{}", answers[40]);
    let accepted = accepted(&answers);
    assert_eq!(accepted.len(), COUNT - refused.len(), "the others are accepted: {answers:?}");
    crate::spool::assert_written_together(&host, accepted.len());
    drop(open);
    crate::spool::assert_delivered_as_answered(&delivered, &accepted).await;
    socket.close(None).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (accepted.len() as u64, accepted.len() as u64));
}
