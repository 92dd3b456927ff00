//! The `tcp` transport: length-delimited frames over pooled connections.
//!
//! A frame is a `u32` big-endian length and that many bytes. A request frame
//! holds one message in the Switchyard wire layout (`switchyard-wire`, the
//! same bytes plugins receive). The peer answers every request with one frame:
//! empty for "taken, no reply", or one message (the reply). A connection that
//! errored, timed out or answered malformed bytes is closed, never reused.

use super::cluster::{AttemptFuture, AttemptResult, Transport};
use crate::message::Message;
use crate::resilience::{Outcome, RetryReason};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest reply frame accepted (16 MiB).
const MAX_FRAME: u32 = 16 << 20;

/// Frames over TCP, keeping up to `max_idle` idle connections per endpoint.
#[derive(Debug)]
pub struct TcpTransport {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
    max_idle: usize,
}

impl TcpTransport {
    /// A transport keeping up to `max_idle` idle connections per endpoint.
    pub fn new(max_idle: usize) -> TcpTransport {
        TcpTransport { idle: Mutex::default(), max_idle }
    }

    fn take_idle(&self, address: &str) -> Option<TcpStream> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).get_mut(address)?.pop()
    }

    fn put_idle(&self, address: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let streams = idle.entry(address.to_owned()).or_default();
        if streams.len() < self.max_idle {
            streams.push(stream);
        }
    }

    async fn exchange(&self, address: &str, message: &Message) -> AttemptResult {
        let mut frame = vec![0; 4];
        message.encode(&mut frame, 0, true);
        let length = u32::try_from(frame.len() - 4).expect("messages are far below 4 GiB");
        frame[..4].copy_from_slice(&length.to_be_bytes());
        let reset = |err: std::io::Error| (Outcome::Retryable(RetryReason::Reset), err.to_string());
        let (mut stream, reused) = match self.take_idle(address) {
            Some(stream) => (stream, true),
            None => {
                let stream = TcpStream::connect(address)
                    .await
                    .map_err(|err| (Outcome::Retryable(RetryReason::Connect), err.to_string()))?;
                (stream, false)
            }
        };
        let answer = async {
            stream.write_all(&frame).await?;
            let length = stream.read_u32().await?;
            if length > MAX_FRAME {
                return Err(std::io::Error::other(format!("reply frame of {length} bytes")));
            }
            let mut reply = vec![0; length as usize];
            stream.read_exact(&mut reply).await?;
            Ok(reply)
        };
        let reply = answer.await.map_err(|err| {
            let reason = if reused { format!("{err} (on a reused connection)") } else { err.to_string() };
            reset(std::io::Error::other(reason))
        })?;
        let reply = match reply.is_empty() {
            true => None,
            false => {
                let mut messages = switchyard_wire::decode(&reply);
                let decoded = messages.next().and_then(Result::ok).map(|m| Message::from_wire(&m));
                Some(decoded.ok_or_else(|| {
                    (Outcome::Retryable(RetryReason::Reset), "malformed reply frame".into())
                })?)
            }
        };
        self.put_idle(address, stream);
        Ok(reply)
    }
}

impl Transport for TcpTransport {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        Box::pin(self.exchange(address, message))
    }
}
