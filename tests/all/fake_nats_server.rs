//! A NATS server played by the test, for what a real `nats-server` does not do on request: a
//! machine that dies without a word, a server that never says `INFO`, or one that stops reading.
//! It accepts the ingress's connections on 127.0.0.1 and does with each what the test says,
//! speaking the text protocol.

use crate::support::within;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A listener on a free port of 127.0.0.1.
pub struct FakeNatsServer {
    listener: TcpListener,
}

/// One connection a client made, doing nothing until the test says.
pub struct FakeConnection {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl FakeNatsServer {
    /// A server taking connections once this returns.
    pub async fn start() -> FakeNatsServer {
        FakeNatsServer { listener: TcpListener::bind("127.0.0.1:0").await.unwrap() }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// The next connection a client makes (failing the test when none comes within the safety net).
    pub async fn accept(&self) -> FakeConnection {
        let (stream, _) = within(self.listener.accept()).await.unwrap();
        let (read, write) = stream.into_split();
        FakeConnection { read: BufReader::new(read), write }
    }
}

impl FakeConnection {
    /// Shake hands as a server does: send `INFO {info}` (`info` is its JSON), read what the client
    /// sends up to its `PING` (its `CONNECT` and `SUB`s) and answer `PONG`.
    pub async fn handshake(&mut self, info: &str) {
        self.send(format!("INFO {info}\r\n").as_bytes()).await;
        loop {
            let mut line = String::new();
            within(self.read.read_line(&mut line)).await.unwrap();
            assert!(line.ends_with("\r\n"), "the client closed the connection in the handshake: {line:?}");
            if line == "PING\r\n" {
                break;
            }
        }
        self.send(b"PONG\r\n").await;
    }

    /// Send `bytes` to the client.
    pub async fn send(&mut self, bytes: &[u8]) {
        within(self.write.write_all(bytes)).await.unwrap();
    }

    /// From now on, a live server: answer each `PING` with a `PONG` until the client closes the
    /// connection.
    pub fn serve(self) {
        let FakeConnection { mut read, mut write } = self;
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "PING\r\n" && write.write_all(b"PONG\r\n").await.is_err() {
                    return;
                }
            }
        });
    }
}
