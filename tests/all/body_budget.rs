//! Request bodies the ingress holds before their messages are admitted stay within one budget for
//! the whole host (`host.queue_bytes`, or `ingress.http.max_batch_bytes` if more), whatever the
//! number of clients: a body past it is refused unread (`503` + `Retry-After`), and one that comes
//! once an admission gave room back is read. A gRPC call takes its charge of the same budget while
//! open: one past it is refused unread (`RESOURCE_EXHAUSTED`).

use crate::support::{MEMORY_OUT, PATIENCE, drain_and_account, eventually, host, plugin_dir, within};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

/// Bytes of each body held: four fill the budget.
const QUARTER: usize = 256 << 10;

/// A POST to `path` of a body of `length` bytes whose client asks before sending it (`expect:
/// 100-continue`): the connection, and the status line the host answered the headers with, `100`
/// once it reads the body.
fn ask_to_send(addr: SocketAddr, path: &str, length: usize) -> (TcpStream, BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\n\
         expect: 100-continue\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    (stream, reader, status)
}

/// The headers of an answer whose status line was read, up to the blank line that ends them.
fn headers_of(reader: &mut BufReader<TcpStream>) -> String {
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "closed within the headers: {headers}");
        if line == "\r\n" {
            return headers;
        }
        headers.push_str(&line);
    }
}

/// The bytes of request bodies the host holds, as `/metrics` tells.
fn body_bytes_held(host: &switchyard::Host) -> String {
    let metrics = host.metrics().encode();
    let line = metrics.lines().find(|line| line.starts_with("switchyard_ingress_body_bytes "));
    line.unwrap_or_else(|| panic!("no switchyard_ingress_body_bytes in:\n{metrics}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_before_admission_stay_within_one_budget_whatever_the_number_of_clients() {
    // The only bound was the connections' number, each of them holding a body of its route's limit:
    // 1024 clients sending 16 MiB bulk bodies without their last byte made the host hold 16 GiB,
    // and run out of memory, losing every message it had accepted.
    let dir = plugin_dir(&[]);
    let config = MEMORY_OUT.replacen("[host]\n", "[host]\nqueue_bytes = 1048576\n", 1)
        + "[ingress.http]\nlisten = \"127.0.0.1:0\"\nmax_connections = 64\nheader_timeout_ms = 3600000\n\
           max_batch_bytes = 1048576\n[[route]]\nname = \"all\"\nto = \"out\"\n";
    let host = host(dir.path(), &config).await;
    let addr = crate::support::start_ingress(&host).await;
    let bulk_body = {
        let start = r#"{"topic":"t","payload":""#;
        let end = "\"}\n";
        format!("{start}{}{end}", "x".repeat(QUARTER - start.len() - end.len())).into_bytes()
    };
    let single_body = vec![b'x'; QUARTER];
    let held = host.clone();
    let scenario = tokio::task::spawn_blocking(move || {
        // Four bodies of a quarter of the budget each, all but their last byte sent.
        let mut stalled = Vec::new();
        for (path, body) in [
            ("/v1/messages/t", &single_body),
            ("/v1/messages", &bulk_body),
            ("/v1/messages/t", &single_body),
            ("/v1/messages", &bulk_body),
        ] {
            let (mut stream, mut reader, status) = ask_to_send(addr, path, body.len());
            assert!(status.starts_with("HTTP/1.1 100"), "{path}: {status}");
            headers_of(&mut reader);
            stream.write_all(&body[..body.len() - 1]).unwrap();
            stalled.push((stream, reader, body[body.len() - 1]));
        }
        // A fifth body, of one byte, finds no room: refused before it is asked for.
        let (_, mut reader, status) = ask_to_send(addr, "/v1/messages/t", 1);
        assert!(status.starts_with("HTTP/1.1 503"), "a body past the budget was asked for: {status}");
        let mut answer = headers_of(&mut reader);
        reader.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert!(answer.contains("request bodies not yet admitted"), "{answer}");
        assert_eq!(body_bytes_held(&held), "switchyard_ingress_body_bytes 1048576");
        // One of them finished and admitted gives its room back: the fifth is read now.
        let (mut stream, mut reader, last) = stalled.remove(0);
        stream.write_all(&[last]).unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 202"), "{status}");
        let (mut fifth, mut reader, status) = ask_to_send(addr, "/v1/messages/t", 1);
        assert!(status.starts_with("HTTP/1.1 100"), "{status}");
        headers_of(&mut reader);
        fifth.write_all(b"x").unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 202"), "{status}");
        for (mut stream, mut reader, last) in stalled {
            stream.write_all(&[last]).unwrap();
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 20"), "{status}");
        }
    });
    within(scenario).await.unwrap();
    // Read to the end, each answer gave its body's room back before it was sent.
    assert_eq!(body_bytes_held(&host), "switchyard_ingress_body_bytes 0");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 5, "the four held and the fifth, once there was room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_charged_to_the_same_budget_and_a_call_past_it_is_refused_resource_exhausted() {
    // gRPC calls were not counted: each could make the host buffer a message of up to
    // max_message_bytes + 64 KiB (and what the HTTP/2 window let its client send ahead), 200 calls
    // a connection, whatever the budget.
    use switchyard::ingress::{IngressClient, PublishRequest};
    // Each call takes its decoding limit (max_message_bytes + 64 KiB) and the HTTP/2 stream window
    // (1 MiB) of the budget: two fit in 3 MiB, a third does not.
    const CHARGE: usize = (64 << 10) + (64 << 10) + (1 << 20);
    let dir = plugin_dir(&[]);
    let config =
        MEMORY_OUT.replacen("[host]\n", "[host]\nqueue_bytes = 3145728\nmax_message_bytes = 65536\n", 1)
            + "[ingress.http]\nlisten = \"127.0.0.1:0\"\nmax_batch_bytes = 65536\n\
           [ingress.grpc]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 3600000\n\
           [[route]]\nname = \"all\"\nto = \"out\"\n";
    let host = host(dir.path(), &config).await;
    let ingress = switchyard::GrpcIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    tokio::spawn(ingress.serve(std::future::pending()));
    let client = IngressClient::connect(format!("http://{addr}")).await.unwrap();
    let publish = |payload: &str| PublishRequest {
        topic: "t".into(),
        payload: payload.into(),
        ..PublishRequest::default()
    };
    // Two streams that send a message each and stay open until their sender goes.
    let mut streams = Vec::new();
    for n in 0..2 {
        let (more, requests) = tokio::sync::mpsc::channel::<PublishRequest>(1);
        let first = futures_util::stream::iter([publish(&format!("stream {n}"))]);
        let rest = futures_util::stream::unfold(requests, |mut requests| async move {
            requests.recv().await.map(|request| (request, requests))
        });
        let mut client = client.clone();
        let call = tokio::spawn(async move {
            use futures_util::StreamExt;
            client.publish_stream(first.chain(rest)).await
        });
        streams.push((more, call));
    }
    eventually(|| match host.stats().accepted {
        2 => Ok(()),
        accepted => Err(accepted),
    });
    let held = || {
        let line = body_bytes_held(&host);
        line.rsplit(' ').next().unwrap().parse::<usize>().unwrap()
    };
    assert_eq!(held(), 2 * CHARGE, "each open call holds its charge");
    assert!(held() <= 3 << 20, "within the budget");
    // A third call finds no room: refused before its message is read.
    let refused =
        client.clone().publish(publish("third")).await.expect_err("a call past the budget was taken");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("request bodies not yet admitted"), "{refused:?}");
    assert_eq!(held(), 2 * CHARGE);
    // A stream that ends, answered, gives its charge back: a later call is taken.
    let (more, call) = streams.remove(0);
    drop(more);
    let reply = within(call).await.unwrap().expect("an answer").into_inner();
    assert_eq!(reply.accepted, 1, "{reply:?}");
    eventually(|| match held() {
        CHARGE => Ok(()),
        held => Err(held),
    });
    client.clone().publish(publish("later")).await.expect("a call within the budget");
    let (more, call) = streams.remove(0);
    drop(more);
    within(call).await.unwrap().expect("an answer");
    eventually(|| match held() {
        0 => Ok(()),
        held => Err(held),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 3, "the two streams' messages and the later call's");
}
