//! The bytes of request bodies the ingress may hold before their messages are admitted: one
//! budget for the whole host, whatever the number of clients. `host.queue_bytes` bounds what is
//! admitted; without this, every connection could hold a body of its limit at once, and enough
//! clients sending large bodies could make the host run out of memory (losing, in memory mode,
//! every message it had accepted).
//!
//! A body takes its share before it is read and gives it back once its message(s) are admitted or
//! refused (admitted, they are counted in `host.queue_bytes`). A body that finds no room is not
//! waited for: it is refused unread, with the backpressure of a full queue (`503` + `Retry-After`).
//! A wait would leave the body unread while its client's allowance for sending it ran on.
//!
//! A gRPC call takes [`grpc_call_bytes`] before any of it is read, whatever it sends (a stream
//! may send many messages, one at a time), and gives it back once its answer is sent; one that
//! finds no room is refused unread, `RESOURCE_EXHAUSTED`. So the budget also bounds how many gRPC
//! calls the host serves at once.

use crate::config::Config;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

impl super::Host {
    /// `bytes` of the host's budget for request bodies not yet admitted, to hold while a body of at
    /// most that many is read and its message(s) admitted or refused; if they are free now, else
    /// why not (see the [module docs](self)).
    pub(crate) fn try_hold_body(&self, bytes: usize) -> Result<BodyHold, String> {
        self.inner.bodies.try_hold(bytes)
    }
}

/// What bodies being read or held before admission may take, in bytes.
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    limit: usize,
    /// The bytes taken now: `switchyard_ingress_body_bytes`.
    held: Gauge,
}

impl BodyBudget {
    /// A budget of `limit` bytes, showing what is taken of it on `held`.
    pub(crate) fn new(limit: usize, held: Gauge) -> BodyBudget {
        BodyBudget { bytes: Arc::new(Semaphore::new(limit)), limit, held }
    }

    /// `bytes` of the budget, if free now; else why not.
    pub(crate) fn try_hold(&self, bytes: usize) -> Result<BodyHold, String> {
        // A share is at most the largest body a route takes, which the budget holds (see `body_budget`).
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        match self.bytes.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                self.held.inc_by(i64::from(permits));
                Ok(BodyHold { _permit: permit, bytes: permits, held: self.held.clone() })
            }
            Err(_) => Err(format!(
                "the host holds {} bytes of request bodies not yet admitted, at most {}: a body of {bytes} \
                 bytes does not fit now",
                self.held.get(),
                self.limit
            )),
        }
    }
}

/// A body's share of the [`BodyBudget`], given back when dropped.
pub(crate) struct BodyHold {
    _permit: OwnedSemaphorePermit,
    bytes: u32,
    held: Gauge,
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        self.held.dec_by(i64::from(self.bytes));
    }
}

/// The bytes of the budget for `config`: `host.queue_bytes`, or the largest body a route takes
/// (`ingress.http.max_batch_bytes`), or with `[ingress.grpc]` one gRPC call's
/// [`grpc_call_bytes`], if that is more, so that every body a route takes can fit.
pub(crate) fn body_budget(config: &Config) -> usize {
    let grpc = config.ingress.grpc.as_ref().map_or(0, |_| grpc_call_bytes(config));
    config.host.queue_bytes.max(config.host.max_message_bytes).max(config.ingress.max_batch_bytes()).max(grpc)
}

/// What the gRPC ingress's HTTP/2 lets a client send of a call ahead of its reading (the stream's
/// initial window), held by HTTP/2 until the call reads it.
pub(crate) const GRPC_STREAM_WINDOW: u32 = 1 << 20;

/// The largest message the gRPC ingress decodes: `max_message_bytes`, and 64 KiB for the rest of a
/// request (topic, headers, framing), so that a message too large is refused as such (`413`) rather
/// than failing to decode.
pub(crate) fn grpc_decoding_limit(config: &Config) -> usize {
    config.host.max_message_bytes.saturating_add(64 << 10)
}

/// What one gRPC call takes of the budget while it is open: as much as it can make the host hold
/// before its messages are admitted, the message being decoded ([`grpc_decoding_limit`], buffered
/// whole before it is decoded) and what its client may send ahead of that ([`GRPC_STREAM_WINDOW`]).
pub(crate) fn grpc_call_bytes(config: &Config) -> usize {
    grpc_decoding_limit(config).saturating_add(GRPC_STREAM_WINDOW as usize)
}
