//! A NATS server played by the test, for what a real `nats-server` does not do on request: a
//! machine that dies without a word, a server that never says `INFO`, one that stops reading, one
//! that resets a connection (in the middle of a message, or while the client holds one it read),
//! or one with a small `max_payload`. It accepts a client's connections on 127.0.0.1 and does with
//! each what the test says, speaking the text protocol.

use crate::support::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket};

/// A listener on a free port of 127.0.0.1.
pub struct FakeNatsServer {
    listener: TcpListener,
}

/// One connection a client made, doing nothing until the test says.
pub struct FakeConnection {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

/// A message the client published (`HPUB`).
#[derive(Debug)]
pub struct Published {
    /// Where it was published: for an answer, the request's reply subject.
    pub subject: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Published {
    /// The value of its header `name`, if it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

impl FakeNatsServer {
    /// A server taking connections once this returns.
    pub async fn start() -> FakeNatsServer {
        FakeNatsServer { listener: TcpListener::bind("127.0.0.1:0").await.unwrap() }
    }

    /// A server whose connections take about `bytes` from the network at a time (`SO_RCVBUF`, set
    /// on the listening socket so that the connections it accepts have it too): a client sending
    /// more to one that does not read keeps the rest in its own buffers.
    pub async fn start_with_receive_buffer(bytes: u32) -> FakeNatsServer {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        FakeNatsServer { listener: socket.listen(16).unwrap() }
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
            let line = self.line().await;
            assert!(line.ends_with("\r\n"), "the client closed the connection in the handshake: {line:?}");
            if line == "PING\r\n" {
                break;
            }
        }
        self.send(b"PONG\r\n").await;
    }

    /// The next line the client sends, `\r\n` included (what is left once it closed the connection).
    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        within(self.read.read_line(&mut line)).await.unwrap();
        line
    }

    /// Send `bytes` to the client.
    pub async fn send(&mut self, bytes: &[u8]) {
        within(self.write.write_all(bytes)).await.unwrap();
    }

    /// Reset the connection, as a server that went away does (an RST, not a FIN): what the client
    /// writes to it from now on fails.
    pub fn reset(self) {
        let stream = self.read.into_inner().reunite(self.write).unwrap();
        stream.set_zero_linger().unwrap();
    }

    /// From now on, a live server: answer each `PING` with a `PONG`, and pass on each message the
    /// client publishes, until the client closes the connection.
    pub fn serve(self) -> flume::Receiver<Published> {
        let (published, receiver) = flume::unbounded();
        let FakeConnection { mut read, mut write } = self;
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                match line.split_ascii_whitespace().collect::<Vec<_>>()[..] {
                    ["PING"] => {
                        if write.write_all(b"PONG\r\n").await.is_err() {
                            return;
                        }
                    }
                    ["HPUB", subject, header_bytes, total_bytes] => {
                        let (header_bytes, total_bytes) =
                            (header_bytes.parse().unwrap(), total_bytes.parse::<usize>().unwrap());
                        let mut body = vec![0; total_bytes + 2];
                        if read.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let block = String::from_utf8_lossy(&body[..header_bytes]);
                        let lines = block.split("\r\n").skip(1).filter_map(|line| line.split_once(": "));
                        let headers = lines.map(|(name, value)| (name.into(), value.into())).collect();
                        let payload = body[header_bytes..total_bytes].to_vec();
                        drop(published.send(Published { subject: subject.into(), headers, payload }));
                    }
                    _ => {}
                }
            }
        });
        receiver
    }
}
