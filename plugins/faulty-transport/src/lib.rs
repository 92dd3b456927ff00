//! A test transport to echo servers that misbehaves on request. A message
//! sent to the endpoint named by its header `x-fault-at` (or to any, without
//! that header) with header `x-fault`:
//! - `sleep`: sleeps 10 s inside WASI (where epoch interruption cannot reach);
//! - `spin`: never returns;
//! - `connect:HOST:PORT`: connects to that address instead, and rejects the
//!   message with the error when that fails;
//! - `raw-read`: opens a second connection to the endpoint through WASI's own
//!   sockets and waits in `input-stream.blocking-read` for a byte the echo
//!   server never sends (Rust's `std` never makes that call: its reads wait
//!   in `wasi:io/poll`), then sends the message as below;
//! - `leak:KIB`: keeps that many KiB for good (a slow leak), counts them as
//!   `leaked_kib`, then sends the message as below;
//! - `sockets:N`: creates that many TCP sockets through WASI and keeps them
//!   for good, and rejects the message with the error of the first refused,
//!   then sends the message as below.
//!
//! Any other message goes out as `echo-transport` sends it: the payload is
//! written and as many bytes read back; the reply carries them.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use switchyard_plugin::{Error, Message, OwnedMessage, Transport, count, export_transport};

struct FaultyTransport;

/// A connection to one echo server.
struct Echo {
    stream: TcpStream,
    address: String,
}

impl Transport for FaultyTransport {
    type Connection = Echo;

    fn open(address: &str) -> Result<Echo, Error> {
        let stream =
            TcpStream::connect(address).map_err(|err| Error::retryable(format!("connect: {err}")))?;
        Ok(Echo { stream, address: address.to_owned() })
    }

    fn send(echo: &mut Echo, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error> {
        let here = message.header("x-fault-at").is_none_or(|at| at == echo.address);
        match message.header("x-fault").filter(|_| here) {
            Some("sleep") => std::thread::sleep(Duration::from_secs(10)),
            Some("spin") => {
                let mut turns = 0_u64;
                // `black_box` keeps the optimizer from proving the loop useless.
                loop {
                    turns = black_box(turns.wrapping_add(1));
                }
            }
            Some(fault) if fault.starts_with("leak:") => {
                let kib: u64 = fault["leak:".len()..]
                    .parse()
                    .map_err(|_| Error::rejected(format!("{fault}: not a number of KiB")))?;
                std::mem::forget(black_box(vec![1u8; (kib as usize) << 10]));
                count("leaked_kib", kib);
            }
            Some("raw-read") => read_raw(&echo.address)?,
            Some(fault) if fault.starts_with("sockets:") => {
                let sockets: u32 = fault["sockets:".len()..]
                    .parse()
                    .map_err(|_| Error::rejected(format!("{fault}: not a number of sockets")))?;
                keep_sockets(sockets)?;
            }
            Some(fault) if fault.starts_with("connect:") => {
                let elsewhere = &fault["connect:".len()..];
                let stream = TcpStream::connect(elsewhere)
                    .map_err(|err| Error::rejected(format!("connect to {elsewhere}: {err}")))?;
                drop(stream);
            }
            _ => {}
        }
        let payload = message.payload.unwrap_or_default();
        let mut echoed = vec![0; payload.len()];
        echo.stream.write_all(payload).map_err(|err| Error::retryable(format!("echo, sending: {err}")))?;
        let echoed_back = echo.stream.read_exact(&mut echoed);
        echoed_back.map_err(|err| Error::failed(format!("echo, sent, no answer: {err}")))?;
        Ok(Some(OwnedMessage::from(message).with_payload(echoed)))
    }
}

/// Connect to `address` through `wasi:sockets` and read one byte with a
/// blocking read of `wasi:io/streams`.
fn read_raw(address: &str) -> Result<(), Error> {
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    let address: std::net::SocketAddrV4 =
        address.parse().map_err(|err| Error::rejected(format!("raw-read to {address}: {err}")))?;
    let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: address.port(),
        address: address.ip().octets().into(),
    });
    let failed = |err| Error::failed(format!("raw-read to {address}: {err}"));
    let socket =
        wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).map_err(failed)?;
    let network = wasip2::sockets::instance_network::instance_network();
    socket.start_connect(&network, remote).map_err(failed)?;
    socket.subscribe().block();
    // The streams go before the socket they belong to (they are declared after it).
    let (input, _output) = socket.finish_connect().map_err(failed)?;
    input.blocking_read(1).map_err(|err| Error::failed(format!("raw-read from {address}: {err}")))?;
    Ok(())
}

/// Create `sockets` TCP sockets and keep them open for good; the error of
/// the first one refused.
fn keep_sockets(sockets: u32) -> Result<(), Error> {
    use wasip2::sockets::{network::IpAddressFamily, tcp_create_socket::create_tcp_socket};
    for n in 1..=sockets {
        let socket = create_tcp_socket(IpAddressFamily::Ipv4)
            .map_err(|err| Error::rejected(format!("socket {n}: {err}")))?;
        std::mem::forget(socket);
    }
    Ok(())
}

export_transport!(FaultyTransport);
