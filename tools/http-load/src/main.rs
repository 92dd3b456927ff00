//! Issue 16's "HTTP ingress -> http destination" figure, measured against the
//! release `switchyard` binary run as a child process.
//!
//! One process holds the load generator and the sink; the host runs beside
//! them. The load generator keeps N HTTP/1.1 keep-alive connections to the
//! host's ingress, each posting one message at a time (closed loop) to
//! `POST /v1/messages/{topic}` with an `x-load-seq` header; the host's route
//! sends each message to an `http` destination whose only endpoint is the
//! sink, which answers 200 and records when each `x-load-seq` arrived. After
//! a warm-up, a timed window gives the rates, latencies and CPU per message;
//! after it, every message the ingress accepted (2xx) must reach the sink
//! exactly once (exit status 1 when one is lost).

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The header carrying each message's sequence number, client to sink.
const SEQ_HEADER: &str = "x-load-seq";
/// The sequence value of the readiness probe (not counted as load).
const PROBE: &str = "probe";

#[derive(Parser, Debug)]
#[command(about = "Load the switchyard HTTP ingress; deliver to an http sink; measure rates, latency, CPU")]
struct Args {
    /// The switchyard release binary.
    #[arg(long, default_value = "target/release/switchyard")]
    switchyard: PathBuf,
    /// Keep-alive connections to the ingress, each with one request at a time.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 3.0)]
    warmup_s: f64,
    /// Seconds of the measured window.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// After the load stops: seconds without a new arrival before the wait for the tail gives up.
    #[arg(long, default_value_t = 10.0)]
    tail_timeout_s: f64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Worker threads of the sink's runtime.
    #[arg(long, default_value_t = 1)]
    sink_threads: usize,
    /// Host pipeline workers (`[host] workers`; 0 = one per core, the host's default).
    #[arg(long, default_value_t = 0)]
    host_workers: usize,
    /// Host runtime threads (`[host] io_threads`; 0 = one per core, the host's default).
    #[arg(long, default_value_t = 0)]
    host_io_threads: usize,
    /// Bulk mode: N messages per request to `POST /v1/messages` (NDJSON); 0 = one message per
    /// `POST /v1/messages/{topic}` (the default, issue 16's figure).
    #[arg(long, default_value_t = 0)]
    bulk: usize,
    /// Topic posted to (the one route takes exactly this topic).
    #[arg(long, default_value = "load")]
    topic: String,
    /// Directory for the run's files (config, logs, state); default a new one under $TMPDIR, removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Nanoseconds since the process's first call; one clock for client and sink.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the sink saw.
#[derive(Default)]
struct Sink {
    /// (sequence, arrival ns) of every POST with a numeric `x-load-seq`.
    arrivals: Mutex<Vec<(u64, u64)>>,
    /// POSTs without the header, or with a value that is neither a number nor the probe.
    without_seq: AtomicU64,
    /// Requests other than POST (health checks, if any).
    other_requests: AtomicU64,
    probe_seen: AtomicBool,
    /// Thread ids of the sink runtime's threads (for their CPU time).
    tids: Mutex<Vec<u32>>,
    /// One `x-sy-topic` value seen, to show the transport's headers arrive.
    topic_seen: Mutex<Option<String>>,
}

async fn sink_handle(
    sink: Arc<Sink>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, hyper::Error> {
    let post = request.method() == hyper::Method::POST;
    let seq = request.headers().get(SEQ_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let topic = request.headers().get("x-sy-topic").and_then(|value| value.to_str().ok()).map(str::to_owned);
    // Arrival = the whole request read.
    request.into_body().collect().await?;
    let at = now_ns();
    if !post {
        sink.other_requests.fetch_add(1, Ordering::Relaxed);
    } else {
        match seq.as_deref() {
            Some(PROBE) => {
                *sink.topic_seen.lock().unwrap() = topic;
                sink.probe_seen.store(true, Ordering::SeqCst);
            }
            Some(value) => match value.parse::<u64>() {
                Ok(seq) => sink.arrivals.lock().unwrap().push((seq, at)),
                Err(_) => {
                    sink.without_seq.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                sink.without_seq.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Response::builder().status(StatusCode::OK).body(Empty::new()).unwrap())
}

/// The calling thread's id, from /proc/thread-self -> "PID/task/TID".
fn thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// utime + stime (clock ticks) from a /proc stat file.
fn stat_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime 15 (1-based) = index 11, 12 after the state field (field 3 = index 0).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// CPU ticks so far of: the child, this whole process, the sink's threads, the child's threads
/// (tid -> (name, ticks)), and the whole machine (busy, all: jiffies of /proc/stat's `cpu` line).
struct CpuSnapshot {
    child: u64,
    own: u64,
    sink: u64,
    child_threads: BTreeMap<u32, (String, u64)>,
    machine_busy: u64,
    machine_all: u64,
}

/// The threads of `pid`: tid -> (name, utime + stime).
fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return threads };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let path = format!("/proc/{pid}/task/{tid}/stat");
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if let Some(ticks) = stat_ticks(&path) {
            threads.insert(tid, (name.trim().to_owned(), ticks));
        }
    }
    threads
}

/// The machine's (busy, all) jiffies: /proc/stat's first line (idle and iowait are not busy).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

fn cpu_snapshot(child: u32, sink: &Sink) -> CpuSnapshot {
    let sink_ticks = sink
        .tids
        .lock()
        .unwrap()
        .iter()
        .filter_map(|tid| stat_ticks(&format!("/proc/self/task/{tid}/stat")))
        .sum();
    let (machine_busy, machine_all) = machine_ticks();
    CpuSnapshot {
        child: stat_ticks(&format!("/proc/{child}/stat")).unwrap_or(0),
        own: stat_ticks("/proc/self/stat").unwrap_or(0),
        sink: sink_ticks,
        child_threads: thread_ticks(child),
        machine_busy,
        machine_all,
    }
}

/// One request the load generator made.
struct Sent {
    seq: u64,
    sent: u64,
    answered: u64,
    /// 0: no answer (connection error).
    status: u16,
}

/// A connection's results: its requests, and the errors it met (it reconnects after each).
struct ConnectionRun {
    sent: Vec<Sent>,
    errors: Vec<String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The open connection in `sender`, or a new one to `addr`; none (the error
/// recorded in `errors`, after a 10 ms pause) when connecting failed.
async fn connected<'s>(
    sender: &'s mut Option<Sender>,
    addr: SocketAddr,
    errors: &mut Vec<String>,
) -> Option<&'s mut Sender> {
    if sender.is_none() {
        match connect(addr).await {
            Ok(new) => *sender = Some(new),
            Err(err) => {
                errors.push(err);
                tokio::time::sleep(Duration::from_millis(10)).await;
                return None;
            }
        }
    }
    sender.as_mut()
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|err| format!("connect: {err}"))?;
    stream.set_nodelay(true).map_err(|err| format!("nodelay: {err}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn post(addr: SocketAddr, path: &str, seq: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(SEQ_HEADER, seq)
        .body(Full::new(body))
        .unwrap()
}

/// One request on `sender`: (status, answered ns), or an error.
async fn request(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<u16, String> {
    sender.ready().await.map_err(|err| format!("not ready: {err}"))?;
    let response = sender.send_request(request).await.map_err(|err| format!("request: {err}"))?;
    let status = response.status().as_u16();
    response.into_body().collect().await.map_err(|err| format!("response body: {err}"))?;
    Ok(status)
}

/// A bulk request's body: `count` NDJSON lines from sequence `first` on.
fn bulk_body(topic: &str, first: u64, count: usize, payload: &str) -> Bytes {
    let mut body = String::with_capacity(count * (payload.len() + 80));
    for seq in first..first + count as u64 {
        let line = json!({ "topic": topic, "headers": { SEQ_HEADER: seq.to_string() }, "payload": payload });
        body.push_str(&line.to_string());
        body.push('\n');
    }
    Bytes::from(body)
}

/// A bulk answer's per-message statuses: 202 for each one accepted (as a single POST's), else its own.
fn bulk_statuses(status: u16, body: &[u8], count: usize) -> Vec<u16> {
    let parsed: Option<Vec<u16>> = serde_json::from_slice::<Value>(body).ok().and_then(|answer| {
        let results = answer.get("results")?.as_array()?;
        Some(
            results
                .iter()
                .map(|result| {
                    if result.get("id").is_some() {
                        202
                    } else {
                        result.get("status").and_then(Value::as_u64).unwrap_or(599) as u16
                    }
                })
                .collect(),
        )
    });
    match parsed {
        Some(statuses) if statuses.len() == count => statuses,
        // No per-message list: each message gets the request's status.
        _ => vec![if (200..300).contains(&status) { 599 } else { status }; count],
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    index: u64,
    addr: SocketAddr,
    path: String,
    body: Bytes,
    stop: Arc<AtomicBool>,
    capacity: usize,
    bulk: usize,
    topic: String,
) -> ConnectionRun {
    if bulk > 0 {
        return run_bulk_connection(index, addr, body, stop, capacity, bulk, topic).await;
    }
    let mut run = ConnectionRun { sent: Vec::with_capacity(capacity), errors: Vec::new() };
    let mut sender = None;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(current) = connected(&mut sender, addr, &mut run.errors).await else { continue };
        let seq = (index << 40) | n;
        n += 1;
        let sent = now_ns();
        let result = request(current, post(addr, &path, &seq.to_string(), body.clone())).await;
        let answered = now_ns();
        match result {
            Ok(status) => run.sent.push(Sent { seq, sent, answered, status }),
            Err(err) => {
                run.sent.push(Sent { seq, sent, answered, status: 0 });
                run.errors.push(err);
                sender = None;
            }
        }
    }
    run
}

async fn run_bulk_connection(
    index: u64,
    addr: SocketAddr,
    body: Bytes,
    stop: Arc<AtomicBool>,
    capacity: usize,
    bulk: usize,
    topic: String,
) -> ConnectionRun {
    let payload = String::from_utf8(body.to_vec()).expect("the payload is ASCII");
    let mut run = ConnectionRun { sent: Vec::with_capacity(capacity), errors: Vec::new() };
    let mut sender: Option<Sender> = None;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(current) = connected(&mut sender, addr, &mut run.errors).await else { continue };
        let first = (index << 40) | n;
        n += bulk as u64;
        let request = Request::post("/v1/messages")
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(bulk_body(&topic, first, bulk, &payload)))
            .unwrap();
        let sent = now_ns();
        let result: Result<(u16, Bytes), String> = async {
            current.ready().await.map_err(|err| format!("not ready: {err}"))?;
            let response = current.send_request(request).await.map_err(|err| format!("request: {err}"))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|err| format!("response body: {err}"))?;
            Ok((status, body.to_bytes()))
        }
        .await;
        let answered = now_ns();
        let statuses = match result {
            Ok((status, body)) => bulk_statuses(status, &body, bulk),
            Err(err) => {
                run.errors.push(err);
                sender = None;
                vec![0; bulk]
            }
        };
        for (i, status) in statuses.into_iter().enumerate() {
            run.sent.push(Sent { seq: first + i as u64, sent, answered, status });
        }
    }
    run
}

/// Value at quantile `q` of sorted nanoseconds, in microseconds.
fn quantile_us(sorted: &[u64], q: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    json!((sorted[rank - 1] as f64 / 1e3 * 10.0).round() / 10.0)
}

fn latency_summary(mut values: Vec<u64>) -> Value {
    values.sort_unstable();
    json!({
        "count": values.len(),
        "p50_us": quantile_us(&values, 0.50),
        "p99_us": quantile_us(&values, 0.99),
        "p999_us": quantile_us(&values, 0.999),
        "max_us": values.last().map(|max| json!((*max as f64 / 1e3 * 10.0).round() / 10.0)).unwrap_or(Value::Null),
    })
}

fn config_toml(dir: &Path, sink: SocketAddr, topic: &str, workers: usize, io_threads: usize) -> String {
    let plugins = dir.join("plugins.d");
    let state = dir.join("state");
    format!(
        r#"# Written by tools/http-load: HTTP ingress -> one route -> http destination (the load tool's sink).
[host]
plugin_dir = {plugins:?}
watch = false
cache_dir = ""
state_dir = {state:?}
workers = {workers}
io_threads = {io_threads}
shutdown_grace_ms = 5000

[ingress.http]
listen = "127.0.0.1:0"

[[destination]]
name = "sink"
transport = "http"
endpoints = ["{sink}"]

[[route]]
name = "load"
match = {{ topic = {topic:?} }}
to = "sink"
"#,
        plugins = plugins.display().to_string(),
        state = state.display().to_string(),
    )
}

/// The child's stderr, copied to a file; the ingress address and the final stats line picked out.
struct ChildLog {
    address: std::sync::mpsc::Receiver<SocketAddr>,
    lines: Arc<Mutex<Vec<String>>>,
}

fn follow_stderr(child: &mut Child, file: PathBuf) -> ChildLog {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = lines.clone();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(file).ok();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(out) = out.as_mut() {
                let _ = writeln!(out, "{line}");
            }
            if let Some(rest) = line.split("HTTP ingress listening on http://").nth(1)
                && let Ok(addr) = rest.trim().parse::<SocketAddr>()
            {
                let _ = tx.send(addr);
            }
            kept.lock().unwrap().push(line);
        }
    });
    ChildLog { address: rx, lines }
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("http-load: {message}");
    std::process::exit(2);
}

fn main() {
    let args = Args::parse();
    now_ns();
    if args.connections == 0 || args.duration_s <= 0.0 {
        fail("--connections and --duration-s must be positive");
    }
    if !args.switchyard.is_file() {
        fail(format!(
            "no switchyard binary at {}: build it with `cargo build --release -p switchyard`",
            args.switchyard.display()
        ));
    }
    let switchyard = std::fs::canonicalize(&args.switchyard).unwrap_or_else(|err| fail(err));
    let (dir, remove_dir) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            (std::env::temp_dir().join(format!("http-load-{}-{nanos}", std::process::id())), true)
        }
    };
    std::fs::create_dir_all(dir.join("plugins.d"))
        .unwrap_or_else(|err| fail(format!("{}: {err}", dir.display())));
    let dir = std::fs::canonicalize(&dir).unwrap();

    // The sink: its own runtime, so that its threads' CPU can be told apart.
    let sink = Arc::new(Sink::default());
    let sink_runtime = {
        let sink = sink.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.sink_threads.max(1))
            .thread_name("sink")
            .enable_all()
            .on_thread_start(move || {
                if let Some(tid) = thread_id() {
                    sink.tids.lock().unwrap().push(tid);
                }
            })
            .build()
            .unwrap()
    };
    let sink_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    sink_listener.set_nonblocking(true).unwrap();
    let sink_addr = sink_listener.local_addr().unwrap();
    {
        let sink = sink.clone();
        sink_runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(sink_listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| sink_handle(sink.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        config_toml(&dir, sink_addr, &args.topic, args.host_workers, args.host_io_threads),
    )
    .unwrap();
    eprintln!(
        "http-load: sink on {sink_addr}; config {}; starting {}",
        config.display(),
        switchyard.display()
    );
    let mut child = Command::new(&switchyard)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("switchyard.stdout")).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| fail(format!("spawn {}: {err}", switchyard.display())));
    let child_pid = child.id();
    let log = follow_stderr(&mut child, dir.join("switchyard.stderr"));
    let ingress = match log.address.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            fail(format!(
                "switchyard did not report its ingress address; its log:\n{}",
                log.lines.lock().unwrap().join("\n")
            ))
        }
    };
    eprintln!("http-load: switchyard pid {child_pid}, ingress {ingress}");

    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let path = format!("/v1/messages/{}", args.topic);
    let body = Bytes::from(vec![b'x'; args.body_bytes]);

    // Readiness: a probe message posted until the ingress takes it, then awaited at the sink.
    let probe = client_runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().ok().flatten() {
                return Err(format!("switchyard exited: {status}"));
            }
            let sent = Instant::now();
            match connect(ingress).await {
                Ok(mut sender) => match request(&mut sender, post(ingress, &path, PROBE, body.clone())).await
                {
                    Ok(status) if (200..300).contains(&status) => {
                        while sent.elapsed() < Duration::from_secs(10) {
                            if sink.probe_seen.load(Ordering::SeqCst) {
                                return Ok(sent.elapsed());
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        return Err("the probe was accepted but never reached the sink".to_owned());
                    }
                    Ok(status) => last = format!("probe answered {status}"),
                    Err(err) => last = err,
                },
                Err(err) => last = err,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("the ingress never took the probe: {last}"))
    });
    let probe_latency = match probe {
        Ok(latency) => latency,
        Err(err) => {
            terminate(&mut child);
            fail(format!("{err}; switchyard's log:\n{}", log.lines.lock().unwrap().join("\n")))
        }
    };
    eprintln!(
        "http-load: probe delivered in {:.1} ms (x-sy-topic at the sink: {:?}); {} connections, {} s warm-up, {} s window",
        probe_latency.as_secs_f64() * 1e3,
        sink.topic_seen.lock().unwrap(),
        args.connections,
        args.warmup_s,
        args.duration_s
    );

    // The load.
    let ticks_per_s = clock_ticks();
    let stop = Arc::new(AtomicBool::new(false));
    let expected = ((args.warmup_s + args.duration_s + 1.0) * 100_000.0) as usize / args.connections;
    let (runs, window, before, after, load_stopped) = client_runtime.block_on(async {
        let tasks: Vec<_> = (0..args.connections as u64)
            .map(|index| {
                tokio::spawn(run_connection(
                    index,
                    ingress,
                    path.clone(),
                    body.clone(),
                    stop.clone(),
                    expected,
                    args.bulk,
                    args.topic.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs_f64(args.warmup_s)).await;
        let before = cpu_snapshot(child_pid, &sink);
        let start = now_ns();
        tokio::time::sleep(Duration::from_secs_f64(args.duration_s)).await;
        let end = now_ns();
        let after = cpu_snapshot(child_pid, &sink);
        stop.store(true, Ordering::SeqCst);
        let mut runs = Vec::new();
        for task in tasks {
            runs.push(task.await.unwrap());
        }
        (runs, (start, end), before, after, now_ns())
    });

    // The tail: wait until the sink has as many arrivals as the ingress accepted (or progress stops).
    let accepted_total =
        runs.iter().flat_map(|run| &run.sent).filter(|sent| (200..300).contains(&sent.status)).count();
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    loop {
        let count = sink.arrivals.lock().unwrap().len();
        if count >= accepted_total {
            break;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs_f64(args.tail_timeout_s) {
            eprintln!(
                "http-load: the sink stopped receiving at {count} of {accepted_total} accepted messages"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let tail_ms = (now_ns() - load_stopped) as f64 / 1e6;
    // Late duplicates, if any, have a moment to show.
    std::thread::sleep(Duration::from_millis(500));
    let exit = terminate(&mut child);
    std::thread::sleep(Duration::from_millis(200));
    let child_lines = log.lines.lock().unwrap().clone();
    let host_stats: Value = child_lines
        .iter()
        .find_map(|line| line.split("switchyard: stopped; ").nth(1))
        .and_then(|stats| serde_json::from_str(stats).ok())
        .unwrap_or(Value::Null);
    let child_stdout_lines =
        std::fs::read_to_string(dir.join("switchyard.stdout")).map(|text| text.lines().count()).unwrap_or(0);

    // Figures.
    let (start, end) = window;
    let window_s = (end - start) as f64 / 1e9;
    let in_window = |t: u64| t >= start && t < end;
    let arrivals = sink.arrivals.lock().unwrap().clone();
    let mut first_arrival: HashMap<u64, (u64, u32)> = HashMap::with_capacity(arrivals.len());
    for &(seq, at) in &arrivals {
        let entry = first_arrival.entry(seq).or_insert((at, 0));
        entry.0 = entry.0.min(at);
        entry.1 += 1;
    }
    let mut statuses_window: BTreeMap<String, u64> = BTreeMap::new();
    let mut statuses_total: BTreeMap<String, u64> = BTreeMap::new();
    let mut accepted_window = 0u64;
    let mut e2e = Vec::new();
    let mut ingress_latency = Vec::new();
    let (mut lost, mut duplicates, mut accepted_seqs) = (0u64, 0u64, 0u64);
    let mut arrived_not_accepted = 0u64;
    let mut sent_seqs = std::collections::HashSet::with_capacity(accepted_total * 2);
    for sent in runs.iter().flat_map(|run| &run.sent) {
        let key = if sent.status == 0 { "error".to_owned() } else { sent.status.to_string() };
        *statuses_total.entry(key.clone()).or_default() += 1;
        if in_window(sent.answered) {
            *statuses_window.entry(key).or_default() += 1;
        }
        let ok = (200..300).contains(&sent.status);
        if ok && in_window(sent.answered) {
            accepted_window += 1;
        }
        if ok && in_window(sent.sent) {
            ingress_latency.push(sent.answered - sent.sent);
            if let Some((at, _)) = first_arrival.get(&sent.seq) {
                e2e.push(at.saturating_sub(sent.sent));
            }
        }
        sent_seqs.insert(sent.seq);
        match (ok, first_arrival.get(&sent.seq)) {
            (true, None) => lost += 1,
            (true, Some((_, count))) => {
                accepted_seqs += 1;
                duplicates += u64::from(count - 1);
            }
            (false, Some(_)) => arrived_not_accepted += 1,
            (false, None) => {}
        }
    }
    let unknown_arrivals = first_arrival.keys().filter(|seq| !sent_seqs.contains(seq)).count();
    let delivered_window = arrivals.iter().filter(|(_, at)| in_window(*at)).count() as u64;
    let child_ticks = after.child.saturating_sub(before.child);
    let own_ticks = after.own.saturating_sub(before.own);
    let sink_ticks = after.sink.saturating_sub(before.sink);
    let client_ticks = own_ticks.saturating_sub(sink_ticks);
    let per_msg_us = |ticks: u64, messages: u64| {
        if messages == 0 {
            Value::Null
        } else {
            json!((ticks as f64 / ticks_per_s as f64 * 1e6 / messages as f64 * 100.0).round() / 100.0)
        }
    };
    let cores = |ticks: u64| json!((ticks as f64 / ticks_per_s as f64 / window_s * 100.0).round() / 100.0);
    // The child's threads busy in the window (cores each), busiest first; and the machine as a whole.
    let mut threads: Vec<(String, u32, u64)> = after
        .child_threads
        .iter()
        .map(|(tid, (name, ticks))| {
            let before = before.child_threads.get(tid).map_or(0, |(_, ticks)| *ticks);
            (name.clone(), *tid, ticks.saturating_sub(before))
        })
        .filter(|(_, _, ticks)| *ticks > 0)
        .collect();
    threads.sort_by(|a, b| b.2.cmp(&a.2));
    let child_threads: Vec<Value> = threads
        .iter()
        .map(|(name, tid, ticks)| json!({ "name": name, "tid": tid, "main": *tid == child_pid, "cores": cores(*ticks) }))
        .collect();
    let machine_all = after.machine_all.saturating_sub(before.machine_all);
    let machine_busy = after.machine_busy.saturating_sub(before.machine_busy);
    let online = std::thread::available_parallelism().map(usize::from).unwrap_or(1) as f64;
    // /proc/stat's jiffies are per CPU: all = online × window.
    let machine_cores =
        if machine_all == 0 { 0.0 } else { machine_busy as f64 / machine_all as f64 * online };
    let ours = (child_ticks + own_ticks) as f64 / ticks_per_s as f64 / window_s;
    let errors: Vec<&String> = runs.iter().flat_map(|run| &run.errors).collect();
    let non_2xx_total: u64 =
        statuses_total.iter().filter(|(status, _)| !status.starts_with('2')).map(|(_, n)| n).sum();
    let report = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "switchyard": switchyard.display().to_string(),
        "connections": args.connections,
        "body_bytes": args.body_bytes,
        "warmup_s": args.warmup_s,
        "window_s": (window_s * 1000.0).round() / 1000.0,
        "client_threads": args.client_threads,
        "sink_threads": args.sink_threads,
        "host_workers": args.host_workers,
        "host_io_threads": args.host_io_threads,
        "bulk": args.bulk,
        "cores_online": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "accepted_per_s": (accepted_window as f64 / window_s).round(),
        "delivered_per_s": (delivered_window as f64 / window_s).round(),
        "statuses_in_window": statuses_window,
        "statuses_total": statuses_total,
        "non_2xx_total": non_2xx_total,
        "client_errors": errors.len(),
        "client_error_samples": errors.iter().take(5).collect::<Vec<_>>(),
        "e2e_latency": latency_summary(e2e),
        "ingress_latency": latency_summary(ingress_latency),
        "cpu": {
            "clock_ticks_per_s": ticks_per_s,
            "switchyard_us_per_msg": per_msg_us(child_ticks, accepted_window),
            "switchyard_cores": cores(child_ticks),
            "client_us_per_msg": per_msg_us(client_ticks, accepted_window),
            "client_cores": cores(client_ticks),
            "sink_us_per_msg": per_msg_us(sink_ticks, delivered_window),
            "sink_cores": cores(sink_ticks),
            "machine_busy_cores": (machine_cores * 100.0).round() / 100.0,
            "other_processes_cores": ((machine_cores - ours).max(0.0) * 100.0).round() / 100.0,
            "switchyard_threads": child_threads,
        },
        "delivery": {
            "accepted_total": accepted_total,
            "arrived_once_or_more": accepted_seqs,
            "lost": lost,
            "duplicates": duplicates,
            "arrived_but_not_accepted": arrived_not_accepted,
            "arrived_unknown_seq": unknown_arrivals,
            "sink_posts_without_seq": sink.without_seq.load(Ordering::Relaxed),
            "sink_other_requests": sink.other_requests.load(Ordering::Relaxed),
            "tail_ms": (tail_ms * 10.0).round() / 10.0,
        },
        "switchyard_exit": exit,
        "switchyard_stdout_lines": child_stdout_lines,
        "switchyard_stats": host_stats,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if non_2xx_total > 0 || !errors.is_empty() {
        eprintln!("http-load: WARNING: {non_2xx_total} non-2xx answers, {} client errors", errors.len());
    }
    if duplicates > 0 || arrived_not_accepted > 0 || unknown_arrivals > 0 {
        eprintln!(
            "http-load: WARNING: {duplicates} duplicates, {arrived_not_accepted} arrived though not accepted, {unknown_arrivals} unknown"
        );
    }
    if child_stdout_lines > 0 {
        eprintln!(
            "http-load: WARNING: switchyard wrote {child_stdout_lines} lines to stdout (dead letters?): {}",
            dir.join("switchyard.stdout").display()
        );
    }
    drop(client_runtime);
    sink_runtime.shutdown_background();
    if remove_dir && lost == 0 && child_stdout_lines == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("http-load: run files kept in {}", dir.display());
    }
    if lost > 0 {
        eprintln!("http-load: FAIL: {lost} accepted messages never reached the sink");
        std::process::exit(1);
    }
}

/// SIGTERM, then wait (SIGKILL after 15 s). The exit status as text.
fn terminate(child: &mut Child) -> String {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                return child.wait().map(|status| format!("killed after 15 s: {status}")).unwrap_or_default();
            }
        }
    }
}
