//! The `websocket` transport against a real WebSocket server on 127.0.0.1: payload frames (text or
//! binary), envelopes answered by id, a server that goes away and comes back on its port with nothing
//! lost, and a hung connection closed by its pings. The server speaks TLS when given an acceptor
//! (see `websocket_tls`).

use crate::support::{drain_and_account, host, plugin_dir, within};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use switchyard::{Host, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message as Frame;

/// A WebSocket server (`wss://` with a TLS acceptor): records every data frame; with `answer`, answers
/// each envelope by id with its payload upper-cased.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    frames: Arc<Mutex<Vec<Frame>>>,
    tasks: JoinSet<()>,
}

impl Server {
    pub(crate) async fn start(
        addr: SocketAddr,
        answer: bool,
        frames: Arc<Mutex<Vec<Frame>>>,
        tls: Option<TlsAcceptor>,
    ) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let seen = frames.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, tls) = (seen.clone(), tls.clone());
                connections.spawn(async move {
                    match tls {
                        None => serve(stream, answer, &seen).await,
                        Some(tls) => {
                            // A handshake the client gives up on (an untrusted certificate) ends here.
                            let Ok(stream) = tls.accept(stream).await else { return };
                            serve(stream, answer, &seen).await
                        }
                    }
                });
            }
        });
        Server { addr, frames, tasks }
    }

    /// Stop listening and drop every connection.
    pub(crate) async fn stop(mut self) {
        self.tasks.shutdown().await;
    }

    pub(crate) fn seen(&self) -> usize {
        self.frames.lock().unwrap().len()
    }
}

/// One connection: the WebSocket handshake, then frames until it closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, answer: bool, seen: &Mutex<Vec<Frame>>) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
    while let Some(Ok(frame)) = socket.next().await {
        if !(frame.is_text() || frame.is_binary()) {
            continue;
        }
        seen.lock().unwrap().push(frame.clone());
        if answer {
            let envelope: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
            let payload = envelope["payload"].as_str().unwrap().to_uppercase();
            let reply = serde_json::json!({ "id": envelope["id"], "payload": payload });
            if socket.send(Frame::text(reply.to_string())).await.is_err() {
                return;
            }
        }
    }
}

pub(crate) fn config(addr: SocketAddr, options: &str) -> String {
    format!(
        "[host]\nworkers = 2\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"ws\"\ntransport = \"websocket\"\nendpoints = [\"{addr}\"]\n\
         options = {{ path = \"/in\"{options} }}\nidempotent = true\nbreaker = {{ open_ms = 20 }}\n\
         [[route]]\nname = \"all\"\nto = \"ws\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_payload_goes_out_as_one_frame_text_or_binary() {
    let server = Server::start("127.0.0.1:0".parse().unwrap(), false, Arc::default(), None).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(server.addr, "")).await;
    for n in 0..100 {
        host.send(Message::new("orders", format!("order {n}"))).await.unwrap();
    }
    host.send(Message::new("bytes", vec![0u8, 159, 146, 150])).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (101, 0));
    // Delivered means written and flushed: the server reads them in its own time.
    crate::support::eventually(|| match server.seen() {
        101 => Ok(()),
        seen => Err(seen),
    });
    let frames = server.frames.lock().unwrap().clone();
    assert_eq!(frames.len(), 101);
    let texts: Vec<&str> =
        frames.iter().filter(|frame| frame.is_text()).map(|frame| frame.to_text().unwrap()).collect();
    assert_eq!(texts.len(), 100);
    assert!(texts.contains(&"order 0") && texts.contains(&"order 99"));
    let binary =
        frames.iter().find(|frame| frame.is_binary()).expect("the non-UTF-8 payload as a binary frame");
    assert_eq!(binary.clone().into_data().as_ref(), [0u8, 159, 146, 150]);
}

pub(crate) async fn request_all(host: &Host, from: usize, to: usize) {
    let requests = (from..to).map(|n| async move {
        let reply = host.request(Message::new("jobs", format!("job {n}"))).await.unwrap();
        assert_eq!(&reply.expect("an answer").payload[..], format!("JOB {n}").as_bytes());
    });
    within(futures_util::future::join_all(requests)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_answered_by_id_and_each_reply_reaches_its_request() {
    let server = Server::start("127.0.0.1:0".parse().unwrap(), true, Arc::default(), None).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(server.addr, ", frames = \"envelope\"")).await;
    request_all(&host, 0, 200).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (200, 0));
    assert_eq!(server.seen(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_and_comes_back_loses_nothing() {
    goes_away_and_comes_back(None, "").await;
}

/// A server (with `tls`, reached with `options`) answers 50 requests, stops, and starts again on its
/// port while 50 more wait for it: all 100 answered, none dead-lettered.
pub(crate) async fn goes_away_and_comes_back(tls: Option<TlsAcceptor>, options: &str) {
    let frames: Arc<Mutex<Vec<Frame>>> = Arc::default();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), true, frames.clone(), tls.clone()).await;
    let addr = server.addr;
    let dir = plugin_dir(&[]);
    let options = format!(", frames = \"envelope\", ping_ms = 200{options}");
    let host = host(dir.path(), &config(addr, &options)).await;
    request_all(&host, 0, 50).await;
    server.stop().await;
    // Sent while nothing listens: they wait in the queue (the endpoint refuses), then go.
    let waiting = {
        let host = host.clone();
        tokio::spawn(async move { request_all(&host, 50, 100).await })
    };
    let refused = || {
        let text = host.metrics().encode();
        let labels = [("destination", "ws"), ("outcome", "retryable")];
        crate::exposition::sample(&text, "switchyard_transport_attempts_total", &labels)
    };
    crate::support::eventually(|| refused().filter(|refused| *refused > 0.0).ok_or("no refused attempt yet"));
    let server = Server::start(addr, true, frames.clone(), tls).await;
    within(waiting).await.unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (100, 0));
    assert!(server.seen() >= 100, "every message reached the server, some twice at most: {}", server.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_for_two_ping_intervals_is_closed_and_its_envelope_answered_on_a_new_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Frame>>> = Arc::default();
    let answered = seen.clone();
    tokio::spawn(async move {
        // The first connection hangs after its handshake: it reads nothing, so answers no ping.
        let (stream, _) = listener.accept().await.unwrap();
        let _hung = tokio_tungstenite::accept_async(stream).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        serve(stream, true, &answered).await;
    });
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(addr, ", frames = \"envelope\", ping_ms = 100")).await;
    let reply = within(host.request(Message::new("jobs", "job"))).await.unwrap();
    assert_eq!(&reply.expect("an answer").payload[..], b"JOB");
    assert_eq!(seen.lock().unwrap().len(), 1, "answered on the second connection");
    let text = host.metrics().encode();
    let retries =
        crate::exposition::sample(&text, "switchyard_destination_retries_total", &[("destination", "ws")]);
    assert!(
        retries.is_some_and(|retries| retries >= 1.0),
        "sent again once the silent connection was closed"
    );
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_answers_pings_but_no_envelope_is_replaced_and_the_envelope_answered_on_a_new_one()
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Frame>>> = Arc::default();
    let answered = seen.clone();
    let (stuck_tx, stuck_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // The first connection's handler is stuck: it reads every frame (so its pings are
        // answered) and answers no envelope, until the host closes it.
        let (stream, _) = listener.accept().await.unwrap();
        let mut stuck = tokio_tungstenite::accept_async(stream).await.unwrap();
        let _ = stuck_tx.send(tokio::spawn(async move { while let Some(Ok(_)) = stuck.next().await {} }));
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let answered = answered.clone();
            connections.spawn(async move { serve(stream, true, &answered).await });
        }
    });
    let dir = plugin_dir(&[]);
    let text = config(addr, ", frames = \"envelope\", ping_ms = 100").replacen(
        "idempotent = true\n",
        "idempotent = true\ntimeout_ms = 1000\nretry = { attempts = 5 }\n",
        1,
    );
    let host = host(dir.path(), &text).await;
    let reply = within(host.request(Message::new("jobs", "job"))).await.unwrap();
    assert_eq!(&reply.expect("an answer").payload[..], b"JOB");
    assert!(!seen.lock().unwrap().is_empty(), "answered on a new connection");
    let stuck = within(stuck_rx).await.unwrap();
    within(stuck).await.unwrap();
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_cut_at_the_attempt_deadline_sent_nothing_and_is_never_called_uncertain() {
    // The server takes every connection and never answers its upgrade: each attempt is cut at its
    // 300 ms in the WebSocket handshake, before its frame could leave. Not idempotent, the message
    // is no less safe to send again: it waits out its queue timeout for an endpoint that can take it.
    let silent = crate::support::Silent::start();
    let dir = plugin_dir(&[]);
    let text = config(silent.addr, "").replacen(
        "idempotent = true\n",
        "timeout_ms = 300\nqueue = { timeout_ms = 1500 }\n",
        1,
    );
    let host = host(dir.path(), &text).await;
    crate::support::assert_never_sent(&host).await;
}

/// A server on 127.0.0.1 answering each envelope of its first connection with `answer` of it: its
/// address, and how many envelopes it read.
async fn answering(answer: fn(&serde_json::Value) -> serde_json::Value) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        while let Some(Ok(frame)) = socket.next().await {
            let Ok(text) = frame.to_text() else { continue };
            let Ok(envelope) = serde_json::from_str::<serde_json::Value>(text) else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            if socket.send(Frame::text(answer(&envelope).to_string())).await.is_err() {
                return;
            }
        }
    });
    (addr, read)
}

/// Requests one message of a host whose `ws` destination sends envelopes to `addr`, with
/// `host_settings` added to its `[host]` and `settings` to the destination: its reply refused, why;
/// and the messages delivered and dead-lettered.
async fn refused_reply(addr: SocketAddr, host_settings: &str, settings: &str) -> (String, (u64, u64)) {
    let dir = plugin_dir(&[]);
    let text = config(addr, ", frames = \"envelope\"")
        .replacen("[host]\n", &format!("[host]\n{host_settings}"), 1)
        .replacen("idempotent = true\n", &format!("idempotent = true\n{settings}"), 1);
    let host = host(dir.path(), &text).await;
    let answer = within(host.request(Message::new("jobs", "job"))).await;
    let Err(switchyard::RequestError::ReplyRefused { destination, problem }) = answer else {
        panic!(
            "delivered, its reply refused: {:?}",
            answer.map(|reply| reply.map(|reply| reply.payload.len()))
        )
    };
    assert_eq!(destination, "ws");
    let stats = drain_and_account(&host).await;
    (problem, (stats.delivered, stats.dead_lettered))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_max_message_bytes_is_refused_and_the_message_counted_delivered() {
    // The server answers each envelope by id with a payload four times what the host takes: it took
    // the message, so only its reply is refused.
    let (addr, _) =
        answering(|envelope| serde_json::json!({ "id": envelope["id"], "payload": "x".repeat(4096) })).await;
    let (problem, counts) = refused_reply(addr, "max_message_bytes = 1024\n", "").await;
    assert!(problem.contains("more than 1024 bytes"), "{problem}");
    assert_eq!(counts, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_names_its_id_but_cannot_be_read_is_refused_and_the_message_sent_once() {
    // Each answer names its envelope's id, a field the wrong shape: the peer took the message. Dropped
    // as no answer, it left the attempt to wait out timeout_ms, sent again as idempotent, and
    // dead-lettered after the last attempt.
    let wrong_fields: [fn(&serde_json::Value) -> serde_json::Value; 2] = [
        |envelope| serde_json::json!({ "id": envelope["id"], "payload": { "ok": true } }),
        |envelope| serde_json::json!({ "id": envelope["id"], "headers": { "k": "v" } }),
    ];
    for wrong_field in wrong_fields {
        let (addr, read) = answering(wrong_field).await;
        let settings = "timeout_ms = 500\nretry = { attempts = 3 }\n";
        let (problem, counts) = refused_reply(addr, "", settings).await;
        assert!(problem.contains("a malformed answer"), "{problem}");
        assert_eq!(counts, (1, 0), "delivered, not dead-lettered");
        assert_eq!(read.load(Ordering::SeqCst), 1, "sent once");
    }
}
