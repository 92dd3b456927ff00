//! The listeners hold against clients that trickle: a connection that does
//! not send its request headers in time is cut, at most so many are open at
//! once (a WebSocket among them), and a client that sends a whole request is
//! still served. A host whose `run` is dropped stops listening.

use crate::support::{
    MEMORY_OUT, PATIENCE, drain_and_account, host, plugin_dir, post, still_pending, within,
};
use futures_util::StreamExt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_clients_are_cut_at_the_header_timeout_and_a_whole_request_is_still_served() {
    let dir = plugin_dir(&[]);
    let config = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 8\nheader_timeout_ms = 300\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let addr = crate::support::start_ingress(&host).await;
    // Ninety clients that stall: ten send nothing at all, fifty start a
    // request and never finish its headers, ten send one byte of HTTP/2's
    // preface, ten the whole preface and a SETTINGS frame (once never cut: a
    // few of them held every connection), ten stop inside a body.
    let stalling = |start: &[u8]| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(start).unwrap();
        stream
    };
    let silent = (0..10).map(|_| stalling(b""));
    let headers = (0..50).map(|_| stalling(b"POST /v1/messages/t HTTP/1.1\r\nhost: x\r\n"));
    let body = b"POST /v1/messages/t HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{}";
    let bodies = (0..10).map(|_| stalling(body));
    let preface_started = (0..10).map(|_| stalling(b"P"));
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let http2 = (0..10).map(|_| stalling(preface));
    let trickling: Vec<TcpStream> =
        silent.chain(headers).chain(preface_started).chain(http2).chain(bodies).collect();
    let whole = tokio::task::spawn_blocking(move || post(addr, "/v1/messages/t", &[], b"{}"));
    let cut = tokio::task::spawn_blocking(move || {
        trickling
            .into_iter()
            .map(|mut stream| {
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                let mut answer = Vec::new();
                // Ok once the server closed the connection; an error when it held it past PATIENCE.
                stream.read_to_end(&mut answer).map(|_| String::from_utf8_lossy(&answer).into_owned())
            })
            .collect::<Vec<_>>()
    });
    for (n, answer) in cut.await.unwrap().into_iter().enumerate() {
        let answer = answer.unwrap_or_else(|error| panic!("client {n} was held past the timeout: {error}"));
        match n {
            0..70 => assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{n}: {answer}"),
            // HTTP/2 is not served: refused, or cut.
            70..80 => assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 "), "{n}: {answer}"),
            _ => assert!(answer.starts_with("HTTP/1.1 408"), "{n}: {answer}"),
        }
    }
    assert_eq!(whole.await.unwrap().0, 202, "a whole request is served");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1, "nothing of the trickling requests was accepted");
}

#[tokio::test(start_paused = true)]
async fn a_body_trickled_within_each_pause_is_cut_at_its_allowance_and_one_sent_at_a_kib_a_second_served() {
    // A byte every 200 ms never paused the 300 ms allowed: 250 of them took 50 s and were taken
    // (202), so 1024 such clients held the ingress as long as they liked. The clock is paused:
    // the deadlines pass only once every task waits, never while the host is slow on a loaded
    // machine.
    let dir = plugin_dir(&[]);
    let config = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 300\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let addr = crate::support::start_ingress(&host).await;
    let every = std::time::Duration::from_millis(200);
    for path in ["/v1/messages/t", "/v1/messages"] {
        let (answer, took) =
            within(send_slowly(addr, path, &[b'x'; 250].map(|byte| vec![byte]), every)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        // The header deadline, and a millisecond for the byte sent.
        assert!(took < std::time::Duration::from_millis(400), "{path}: cut after {took:?}");
    }
    // 2 KiB in eight pieces 200 ms apart: never a pause, and never slower than a KiB a second
    // after the header deadline.
    let pieces = [b'x'; 8].map(|byte| vec![byte; 256]);
    let (answer, _) = within(send_slowly(addr, "/v1/messages/t", &pieces, every)).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    tokio::time::resume();
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1, "nothing of the cut requests was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_listener_refuses_new_connections_while_a_request_in_progress_finishes() {
    // The listener kept its socket until every connection closed: a client that connected during
    // the stop waited in the backlog, unanswered, for the whole grace period, then was reset.
    let dir = plugin_dir(&[]);
    let config = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 3600000\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let ingress = switchyard::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ingress.serve(async move {
        let _ = stopped.await;
    }));
    // A request in progress: its body read (hyper asks for it: 100 Continue), not all of it sent.
    let mut busy = TcpStream::connect(addr).unwrap();
    let head =
        b"POST /v1/messages/t HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n";
    busy.write_all(head).unwrap();
    let mut reader = std::io::BufReader::new(busy.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    busy.write_all(b"{}").unwrap();
    stop.send(()).unwrap();
    let refused = tokio::task::spawn_blocking(move || {
        crate::support::eventually(|| match TcpStream::connect(addr) {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(other.map(|_| "connected")),
        })
    });
    within(refused).await.unwrap();
    assert!(!serving.is_finished(), "the request in progress holds the stop");
    busy.write_all(b"  ").unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        reader.read_to_string(&mut answer).map(|_| answer)
    });
    let answer = within(answer).await.unwrap().unwrap();
    assert!(answer.contains("HTTP/1.1 202"), "the request in progress is served: {answer}");
    within(serving).await.unwrap();
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_run_is_dropped_stops_listening() {
    // `Host::run` dropped at its shutdown's await (a `select!`, an aborted task) never told its
    // ingress to stop: the port stayed bound, answering 503 once the host had shut down, for good.
    let dir = plugin_dir(&[]);
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config =
        format!("{MEMORY_OUT}[ingress.http]\nlisten = \"{addr}\"\n[[route]]\nname = \"all\"\nto = \"out\"\n");
    let host = host(dir.path(), &config).await;
    let running = tokio::spawn({
        let host = host.clone();
        async move { host.run(std::future::pending()).await }
    });
    let served = tokio::task::spawn_blocking(move || {
        crate::support::eventually(|| {
            crate::support::try_post(addr, "/v1/messages/t", b"{}").ok_or("not yet")
        })
    });
    assert_eq!(within(served).await.unwrap().0, 202);
    running.abort();
    assert!(within(running).await.unwrap_err().is_cancelled());
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1);
    let refused = tokio::task::spawn_blocking(move || {
        crate::support::eventually(|| match TcpStream::connect(addr) {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(other.map(|_| "connected")),
        })
    });
    within(refused).await.unwrap();
}

/// The status line `addr` answers a POST to `path` whose body is `pieces`, sent `every` so long
/// apart (the first with the headers), and how long after the headers it came.
async fn send_slowly(
    addr: SocketAddr,
    path: &str,
    pieces: &[Vec<u8>],
    every: std::time::Duration,
) -> (String, std::time::Duration) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let length = pieces.iter().map(Vec::len).sum::<usize>();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = tokio::time::Instant::now();
    let pieces = pieces.to_vec();
    let sending = tokio::spawn(async move {
        for piece in pieces {
            // Once cut, the host reads no more: a write may fail.
            if writer.write_all(&piece).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    });
    let mut status = String::new();
    tokio::io::BufReader::new(reader).read_line(&mut status).await.unwrap();
    let took = sent.elapsed();
    sending.abort();
    (status, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_token_is_required_when_set_and_changes_on_reload() {
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    let config = |token: &str| {
        let plugins = format!("[host]\nplugin_dir = {:?}", dir.path());
        format!(
            "{}[ingress.http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[[route]]\nname = \"all\"\nto = \"out\"\n",
            MEMORY_OUT.replacen("[host]", &plugins, 1)
        )
    };
    std::fs::write(&config_path, config("first")).unwrap();
    let host = switchyard::Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let addr = crate::support::start_ingress(&host).await;
    let send = |token: &'static str| {
        tokio::task::spawn_blocking(move || {
            let bearer = format!("Bearer {token}");
            post(addr, "/v1/messages/t", &[("authorization", bearer.as_str())], b"{}").0
        })
    };
    assert_eq!((send("first").await.unwrap(), send("wrong").await.unwrap()), (202, 401));
    // Refused on its headers: a body is never read (nor waited for) without the token.
    let unread = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let huge = "POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n";
        stream.write_all(huge.as_bytes()).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut answer = [0; 12];
        stream.read_exact(&mut answer).map(|()| answer)
    });
    assert_eq!(&unread.await.unwrap().unwrap(), b"HTTP/1.1 401");
    crate::support::replace_file(&config_path, config("second").as_bytes());
    crate::support::within(host.reload()).await.unwrap();
    assert_eq!((send("first").await.unwrap(), send("second").await.unwrap()), (401, 202));
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 2, "refused requests are never accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_trickling_clients_are_cut_and_health_still_answers() {
    let dir = plugin_dir(&[]);
    let config = format!(
        "{MEMORY_OUT}[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 100\nheader_timeout_ms = 200\n"
    );
    let host = host(dir.path(), &config).await;
    let admin = switchyard::admin::AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None);
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let cut = tokio::task::spawn_blocking(move || {
        let trickling: Vec<TcpStream> = (0..2000)
            .map(|_| {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n").unwrap();
                stream
            })
            .collect();
        let health = crate::support::http(addr, "GET", "/health", &[], b"");
        let closed = trickling.into_iter().filter(|mut stream| {
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            stream.read_to_end(&mut Vec::new()).is_ok()
        });
        (health, closed.count())
    });
    let (health, closed) = crate::support::within(cut).await.unwrap();
    assert_eq!(health, (200, r#"{"status":"ok"}"#.to_owned()), "health answers beside the flood");
    assert_eq!(closed, 2000, "every trickling client was cut");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_a_page_elsewhere_is_refused_on_every_ingress_route() {
    // A cross-site POST needs no preflight: a page could use its visitor's browser to send
    // messages, one by one or in batches, to an ingress the browser reaches.
    let dir = plugin_dir(&[]);
    let config = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let addr = crate::support::start_ingress(&host).await;
    let own = format!("http://{addr}");
    let (status, posted) = tokio::task::spawn_blocking(move || {
        let foreign = [("origin", "http://evil.example"), ("content-type", "text/plain")];
        let batch = br#"[{"topic":"t","payload":"x"}]"#;
        let refused =
            [post(addr, "/v1/messages/t", &foreign, b"x").0, post(addr, "/v1/messages", &foreign, batch).0];
        let same = [("origin", own.as_str())];
        let taken = [post(addr, "/v1/messages/t", &same, b"x").0, post(addr, "/v1/messages/t", &[], b"x").0];
        (refused, taken)
    })
    .await
    .unwrap();
    assert_eq!(status, [403, 403], "a foreign Origin is refused");
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let mut socket = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    socket.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    match crate::support::within(tokio_tungstenite::connect_async(socket)).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("a socket from a page elsewhere was opened: {:?}", other.map(|_| ())),
    }
    assert_eq!(posted, [202, 202], "its own, or none (a program), is served");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_points_its_own_name_here_is_refused_unless_the_ingress_wants_a_token() {
    // DNS rebinding: a page at evil.example points evil.example at 127.0.0.1; its requests then
    // carry Origin and Host evil.example, which agree, and went through to a local ingress.
    let dir = plugin_dir(&[]);
    let rebound = |addr: SocketAddr, extra: &[(&str, &str)]| {
        let authority = format!("evil.example:{}", addr.port());
        let origin = format!("http://{authority}");
        let mut headers = vec![("host", authority.as_str()), ("origin", origin.as_str())];
        headers.extend_from_slice(extra);
        post(addr, "/v1/messages/t", &headers, b"x")
    };
    let open = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host_open = host(dir.path(), &open).await;
    let addr = crate::support::start_ingress(&host_open).await;
    let (refused, program, by_address) = tokio::task::spawn_blocking(move || {
        let program = post(addr, "/v1/messages/t", &[("host", "evil.example")], b"x").0;
        let own = format!("http://{addr}");
        (rebound(addr, &[]), program, post(addr, "/v1/messages/t", &[("origin", own.as_str())], b"x").0)
    })
    .await
    .unwrap();
    assert_eq!(refused.0, 403, "{}", refused.1);
    assert!(refused.1.contains("a name any site could point here"), "{}", refused.1);
    assert_eq!(
        (program, by_address),
        (202, 202),
        "a program (no Origin), or a page at the address, is served"
    );
    assert_eq!(drain_and_account(&host_open).await.accepted, 2);
    // With a token, a page cannot present it: a browser sending it is the operator's own.
    let guarded = format!(
        "{MEMORY_OUT}[ingress.http]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-token\"\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let host_guarded = host(dir.path(), &guarded).await;
    let addr = crate::support::start_ingress(&host_guarded).await;
    let (without, with) = tokio::task::spawn_blocking(move || {
        (rebound(addr, &[]).0, rebound(addr, &[("authorization", "Bearer s3cret-token")]).0)
    })
    .await
    .unwrap();
    assert_eq!((without, with), (401, 202));
    assert_eq!(drain_and_account(&host_guarded).await.accepted, 1);
    // An empty token is none, as the admin API's: it matched the empty bearer any page sends
    // and turned the rebinding guard off.
    let empty = guarded.replace("token = \"s3cret-token\"", "token = \"\"");
    let host_empty = host(dir.path(), &empty).await;
    let addr = crate::support::start_ingress(&host_empty).await;
    let (status, body) = tokio::task::spawn_blocking(move || rebound(addr, &[])).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(drain_and_account(&host_empty).await.accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_event_stream_holds_its_connection_slot_until_it_closes() {
    // An event stream let go of its slot once upgraded: any number of them stayed open past
    // max_connections.
    let dir = plugin_dir(&[]);
    let host =
        host(dir.path(), &format!("{MEMORY_OUT}[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 1\n"))
            .await;
    let admin = switchyard::admin::AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None);
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let (mut events, _) =
        within(tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))).await.unwrap();
    let mut health =
        tokio::task::spawn_blocking(move || crate::support::http(addr, "GET", "/health", &[], b""));
    assert!(
        still_pending(&mut health).await,
        "a request was served while an event stream held the only slot"
    );
    events.close(None).await.unwrap();
    while let Some(Ok(_)) = within(events.next()).await {}
    assert_eq!(within(health).await.unwrap().0, 200, "served once the stream closed");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_event_stream_refuses_a_large_frame_unread() {
    // What a client sends an event stream is read only to see it close, and was read up to 16 MiB a
    // frame, 64 MiB a message.
    use crate::websocket_ingress::{close_frame, raw_frame, write_raw};
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{MEMORY_OUT}[admin]\nlisten = \"127.0.0.1:0\"\n")).await;
    let admin = switchyard::admin::AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None);
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let (mut events, _) =
        within(tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))).await.unwrap();
    write_raw(&mut events, &raw_frame(0x2, true, 1 << 20, &[0; 16])).await;
    assert_eq!(close_frame(&mut events).await, (1009, "a message of 1048576 bytes: at most 4096".to_owned()));
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_admin_event_stream_is_pinged_then_closed() {
    // An event stream on a quiet host was never written to: one whose client was gone (no FIN)
    // held its connection, and now one of the admin API's slots, for good.
    use crate::websocket_ingress::{frames_until_closed, silent_socket};
    let dir = plugin_dir(&[]);
    let config = format!("{MEMORY_OUT}[admin]\nlisten = \"127.0.0.1:0\"\nping_ms = 1000\n");
    let host = host(dir.path(), &config).await;
    let admin = switchyard::admin::AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None);
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let (mut answering, _) =
        within(tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))).await.unwrap();
    let mut silent = silent_socket(addr, "/v1/events").await;
    // Its pong (tungstenite answers as it reads) ends a client's silence: a second ping, not a close.
    let mut pings = 0;
    while pings < 2 {
        match within(answering.next()).await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Ping(_) => pings += 1,
            tokio_tungstenite::tungstenite::Message::Text(_) => {}
            other => panic!("after {pings} pings: {other:?}"),
        }
    }
    answering.close(None).await.unwrap();
    let frames = frames_until_closed(&mut silent).await;
    let mut close = b"\x03\xe9".to_vec();
    close.extend_from_slice(b"nothing received for 2000 ms");
    assert_eq!(frames, [(0x9, vec![]), (0x8, close)], "pinged, then closed (1001)");
    drain_and_account(&host).await;
}
