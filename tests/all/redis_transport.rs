//! The built-in `redis` transport against real `redis-server`s: lists and streams keyed by topic, the
//! server's answer as the reply, an error answer dead-lettered with its text, a header named like a
//! stream entry's own field dead-lettered unwritten, a server killed mid-run
//! and the only server restarting, with nothing lost; a server slow to answer, out of memory for a
//! while, or that closed the connection, and a host that never answers the handshake; against a fake
//! server, an answer larger than the host reads, one past the bytes it reads at all, an error
//! answer that never ends and an answer that stops halfway.

use crate::support::{
    RedisServer, Silent, assert_never_sent, drain_and_account, host, next, plugin_dir, within,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard::{Message, RequestError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;

fn config(servers: &[&RedisServer], options: &str) -> String {
    let addresses: Vec<SocketAddr> = servers.iter().map(|server| server.addr).collect();
    config_at(&addresses, options)
}

/// [`config`] for the servers at `addresses`.
fn config_at(addresses: &[SocketAddr], options: &str) -> String {
    let endpoints: Vec<String> = addresses.iter().map(|address| format!("\"{address}\"")).collect();
    format!(
        "[host]\nworkers = 2\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\nqueue = {{ capacity = 10000 }}\n\
         [[destination]]\nname = \"jobs\"\ntransport = \"redis\"\nendpoints = [{}]\noptions = {{ {options} }}\n\
         idempotent = true\nbreaker = {{ consecutive_failures = 1, open_ms = 60000 }}\n\
         retry = {{ attempts = 5, base_ms = 1, max_ms = 10 }}\n\
         [[route]]\nname = \"all\"\nto = \"jobs\"\n",
        endpoints.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_onto_the_list_their_topic_names_and_the_answer_is_the_reply() {
    let server = RedisServer::start();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&server], "key = \"jobs:{topic}\"")).await;
    for n in 0..100 {
        host.send(Message::new(["eu", "us"][n % 2], format!("job {n}"))).await.unwrap();
    }
    crate::support::eventually(|| match server.command(&["LLEN", "jobs:eu"]).as_str() {
        "50" => Ok(()),
        other => Err(other.to_owned()),
    });
    let reply = within(host.request(Message::new("eu", "one more"))).await.unwrap().expect("a reply");
    assert_eq!(&reply.payload[..], b"51", "RPUSH answers the list's new length");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (101, 0));
    assert_eq!(server.command(&["LLEN", "jobs:eu"]), "51");
    assert_eq!(server.command(&["LLEN", "jobs:us"]), "50");
    // Deliveries run side by side: the list holds every payload, in the order they arrived.
    let us: HashSet<String> =
        server.command(&["LRANGE", "jobs:us", "0", "-1"]).lines().map(str::to_owned).collect();
    assert_eq!(us, (0..100).filter(|n| n % 2 == 1).map(|n| format!("job {n}")).collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_entry_holds_the_payload_topic_and_headers() {
    let server = RedisServer::start();
    let dir = plugin_dir(&[]);
    let host =
        host(dir.path(), &config(&[&server], "command = \"xadd\", key = \"events\", max_len = 1000")).await;
    let reply =
        within(host.request(Message::new("orders", "{}").with_header("x-tenant", "a"))).await.unwrap();
    let entry_id = String::from_utf8(reply.expect("the entry id").payload.to_vec()).unwrap();
    drain_and_account(&host).await;
    let entry = server.command(&["XRANGE", "events", "-", "+"]);
    let fields: Vec<&str> = entry.lines().collect();
    assert_eq!(fields[0], entry_id);
    assert_eq!(&fields[1..7], ["payload", "{}", "topic", "orders", "x-tenant", "a"]);
    assert_eq!(fields[7], "x-sy-id", "the id consumers deduplicate on: {fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_named_like_a_field_of_the_stream_entry_dead_letters_its_message_unwritten() {
    let server = RedisServer::start();
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&server], "command = \"xadd\", key = \"events\"")).await;
    for field in ["payload", "topic"] {
        let message = Message::new("orders", "real").with_header(field, "forged");
        let answer = within(host.request(message)).await;
        assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{field}: {answer:?}");
        let letter = next(&host.memory("dead").unwrap()).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"), "{letter:?}");
        assert_eq!(letter.header("x-sy-attempts"), Some("1"), "nothing to retry: {letter:?}");
        let error = letter.header("x-sy-last-error").unwrap();
        assert!(error.contains(&format!("header \"{field}\"")), "names the header: {error}");
    }
    drain_and_account(&host).await;
    assert_eq!(
        server.command(&["XLEN", "events"]),
        "0",
        "no entry whose payload or topic a reader may take wrong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_dead_lettered_with_the_servers_words() {
    let server = RedisServer::start();
    server.command(&["SET", "jobs:eu", "not a list"]);
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&server], "key = \"jobs:{topic}\"")).await;
    let answer = within(host.request(Message::new("eu", "job"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    assert_eq!(letter.header("x-sy-attempts"), Some("1"), "an error answer is final");
    assert!(letter.header("x-sy-last-error").unwrap().contains("WRONGTYPE"), "{letter:?}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_loses_nothing() {
    let (first, mut second) = (RedisServer::start(), RedisServer::start());
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(&[&first, &second], "key = \"jobs\"")).await;
    for n in 0..2000 {
        if n == 1000 {
            second.kill();
        }
        host.send(Message::new("jobs", format!("job {n}"))).await.unwrap();
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2000, 0), "{stats:?}");
    second.restart();
    let mut seen = HashSet::new();
    for server in [&first, &second] {
        seen.extend(server.command(&["LRANGE", "jobs", "0", "-1"]).lines().map(str::to_owned));
    }
    assert_eq!(seen.len(), 2000, "every message is in one list or the other (retries may repeat one)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_only_server_restarts_wait_and_reach_it_once_it_is_back() {
    let mut server = RedisServer::start();
    let dir = plugin_dir(&[]);
    let config = config(&[&server], "key = \"jobs\"")
        .replace("open_ms = 60000", "open_ms = 20")
        .replace("attempts = 5", "attempts = 1000");
    let host = host(dir.path(), &config).await;
    for n in 0..100 {
        host.send(Message::new("jobs", format!("job {n}"))).await.unwrap();
    }
    crate::support::eventually(|| match server.command(&["LLEN", "jobs"]).as_str() {
        "100" => Ok(()),
        other => Err(other.to_owned()),
    });
    server.kill();
    for n in 100..200 {
        host.send(Message::new("jobs", format!("job {n}"))).await.unwrap();
    }
    let failed = || {
        let text = host.metrics().encode();
        let labels = [("destination", "jobs"), ("outcome", "retryable")];
        crate::exposition::sample(&text, "switchyard_transport_attempts_total", &labels)
    };
    crate::support::eventually(|| failed().filter(|failed| *failed > 0.0).ok_or("no failed attempt yet"));
    server.restart();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (200, 0), "{stats:?}");
    let listed = server.command(&["LRANGE", "jobs", "0", "-1"]);
    let seen: HashSet<&str> = listed.lines().collect();
    assert_eq!(seen.len(), 200, "every message on the list once at least (a retry may repeat one)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_busy_with_a_script_did_not_take_the_message_which_goes_once_the_script_ends() {
    // BUSY: a script runs and the server runs no other command; the message was dead-lettered at
    // once, although nothing took it.
    let server = RedisServer::start();
    server.command(&["CONFIG", "SET", "busy-reply-threshold", "10"]);
    let mut script = std::net::TcpStream::connect(server.addr).unwrap();
    std::io::Write::write_all(&mut script, b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n")
        .unwrap();
    crate::support::eventually(|| match server.try_command(&["PING"]) {
        Err(busy) if busy.to_string().starts_with("BUSY") => Ok(()),
        other => Err(other),
    });
    let dir = plugin_dir(&[]);
    let config = config(&[&server], "key = \"jobs\"")
        .replace("idempotent = true", "idempotent = false")
        .replace("attempts = 5", "attempts = 100000");
    let host = host(dir.path(), &config).await;
    let sent = tokio::spawn({
        let host = host.clone();
        async move { within(host.request(Message::new("jobs", "after the script"))).await }
    });
    let retries = || {
        let text = host.metrics().encode();
        crate::exposition::sample(&text, "switchyard_destination_retries_total", &[("destination", "jobs")])
    };
    tokio::task::block_in_place(|| {
        crate::support::eventually(|| retries().filter(|retries| *retries > 0.0).ok_or("not refused yet"))
    });
    server.command(&["SCRIPT", "KILL"]);
    assert!(sent.await.unwrap().is_ok(), "delivered once the script ended");
    assert_eq!(server.command(&["LRANGE", "jobs", "0", "-1"]), "after the script");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_the_handshake_was_never_sent_the_message() {
    // The deadline cut the connect: the message was dead-lettered `delivery-uncertain` after one
    // attempt, as if it had gone out and got no answer, though it never left.
    let silent = Silent::start();
    let dir = plugin_dir(&[]);
    let config = config_at(&[silent.addr], "key = \"jobs\"")
        .replace("idempotent = true", "idempotent = false\ntimeout_ms = 300\nqueue = { timeout_ms = 1500 }");
    let host = host(dir.path(), &config).await;
    let reason = assert_never_sent(&host).await;
    assert!(reason.contains("not connected within the attempt's 300ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_half_a_second_but_within_the_deadline_is_the_reply() {
    // The redis crate's own 500 ms response timeout cut the attempt long before the destination's
    // 5 s: the message, pushed, was dead-lettered `delivery-uncertain`.
    let server = RedisServer::start();
    let dir = plugin_dir(&[]);
    let config = config(&[&server], "key = \"jobs\"")
        .replace("idempotent = true", "idempotent = false\ntimeout_ms = 5000");
    let host = host(dir.path(), &config).await;
    let first = within(host.request(Message::new("jobs", "first"))).await.unwrap().expect("a reply");
    assert_eq!(&first.payload[..], b"1", "connected, and the list made");
    server.command(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let paused = Instant::now();
    let second = within(host.request(Message::new("jobs", "second"))).await;
    let second = second.unwrap_or_else(|err| panic!("the answer comes within the deadline: {err:?}"));
    assert_eq!(&second.expect("a reply").payload[..], b"2");
    assert!(paused.elapsed() >= Duration::from_secs(1), "answered once the pause ended");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
    assert_eq!(server.command(&["LRANGE", "jobs", "0", "-1"]), "first\nsecond");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_memory_did_not_take_the_message_which_goes_once_it_has_room() {
    // OOM (as MISCONF and NOREPLICAS) refuses the write: the message was dead-lettered at once.
    let server = RedisServer::start();
    server.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    server.command(&["CONFIG", "SET", "maxmemory", "1"]);
    let dir = plugin_dir(&[]);
    let config = config(&[&server], "key = \"jobs\"")
        .replace("idempotent = true", "idempotent = false")
        .replace("attempts = 5, base_ms = 1, max_ms = 10", "attempts = 10, base_ms = 100, max_ms = 1000");
    let host = host(dir.path(), &config).await;
    let room = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.command(&["CONFIG", "SET", "maxmemory", "0"]);
    };
    let (answer, ()) = tokio::join!(within(host.request(Message::new("jobs", "once there is room"))), room);
    let reply = answer.unwrap_or_else(|err| panic!("delivered once the server had room: {err:?}"));
    assert_eq!(&reply.expect("a reply").payload[..], b"1");
    let text = host.metrics().encode();
    let retries =
        crate::exposition::sample(&text, "switchyard_destination_retries_total", &[("destination", "jobs")]);
    assert!(retries.is_some_and(|retries| retries > 0.0), "refused first: {retries:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
    assert_eq!(server.command(&["LRANGE", "jobs", "0", "-1"]), "once there is room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_not_sent_on_but_made_again() {
    // The host's connection killed while idle: the next message must not go into it (where its
    // failure could not be told from one the server took), but onto a new one.
    let server = RedisServer::start();
    let dir = plugin_dir(&[]);
    let config = config(&[&server], "key = \"jobs\"").replace("idempotent = true", "idempotent = false");
    let host = host(dir.path(), &config).await;
    within(host.request(Message::new("jobs", "first"))).await.unwrap().expect("a reply");
    let killed = server.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    assert_ne!(killed, "0", "the host's connection was killed");
    let second = within(host.request(Message::new("jobs", "second"))).await;
    let second = second.unwrap_or_else(|err| panic!("sent on a new connection: {err:?}"));
    assert_eq!(&second.expect("a reply").payload[..], b"2");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 0));
}

/// What a [`fake_server`] answers `RPUSH` with.
#[derive(Clone, Copy)]
enum PushAnswer {
    /// A bulk string of this many bytes.
    Bulk(usize),
    /// The start of a bulk string that says it is a terabyte long, and nothing more.
    Stalled,
    /// An error answer without end: `-ERR ` and bytes written until the host closes the connection
    /// (or 64 MiB of them are out, then waiting for the close).
    EndlessError,
}

/// A server on 127.0.0.1 that speaks just enough RESP for the transport: `+OK` to each command of
/// the handshake, `push` to each `RPUSH`. Its address, and a receiver told each time the host closed
/// a connection.
async fn fake_server(push: PushAnswer) -> (SocketAddr, UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let _ = serve(BufReader::new(connection), push).await;
                let _ = closed.send(());
            });
        }
    });
    (addr, closes)
}

/// Answer the commands on `connection` as [`fake_server`] says, until the host closes it (or it
/// fails).
async fn serve(mut connection: BufReader<TcpStream>, push: PushAnswer) -> std::io::Result<()> {
    loop {
        if !read_command(&mut connection).await?.eq_ignore_ascii_case(b"RPUSH") {
            connection.write_all(b"+OK\r\n").await?;
            continue;
        }
        match push {
            PushAnswer::Bulk(size) => {
                let bulk = format!("${size}\r\n{}\r\n", "x".repeat(size));
                connection.write_all(bulk.as_bytes()).await?;
            }
            PushAnswer::Stalled => connection.write_all(b"$1000000000000\r\nxxxx").await?,
            PushAnswer::EndlessError => {
                connection.write_all(b"-ERR ").await?;
                let chunk = [b'x'; 64 << 10];
                for _ in 0..1024 {
                    if connection.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
        if !matches!(push, PushAnswer::Bulk(_)) {
            // Closed, or to be seen closed: the end of what the host sends.
            connection.read_to_end(&mut Vec::new()).await?;
            return Ok(());
        }
    }
}

/// The name of the next command on `connection` (an array of bulk strings), its arguments skipped.
async fn read_command(connection: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut name = Vec::new();
    for n in 0..read_number(connection, '*').await? {
        let mut argument = vec![0; read_number(connection, '$').await? + 2];
        connection.read_exact(&mut argument).await?;
        if n == 0 {
            argument.truncate(argument.len() - 2);
            name = argument;
        }
    }
    Ok(name)
}

/// The number on the next line of `connection`, after `prefix`.
async fn read_number(connection: &mut BufReader<TcpStream>, prefix: char) -> std::io::Result<usize> {
    let mut line = String::new();
    connection.read_line(&mut line).await?;
    let number = line.strip_prefix(prefix).and_then(|number| number.trim_end().parse().ok());
    number.ok_or_else(|| std::io::Error::other(format!("not RESP: {line:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_host_reads_is_refused_and_its_message_counted_delivered() {
    // The 1025-byte answer was the reply of a host that takes messages of at most 1024 bytes.
    let (addr, _closes) = fake_server(PushAnswer::Bulk(1025)).await;
    let dir = plugin_dir(&[]);
    let config =
        config_at(&[addr], "key = \"jobs\"").replace("[host]\n", "[host]\nmax_message_bytes = 1024\n");
    let host = host(dir.path(), &config).await;
    let answer = within(host.request(Message::new("jobs", "one"))).await;
    let Err(RequestError::ReplyRefused { destination, problem }) = answer else {
        panic!("delivered, its reply refused: {answer:?}")
    };
    assert_eq!(destination, "jobs");
    assert!(problem.ends_with(": a reply of 1029 bytes: more than 1024 bytes"), "{problem}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_end_is_not_read_past_the_deadline_of_the_attempt_waiting_for_it() {
    // The connection, kept for the next attempts, went on waiting for the answer's end.
    // The deadline also bounds the connect and handshake: long enough for a loaded machine's.
    let (addr, mut closes) = fake_server(PushAnswer::Stalled).await;
    let dir = plugin_dir(&[]);
    let config = config_at(&[addr], "key = \"jobs\"")
        .replace("idempotent = true", "idempotent = false\ntimeout_ms = 2000");
    let host = host(dir.path(), &config).await;
    let answer = within(host.request(Message::new("jobs", "one"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-uncertain"), "{letter:?}");
    within(closes.recv()).await.expect("the host closed the connection");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_the_bytes_the_host_reads_is_refused_unread_and_its_message_counted_delivered() {
    // The host read the whole 8 MiB answer before it refused the reply, and kept the connection.
    let (addr, mut closes) = fake_server(PushAnswer::Bulk(8 << 20)).await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config_at(&[addr], "key = \"jobs\"")).await;
    let answer = within(host.request(Message::new("jobs", "one"))).await;
    let Err(RequestError::ReplyRefused { problem, .. }) = answer else {
        panic!("delivered, its reply refused: {answer:?}")
    };
    // The host's 1 MiB messages, and 1 KiB for the answer's framing.
    assert!(problem.ends_with(": an answer of more than 1049600 bytes: not read"), "{problem}");
    within(closes.recv()).await.expect("the host closed the connection");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_without_end_is_dead_lettered_with_its_start_once_past_the_bytes_the_host_reads() {
    // The host read the error answer as long as the server wrote it (64 MiB), waited for its end
    // until the deadline, and retried on new connections.
    let (addr, mut closes) = fake_server(PushAnswer::EndlessError).await;
    let dir = plugin_dir(&[]);
    let config = config_at(&[addr], "key = \"jobs\"")
        .replace("idempotent = true", "idempotent = true\ntimeout_ms = 20000");
    let host = host(dir.path(), &config).await;
    let answer = within(host.request(Message::new("jobs", "one"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"), "{letter:?}");
    assert_eq!(letter.header("x-sy-attempts"), Some("1"), "an error answer is final");
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(
        error.contains(": an error answer of more than 1049600 bytes: not read; it begins \"ERR xxxx"),
        "{error}"
    );
    within(closes.recv()).await.expect("the host closed the connection");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}
