//! A transport to echo servers (RFC 862: every byte sent comes back): it
//! writes each message's payload on a connection it keeps open, reads as
//! many bytes back, and replies with them, plus the header
//! `x-echoed-by: <address>`. No config keys.

use std::io::{Read, Write};
use std::net::TcpStream;

use switchyard_plugin::{Error, Message, OwnedMessage, Transport, export_transport};

struct EchoTransport;

/// A connection to one echo server.
struct Echo {
    stream: TcpStream,
    address: String,
}

impl Transport for EchoTransport {
    type Connection = Echo;

    fn open(address: &str) -> Result<Echo, Error> {
        let stream =
            TcpStream::connect(address).map_err(|err| Error::retryable(format!("connect: {err}")))?;
        Ok(Echo { stream, address: address.to_owned() })
    }

    fn send(echo: &mut Echo, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        let payload = message.payload.unwrap_or_default();
        let mut echoed = vec![0; payload.len()];
        echo.stream.write_all(payload).map_err(|err| Error::retryable(format!("echo, sending: {err}")))?;
        let echoed_back = echo.stream.read_exact(&mut echoed);
        echoed_back.map_err(|err| Error::failed(format!("echo, sent, no answer: {err}")))?;
        let reply = OwnedMessage::from(message).with_payload(echoed);
        Ok(Some(reply.with_header("x-echoed-by", echo.address.as_str())))
    }
}

export_transport!(EchoTransport);
