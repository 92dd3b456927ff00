//! A real `nats-server` for a test: on 127.0.0.1 at a free port, stopped and started again on the
//! same port on request, killed when dropped; with JetStream on request, storing in a temp dir.

use crate::support::eventually;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A `nats-server` child process.
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    /// With JetStream: where it stores streams.
    store: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A server on a free port, accepting connections once this returns.
    pub fn start() -> NatsServer {
        NatsServer::start_with(None)
    }

    /// A server with JetStream enabled (`-js`), storing in a temp dir of its own.
    pub fn start_jetstream() -> NatsServer {
        NatsServer::start_with(Some(tempfile::tempdir().unwrap()))
    }

    fn start_with(store: Option<tempfile::TempDir>) -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = NatsServer { port, child: None, store };
        server.restart();
        server
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kill the server and wait for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server (again) on its port; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(binary());
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(store) = &self.store {
            command.arg("-js").arg("-sd").arg(store.path());
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start nats-server");
        let child = self.child.insert(child);
        let address = format!("127.0.0.1:{}", self.port);
        eventually(|| {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nats-server exited at start: {status}");
            }
            std::net::TcpStream::connect(&address).map(drop).map_err(|err| err.to_string())
        });
    }

    /// The connection of the one client the server has now (before a test connects its own), as
    /// the kernel sees it from that client's side.
    pub fn only_connection(&self) -> ClientSocket {
        let sockets = sockets(&format!("dport = :{}", self.port));
        let [(local, _)] = sockets[..] else { panic!("not one client connected: {sockets:?}") };
        ClientSocket { local, server: self.port }
    }

    /// A client of the server that tries to reconnect at once when it loses it.
    pub async fn client(&self) -> async_nats::Client {
        let options = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|_| std::time::Duration::from_millis(10))
            .max_reconnects(None);
        options.connect(self.address()).await.expect("connect to nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client's TCP connection to a [`NatsServer`], by its ports on 127.0.0.1.
pub struct ClientSocket {
    local: u16,
    server: u16,
}

impl ClientSocket {
    /// The bytes the client has read from the connection so far: what reached its socket, less what
    /// waits there unread (the kernel's figures, from `ss`).
    pub fn read(&self) -> u64 {
        match sockets(&format!("sport = :{} and dport = :{}", self.local, self.server))[..] {
            [(_, read)] => read,
            ref sockets => panic!("not one connection: {sockets:?}"),
        }
    }
}

/// The established TCP connections that `filter` (an `ss` filter) selects: each one's local port and
/// the bytes its owner has read from it.
fn sockets(filter: &str) -> Vec<(u16, u64)> {
    let output = Command::new("ss").args(["-tinH", "state", "established", filter]).output();
    let output = output.expect("ss (iproute2) is needed to look at a connection's kernel figures");
    assert!(output.status.success(), "ss {filter}: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    // Each socket is a line of `Recv-Q Send-Q local peer`, then an indented line of its `key:value`s.
    let mut sockets = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let (unread, local) = (columns[0].parse::<u64>().unwrap(), columns[2]);
        let port = local.rsplit_once(':').unwrap().1.parse().unwrap();
        let details = lines.next().unwrap_or_default();
        let received = details.split_whitespace().find_map(|item| item.strip_prefix("bytes_received:"));
        // A socket that received nothing shows no `bytes_received`.
        let received = received.map_or(0, |bytes| bytes.parse::<u64>().unwrap());
        sockets.push((port, received - unread));
    }
    sockets
}

/// The `nats-server` executable, or a failure saying how to install it.
fn binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push("/usr/sbin".into());
    let found = dirs.into_iter().map(|dir| dir.join("nats-server")).find(|candidate| candidate.is_file());
    found.expect("nats-server is needed to test the NATS transport and ingress: apt-get install nats-server")
}

/// Returns once the server has read everything `client` sent before: a request nobody answers
/// comes back (as "no responders") only after them.
pub async fn fence(client: &async_nats::Client) {
    let answer = client.request("switchyard.test.fence", bytes::Bytes::new()).await;
    let kind = answer.expect_err("nobody answers the fence").kind();
    assert_eq!(kind, async_nats::RequestErrorKind::NoResponders);
}
