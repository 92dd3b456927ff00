//! The native plugin ABI: how a host calls a plugin built as a shared library
//! (`cdylib`) for its own target instead of a WebAssembly component.
//!
//! Both sides use this module: the SDK's export macros emit the entry points,
//! the host loads the library and calls them. Messages cross as the same wire
//! batches WASM plugins get; answers cross as small byte encodings defined
//! here. Nothing allocated by one side is ever freed by the other: inputs are
//! borrowed for the call, outputs are written through a [`Sink`] the caller
//! owns.
//!
//! # Symbols (all `extern "C"`)
//!
//! | Symbol | Signature | Notes |
//! |--------|-----------|-------|
//! | [`symbol::ABI`] | `fn() -> u32` | [`ABI_VERSION`]; frozen forever, called first |
//! | [`symbol::SDK_VERSION`] | `fn() -> *const c_char` | static, NUL-terminated; frozen forever |
//! | [`symbol::DESCRIBE`] | `fn() -> Description` | the plugin's kind, its panic strategy |
//! | [`symbol::INIT`] | `fn(*const HostVtable)` | once, before any call |
//! | one per export | [`CallFn`] | see [`symbol`] |
//!
//! A host checks [`symbol::ABI`] before it calls anything else, and refuses
//! a library that lacks it or answers another number (it may then call
//! [`symbol::SDK_VERSION`], also frozen, to say which SDK built it).
//!
//! # A call
//!
//! Every export has the signature [`CallFn`]: its inputs are `count`
//! borrowed byte strings ([`Input`]), its answer goes to `out`. It returns
//! [`ANSWERED`] with the answer written, or [`PANICKED`] with the panic's
//! text written instead (the SDK catches every panic at the boundary).
//!
//! | Export | Inputs | Answer |
//! |--------|--------|--------|
//! | filter | heads-only batch | one decision per message: [`write_decision`] |
//! | transform | batch | [`write_transform_errors`], then the output batch |
//! | on_request | one-message batch | [`write_action`] |
//! | on_reply | request, reply | [`write_reply`] |
//! | pick | message head, endpoints ([`write_endpoint`]s) | [`write_pick`] |
//!
//! Integers are little-endian; `str` is a `u32` length and UTF-8 bytes, as
//! in the batch layout. An error is a `u8` [`ErrorKind`] and a `str`.

use crate::{Reader, WireError, write_bytes};
use std::ffi::c_void;

/// The version of this ABI. A host refuses a library whose
/// [`symbol::ABI`] answers another number.
///
/// A native library exports no wire format version of its own: ABI 1
/// carries batches in wire format 1 ([`FORMAT_VERSION`](crate::FORMAT_VERSION)),
/// and a new wire format comes with a new ABI version.
pub const ABI_VERSION: u32 = 1;

/// A call answered: the answer is in the sink.
pub const ANSWERED: u32 = 0;
/// The plugin panicked: the panic's text is in the sink instead of an answer.
pub const PANICKED: u32 = 1;

/// Exported symbol names, NUL-terminated as `dlsym` wants them.
pub mod symbol {
    /// `extern "C" fn() -> u32`: the library's [`ABI_VERSION`](super::ABI_VERSION).
    pub const ABI: &[u8] = b"switchyard_native_abi\0";
    /// `extern "C" fn() -> *const c_char`: the SDK version that built it.
    pub const SDK_VERSION: &[u8] = b"switchyard_native_sdk_version\0";
    /// `extern "C" fn() -> Description`.
    pub const DESCRIBE: &[u8] = b"switchyard_native_describe\0";
    /// `extern "C" fn(*const HostVtable)`.
    pub const INIT: &[u8] = b"switchyard_native_init\0";
    /// A filter's [`CallFn`](super::CallFn).
    pub const FILTER: &[u8] = b"switchyard_native_filter\0";
    /// A transform's [`CallFn`](super::CallFn).
    pub const TRANSFORM: &[u8] = b"switchyard_native_transform\0";
    /// A middleware's request [`CallFn`](super::CallFn).
    pub const ON_REQUEST: &[u8] = b"switchyard_native_on_request\0";
    /// A middleware's reply [`CallFn`](super::CallFn).
    pub const ON_REPLY: &[u8] = b"switchyard_native_on_reply\0";
    /// A balancer's [`CallFn`](super::CallFn).
    pub const PICK: &[u8] = b"switchyard_native_pick\0";
}

/// Plugin kinds, as [`Description::kind`] numbers them.
pub mod kind {
    /// A filter.
    pub const FILTER: u32 = 1;
    /// A transform.
    pub const TRANSFORM: u32 = 2;
    /// A middleware.
    pub const MIDDLEWARE: u32 = 3;
    /// A balancer.
    pub const BALANCER: u32 = 4;
}

/// What [`symbol::DESCRIBE`] answers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Description {
    /// One of [`kind`].
    pub kind: u32,
    /// Whether the library was built with `panic = "unwind"`: only then can
    /// a panic be caught at the boundary (with `abort` it ends the host).
    pub panic_unwinds: bool,
}

/// One input of a call: `len` bytes at `ptr`, borrowed for the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Input {
    /// First byte (dangling but non-null when `len` is 0).
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl Input {
    /// Borrow `bytes` as an input.
    pub fn of(bytes: &[u8]) -> Input {
        Input { ptr: bytes.as_ptr(), len: bytes.len() }
    }
}

/// Where the callee writes its answer: `write(target, ptr, len)` appends
/// `len` bytes to the caller's buffer; it may be called any number of times.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Sink {
    /// The caller's buffer, opaque to the callee.
    pub target: *mut c_void,
    /// Appends bytes to `target`.
    pub write: unsafe extern "C" fn(target: *mut c_void, ptr: *const u8, len: usize),
}

/// Every export's signature: `count` inputs at `inputs`, the answer to `out`;
/// returns [`ANSWERED`] or [`PANICKED`].
pub type CallFn = unsafe extern "C" fn(inputs: *const Input, count: usize, out: *const Sink) -> u32;

/// The host functions a plugin may call, given once to [`symbol::INIT`]; the
/// library keeps them for its whole life. `context` is the host's, passed
/// back on every call. Strings are UTF-8 (pointer and length).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HostVtable {
    /// Opaque to the plugin.
    pub context: *const c_void,
    /// Log `text` at `level` (0 trace, 1 debug, 2 info, 3 warn, 4 error).
    pub log: unsafe extern "C" fn(context: *const c_void, level: u32, text: *const u8, len: usize),
    /// Write the config value of `key` to `out` and return true, or return
    /// false when the key is unset.
    pub config:
        unsafe extern "C" fn(context: *const c_void, key: *const u8, len: usize, out: *const Sink) -> bool,
    /// Milliseconds since the Unix epoch.
    pub now_millis: unsafe extern "C" fn(context: *const c_void) -> u64,
    /// Add `delta` to the counter `name`.
    pub count: unsafe extern "C" fn(context: *const c_void, name: *const u8, len: usize, delta: u64),
}

/// The three ways a plugin can fail on one message, as in the WIT `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// Bad message: dead-letter it, never retry.
    Rejected = 0,
    /// Transient: may be retried.
    Retryable = 1,
    /// The plugin itself failed.
    Failed = 2,
}

/// A plugin's error as read back: its kind and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which kind.
    pub kind: ErrorKind,
    /// The plugin's text.
    pub message: String,
}

/// What a middleware decided to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// Deliver this one-message batch.
    Forward = 0,
    /// Answer the caller with this one-message batch.
    Respond = 1,
}

/// What a balancer sees of one endpoint (the WIT `endpoint` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointView<'a> {
    /// Position in the destination's list.
    pub index: u32,
    /// Address as configured.
    pub address: &'a str,
    /// Relative weight.
    pub weight: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak-EWMA round-trip time in microseconds.
    pub latency_micros: u64,
    /// Whether health checks and the breaker admit it.
    pub healthy: bool,
}

/// A tag byte for a success that is not an error.
const OK: u8 = 3;

fn write_error(out: &mut Vec<u8>, kind: ErrorKind, message: &str) {
    out.push(kind as u8);
    write_bytes(out, message.as_bytes());
}

/// Append a filter's decision: `Ok(true)` keep, `Ok(false)` drop.
pub fn write_decision(out: &mut Vec<u8>, decision: Result<bool, (ErrorKind, &str)>) {
    match decision {
        Ok(keep) => out.extend_from_slice(&[OK, u8::from(keep)]),
        Err((kind, message)) => write_error(out, kind, message),
    }
}

/// Append the head of a transform's answer (the inputs that failed, by
/// index); the output batch follows it to the end of the answer.
pub fn write_transform_errors<'e>(
    out: &mut Vec<u8>,
    errors: impl ExactSizeIterator<Item = (u32, ErrorKind, &'e str)>,
) {
    out.extend_from_slice(&crate::len_u32(errors.len()).to_le_bytes());
    for (index, kind, message) in errors {
        out.extend_from_slice(&index.to_le_bytes());
        write_error(out, kind, message);
    }
}

/// Append a middleware's answer to a request.
pub fn write_action(out: &mut Vec<u8>, action: Result<(ActionKind, &[u8]), (ErrorKind, &str)>) {
    match action {
        Ok((kind, batch)) => {
            out.extend_from_slice(&[OK, kind as u8]);
            write_bytes(out, batch);
        }
        Err((kind, message)) => write_error(out, kind, message),
    }
}

/// Append a middleware's answer to a reply: the reply to pass on.
pub fn write_reply(out: &mut Vec<u8>, reply: Result<&[u8], (ErrorKind, &str)>) {
    match reply {
        Ok(batch) => {
            out.push(OK);
            write_bytes(out, batch);
        }
        Err((kind, message)) => write_error(out, kind, message),
    }
}

/// Append a balancer's pick.
pub fn write_pick(out: &mut Vec<u8>, pick: Option<u32>) {
    match pick {
        Some(index) => {
            out.push(1);
            out.extend_from_slice(&index.to_le_bytes());
        }
        None => out.push(0),
    }
}

/// Append one endpoint to a balancer's endpoints input.
pub fn write_endpoint(out: &mut Vec<u8>, endpoint: &EndpointView<'_>) {
    out.extend_from_slice(&endpoint.index.to_le_bytes());
    write_bytes(out, endpoint.address.as_bytes());
    out.extend_from_slice(&endpoint.weight.to_le_bytes());
    out.extend_from_slice(&endpoint.in_flight.to_le_bytes());
    out.extend_from_slice(&endpoint.latency_micros.to_le_bytes());
    out.push(u8::from(endpoint.healthy));
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// An error whose kind byte is `tag`, or `None` for the OK tag.
    fn failure(&mut self, tag: u8) -> Result<Option<Failure>, WireError> {
        let kind = match tag {
            0 => ErrorKind::Rejected,
            1 => ErrorKind::Retryable,
            2 => ErrorKind::Failed,
            OK => return Ok(None),
            _ => return Err(self.error("unknown answer tag")),
        };
        Ok(Some(Failure { kind, message: self.str()?.to_owned() }))
    }

    /// One filter decision ([`write_decision`]).
    pub(crate) fn decision(&mut self) -> Result<Result<bool, Failure>, WireError> {
        let tag = self.u8()?;
        Ok(match self.failure(tag)? {
            Some(failure) => Err(failure),
            None => match self.u8()? {
                0 => Ok(false),
                1 => Ok(true),
                _ => return Err(self.error("unknown verdict")),
            },
        })
    }

    fn done(&self) -> Result<(), WireError> {
        match self.pos == self.buf.len() {
            true => Ok(()),
            false => Err(self.error("trailing bytes")),
        }
    }
}

/// A filter's decisions, in order: `Ok(true)` keep, `Ok(false)` drop.
pub fn read_decisions(answer: &[u8]) -> Result<Vec<Result<bool, Failure>>, WireError> {
    let mut reader = Reader::checking(answer);
    let mut decisions = Vec::new();
    while reader.pos < answer.len() {
        decisions.push(reader.decision()?);
    }
    Ok(decisions)
}

/// A transform's failed inputs; `answer` is left holding its output batch.
pub fn read_transform_errors(answer: &mut Vec<u8>) -> Result<Vec<(u32, Failure)>, WireError> {
    let mut reader = Reader::checking(answer);
    let count = reader.u32()?;
    let mut errors = Vec::new();
    for _ in 0..count {
        let index = reader.u32()?;
        let tag = reader.u8()?;
        let failure = reader.failure(tag)?.ok_or_else(|| reader.error("an error without a kind"))?;
        errors.push((index, failure));
    }
    let head = reader.pos;
    answer.drain(..head);
    Ok(errors)
}

/// A middleware's answer to a request.
pub fn read_action(answer: &[u8]) -> Result<Result<(ActionKind, Vec<u8>), Failure>, WireError> {
    let mut reader = Reader::checking(answer);
    let tag = reader.u8()?;
    if let Some(failure) = reader.failure(tag)? {
        reader.done()?;
        return Ok(Err(failure));
    }
    let kind = match reader.u8()? {
        0 => ActionKind::Forward,
        1 => ActionKind::Respond,
        _ => return Err(reader.error("unknown action")),
    };
    let batch = reader.bytes()?.to_vec();
    reader.done()?;
    Ok(Ok((kind, batch)))
}

/// A middleware's answer to a reply.
pub fn read_reply(answer: &[u8]) -> Result<Result<Vec<u8>, Failure>, WireError> {
    let mut reader = Reader::checking(answer);
    let tag = reader.u8()?;
    let reply = match reader.failure(tag)? {
        Some(failure) => Err(failure),
        None => Ok(reader.bytes()?.to_vec()),
    };
    reader.done()?;
    Ok(reply)
}

/// A balancer's pick.
pub fn read_pick(answer: &[u8]) -> Result<Option<u32>, WireError> {
    let mut reader = Reader::checking(answer);
    let pick = match reader.u8()? {
        0 => None,
        1 => Some(reader.u32()?),
        _ => return Err(reader.error("unknown pick tag")),
    };
    reader.done()?;
    Ok(pick)
}

/// The endpoints of a balancer's input, in order.
pub fn read_endpoints(input: &[u8]) -> Result<Vec<EndpointView<'_>>, WireError> {
    let mut reader = Reader::checking(input);
    let mut endpoints = Vec::new();
    while reader.pos < input.len() {
        endpoints.push(EndpointView {
            index: reader.u32()?,
            address: reader.str()?,
            weight: reader.u32()?,
            in_flight: reader.u32()?,
            latency_micros: u64::from_le_bytes(reader.array()?),
            healthy: reader.u8()? != 0,
        });
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(kind: ErrorKind, message: &str) -> Failure {
        Failure { kind, message: message.to_owned() }
    }

    #[test]
    fn decisions_round_trip_in_order() {
        let mut answer = Vec::new();
        write_decision(&mut answer, Ok(true));
        write_decision(&mut answer, Err((ErrorKind::Retryable, "later")));
        write_decision(&mut answer, Ok(false));
        let decisions = read_decisions(&answer).unwrap();
        assert_eq!(decisions, [Ok(true), Err(failure(ErrorKind::Retryable, "later")), Ok(false)]);
    }

    #[test]
    fn a_transform_answer_leaves_its_batch_in_place() {
        let mut answer = Vec::new();
        write_transform_errors(&mut answer, [(2, ErrorKind::Rejected, "bad")].into_iter());
        answer.extend_from_slice(b"batch bytes");
        let errors = read_transform_errors(&mut answer).unwrap();
        assert_eq!(errors, [(2, failure(ErrorKind::Rejected, "bad"))]);
        assert_eq!(answer, b"batch bytes");
    }

    #[test]
    fn actions_replies_and_picks_round_trip() {
        let mut answer = Vec::new();
        write_action(&mut answer, Ok((ActionKind::Respond, b"r")));
        assert_eq!(read_action(&answer).unwrap(), Ok((ActionKind::Respond, b"r".to_vec())));
        answer.clear();
        write_reply(&mut answer, Err((ErrorKind::Failed, "no")));
        assert_eq!(read_reply(&answer).unwrap(), Err(failure(ErrorKind::Failed, "no")));
        answer.clear();
        write_pick(&mut answer, Some(7));
        assert_eq!(read_pick(&answer).unwrap(), Some(7));
    }

    #[test]
    fn endpoints_round_trip() {
        let endpoint = EndpointView {
            index: 1,
            address: "10.0.0.7:9000",
            weight: 3,
            in_flight: 4,
            latency_micros: 5,
            healthy: true,
        };
        let mut input = Vec::new();
        write_endpoint(&mut input, &endpoint);
        write_endpoint(&mut input, &EndpointView { healthy: false, ..endpoint });
        let read = read_endpoints(&input).unwrap();
        assert_eq!(read, [endpoint, EndpointView { healthy: false, ..endpoint }]);
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        assert!(read_decisions(&[OK]).is_err());
        assert!(read_decisions(&[9]).is_err());
        assert!(read_pick(&[1, 0]).is_err());
        assert!(read_pick(&[0, 0]).is_err(), "trailing bytes");
        assert!(read_action(&[OK, 5]).is_err());
        assert!(read_transform_errors(&mut vec![1, 0, 0, 0]).is_err());
    }
}
