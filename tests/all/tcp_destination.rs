//! The `tcp` destination against a real framed server on 127.0.0.1:
//! request/reply, connection reuse, failover past a dead endpoint.

use crate::support::{drain_and_account, host, plugin_dir, within};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use switchyard::Message;
use switchyard_wire::{Head, Payload, decode, write_message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A framed server answering each message with its payload upper-cased (and host headers it has
/// no business setting); returns its address and how many connections it accepted.
async fn upper_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Ok(length) = stream.read_u32().await {
                    let mut frame = vec![0; length as usize];
                    stream.read_exact(&mut frame).await.unwrap();
                    let request = decode(&frame).next().unwrap().unwrap();
                    let loud = String::from_utf8_lossy(request.payload.unwrap()).to_uppercase();
                    let mut reply = Vec::new();
                    let head = Head { id: request.id, source: 0, priority: 0, topic: request.topic };
                    write_message(
                        &mut reply,
                        &head,
                        [("x-served-by", "tcp-server"), ("X-Sy-Id", "forged"), ("x-sy-dead-letter", "no")],
                        Payload::Bytes(loud.as_bytes()),
                    );
                    stream.write_u32(reply.len() as u32).await.unwrap();
                    stream.write_all(&reply).await.unwrap();
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_requests_reuse_one_connection_and_fail_over_past_a_dead_endpoint() {
    let (server, connections) = upper_server().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[[destination]]\nname = \"frames\"\ntransport = \"tcp\"\nendpoints = [\"{dead}\", \"{server}\"]\n\
         retry = {{ attempts = 2, base_ms = 1, max_ms = 2 }}\n[[route]]\nname = \"all\"\nto = \"frames\"\n"
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config).await;
    for n in 0..20 {
        let reply = within(host.request(Message::new("jobs", format!("job {n}")))).await.unwrap().unwrap();
        assert_eq!(reply.payload, format!("JOB {n}"));
        assert_eq!(reply.header("x-served-by"), Some("tcp-server"));
        assert!(
            reply.headers.iter().all(|(name, _)| !name.to_ascii_lowercase().starts_with("x-sy-")),
            "an endpoint does not forge the host's headers: {:?}",
            reply.headers
        );
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "sequential requests share one pooled connection");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_past_max_message_bytes_is_refused_and_the_message_counted_delivered() {
    // The reply frame says the peer took the message: only its reply, four times what the host
    // takes, is refused. Sending the message again would deliver it twice.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                while let Ok(length) = stream.read_u32().await {
                    stream.read_exact(&mut vec![0; length as usize]).await.unwrap();
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut reply = Vec::new();
                    let head = Head { id: 1, source: 0, priority: 0, topic: "jobs" };
                    write_message(&mut reply, &head, [], Payload::Bytes(&[b'x'; 4096]));
                    stream.write_u32(reply.len() as u32).await.unwrap();
                    stream.write_all(&reply).await.unwrap();
                }
            });
        }
    });
    let config = format!(
        "[host]\nmax_message_bytes = 1024\n\
         [[destination]]\nname = \"frames\"\ntransport = \"tcp\"\nendpoints = [\"{server}\"]\n\
         [[route]]\nname = \"all\"\nto = \"frames\"\n"
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config).await;
    let answer = within(host.request(Message::new("jobs", "job"))).await;
    let Err(switchyard::RequestError::ReplyRefused { destination, problem }) = answer else {
        panic!(
            "delivered, its reply refused: {:?}",
            answer.map(|reply| reply.map(|reply| reply.payload.len()))
        )
    };
    assert_eq!(destination, "frames");
    assert!(problem.contains("more than 1024 bytes"), "{problem}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "delivered once: not sent again");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pooled_connection_is_closed_at_its_idle_timeout_with_no_more_traffic() {
    // The endpoint answers one request, then waits for the host to close the connection: with
    // nothing more to send, the pool closes it once idle for `idle_timeout_ms`, not at some later
    // acquisition that may never come.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let length = stream.read_u32().await.unwrap();
        stream.read_exact(&mut vec![0; length as usize]).await.unwrap();
        let mut reply = Vec::new();
        let head = Head { id: 1, source: 0, priority: 0, topic: "jobs" };
        write_message(&mut reply, &head, [], Payload::Bytes(b"done"));
        stream.write_u32(reply.len() as u32).await.unwrap();
        stream.write_all(&reply).await.unwrap();
        let opened = tokio::time::Instant::now();
        let end = stream.read(&mut [0; 1]).await;
        let _ = closed_tx.send((end.map_err(|err| err.kind()), opened.elapsed()));
    });
    let config = format!(
        "[[destination]]\nname = \"frames\"\ntransport = \"tcp\"\nendpoints = [\"{server}\"]\n\
         pool = {{ idle_timeout_ms = 200 }}\n[[route]]\nname = \"all\"\nto = \"frames\"\n"
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config).await;
    let reply = within(host.request(Message::new("jobs", "job"))).await.unwrap().unwrap();
    assert_eq!(reply.payload, "done");
    let (end, idle_for) = within(closed).await.unwrap();
    assert_eq!(end, Ok(0), "the host closed the connection (end of stream), it did not reset it");
    assert!(idle_for >= std::time::Duration::from_millis(150), "closed only once idle: {idle_for:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}
