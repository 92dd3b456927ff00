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
