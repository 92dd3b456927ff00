//! Delivery benchmark: messages a second from `Host::send` to local sinks on
//! 127.0.0.1 over real sockets, through the destination core (queue,
//! dispatcher, balancer, breakers, pooled keep-alive connections): `http`
//! with each built-in balancer choice and with a WASM balancer plugin, `tcp`
//! frames, and the WASM Redis transport plugin (`plugin:redis`, RPUSH over
//! RESP) to in-process sinks as small as the `tcp` ones; then the latency of
//! one request at a time (p50, p99). CPU time per message is the whole
//! process's (host and sinks) over the timed runs.
//!
//! `cargo bench -p switchyard --bench delivery [-- TRANSPORT]` (only the cases
//! whose transport starts with TRANSPORT, e.g. `tcp` or `plugin`)

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::{Config, Host, Message};
use switchyard_plugin_artifacts as artifacts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Messages per timed run.
const MESSAGES: u64 = 50_000;
const RUNS: usize = 3;
/// Sinks behind each destination.
const SINKS: usize = 2;
/// Tasks sending into the host.
const SENDERS: u64 = 2;
/// Requests timed one after the other for the latency percentiles.
const REQUESTS: usize = 2_000;

#[tokio::main]
async fn main() {
    println!(
        "end-to-end msgs/s, Host::send -> {SINKS} local sinks, {MESSAGES} messages a run, median of {RUNS}:"
    );
    let http: Vec<SocketAddr> = futures_util::future::join_all((0..SINKS).map(|_| http_sink())).await;
    let tcp: Vec<SocketAddr> = futures_util::future::join_all((0..SINKS).map(|_| tcp_sink())).await;
    let resp: Vec<SocketAddr> = futures_util::future::join_all((0..SINKS).map(|_| resp_sink())).await;
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::LEAST_LOADED_BALANCER, plugins.path().join("least-loaded.wasm")).unwrap();
    std::fs::copy(artifacts::REDIS_TRANSPORT, plugins.path().join("redis.wasm")).unwrap();
    let cases = [
        ("http", "round-robin", &http),
        ("http", "p2c-ewma", &http),
        ("http", "least-inflight", &http),
        ("http", "plugin:least-loaded", &http),
        ("tcp", "p2c-ewma", &tcp),
        ("plugin:redis", "p2c-ewma", &resp),
    ];
    // `cargo bench` passes `--bench`; the first other argument picks cases.
    let only = std::env::args().skip(1).find(|arg| !arg.starts_with("--")).unwrap_or_default();
    for (transport, balancer, sinks) in
        cases.into_iter().filter(|(transport, ..)| transport.starts_with(&only))
    {
        let host = host(plugins.path(), transport, balancer, sinks).await;
        send(&host, MESSAGES / 5).await;
        let (mut runs, cpu) = (Vec::new(), cpu_time::ProcessTime::now());
        for _ in 0..RUNS {
            let start = Instant::now();
            send(&host, MESSAGES).await;
            runs.push(MESSAGES as f64 / start.elapsed().as_secs_f64());
        }
        let cpu_per_message = cpu.elapsed().as_secs_f64() * 1e6 / (MESSAGES as f64 * RUNS as f64);
        let (p50, p99) = request_latency(&host, REQUESTS).await;
        host.shutdown().await;
        let stats = host.stats();
        assert_eq!(stats.delivered, stats.accepted, "every message delivered: {stats:?}");
        runs.sort_by(f64::total_cmp);
        println!(
            "  {transport:<12} {balancer:<20} {:>9.0} msgs/s  (runs {runs:.0?})  CPU {cpu_per_message:.1} us/msg  one request at a time: p50 {:.0} us, p99 {:.0} us",
            runs[RUNS / 2],
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
        );
    }
}

/// A host routing everything to one destination over `sinks`.
async fn host(plugins: &Path, transport: &str, balancer: &str, sinks: &[SocketAddr]) -> Host {
    let endpoints: Vec<String> = sinks.iter().map(|addr| format!("\"{addr}\"")).collect();
    let text = format!(
        "[host]\nwatch = false\n[[destination]]\nname = \"sink\"\ntransport = \"{transport}\"\n\
         endpoints = [{}]\nbalancer = \"{balancer}\"\n[[route]]\nname = \"all\"\nto = \"sink\"\n\
         [[plugin]]\nname = \"redis\"\nconfig = {{ key = \"bench\" }}\n",
        endpoints.join(", ")
    );
    let config = Config::from_toml("bench.toml", &text).unwrap();
    let host = Host::builder().config("bench.toml", config).plugin_dir(plugins).build().await.unwrap();
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    host
}

/// Send `messages` from [`SENDERS`] tasks and wait until all are delivered.
async fn send(host: &Host, messages: u64) {
    let target = host.stats().delivered + messages;
    let senders = (0..SENDERS).map(|_| {
        let host = host.clone();
        tokio::spawn(async move {
            for _ in 0..messages / SENDERS {
                host.send(Message::new("orders.eu", "{\"order\":1}")).await.unwrap();
            }
        })
    });
    for sender in futures_util::future::join_all(senders).await {
        sender.unwrap();
    }
    while host.stats().delivered + host.stats().dead_lettered < target {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(host.stats().dead_lettered, 0, "nothing dead-lettered");
}

/// Median and 99th percentile of `requests` `Host::request` round trips,
/// made one after the other on an otherwise idle host.
async fn request_latency(host: &Host, requests: usize) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        host.request(Message::new("orders.eu", "{\"order\":1}")).await.unwrap();
        took.push(start.elapsed());
    }
    took.sort();
    (took[requests / 2], took[requests * 99 / 100])
}

/// An HTTP/1.1 keep-alive sink answering 200 with an empty body.
async fn http_sink() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

/// A `tcp` transport sink: reads length-delimited frames, answers each with
/// an empty frame (taken, no reply).
async fn tcp_sink() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut frame = Vec::new();
                while let Ok(length) = stream.read_u32().await {
                    frame.resize(length as usize, 0);
                    if stream.read_exact(&mut frame).await.is_err() || stream.write_u32(0).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A Redis stand-in for the `plugin:redis` transport: reads RESP commands
/// (arrays of bulk strings), answers each with the integer 1, stores nothing.
async fn resp_sink() -> SocketAddr {
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let (mut line, mut bulk) = (String::new(), Vec::new());
                'commands: loop {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let args: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
                    for _ in 0..args {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break 'commands;
                        }
                        bulk.resize(line.trim_end().trim_start_matches('$').parse::<usize>().unwrap() + 2, 0);
                        if stream.read_exact(&mut bulk).await.is_err() {
                            break 'commands;
                        }
                    }
                    if stream.get_mut().write_all(b":1\r\n").await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
