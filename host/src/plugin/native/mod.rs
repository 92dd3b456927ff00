//! Native plugins: shared libraries (`.so`, `.dylib`, `.dll`) built from the
//! same SDK source as components, loaded with libloading as trusted code.
//!
//! A native plugin runs in the host's process: no sandbox, no memory cap, no
//! deadline, no WASI grants (its `[[plugin]]` config keys still apply). The
//! host loads one only when `host.native_plugins` is set, from a private copy
//! under a unique name (so that a swap never touches a library in use and a
//! new version never shares an old one's statics), checks its ABI version
//! before anything else, and never unloads it (see [`ffi`]).

#[expect(unsafe_code, reason = "opening and calling a native library; the host's only unsafe module")]
mod ffi;

use super::bindings::EndpointRecord;
use super::compiled::PluginKind;
use super::error::{NativeRefusal, PluginError, PluginFault};
use super::host_calls::{CallCounts, HostCalls};
use super::instance::{MiddlewareAction, Transformed};
use super::sandbox::PluginSettings;
use crate::bounded_text::error_text;
use crate::message::Verdict;
use std::sync::{Arc, Mutex};
use switchyard_wire::WireError;
use switchyard_wire::native::{self as abi, ActionKind, EndpointView, ErrorKind, Failure};

/// A loaded native plugin: its kind and its exports.
#[derive(Clone, Copy)]
pub(crate) struct NativeLibrary {
    kind: PluginKind,
    /// The kind's export; for a middleware, `on_request`.
    first: ffi::Export,
    /// A middleware's `on_reply`.
    second: Option<ffi::Export>,
}

/// Load `bytes` as the native plugin with `settings`: copied to a private
/// temporary file, opened, checked and given its host functions.
pub(crate) fn load(bytes: &[u8], settings: &Arc<PluginSettings>) -> Result<NativeLibrary, NativeRefusal> {
    let config = &settings.config;
    if !config.allow_net.is_empty() || !config.env.is_empty() || !config.dirs.is_empty() {
        tracing::warn!(plugin = config.name, "allow_net, env and dirs do not apply to a native plugin");
    }
    whole_library(bytes).map_err(NativeRefusal::Unloadable)?;
    let library = open_copy(&config.name, bytes).map_err(NativeRefusal::Unloadable)?;
    let found = library.abi_version().ok_or(NativeRefusal::NotAPlugin)?;
    if found != abi::ABI_VERSION {
        let sdk = library.sdk_version();
        return Err(NativeRefusal::AbiMismatch { found, sdk, expected: abi::ABI_VERSION });
    }
    let missing = |what: &str| NativeRefusal::Kind(format!("it exports no `{what}`"));
    let description = library.describe().ok_or_else(|| missing("switchyard_native_describe"))?;
    if !description.panic_unwinds {
        return Err(NativeRefusal::AbortsOnPanic);
    }
    let (kind, exports): (_, &[&[u8]]) = match description.kind {
        abi::kind::FILTER => (PluginKind::Filter, &[abi::symbol::FILTER]),
        abi::kind::TRANSFORM => (PluginKind::Transform, &[abi::symbol::TRANSFORM]),
        abi::kind::MIDDLEWARE => (PluginKind::Middleware, &[abi::symbol::ON_REQUEST, abi::symbol::ON_REPLY]),
        abi::kind::BALANCER => (PluginKind::Balancer, &[abi::symbol::PICK]),
        other => {
            return Err(NativeRefusal::Kind(format!("it names kind {other}, which no native plugin can be")));
        }
    };
    let export = |symbol: &[u8]| {
        let name = String::from_utf8_lossy(symbol.strip_suffix(b"\0").unwrap_or(symbol)).into_owned();
        library.export(symbol).ok_or_else(|| missing(&name))
    };
    let first = export(exports[0])?;
    let second = exports.get(1).map(|symbol| export(symbol)).transpose()?;
    // The library keeps its host context as long as it lives: for ever.
    let host = Box::leak(Box::new(ffi::HostContext(Mutex::new(HostCalls::new(settings.clone())))));
    if !library.init(host) {
        return Err(missing("switchyard_native_init"));
    }
    Ok(NativeLibrary { kind, first, second })
}

/// Refuse an ELF library cut short (half-copied, truncated): the loader maps its segments from the
/// file, and touching a page past its end kills the process with SIGBUS. Other formats are left to
/// the platform's loader.
fn whole_library(bytes: &[u8]) -> Result<(), String> {
    use object::read::elf::{FileHeader, ProgramHeader};
    fn check<Elf: FileHeader<Endian = object::Endianness>>(bytes: &[u8]) -> Result<(), String> {
        let header = Elf::parse(bytes).map_err(|error| error.to_string())?;
        let endian = header.endian().map_err(|error| error.to_string())?;
        for segment in header.program_headers(endian, bytes).map_err(|error| error.to_string())? {
            segment.data(endian, bytes).map_err(|()| "a segment reaches past its end".to_owned())?;
        }
        header.sections(endian, bytes).map_err(|error| error.to_string())?;
        Ok(())
    }
    let checked = match object::FileKind::parse(bytes) {
        Ok(object::FileKind::Elf64) => check::<object::elf::FileHeader64<object::Endianness>>(bytes),
        Ok(object::FileKind::Elf32) => check::<object::elf::FileHeader32<object::Endianness>>(bytes),
        _ => return Ok(()),
    };
    checked.map_err(|problem| {
        format!("not a whole library ({} bytes: {problem}): cut short, or still being copied", bytes.len())
    })
}

/// Open a copy of `bytes` written under a fresh private directory. The copy
/// is deleted once open (the loader keeps it mapped; where the platform
/// refuses, as Windows does, it stays in the temporary directory).
fn open_copy(name: &str, bytes: &[u8]) -> Result<ffi::Library, String> {
    let dir =
        tempfile::Builder::new().prefix("switchyard-native-").tempdir().map_err(|err| err.to_string())?;
    let path = dir.path().join(format!("{name}.{}", std::env::consts::DLL_EXTENSION));
    std::fs::write(&path, bytes)
        .map_err(|err| format!("cannot write a private copy {}: {err}", path.display()))?;
    ffi::Library::open(&path)
}

impl NativeLibrary {
    /// Which kind the library exports.
    pub(crate) fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Call the export (`second` for a middleware's `on_reply`) with `inputs`, holding what it
    /// counts in `counts` (in place of what an earlier call held, never taken). A panic's text
    /// is kept as a plugin's error text is ([`error_text`]), as a component's trap keeps the
    /// line it logged.
    fn call(&self, second: bool, inputs: &[&[u8]], counts: &mut CallCounts) -> Result<Vec<u8>, PluginFault> {
        let export = if second { self.second } else { Some(self.first) };
        let export = export.ok_or_else(|| PluginFault::Unusable("the library lacks the export".into()))?;
        counts.forget();
        let answer = export.call(inputs, counts);
        answer.map_err(|panic| PluginFault::Trapped(format!("panicked: {}", error_text(&panic))))
    }

    /// Run a filter over a heads-only batch: one decision per message.
    pub(crate) fn filter(
        &self,
        batch: &[u8],
        counts: &mut CallCounts,
    ) -> Result<Vec<Result<Verdict, PluginError>>, PluginFault> {
        let answer = self.call(false, &[batch], counts)?;
        let decisions = abi::read_decisions(&answer).map_err(malformed)?;
        Ok(decisions.into_iter().map(decision).collect())
    }

    /// Run a transform over a batch of full messages.
    pub(crate) fn transform(
        &self,
        batch: &[u8],
        counts: &mut CallCounts,
    ) -> Result<Transformed, PluginFault> {
        let mut messages = self.call(false, &[batch], counts)?;
        let errors = abi::read_transform_errors(&mut messages).map_err(malformed)?;
        let errors = errors.into_iter().map(|(index, failure)| (index, plugin_error(failure))).collect();
        Ok(Transformed { messages, errors })
    }

    /// Run a middleware on a request (a one-message batch).
    pub(crate) fn on_request(
        &self,
        request: &[u8],
        counts: &mut CallCounts,
    ) -> Result<Result<MiddlewareAction, PluginError>, PluginFault> {
        let answer = self.call(false, &[request], counts)?;
        let action = abi::read_action(&answer).map_err(malformed)?;
        Ok(action.map_err(plugin_error).map(|(kind, batch)| match kind {
            ActionKind::Forward => MiddlewareAction::Forward(batch),
            ActionKind::Respond => MiddlewareAction::Respond(batch),
        }))
    }

    /// Run a middleware on a reply; the reply to pass on.
    pub(crate) fn on_reply(
        &self,
        request: &[u8],
        reply: &[u8],
        counts: &mut CallCounts,
    ) -> Result<Result<Vec<u8>, PluginError>, PluginFault> {
        let answer = self.call(true, &[request, reply], counts)?;
        Ok(abi::read_reply(&answer).map_err(malformed)?.map_err(plugin_error))
    }

    /// Ask a balancer to pick one of `endpoints` for `head`.
    pub(crate) fn pick(
        &self,
        head: &[u8],
        endpoints: &[EndpointRecord],
        counts: &mut CallCounts,
    ) -> Result<Option<u32>, PluginFault> {
        let mut encoded = Vec::new();
        for endpoint in endpoints {
            let view = EndpointView {
                index: endpoint.index,
                address: &endpoint.address,
                weight: endpoint.weight,
                in_flight: endpoint.in_flight,
                latency_micros: endpoint.latency_micros,
                healthy: endpoint.healthy,
            };
            abi::write_endpoint(&mut encoded, &view);
        }
        let answer = self.call(false, &[head, &encoded], counts)?;
        abi::read_pick(&answer).map_err(malformed)
    }
}

/// An answer the host could not read: what was wrong, and where.
pub(super) fn malformed(error: WireError) -> PluginFault {
    PluginFault::Malformed(format!("{} at byte {}", error.problem, error.offset))
}

/// A filter's decision as the answer encodings carry it: `Ok(true)` keeps the message.
pub(super) fn decision(decision: Result<bool, Failure>) -> Result<Verdict, PluginError> {
    match decision {
        Ok(true) => Ok(Verdict::Keep),
        Ok(false) => Ok(Verdict::Drop),
        Err(failure) => Err(plugin_error(failure)),
    }
}

fn plugin_error(failure: Failure) -> PluginError {
    let reason = failure.message;
    let error = match failure.kind {
        ErrorKind::Rejected => PluginError::Rejected(reason),
        ErrorKind::Retryable => PluginError::Retryable(reason),
        ErrorKind::Failed => PluginError::Failed(reason),
    };
    error.bounded()
}
