//! Delivery benchmark: messages a second from `Host::send` through the destination core (queue,
//! dispatcher, balancer, breakers) and each built-in transport to a local peer on 127.0.0.1: `http`
//! (with each built-in balancer choice and a WASM balancer plugin) and `tcp` to in-process sinks on
//! pooled keep-alive connections, `websocket` (payload frames, delivered once written) to in-process
//! WebSocket servers, `subprocess` to two `python3` workers acknowledging JSON lines, `redis` (RPUSH
//! onto a list) to a real `redis-server`, `nats` (publish) to a real `nats-server`, `file` (one JSON
//! line each) with `fsync = "never"` and `"every"`, and the WASM Redis transport plugin
//! (`plugin:redis`, RPUSH over RESP) to in-process RESP sinks; then the latency of one request at a
//! time (p50, p99). CPU time per message is this process's (host and in-process sinks) over the timed
//! runs; the CPU of peers in other processes (python3, redis-server, nats-server) is not in it.
//!
//! `cargo bench -p switchyard --bench delivery [-- CASE]` (only the cases whose name starts with CASE,
//! e.g. `tcp`, `file` or `plugin`; `redis` and `nats` need `apt-get install redis-server nats-server`)

#[path = "support/servers.rs"]
mod servers;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use servers::Server;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::{Config, Host, Message};
use switchyard_plugin_artifacts as artifacts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Messages per timed run (a case may send fewer: see [`Peer::messages`]).
const MESSAGES: u64 = 50_000;
const RUNS: usize = 3;
/// Sinks behind each destination with in-process sinks.
const SINKS: usize = 2;
/// Tasks sending into the host.
const SENDERS: u64 = 2;

/// Each case: its name (what `-- CASE` matches), and the destination's balancer.
const CASES: &[(&str, &str)] = &[
    ("http", "round-robin"),
    ("http", "p2c-ewma"),
    ("http", "least-inflight"),
    ("http", "plugin:least-loaded"),
    ("tcp", "p2c-ewma"),
    ("websocket", "p2c-ewma"),
    ("subprocess", "p2c-ewma"),
    ("redis", "p2c-ewma"),
    ("nats", "p2c-ewma"),
    ("file fsync=never", "p2c-ewma"),
    ("file fsync=every", "p2c-ewma"),
    ("plugin:redis", "p2c-ewma"),
];

/// A python3 worker for the `subprocess` case: acknowledges each JSON line by its id (taken, no reply).
const WORKER: &str = "import json, sys\nfor line in sys.stdin:\n    \
                      sys.stdout.write('{\"id\": %d}\\n' % json.loads(line)['id'])\n    sys.stdout.flush()\n";

/// What a case's destination sends to, while it lives.
struct Peer {
    /// The destination's `transport`, `endpoints` and `options` lines.
    destination: String,
    /// Messages per timed run: fewer where each costs a disk sync.
    messages: u64,
    /// Servers (killed on drop) and directories (removed on drop) the case uses.
    _keep: Vec<Box<dyn Send>>,
}

impl Peer {
    /// A destination over `transport` to `endpoints` with `options`, at [`MESSAGES`] a run.
    fn new(transport: &str, endpoints: &[String], options: &str) -> Peer {
        let endpoints: Vec<String> = endpoints.iter().map(|address| format!("\"{address}\"")).collect();
        let destination = format!(
            "transport = \"{transport}\"\nendpoints = [{}]\noptions = {{ {options} }}\n",
            endpoints.join(", ")
        );
        Peer { destination, messages: MESSAGES, _keep: Vec::new() }
    }

    fn keeping(mut self, kept: impl Send + 'static) -> Peer {
        self._keep.push(Box::new(kept));
        self
    }

    /// The peer of the case named `case`.
    async fn start(case: &str) -> Peer {
        match case {
            "http" => Peer::new("http", &sinks(http_sink).await, ""),
            "tcp" => Peer::new("tcp", &sinks(tcp_sink).await, ""),
            "websocket" => Peer::new("websocket", &sinks(websocket_sink).await, ""),
            "plugin:redis" => Peer::new("plugin:redis", &sinks(resp_sink).await, ""),
            "subprocess" => {
                let options = format!("command = [\"python3\", \"-c\", {WORKER:?}], processes = {SINKS}");
                Peer::new("subprocess", &[], &options)
            }
            "redis" => {
                let server = Server::redis();
                Peer::new("redis", std::slice::from_ref(&server.address), "key = \"bench\"").keeping(server)
            }
            "nats" => {
                let server = Server::nats();
                let options = "subject = \"bench.{topic}\"";
                Peer::new("nats", std::slice::from_ref(&server.address), options).keeping(server)
            }
            "file fsync=never" | "file fsync=every" => {
                let dir = tempfile::tempdir().unwrap();
                let fsync = case.trim_start_matches("file fsync=");
                let options = format!("path = \"{}/out.jsonl\", fsync = \"{fsync}\"", dir.path().display());
                let messages = if fsync == "every" { MESSAGES / 10 } else { MESSAGES };
                Peer { messages, ..Peer::new("file", &[], &options).keeping(dir) }
            }
            other => unreachable!("no peer for case {other}"),
        }
    }
}

/// [`SINKS`] sinks started by `start`.
async fn sinks<F: Future<Output = SocketAddr>>(start: impl Fn() -> F) -> Vec<String> {
    let started = futures_util::future::join_all((0..SINKS).map(|_| start())).await;
    started.iter().map(ToString::to_string).collect()
}

#[tokio::main]
async fn main() {
    println!("end-to-end msgs/s, Host::send -> a transport -> local peers, median of {RUNS} runs:");
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(artifacts::LEAST_LOADED_BALANCER, plugins.path().join("least-loaded.wasm")).unwrap();
    std::fs::copy(artifacts::REDIS_TRANSPORT, plugins.path().join("redis.wasm")).unwrap();
    // `cargo bench` passes `--bench`; the first other argument picks cases.
    let only = std::env::args().skip(1).find(|arg| !arg.starts_with("--")).unwrap_or_default();
    for (case, balancer) in CASES.iter().filter(|(case, _)| case.starts_with(&only)) {
        let peer = Peer::start(case).await;
        let messages = peer.messages;
        let host = host(plugins.path(), balancer, &peer.destination).await;
        send(&host, messages / 5).await;
        let (mut runs, cpu) = (Vec::new(), cpu_time::ProcessTime::now());
        for _ in 0..RUNS {
            let start = Instant::now();
            send(&host, messages).await;
            runs.push(messages as f64 / start.elapsed().as_secs_f64());
        }
        let cpu_per_message = cpu.elapsed().as_secs_f64() * 1e6 / (messages as f64 * RUNS as f64);
        let (p50, p99) = request_latency(&host, messages as usize / 25).await;
        host.shutdown().await;
        let stats = host.stats();
        assert_eq!(stats.delivered, stats.accepted, "every message delivered: {stats:?}");
        runs.sort_by(f64::total_cmp);
        println!(
            "  {case:<17} {balancer:<20} {:>9.0} msgs/s  (runs {runs:.0?}, {messages} msgs each)  CPU {cpu_per_message:.1} us/msg  one request at a time: p50 {:.0} us, p99 {:.0} us",
            runs[RUNS / 2],
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
        );
    }
}

/// A host routing everything to one destination (`destination`: its transport, endpoints, options).
async fn host(plugins: &Path, balancer: &str, destination: &str) -> Host {
    let text = format!(
        "[host]\nwatch = false\n[[destination]]\nname = \"sink\"\n{destination}balancer = \"{balancer}\"\n\
         [[route]]\nname = \"all\"\nto = \"sink\"\n\
         [[plugin]]\nname = \"redis\"\nconfig = {{ key = \"bench\" }}\n"
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

/// A WebSocket server for the `websocket` transport: reads frames, answers none.
async fn websocket_sink() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(_)) = socket.next().await {}
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
