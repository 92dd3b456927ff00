//! Real servers the benches start on a free port of 127.0.0.1, killed on drop: `nats-server` and
//! `redis-server` (Debian packages of those names).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process listening on `address`, killed on drop.
pub struct Server {
    /// `127.0.0.1:PORT`.
    pub address: String,
    child: Child,
}

impl Server {
    /// A `nats-server`.
    #[allow(dead_code, reason = "each bench uses the servers it needs")]
    pub fn nats() -> Server {
        Server::start(&["nats-server", "/usr/sbin/nats-server"], |port| {
            vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
        })
    }

    /// A `redis-server` keeping nothing on disk.
    #[allow(dead_code, reason = "each bench uses the servers it needs")]
    pub fn redis() -> Server {
        Server::start(&["redis-server", "/usr/bin/redis-server"], |port| {
            let args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--port"];
            args.into_iter().map(str::to_owned).chain([port.to_string()]).collect()
        })
    }

    /// The first of `binaries` that runs, with `args(port)`, once it accepts connections.
    fn start(binaries: &[&str], args: impl Fn(u16) -> Vec<String>) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let binary = binaries
            .iter()
            .find(|binary| Command::new(binary).arg("--version").output().is_ok())
            .unwrap_or_else(|| panic!("{} is needed: apt-get install {0}", binaries[0]));
        let child = Command::new(binary)
            .args(args(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "{} did not start", binaries[0]);
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { address, child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
