//! Ingress benchmark: messages a second accepted through the HTTP ingress on 127.0.0.1 — one
//! `POST /v1/messages/{topic}` per message, and bulk `POST /v1/messages` (NDJSON) in batches of 100 and
//! 1 000 — each message carrying a 256-byte payload, routed to a memory destination a task drains.
//! Clients keep `CLIENTS` keep-alive connections busy; client and host run in this one process, so the
//! CPU time per message printed counts both.
//!
//! `cargo bench -p switchyard --bench ingress`

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Instant;
use switchyard::{Config, Host, HttpIngress};

/// Messages per timed run, for every case.
const MESSAGES: usize = 200_000;
const RUNS: usize = 3;
/// Connections sending at once.
const CLIENTS: usize = 4;

#[tokio::main]
async fn main() {
    let config = "[host]\nqueue_capacity = 100000\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
                  queue = { capacity = 100000 }\n[[route]]\nname = \"all\"\nto = \"out\"\n";
    let plugins = tempfile::tempdir().unwrap();
    let config = Config::from_toml("bench.toml", config).unwrap();
    let host = Host::builder().config("bench.toml", config).plugin_dir(plugins.path()).build().await.unwrap();
    let out = host.memory("out").unwrap();
    tokio::spawn(async move { while out.recv_async().await.is_ok() {} });
    let ingress = HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    tokio::spawn(ingress.serve(std::future::pending()));
    println!(
        "HTTP ingress, 256-byte payloads, {CLIENTS} keep-alive connections, {MESSAGES} messages a run, median of {RUNS}:"
    );
    for batch in [1, 100, 1000] {
        let mut runs: Vec<(f64, f64)> = Vec::new();
        for _ in 0..RUNS {
            runs.push(run(addr, batch).await);
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, cpu) = runs[RUNS / 2];
        let case = match batch {
            1 => "single POST /v1/messages/{topic}".to_owned(),
            n => format!("bulk POST /v1/messages, {n} a request"),
        };
        println!("  {case:<42} {rate:>10.0} msgs/s   {cpu:>6.2} us CPU/msg (client + host)");
    }
    host.shutdown().await;
}

/// One timed run: `MESSAGES` messages in requests of `batch`; msgs/s and process CPU µs per message.
async fn run(addr: SocketAddr, batch: usize) -> (f64, f64) {
    let payload = "x".repeat(256);
    let line = format!(r#"{{"topic":"bench.orders","payload":"{payload}"}}"#);
    let body = match batch {
        1 => Bytes::from(payload),
        n => Bytes::from(vec![line; n].join("\n")),
    };
    let requests = MESSAGES / batch / CLIENTS;
    let started = (Instant::now(), cpu_time::ProcessTime::now());
    let clients = (0..CLIENTS).map(|_| {
        let body = body.clone();
        tokio::spawn(async move { client(addr, batch, body, requests).await })
    });
    for client in futures_util::future::join_all(clients).await {
        client.unwrap();
    }
    let sent = (requests * batch * CLIENTS) as f64;
    let (elapsed, cpu) = (started.0.elapsed(), started.1.elapsed());
    (sent / elapsed.as_secs_f64(), cpu.as_secs_f64() * 1e6 / sent)
}

/// Send `requests` requests of `batch` messages on one keep-alive connection, each answered before
/// the next; panics on any answer but full acceptance.
async fn client(addr: SocketAddr, batch: usize, body: Bytes, requests: usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let (path, kind) = match batch {
        1 => ("/v1/messages/bench.orders", "text/plain"),
        _ => ("/v1/messages", "application/x-ndjson"),
    };
    for _ in 0..requests {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, kind)
            .body(Full::new(body.clone()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        let whole = answer.windows(12).any(|window| window == br#""refused":0,"#);
        let accepted = status.as_u16() == 202 || (status.as_u16() == 200 && whole);
        assert!(accepted, "HTTP {status}: {}", String::from_utf8_lossy(&answer));
    }
}
