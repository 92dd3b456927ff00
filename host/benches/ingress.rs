//! Ingress benchmark: messages a second accepted through the HTTP ingress on 127.0.0.1 — one
//! `POST /v1/messages/{topic}` per message, and bulk `POST /v1/messages` (NDJSON) in batches of 100 and
//! 1 000 — each message carrying a 256-byte payload, routed to a memory destination a task drains,
//! with the p99 time from sending a request to its acceptance (the admission latency). Clients keep
//! `clients` keep-alive connections busy; client and host run in this one process, so the CPU time
//! per message printed counts both.
//!
//! `cargo bench -p switchyard --bench ingress [-- DURABILITY [CLIENTS [MESSAGES]]]`: `memory` (the
//! default) or `spool` (`host.durability`, the spool in a temporary state directory: every request
//! is answered once its messages are fsync'd, group-committed across the connections); 4 clients and
//! 200 000 messages a run by default.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard::{Config, Host, HttpIngress};

const RUNS: usize = 3;

/// One timed run's figures.
#[derive(Clone, Copy)]
struct Figures {
    rate: f64,
    cpu_us: f64,
    p99: Duration,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let durability = args.first().map_or("memory", String::as_str).to_owned();
    let clients: usize = args.get(1).map_or(4, |n| n.parse().expect("CLIENTS is a number"));
    let messages: usize = args.get(2).map_or(200_000, |n| n.parse().expect("MESSAGES is a number"));
    let config = format!(
        "[host]\nqueue_capacity = 100000\ndurability = \"{durability}\"\n[[destination]]\nname = \"out\"\n\
         transport = \"memory\"\nqueue = {{ capacity = 100000 }}\n[[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    let (plugins, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = Config::from_toml("bench.toml", &config).unwrap();
    let host =
        Host::builder().config("bench.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.build().await.unwrap();
    let out = host.memory("out").unwrap();
    tokio::spawn(async move { while out.recv_async().await.is_ok() {} });
    let ingress = HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    tokio::spawn(ingress.serve(std::future::pending()));
    println!(
        "HTTP ingress, durability = {durability}, 256-byte payloads, {clients} keep-alive connections, \
         {messages} messages a run, median of {RUNS}:"
    );
    for batch in [1, 100, 1000] {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(run(addr, batch, clients, messages).await);
        }
        runs.sort_by(|a: &Figures, b| a.rate.total_cmp(&b.rate));
        let Figures { rate, cpu_us, p99 } = runs[RUNS / 2];
        let case = match batch {
            1 => "single POST /v1/messages/{topic}".to_owned(),
            n => format!("bulk POST /v1/messages, {n} a request"),
        };
        println!(
            "  {case:<42} {rate:>10.0} msgs/s   {cpu_us:>6.2} us CPU/msg (client + host)   p99 {:>8.2} ms a request",
            p99.as_secs_f64() * 1e3
        );
    }
    host.shutdown().await;
}

/// One timed run: `messages` in requests of `batch` from `clients` connections.
async fn run(addr: SocketAddr, batch: usize, clients: usize, messages: usize) -> Figures {
    let payload = "x".repeat(256);
    let line = format!(r#"{{"topic":"bench.orders","payload":"{payload}"}}"#);
    let body = match batch {
        1 => Bytes::from(payload),
        n => Bytes::from(vec![line; n].join("\n")),
    };
    let requests = (messages / batch / clients).max(1);
    let started = (Instant::now(), cpu_time::ProcessTime::now());
    let clients_running = (0..clients).map(|_| {
        let body = body.clone();
        tokio::spawn(async move { client(addr, batch, body, requests).await })
    });
    let mut latencies = Vec::new();
    for client in futures_util::future::join_all(clients_running).await {
        latencies.extend(client.unwrap());
    }
    let sent = (requests * batch * clients) as f64;
    let (elapsed, cpu) = (started.0.elapsed(), started.1.elapsed());
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    Figures { rate: sent / elapsed.as_secs_f64(), cpu_us: cpu.as_secs_f64() * 1e6 / sent, p99 }
}

/// Send `requests` requests of `batch` messages on one keep-alive connection, each answered before
/// the next; panics on any answer but full acceptance. Returns each request's time to its answer.
async fn client(addr: SocketAddr, batch: usize, body: Bytes, requests: usize) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let (path, kind) = match batch {
        1 => ("/v1/messages/bench.orders", "text/plain"),
        _ => ("/v1/messages", "application/x-ndjson"),
    };
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, kind)
            .body(Full::new(body.clone()))
            .unwrap();
        let sent = Instant::now();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        latencies.push(sent.elapsed());
        let whole = answer.windows(12).any(|window| window == br#""refused":0,"#);
        let accepted = status.as_u16() == 202 || (status.as_u16() == 200 && whole);
        assert!(accepted, "HTTP {status}: {}", String::from_utf8_lossy(&answer));
    }
    latencies
}
