//! {{name}}: a Switchyard transport plugin.
//!
//! Answers every message itself with a copy carrying the header
//! `x-delivered-to` (the endpoint's address): replace `open` with a real
//! connection (e.g. a `std::net::TcpStream` to the address) and `send` with a
//! real delivery on it.

use switchyard_plugin::{Error, Message, OwnedMessage, Transport, export_transport};

struct Plugin;

/// One open connection: here, just the endpoint it goes to.
struct Connection {
    address: String,
}

/// Where a message sent to `address` says it went.
fn delivered_to(address: &str) -> (&'static str, &str) {
    ("x-delivered-to", address)
}

impl Transport for Plugin {
    type Connection = Connection;

    fn open(address: &str) -> Result<Connection, Error> {
        Ok(Connection { address: address.to_owned() })
    }

    fn send(connection: &mut Connection, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        let (name, value) = delivered_to(&connection.address);
        Ok(Some(OwnedMessage::from(message).with_header(name, value)))
    }
}

export_transport!(Plugin);

#[cfg(test)]
mod tests {
    use super::delivered_to;

    #[test]
    fn the_reply_names_the_address() {
        assert_eq!(delivered_to("10.0.0.7:9000"), ("x-delivered-to", "10.0.0.7:9000"));
    }
}
