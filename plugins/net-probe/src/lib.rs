//! A test filter that tries the network: a message whose header `x-connect`
//! names a `host:port` is kept when a TCP connection to it succeeds, one
//! whose header `x-listen` does when listening on it succeeds; either is
//! dropped when refused or denied (the error is logged). One with neither
//! header is kept.

use std::net::{TcpListener, TcpStream};

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter, warn};

struct NetProbe;

impl Filter for NetProbe {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        let tried = match (message.header("x-connect"), message.header("x-listen")) {
            (Some(address), _) => TcpStream::connect(address).map(drop).map_err(|err| (address, err)),
            (None, Some(address)) => TcpListener::bind(address).map(drop).map_err(|err| (address, err)),
            (None, None) => return Ok(Verdict::Keep),
        };
        match tried {
            Ok(()) => Ok(Verdict::Keep),
            Err((address, err)) => {
                warn(&format!("{address}: {err}"));
                Ok(Verdict::Drop)
            }
        }
    }
}

export_filter!(NetProbe);
