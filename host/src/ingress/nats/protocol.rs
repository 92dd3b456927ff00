//! The core NATS client protocol, as much of it as a subscriber needs: the handshake, `SUB`,
//! `UNSUB`, `PING`/`PONG`, incoming `MSG`/`HMSG`, and `HPUB` for answers.
//!
//! Written here rather than taken from `async-nats` (which the `nats` transport uses) for one reason:
//! a graceful stop must not lose what the server already sent. The server stops routing to a
//! subscription when it reads its `UNSUB`; what it routed before is on the wire, ahead of the `PONG`
//! to a `PING` sent after the `UNSUB`. So a subscriber that reads on until that `PONG` has every
//! message the server gave it. `async-nats` 0.51 forgets a drained subscription before that `PONG`
//! comes, dropping the messages still on the wire (nats-io/nats.rs#1325 describes the window).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

/// The longest control line read (`INFO` carries the server's JSON description).
const MAX_LINE: usize = 64 * 1024;

/// The largest message read; a server sends at most its `max_payload` (64 MiB at most).
const MAX_MESSAGE: usize = 64 << 20;

/// How long connecting and the handshake may take, at most (async-nats's default, as the stream
/// ingress's client has).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server sends, one operation at a time.
pub(super) type Reader = FramedRead<OwnedReadHalf, ServerOps>;

/// One message the server delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delivered {
    /// The subject it was published to.
    pub subject: String,
    /// Where the publisher waits for an answer, for a request.
    pub reply: Option<String>,
    /// Its headers, in the order they came.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Bytes,
}

impl Delivered {
    /// Its headers and payload, in bytes.
    pub(super) fn bytes(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(name, value)| name.len() + value.len()).sum();
        headers + self.payload.len()
    }
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ServerOp {
    /// A message for one of the subscriptions.
    Message(Delivered),
    /// The server's liveness check: answer `PONG`.
    Ping,
    /// The answer to our `PING`: everything the server sent before it came first.
    Pong,
    /// `INFO`: what the server requires of its clients.
    Info(ServerInfo),
    /// `+OK` (sent only in verbose mode, which we do not ask for).
    Ok,
    /// `-ERR`, with the server's text.
    Error(String),
}

/// The parts of the server's `INFO` that a plain client must check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub(super) struct ServerInfo {
    /// The most bytes of headers and payload the server takes in one message (none said: no limit
    /// known). It refuses a larger one and closes the connection, dropping what was queued for it.
    #[serde(default)]
    pub max_payload: Option<usize>,
    /// The server takes TLS connections only.
    #[serde(default)]
    tls_required: bool,
    /// The server takes authenticated clients only.
    #[serde(default)]
    auth_required: bool,
}

/// Splits what the server sends into [`ServerOp`]s.
#[derive(Debug, Default)]
pub(super) struct ServerOps;

impl tokio_util::codec::Decoder for ServerOps {
    type Item = ServerOp;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<ServerOp>> {
        let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") else {
            return match buf.len() > MAX_LINE {
                true => Err(invalid("a control line longer than 64 KiB")),
                false => Ok(None),
            };
        };
        let line =
            std::str::from_utf8(&buf[..end]).map_err(|_| invalid("a control line that is not UTF-8"))?;
        let (op, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let op = match op.to_ascii_uppercase().as_str() {
            "PING" => ServerOp::Ping,
            "PONG" => ServerOp::Pong,
            "+OK" => ServerOp::Ok,
            "INFO" => {
                ServerOp::Info(serde_json::from_str(rest).map_err(|_| invalid("an INFO it cannot parse"))?)
            }
            "-ERR" => ServerOp::Error(rest.trim().trim_matches('\'').to_owned()),
            "MSG" => return Ok(MessageLine::parse(rest, false)?.take(buf, end)),
            "HMSG" => return Ok(MessageLine::parse(rest, true)?.take(buf, end)),
            _ => return Err(invalid(&format!("an unknown operation {line:?}"))),
        };
        buf.advance(end + 2);
        Ok(Some(op))
    }
}

/// The control line of a `MSG` or `HMSG`.
struct MessageLine {
    subject: String,
    reply: Option<String>,
    header_bytes: usize,
    total_bytes: usize,
}

impl MessageLine {
    /// `subject sid [reply] [header_bytes] total_bytes`, with `header_bytes` for an `HMSG`.
    fn parse(rest: &str, headers: bool) -> io::Result<MessageLine> {
        let words: Vec<&str> = rest.split_ascii_whitespace().collect();
        let sizes = if headers { 2 } else { 1 };
        let malformed = || invalid(&format!("a malformed message line {rest:?}"));
        if !(2 + sizes..=3 + sizes).contains(&words.len()) {
            return Err(malformed());
        }
        let number = |word: &str| word.parse::<usize>().map_err(|_| malformed());
        let total_bytes = number(words[words.len() - 1])?;
        let header_bytes = if headers { number(words[words.len() - 2])? } else { 0 };
        if total_bytes > MAX_MESSAGE || header_bytes > total_bytes {
            return Err(invalid(&format!("a message of {total_bytes} bytes ({header_bytes} of headers)")));
        }
        let reply = (words.len() == 3 + sizes).then(|| words[2].to_owned());
        Ok(MessageLine { subject: words[0].to_owned(), reply, header_bytes, total_bytes })
    }

    /// The message whose line ends at `end` in `buf`, taken off `buf`, once all of it is there.
    fn take(self, buf: &mut BytesMut, end: usize) -> Option<ServerOp> {
        let whole = end + 2 + self.total_bytes + 2;
        if buf.len() < whole {
            buf.reserve(whole - buf.len());
            return None;
        }
        let mut body = buf.split_to(whole).freeze();
        body.advance(end + 2);
        body.truncate(self.total_bytes);
        let payload = body.split_off(self.header_bytes);
        let headers = parse_headers(&String::from_utf8_lossy(&body));
        let delivered = Delivered { subject: self.subject, reply: self.reply, headers, payload };
        Some(ServerOp::Message(delivered))
    }
}

/// The `name: value` lines after the `NATS/1.0` status line of a header block.
fn parse_headers(block: &str) -> Vec<(String, String)> {
    let lines = block.split("\r\n").skip(1).filter(|line| !line.is_empty());
    let pairs = lines.filter_map(|line| line.split_once(':'));
    pairs.map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned())).collect()
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the NATS server sent {what}"))
}

/// Connect to the server at `url` (`host:port`) and shake hands: its `INFO`, our `CONNECT` (headers
/// and no-responders on, no echo, not verbose), then `commands` (`SUB`s) and a `PING`, answered by a
/// `PONG` once the server has taken them. All of it within [`CONNECT_TIMEOUT`]: a peer that takes
/// the connection and says nothing (a server hung, or not a NATS server) is given up on.
pub(super) async fn connect(url: &str, commands: &[u8]) -> io::Result<(Reader, OwnedWriteHalf, ServerInfo)> {
    let timed_out = || {
        let problem = format!("no handshake with the NATS server within {CONNECT_TIMEOUT:?}");
        io::Error::new(io::ErrorKind::TimedOut, problem)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, shake_hands(url, commands)).await.map_err(|_| timed_out())?
}

/// [`connect`], with no deadline.
async fn shake_hands(url: &str, commands: &[u8]) -> io::Result<(Reader, OwnedWriteHalf, ServerInfo)> {
    let stream = TcpStream::connect(url).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = FramedRead::new(read, ServerOps);
    let closed = || io::Error::new(io::ErrorKind::UnexpectedEof, "the NATS server closed the connection");
    let info = match reader.next().await.ok_or_else(closed)?? {
        ServerOp::Info(info) if info.tls_required || info.auth_required => {
            let problem = "the server requires TLS or authentication, which the NATS ingress does not offer";
            return Err(io::Error::new(io::ErrorKind::Unsupported, problem));
        }
        ServerOp::Info(info) => info,
        op => return Err(invalid(&format!("{op:?} before INFO"))),
    };
    let connect = serde_json::json!({
        "verbose": false, "pedantic": false, "echo": false, "headers": true, "no_responders": true,
        "protocol": 1, "lang": "rust", "name": "switchyard", "version": env!("CARGO_PKG_VERSION"),
    });
    let mut handshake = format!("CONNECT {connect}\r\n").into_bytes();
    handshake.extend_from_slice(commands);
    handshake.extend_from_slice(b"PING\r\n");
    write.write_all(&handshake).await?;
    loop {
        match reader.next().await.ok_or_else(closed)?? {
            ServerOp::Pong => return Ok((reader, write, info)),
            ServerOp::Error(text) => {
                return Err(io::Error::other(format!("the NATS server refused: {text}")));
            }
            ServerOp::Ping => write.write_all(b"PONG\r\n").await?,
            _ => {}
        }
    }
}

/// `SUB subject [queue_group] sid`.
pub(super) fn subscribe(subject: &str, queue_group: Option<&str>, sid: usize) -> Vec<u8> {
    match queue_group {
        Some(group) => format!("SUB {subject} {group} {sid}\r\n").into_bytes(),
        None => format!("SUB {subject} {sid}\r\n").into_bytes(),
    }
}

/// `UNSUB sid`.
pub(super) fn unsubscribe(sid: usize) -> Vec<u8> {
    format!("UNSUB {sid}\r\n").into_bytes()
}

/// A message over the server's `max_payload`.
#[derive(Debug, thiserror::Error)]
#[error("{size} bytes of headers and payload, over the NATS server's max_payload of {max_payload}")]
pub(super) struct OverMaxPayload {
    /// Its header block and payload, in bytes.
    pub size: usize,
    /// The server's limit.
    pub max_payload: usize,
}

/// `HPUB subject header_bytes total_bytes` with `headers` and `payload`; a header NATS cannot carry
/// (a name with a space, a colon or a control character, a value with a line break) is left out.
/// An error, instead, when the header block and payload together are over `max_payload`.
pub(super) fn publish(
    subject: &str,
    headers: &[(String, String)],
    payload: &[u8],
    max_payload: Option<usize>,
) -> Result<Vec<u8>, OverMaxPayload> {
    let mut block = BytesMut::from(&b"NATS/1.0\r\n"[..]);
    let valid_name = |name: &str| {
        !name.is_empty() && !name.contains(|c: char| c == ':' || c.is_whitespace() || c.is_control())
    };
    for (name, value) in
        headers.iter().filter(|(name, value)| valid_name(name) && !value.contains(['\r', '\n']))
    {
        block.put_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    block.put_slice(b"\r\n");
    let total = block.len() + payload.len();
    if let Some(max_payload) = max_payload.filter(|max| total > *max) {
        return Err(OverMaxPayload { size: total, max_payload });
    }
    let mut frame = format!("HPUB {subject} {} {total}\r\n", block.len()).into_bytes();
    frame.extend_from_slice(&block);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::Decoder;

    fn decode_all(bytes: &[u8]) -> Vec<ServerOp> {
        let mut buf = BytesMut::from(bytes);
        std::iter::from_fn(|| ServerOps.decode(&mut buf).unwrap()).collect()
    }

    #[test]
    fn a_message_with_headers_and_a_reply_subject_is_read_whole() {
        let headers = [("k".into(), "v 1".into()), ("bad:name".into(), "x".into())];
        let frame = publish("orders.eu", &headers, b"hi", None).unwrap();
        let text =
            String::from_utf8(frame).unwrap().replacen("HPUB orders.eu", "HMSG orders.eu 1 _INBOX.a", 1);
        let ops = decode_all(format!("PING\r\n{text}MSG plain 2 3\r\nabc\r\n").as_bytes());
        let message =
            |subject: &str, reply: Option<&str>, headers: Vec<(String, String)>, payload: &'static [u8]| {
                ServerOp::Message(Delivered {
                    subject: subject.into(),
                    reply: reply.map(Into::into),
                    headers,
                    payload: Bytes::from_static(payload),
                })
            };
        assert_eq!(
            ops,
            [
                ServerOp::Ping,
                message("orders.eu", Some("_INBOX.a"), vec![("k".into(), "v 1".into())], b"hi"),
                message("plain", None, vec![], b"abc"),
            ]
        );
    }

    #[test]
    fn a_message_over_max_payload_counts_its_header_block() {
        // "NATS/1.0\r\n" "k: v\r\n" "\r\n" and two bytes of payload: 20 bytes.
        let headers = [("k".into(), "v".into())];
        assert!(publish("s", &headers, b"hi", Some(20)).is_ok());
        let over = publish("s", &headers, b"hi", Some(19)).unwrap_err();
        assert_eq!((over.size, over.max_payload), (20, 19));
    }

    #[test]
    fn a_message_split_across_reads_waits_for_its_end() {
        let mut buf = BytesMut::from(&b"MSG s 1 5\r\nhel"[..]);
        assert_eq!(ServerOps.decode(&mut buf).unwrap(), None);
        buf.put_slice(b"lo\r\nPONG\r\n");
        assert!(
            matches!(ServerOps.decode(&mut buf).unwrap(), Some(ServerOp::Message(m)) if m.payload == "hello")
        );
        assert_eq!(ServerOps.decode(&mut buf).unwrap(), Some(ServerOp::Pong));
    }

    #[test]
    fn a_malformed_or_oversized_line_is_an_error() {
        for bad in [&b"MSG s\r\n"[..], b"HMSG s 1 9 3\r\n", b"WHAT\r\n", b"MSG s 1 99999999999\r\n"] {
            assert!(ServerOps.decode(&mut BytesMut::from(bad)).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
