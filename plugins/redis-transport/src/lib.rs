//! A transport to Redis over RESP: each message is appended to a key, on a
//! connection kept open between messages.
//!
//! Config keys: `key` (required), and `command`: `rpush` (the default,
//! `RPUSH key payload`; the reply's payload is the list's new length) or
//! `xadd` (`XADD key * payload <payload> id <x-sy-id>`; the reply's payload is
//! the new entry's id). A Redis error reply is `rejected` (dead-lettered with
//! its text), except the transient ones (`LOADING`, `BUSY`, `TRYAGAIN`,
//! `MASTERDOWN`, ...), which are `retryable` (not executed), as is a failed
//! connect or write (Redis runs only whole commands). A connection lost
//! after the command went out is `failed`: Redis may have run it.

mod resp;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::LazyLock;

use resp::{Reply, read_reply, write_command};
use switchyard_plugin::{Error, Message, OwnedMessage, Transport, config, export_transport};

struct RedisTransport;

/// Error replies that say "not now" rather than "never".
const TRANSIENT: &[&str] = &["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY"];

/// What each message becomes.
enum Command {
    Rpush,
    Xadd,
}

/// The command and key from the config, read once per instance.
static SETTINGS: LazyLock<Result<(Command, String), String>> = LazyLock::new(|| {
    let key = config("key").ok_or("config key `key` is unset")?;
    let command = match config("command").as_deref() {
        None | Some("rpush") => Command::Rpush,
        Some("xadd") => Command::Xadd,
        Some(other) => return Err(format!("config key `command` = \"{other}\": expected rpush or xadd")),
    };
    Ok((command, key))
});

/// An open connection to one Redis server.
struct Connection {
    stream: BufReader<TcpStream>,
}

impl Transport for RedisTransport {
    type Connection = Connection;

    fn open(address: &str) -> Result<Connection, Error> {
        let stream =
            TcpStream::connect(address).map_err(|err| Error::retryable(format!("connect: {err}")))?;
        stream.set_nodelay(true).map_err(|err| Error::retryable(format!("connect: {err}")))?;
        Ok(Connection { stream: BufReader::new(stream) })
    }

    fn send(connection: &mut Connection, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        let (command, key) = SETTINGS.as_ref().map_err(Error::failed)?;
        let payload = message.payload.unwrap_or_default();
        let id = message.header("x-sy-id").unwrap_or_default();
        let args: &[&[u8]] = match command {
            Command::Rpush => &[b"RPUSH", key.as_bytes(), payload],
            Command::Xadd => &[b"XADD", key.as_bytes(), b"*", b"payload", payload, b"id", id.as_bytes()],
        };
        let answer = connection.call(args)?;
        Ok(Some(OwnedMessage::reply_to(message).with_payload(answer)))
    }

    fn probe(address: &str) -> Result<(), Error> {
        match Self::open(address)?.call(&[b"PING"])?.as_slice() {
            b"PONG" => Ok(()),
            other => Err(Error::retryable(format!("PING: {}", String::from_utf8_lossy(other)))),
        }
    }
}

impl Connection {
    /// Send one command and read its reply: the answer's bytes, or the error.
    fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, Error> {
        let sent = write_command(self.stream.get_mut(), args).and_then(|()| self.stream.get_mut().flush());
        sent.map_err(|err| Error::retryable(format!("redis connection, sending: {err}")))?;
        let reply = read_reply(&mut self.stream);
        match reply.map_err(|err| Error::failed(format!("redis connection, sent, no answer: {err}")))? {
            Reply::Value(answer) => Ok(answer),
            Reply::Null => Ok(Vec::new()),
            Reply::Error(text) if TRANSIENT.iter().any(|code| text.starts_with(code)) => {
                Err(Error::retryable(format!("redis: {text}")))
            }
            Reply::Error(text) => Err(Error::rejected(format!("redis: {text}"))),
        }
    }
}

export_transport!(RedisTransport);
