//! A transport that delivers nowhere: it replies with the message itself,
//! plus the header `x-echoed-by: <address>`. No network, no config keys.

use switchyard_plugin::{Error, Message, OwnedMessage, Transport, export_transport};

struct EchoTransport;

impl Transport for EchoTransport {
    fn send(address: &str, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        Ok(Some(OwnedMessage::from(message).with_header("x-echoed-by", address)))
    }
}

export_transport!(EchoTransport);
