//! Transports: deliver messages to the endpoints of a destination, over
//! connections the plugin opens and keeps.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::bindings::transport::exports::switchyard::plugin::transport::{
    Connection, Guest, GuestConnection,
};
use crate::host::FlushCounts;
use crate::message::single;
use crate::{Error, Message, OwnedMessage};

/// A transport: delivers messages to endpoints over connections it keeps open.
///
/// The host pools connections per endpoint: it calls [`open`](Self::open)
/// when no idle connection to the endpoint is left, [`send`](Self::send) once
/// per delivery attempt on a connection it took from the pool, and drops the
/// connection (closing it) when a send failed, the endpoint turned unhealthy
/// or the connection sat idle too long. The plugin reaches only the
/// destination's endpoints: every other address is refused by the sandbox.
///
/// Export it with [`export_transport!`](crate::export_transport). A
/// transport that writes each payload as one line and reads one line back
/// as the reply (the destination says `transport = "plugin:<file stem>"`):
///
/// ```
/// use std::io::{BufRead, BufReader, Write};
/// use std::net::TcpStream;
///
/// use switchyard_plugin::{Error, Message, OwnedMessage, Transport, export_transport};
///
/// struct Lines;
///
/// impl Transport for Lines {
///     type Connection = BufReader<TcpStream>;
///
///     fn open(address: &str) -> Result<Self::Connection, Error> {
///         let stream = TcpStream::connect(address).map_err(|err| Error::retryable(err.to_string()))?;
///         Ok(BufReader::new(stream))
///     }
///
///     fn send(lines: &mut Self::Connection, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
///         let payload = message.payload.unwrap_or_default();
///         if payload.contains(&b'\n') {
///             return Err(Error::rejected("a line-protocol payload cannot hold a newline"));
///         }
///         // A write that fails leaves the line without its newline: the endpoint took nothing.
///         let sent = lines.get_mut().write_all(&[payload, b"\n"].concat());
///         sent.map_err(|err| Error::retryable(format!("sending: {err}")))?;
///         // Sent: from here on the endpoint may have taken it, and no answer is no success.
///         let mut line = Vec::new();
///         let read = lines.read_until(b'\n', &mut line);
///         read.map_err(|err| Error::failed(format!("sent, no answer: {err}")))?;
///         if line.pop() != Some(b'\n') {
///             return Err(Error::failed("sent, no answer: the connection closed"));
///         }
///         Ok(Some(OwnedMessage::reply_to(message).with_payload(line)))
///     }
/// }
///
/// export_transport!(Lines);
/// # fn main() {
/// #     use switchyard_plugin::testing::TestMessage;
/// #     // A peer that closes its first connection once it has read the line, and answers its second.
/// #     let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// #     let address = peer.local_addr().unwrap().to_string();
/// #     let peer = std::thread::spawn(move || {
/// #         for answer in [None, Some("TWO\n")] {
/// #             let mut taken = BufReader::new(peer.accept().unwrap().0);
/// #             taken.read_line(&mut String::new()).unwrap();
/// #             if let Some(answer) = answer {
/// #                 taken.get_mut().write_all(answer.as_bytes()).unwrap();
/// #             }
/// #         }
/// #     });
/// #     // Taken, maybe acted on: no answer is no success, nor a failure to retry anywhere.
/// #     let one = TestMessage::full(&OwnedMessage::new("orders").with_payload("one"));
/// #     let reply = Lines::send(&mut Lines::open(&address).unwrap(), &one.message());
/// #     assert!(matches!(reply, Err(Error::Failed(_))), "{reply:?}");
/// #     let two = TestMessage::full(&OwnedMessage::new("orders").with_payload("two"));
/// #     let reply = Lines::send(&mut Lines::open(&address).unwrap(), &two.message());
/// #     assert_eq!(reply.unwrap().unwrap().payload(), b"TWO");
/// #     peer.join().unwrap();
/// # }
/// ```
pub trait Transport {
    /// One open connection to one endpoint (for example a
    /// `std::net::TcpStream`); dropping it closes it.
    type Connection: 'static;

    /// Connect to `address` (`host:port`, one of the destination's
    /// endpoints). Called when the host needs a new connection; an error
    /// means nothing was sent, and the host tries another endpoint.
    fn open(address: &str) -> Result<Self::Connection, Error>;

    /// Send `message` (with its payload) on `connection` and return its
    /// reply, if the protocol has one. Called once per delivery attempt (a
    /// retry calls it again, maybe on another connection). On failure say
    /// whether the endpoint may have taken the message:
    /// [`Error::retryable`] when it certainly did not (nothing went out, or
    /// it answered "not now"): the host retries, on any destination;
    /// [`Error::failed`] when it may have (the request went out and no answer
    /// came): the host retries only where the destination is `idempotent`;
    /// [`Error::rejected`] when it refuses the message for good: it is
    /// dead-lettered with your text. After any error the host closes the
    /// connection.
    fn send(connection: &mut Self::Connection, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error>;

    /// Check `address`'s health, for the host's active health checks (every
    /// `health.interval_ms` per endpoint). By default: open a connection
    /// and close it.
    fn probe(address: &str) -> Result<(), Error> {
        Self::open(address).map(drop)
    }
}

/// Glue between a [`Transport`] and the generated export.
#[doc(hidden)]
pub struct TransportExport<T>(PhantomData<T>);

/// One connection of transport `T`, as the generated resource holds it
/// (the resource's `send` borrows it shared, the trait takes it `&mut`).
#[doc(hidden)]
pub struct ConnectionExport<T: Transport>(RefCell<T::Connection>);

/// Compiles only for a `T` that implements [`Transport`]: the export macro's check.
#[doc(hidden)]
pub const fn is_transport<T: Transport>() {}

impl<T: Transport + 'static> Guest for TransportExport<T> {
    type Connection = ConnectionExport<T>;

    fn probe(address: String) -> Result<(), Error> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        T::probe(&address)
    }
}

impl<T: Transport + 'static> GuestConnection for ConnectionExport<T> {
    fn open(address: String) -> Result<Connection, Error> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        let connection = T::open(&address)?;
        Ok(Connection::new(ConnectionExport::<T>(RefCell::new(connection))))
    }

    fn send(&self, message: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        let reply = T::send(&mut self.0.borrow_mut(), &single(&message)?)?;
        Ok(reply.map(|reply| reply.to_batch()))
    }
}

/// Export a [`Transport`] as this component's `switchyard:plugin/transport`.
#[macro_export]
macro_rules! export_transport {
    ($plugin:ty) => {
        const _: () = $crate::__private::is_transport::<$plugin>();
        // Export names such as `switchyard:plugin/transport@0.1.0#...` only link for wasm;
        // elsewhere (`cargo check`, `clippy`, doctests) the check above suffices.
        #[cfg(target_family = "wasm")]
        $crate::__format_export!();
        #[cfg(target_family = "wasm")]
        const _: () = {
            type SwitchyardTransportExport = $crate::__private::TransportExport<$plugin>;
            $crate::__private::transport::export!(SwitchyardTransportExport with_types_in $crate::__private::transport);
        };
    };
}
