//! Shared set-up: plugin directories, hosts from TOML, bounded waits.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;
use switchyard::{Config, Host, HostEvent, Message, Stats};
use tempfile::TempDir;

/// A safety net only: tests wait on channels, never on the clock.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Config lines for two memory destinations: `out`, and `dead` for dead letters.
pub const MEMORY_OUT: &str = r#"
[host]
dead_letter = "dead"
[[destination]]
name = "out"
transport = "memory"
[[destination]]
name = "dead"
transport = "memory"
"#;

/// A fresh plugin directory holding the given artifacts as `NAME.wasm`.
pub fn plugin_dir(plugins: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, artifact) in plugins {
        std::fs::copy(artifact, dir.path().join(format!("{name}.wasm"))).expect("copy a plugin");
    }
    dir
}

/// [`MEMORY_OUT`] with native plugins allowed (`[host] native_plugins = true`).
pub fn memory_out_native() -> String {
    MEMORY_OUT.replacen("[host]\n", "[host]\nnative_plugins = true\n", 1)
}

/// `NAME.so` (the platform's library extension): a native plugin's file name.
pub fn native_file(name: &str) -> String {
    format!("{name}.{}", std::env::consts::DLL_EXTENSION)
}

/// A fresh plugin directory holding the given native libraries as [`native_file`]s.
pub fn native_plugin_dir(libraries: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, artifact) in libraries {
        std::fs::copy(artifact, dir.path().join(native_file(name))).expect("copy a native plugin");
    }
    dir
}

/// A host over `dir` configured by the TOML `config`.
pub async fn host(dir: &Path, config: &str) -> Host {
    let config = Config::from_toml("test.toml", config).unwrap_or_else(|err| panic!("{err}"));
    // Unless the config names one, a state directory of its own (see `builder`).
    let default_state = config.host.state_dir == switchyard::config::HostSection::default().state_dir;
    let host = match default_state {
        true => builder(dir),
        false => Host::builder().plugin_dir(dir),
    };
    let host = host.config("test.toml", config).build().await;
    let host = host.unwrap_or_else(|err| panic!("{err}"));
    assert!(host.load_errors().is_empty(), "{:?}", host.load_errors());
    host
}

/// The builder of a host on plugin directory `dir`, with a state directory of its own inside it
/// (whose watch sees no file in a subdirectory). The default, `.switchyard` in the working
/// directory, would be every test's, and a state directory is one host's at a time; it also
/// carried a firing alert from one run of the tests into the next.
pub fn builder(dir: &Path) -> switchyard::HostBuilder {
    Host::builder().plugin_dir(dir).state_dir(dir.join(".switchyard"))
}

/// Serve `host`'s HTTP ingress on 127.0.0.1 (any free port) while the
/// test's runtime lives; its address.
pub async fn start_ingress(host: &Host) -> SocketAddr {
    let ingress = switchyard::HttpIngress::bind(host.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = ingress.local_addr();
    tokio::spawn(ingress.serve(std::future::pending()));
    addr
}

/// Make `path` a FIFO (a named pipe): opening it to read waits for a writer, opening it to write
/// waits for a reader.
pub fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status().expect("mkfifo (coreutils) runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// A file on a hung disk: a FIFO at its path that no one else opens, so the host's `open` of it,
/// to read or to write, waits for ever. Dropped (a test that failed too), it lets those opens go
/// (it opens both ends for a moment, without waiting) and is removed, so none waits after: no
/// thread the host left blocked on it outlives the test.
pub struct HungFile(std::path::PathBuf);

impl HungFile {
    /// Make `path` (which must not exist) a FIFO no one opens.
    pub fn at(path: std::path::PathBuf) -> HungFile {
        mkfifo(&path);
        HungFile(path)
    }
}

impl Drop for HungFile {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        // An open waiting for the other end goes on once that end was opened, however briefly;
        // what it reads then ends, and what it writes is refused (`EPIPE`), once this one closes.
        let both_ends =
            std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(&self.0);
        let _ = std::fs::remove_file(&self.0);
        drop(both_ends);
    }
}

/// File descriptors the test process (and the host in it) has open.
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Await `future`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future).await.expect("timed out (safety net)")
}

/// Whether `future` is still pending after half a second. For what must not happen (a wait that
/// must not end) a test can only watch for a while: the code under test never lets it happen, so
/// the time bounds only how long a regression would go unseen, never whether the test passes.
pub async fn still_pending(future: &mut (impl Future + Unpin)) -> bool {
    tokio::time::timeout(Duration::from_millis(500), future).await.is_err()
}

/// Poll `probe` until it gives a value, failing the test (with the last
/// value seen) after [`PATIENCE`]. The pause between probes only keeps it
/// from spinning; the condition is what it waits on.
pub fn eventually<T, S: std::fmt::Debug>(mut probe: impl FnMut() -> Result<T, S>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) if std::time::Instant::now() > deadline => panic!("timed out (safety net): {seen:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Wait until the process `pid` (`what`) no longer runs: gone, or a zombie (one whose parent was
/// killed waits for init to reap it).
pub fn until_ended(pid: &str, what: &str) {
    let stat = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    eventually(|| match std::fs::read_to_string(&stat) {
        // Its state follows its command's name, in parentheses.
        Ok(stat) if stat.rsplit_once(')').is_some_and(|(_, state)| !state.trim_start().starts_with('Z')) => {
            Err(format!("{what} {pid} still runs"))
        }
        _ => Ok(()),
    });
}

/// The next message of a memory destination.
pub async fn next(receiver: &flume::Receiver<Message>) -> Message {
    within(receiver.recv_async()).await.expect("the destination is open")
}

/// Shut `host` down (draining everything accepted) and check that every
/// accepted message was settled once ([`assert_accounted`]).
pub async fn drain_and_account(host: &Host) -> switchyard::Stats {
    within(host.shutdown()).await;
    let stats = host.stats();
    assert_accounted(&stats);
    stats
}

/// Check that no dead letter was lost and every message, accepted or made inside the host, ended
/// exactly one way (delivered, filtered, answered, dead-lettered or handed back), as the README
/// promises: `accepted + created == delivered + filtered + responded + dead_lettered + handed_back`.
/// Nothing in flight (`in_flight() == 0`) is not enough: it holds too when a message is counted
/// twice (delivered and dead-lettered, or delivered twice).
pub fn assert_accounted(stats: &Stats) {
    assert_eq!(stats.dead_letter_failures, 0, "dead letters lost: {stats:?}");
    assert_eq!(stats.accepted + stats.created, stats.settled(), "not settled exactly once: {stats:?}");
}

#[test]
#[should_panic(expected = "not settled exactly once")]
fn a_message_settled_twice_fails_the_account_though_none_is_in_flight() {
    let mut stats = Stats::default();
    (stats.accepted, stats.delivered) = (1, 1);
    assert_accounted(&stats);
    stats.dead_lettered = 1;
    assert_eq!(stats.in_flight(), 0, "counting what is unsettled misses it");
    assert_accounted(&stats);
}

/// One HTTP/1.1 request; returns the status code and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let response = http_raw(addr, method, path, headers, body);
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// One HTTP/1.1 request; returns the whole response as text.
pub fn http_raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    try_http_raw(addr, method, path, headers, body).unwrap()
}

/// One HTTP/1.1 POST to a server that may be gone: its status and body, or `None` when the
/// connection failed or closed before a whole status line came.
pub fn try_post(addr: SocketAddr, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let response = try_http_raw(addr, "POST", path, &[], body).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Some((status, body))
}

fn try_http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    // The address as `host`, unless the caller names another.
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    // A refused oversized body may be cut off by the server: that is fine.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// One HTTP/1.1 POST; see [`http`].
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    http(addr, "POST", path, headers, body)
}

/// Replace `path` the way editors and deploy tools do: write aside, rename over.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let aside = path.with_extension("partial");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// The next event satisfying `want` (earlier ones are skipped).
pub async fn event_where(
    events: &mut tokio::sync::broadcast::Receiver<HostEvent>,
    want: impl Fn(&HostEvent) -> bool,
) -> HostEvent {
    within(async {
        loop {
            let event = events.recv().await.expect("the event feed is open");
            if want(&event) {
                return event;
            }
        }
    })
    .await
}

/// A real `redis-server` on 127.0.0.1 (a free port), its data in a
/// temporary directory (an append-only file synced on every write, so a
/// restart after [`kill`](Self::kill) holds everything it acknowledged);
/// killed when dropped.
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    dir: TempDir,
    process: std::process::Child,
}

impl RedisServer {
    /// Start one and wait until it answers `PING`. Fails the test, saying
    /// how to install it, when `redis-server` is missing.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().expect("a temp dir");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let process = RedisServer::spawn(dir.path(), port);
        let server = RedisServer { addr, dir, process };
        server.await_ready();
        server
    }

    fn spawn(dir: &Path, port: u16) -> std::process::Child {
        let args = ["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "yes"];
        let spawned = std::process::Command::new("redis-server")
            .args(args)
            .args(["--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn();
        spawned.unwrap_or_else(|err| {
            panic!("cannot start redis-server ({err}): install it, e.g. `apt-get install redis-server`")
        })
    }

    fn await_ready(&self) {
        eventually(|| match self.try_command(&["PING"]) {
            Ok(answer) if answer == "PONG" => Ok(()),
            other => Err(other),
        });
    }

    /// Kill it (SIGKILL): what it acknowledged stays in its directory.
    pub fn kill(&mut self) {
        self.process.kill().expect("kill redis-server");
        self.process.wait().expect("reap redis-server");
    }

    /// Start it again on its port, from its directory, after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.process = RedisServer::spawn(self.dir.path(), self.addr.port());
        self.await_ready();
    }

    /// One command's answer: a simple string, an integer or a bulk string
    /// as text; the elements of an array one per line.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).unwrap_or_else(|err| panic!("redis {args:?}: {err}"))
    }

    /// [`command`](Self::command), an error answer as an error.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        stream.write_all(request.as_bytes())?;
        let mut reader = std::io::BufReader::new(stream);
        read_resp(&mut reader)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn read_resp(reader: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(std::io::Error::other(rest.to_owned())),
        "$" if rest == "-1" => Ok(String::new()),
        "$" => {
            let mut bulk = vec![0; rest.parse::<usize>().unwrap() + 2];
            reader.read_exact(&mut bulk)?;
            Ok(String::from_utf8_lossy(&bulk[..bulk.len() - 2]).into_owned())
        }
        "*" => {
            let count: i64 = rest.parse().unwrap();
            let items = (0..count.max(0)).map(|_| read_resp(reader)).collect::<std::io::Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(std::io::Error::other(format!("unexpected reply line {line:?}"))),
    }
}

/// A TCP echo server (RFC 862) on 127.0.0.1 (a free port) while the test's
/// runtime lives: its address, and how many bytes it echoed.
pub async fn echo_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echoed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = echoed.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 << 10];
                while let Ok(read @ 1..) = stream.read(&mut buffer).await {
                    // Counted before it goes back: whoever reads the echo sees it counted.
                    counted.fetch_add(read, std::sync::atomic::Ordering::SeqCst);
                    if stream.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, echoed)
}

/// A listener on 127.0.0.1 that accepts every connection and never sends a byte on it (nor closes
/// it): a host that takes TCP and never answers a protocol's handshake. It stops when dropped.
pub struct Silent {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((connection, _)) => held.push(connection),
                    // The pace of looking for the next connection, not a wait for anything.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Silent { addr, stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Request a message of `host`, whose destination's only endpoint is a [`Silent`] (with
/// `timeout_ms = 300` and `queue = { timeout_ms = 1500 }`), and check that it was never sent: each
/// attempt cut while it connected, it waited out its queue timeout for an endpoint that could take
/// it (not `delivery-uncertain` after one attempt, as one sent and unanswered is), and is counted
/// so. The dead letter's reason.
pub async fn assert_never_sent(host: &Host) -> String {
    let answer = within(host.request(Message::new("jobs", "never sent"))).await;
    assert!(matches!(answer, Err(switchyard::RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"), "never sent: {letter:?}");
    let reason = letter.header("x-sy-dead-letter-reason").unwrap_or_default().to_owned();
    assert!(reason.contains("not sent (the last try: "), "{reason}");
    let stats = drain_and_account(host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
    reason
}
