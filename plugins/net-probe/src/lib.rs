//! A test filter that tries the network: a message whose header `x-connect`
//! names a `host:port` is kept when a TCP connection to it succeeds and
//! dropped when it is refused or denied (the error is logged); one without
//! the header is kept.

use std::net::TcpStream;

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter, warn};

struct NetProbe;

impl Filter for NetProbe {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        let Some(address) = message.header("x-connect") else { return Ok(Verdict::Keep) };
        match TcpStream::connect(address) {
            Ok(_) => Ok(Verdict::Keep),
            Err(err) => {
                warn(&format!("connect to {address}: {err}"));
                Ok(Verdict::Drop)
            }
        }
    }
}

export_filter!(NetProbe);
