//! Native builds: the C-ABI entry points a plugin exports when built as a
//! `cdylib` for the host's own target rather than for `wasm32-wasip2`.
//!
//! The `export_*!` macros emit them under `cfg(not(target_family = "wasm"))`,
//! so one source builds both ways: `cargo build --target wasm32-wasip2` makes
//! the component, plain `cargo build` the shared library (`.so`, `.dylib`,
//! `.dll`). The ABI itself (symbols, answer encodings, the host's vtable) is
//! specified in [`switchyard_wire::native`].
//!
//! A native plugin is trusted code: the host loads it only when
//! `[host] native_plugins = true`, and it runs in the host's process with no
//! sandbox, memory cap or deadline. Build it with `panic = "unwind"` (the
//! default of cargo's `dev` and `release` profiles): every call catches panics
//! at the boundary and the host treats one as a fault of the plugin; a library
//! built with `panic = "abort"` is refused, since its panic would end the host.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use switchyard_wire::native::{self as abi, ActionKind, EndpointView};

use crate::bindings::types::Endpoint;
use crate::host::FlushCounts;
use crate::{Balancer, Error, Filter, Middleware, Transform};

pub use switchyard_wire::native::{ABI_VERSION, CallFn, Description, HostVtable, Input, Sink, kind};

/// The host's functions, set once by [`init`].
struct Host(HostVtable);

// SAFETY: the host promises (ABI contract) that its vtable functions and
// context may be used from any thread for the library's whole life.
unsafe impl Send for Host {}
// SAFETY: as above; the vtable is never mutated after `init`.
unsafe impl Sync for Host {}

static HOST: OnceLock<Host> = OnceLock::new();

/// The SDK version that built this library, NUL-terminated.
pub fn sdk_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// This library's description for `kind` (one of [`abi::kind`]).
pub fn describe(kind: u32) -> Description {
    Description { kind, panic_unwinds: cfg!(panic = "unwind") }
}

/// Keep the host's vtable for the library's life.
///
/// # Safety
/// `host` points to a valid [`HostVtable`] whose functions and context stay
/// valid for the library's life and may be called from any thread.
pub unsafe fn init(host: *const HostVtable) {
    // SAFETY: the caller guarantees `host` is valid to read.
    let vtable = unsafe { *host };
    let _ = HOST.set(Host(vtable));
}

/// Borrow the bytes of `input` for the call.
///
/// # Safety
/// `input` describes `len` readable bytes that outlive the call.
unsafe fn bytes<'a>(input: &Input) -> &'a [u8] {
    // SAFETY: the caller guarantees the bytes are readable for the call.
    unsafe { std::slice::from_raw_parts(input.ptr, input.len) }
}

/// Run one export: borrow its inputs, run `body` with panics caught, and
/// write the answer (or the panic's text) to `out`.
///
/// # Safety
/// `inputs` points to `count` valid [`Input`]s and `out` to a valid [`Sink`],
/// as the ABI's [`CallFn`] promises.
unsafe fn call(
    inputs: *const Input,
    count: usize,
    out: *const Sink,
    body: impl FnOnce(&[&[u8]], &mut Vec<u8>),
) -> u32 {
    // SAFETY: the caller passes `count` inputs and a sink valid for the call.
    let (inputs, sink) = unsafe { (std::slice::from_raw_parts(inputs, count), *out) };
    let write = |bytes: &[u8]| {
        // SAFETY: the sink's function appends to the caller's buffer and
        // only reads `len` bytes at `ptr`.
        unsafe { (sink.write)(sink.target, bytes.as_ptr(), bytes.len()) }
    };
    let answered = catch_unwind(AssertUnwindSafe(|| {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        let mut borrowed: [&[u8]; 2] = [&[], &[]];
        for (slot, input) in borrowed.iter_mut().zip(inputs) {
            // SAFETY: each input is valid for the call (see above).
            *slot = unsafe { bytes(input) };
        }
        let mut answer = Vec::new();
        body(&borrowed[..inputs.len().min(2)], &mut answer);
        answer
    }));
    match answered {
        Ok(answer) => {
            write(&answer);
            abi::ANSWERED
        }
        Err(panic) => {
            let text =
                panic.downcast_ref::<&str>().copied().or(panic.downcast_ref::<String>().map(String::as_str));
            write(text.unwrap_or("a panic without a message").as_bytes());
            abi::PANICKED
        }
    }
}

/// The filter export.
///
/// # Safety
/// As [`CallFn`]: one input, the heads-only batch.
pub unsafe fn filter<T: Filter>(inputs: *const Input, count: usize, out: *const Sink) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        call(inputs, count, out, |inputs, answer| {
            crate::filter::decide::<T>(inputs.first().copied().unwrap_or_default(), |decision| {
                abi::write_decision(answer, crate::filter::wire_decision(&decision));
            });
        })
    }
}

/// The transform export.
///
/// # Safety
/// As [`CallFn`]: one input, the batch.
pub unsafe fn transform<T: Transform>(inputs: *const Input, count: usize, out: *const Sink) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        call(inputs, count, out, |inputs, answer| {
            let transformed = crate::transform::run::<T>(inputs.first().copied().unwrap_or_default());
            let errors = transformed.errors.iter().map(|(index, error)| {
                let (kind, message) = Error::parts(error);
                (*index, kind, message)
            });
            abi::write_transform_errors(answer, errors);
            answer.extend_from_slice(&transformed.messages);
        })
    }
}

/// The middleware's request export.
///
/// # Safety
/// As [`CallFn`]: one input, the request.
pub unsafe fn on_request<T: Middleware>(inputs: *const Input, count: usize, out: *const Sink) -> u32 {
    use crate::bindings::middleware::exports::switchyard::plugin::middleware::{Action, Guest};
    // SAFETY: forwarded from the caller.
    unsafe {
        call(inputs, count, out, |inputs, answer| {
            let request = inputs.first().copied().unwrap_or_default().to_vec();
            let action = crate::middleware::MiddlewareExport::<T>::on_request(request);
            let action = match &action {
                Ok(Action::Forward(batch)) => Ok((ActionKind::Forward, batch.as_slice())),
                Ok(Action::Respond(batch)) => Ok((ActionKind::Respond, batch.as_slice())),
                Err(error) => Err(Error::parts(error)),
            };
            abi::write_action(answer, action);
        })
    }
}

/// The middleware's reply export.
///
/// # Safety
/// As [`CallFn`]: two inputs, the request and the reply.
pub unsafe fn on_reply<T: Middleware>(inputs: *const Input, count: usize, out: *const Sink) -> u32 {
    use crate::bindings::middleware::exports::switchyard::plugin::middleware::Guest;
    // SAFETY: forwarded from the caller.
    unsafe {
        call(inputs, count, out, |inputs, answer| {
            let [request, reply] = [0, 1].map(|at| inputs.get(at).copied().unwrap_or_default().to_vec());
            let reply = crate::middleware::MiddlewareExport::<T>::on_reply(request, reply);
            abi::write_reply(answer, reply.as_deref().map_err(Error::parts));
        })
    }
}

/// The balancer export.
///
/// # Safety
/// As [`CallFn`]: two inputs, the message head and the endpoints.
pub unsafe fn pick<T: Balancer>(inputs: *const Input, count: usize, out: *const Sink) -> u32 {
    use crate::bindings::balancer::exports::switchyard::plugin::balancer::Guest;
    // SAFETY: forwarded from the caller.
    unsafe {
        call(inputs, count, out, |inputs, answer| {
            let [head, endpoints] = [0, 1].map(|at| inputs.get(at).copied().unwrap_or_default());
            // Endpoints the SDK cannot read pick nothing, as a bad head does.
            let endpoints = abi::read_endpoints(endpoints).unwrap_or_default();
            let endpoints = endpoints.iter().map(endpoint).collect();
            abi::write_pick(answer, crate::balancer::BalancerExport::<T>::pick(head.to_vec(), endpoints));
        })
    }
}

fn endpoint(view: &EndpointView<'_>) -> Endpoint {
    Endpoint {
        index: view.index,
        address: view.address.to_owned(),
        weight: view.weight,
        in_flight: view.in_flight,
        latency_micros: view.latency_micros,
        healthy: view.healthy,
    }
}

/// The `host` functions of a native build, with the signatures of the WIT
/// imports they replace; before [`init`] (no host loaded the library: unit
/// tests) they reach the test double of [`crate::testing`].
pub(crate) mod host {
    use super::*;
    use crate::Level;
    use crate::testing::host as double;

    fn vtable() -> Option<&'static HostVtable> {
        HOST.get().map(|host| &host.0)
    }

    pub(crate) fn log(level: Level, message: &str) {
        let Some(host) = vtable() else { return double::log(level, message) };
        // SAFETY: the vtable is valid for the library's life (see `init`).
        unsafe { (host.log)(host.context, level as u32, message.as_ptr(), message.len()) }
    }

    pub(crate) fn config(key: &str) -> Option<String> {
        let Some(host) = vtable() else { return double::config(key) };
        let mut value = Vec::new();
        let sink = Sink { target: (&raw mut value).cast(), write: append };
        // SAFETY: the vtable is valid; `sink` outlives the call.
        let found = unsafe { (host.config)(host.context, key.as_ptr(), key.len(), &sink) };
        found.then(|| String::from_utf8_lossy(&value).into_owned())
    }

    pub(crate) fn now_millis() -> u64 {
        let Some(host) = vtable() else { return double::now_millis() };
        // SAFETY: the vtable is valid for the library's life.
        unsafe { (host.now_millis)(host.context) }
    }

    pub(crate) fn count(name: &str, delta: u64) {
        let Some(host) = vtable() else { return double::count(name, delta) };
        // SAFETY: the vtable is valid for the library's life.
        unsafe { (host.count)(host.context, name.as_ptr(), name.len(), delta) }
    }

    /// A [`Sink`] writing into a `Vec<u8>` of this library.
    unsafe extern "C" fn append(target: *mut c_void, ptr: *const u8, len: usize) {
        // SAFETY: `target` is the `Vec<u8>` `config` passed, and the host
        // writes `len` readable bytes at `ptr`.
        unsafe { (*target.cast::<Vec<u8>>()).extend_from_slice(std::slice::from_raw_parts(ptr, len)) }
    }
}

/// Emits a native build's entry points: the ABI version, the SDK version,
/// the description, `init`, and the kind's calls.
#[doc(hidden)]
#[macro_export]
macro_rules! __native_entry_points {
    ($plugin:ty, $kind:ident, $($symbol:ident => $glue:ident),+) => {
        const _: () = {
            use $crate::__private::native as glue;
            #[unsafe(no_mangle)]
            extern "C" fn switchyard_native_abi() -> u32 {
                glue::ABI_VERSION
            }
            #[unsafe(no_mangle)]
            extern "C" fn switchyard_native_sdk_version() -> *const ::core::ffi::c_char {
                glue::sdk_version()
            }
            #[unsafe(no_mangle)]
            extern "C" fn switchyard_native_describe() -> glue::Description {
                glue::describe(glue::kind::$kind)
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn switchyard_native_init(host: *const glue::HostVtable) {
                // SAFETY: the host keeps the ABI's promise (see `switchyard_wire::native`).
                unsafe { glue::init(host) }
            }
            $(
                #[unsafe(no_mangle)]
                unsafe extern "C" fn $symbol(
                    inputs: *const glue::Input,
                    count: usize,
                    out: *const glue::Sink,
                ) -> u32 {
                    // SAFETY: the host keeps the ABI's promise (see `switchyard_wire::native`).
                    unsafe { glue::$glue::<$plugin>(inputs, count, out) }
                }
            )+
        };
    };
}
