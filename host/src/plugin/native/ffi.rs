//! Every `unsafe` of the host: opening a native library, reading its
//! symbols, calling them, and the host functions it calls back.
//!
//! The ABI is [`switchyard_wire::native`]'s. A library is never unloaded: a
//! batch still running may be inside it, and Rust `cdylib`s with
//! thread-locals crash when `dlclose`d while a thread that used them lives
//! on. So a [`Library`] is leaked on purpose, which makes every function
//! pointer read from it valid for the rest of the process.

use super::super::bindings::Level;
use super::super::host_calls::{CallCounts, HostCalls};
use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_void};
use std::path::Path;
use std::sync::Mutex;
use switchyard_wire::native::{self as abi, CallFn, Description, HostVtable, Input, Sink};

/// An opened library, kept loaded for the rest of the process.
#[derive(Clone, Copy)]
pub(super) struct Library(&'static libloading::Library);

/// One export of a library, callable for the rest of the process.
#[derive(Clone, Copy)]
pub(super) struct Export(CallFn);

/// What the library's host functions answer: the plugin's [`HostCalls`],
/// shared by every thread that calls into the library.
pub(super) struct HostContext(pub(super) Mutex<HostCalls>);

thread_local! {
    /// What the export running on this thread counted, held for its caller ([`Export::call`]):
    /// the host context is the library's, shared by all its callers, while a call's counts are
    /// its own until its answer is taken.
    static CALL_COUNTS: RefCell<Option<CallCounts>> = const { RefCell::new(None) };
}

impl Library {
    /// Open the library at `path` (running its initialisers: trusted code
    /// only) and leak it.
    pub(super) fn open(path: &Path) -> Result<Library, String> {
        // SAFETY: loading runs the library's initialisers. The operator
        // vouched for the plugin directory's native code by setting
        // `host.native_plugins`; it is trusted as the host's own code is.
        let library = unsafe { libloading::Library::new(path) }.map_err(|err| err.to_string())?;
        Ok(Library(Box::leak(Box::new(library))))
    }

    /// Read the symbol `name` as a `T` (a function pointer type).
    ///
    /// # Safety
    /// `T` must be the type the ABI gives the symbol `name`.
    unsafe fn symbol<T: Copy>(&self, name: &[u8]) -> Option<T> {
        // SAFETY: the caller names the symbol's true type; the pointer stays
        // valid since the library is never unloaded.
        unsafe { self.0.get::<T>(name) }.ok().map(|symbol| *symbol)
    }

    /// The library's ABI version, or `None` when it has no such symbol.
    pub(super) fn abi_version(&self) -> Option<u32> {
        // SAFETY: the ABI fixes this symbol's type forever.
        let abi = unsafe { self.symbol::<extern "C" fn() -> u32>(abi::symbol::ABI) }?;
        Some(abi())
    }

    /// The SDK version that built the library, as it says.
    pub(super) fn sdk_version(&self) -> String {
        // SAFETY: the ABI fixes this symbol's type forever.
        let version = unsafe { self.symbol::<extern "C" fn() -> *const c_char>(abi::symbol::SDK_VERSION) };
        match version.map(|version| version()) {
            // SAFETY: the ABI promises a static NUL-terminated string.
            Some(text) if !text.is_null() => unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned(),
            _ => "unknown".to_owned(),
        }
    }

    /// The library's description; call only once its ABI version matched.
    pub(super) fn describe(&self) -> Option<Description> {
        // SAFETY: the ABI version matched, so the symbol has the ABI's type.
        let describe = unsafe { self.symbol::<extern "C" fn() -> Description>(abi::symbol::DESCRIBE) }?;
        Some(describe())
    }

    /// Give the library its host functions, answered by `host`; call once,
    /// before any export. False when the library has no `init`.
    pub(super) fn init(&self, host: &'static HostContext) -> bool {
        // SAFETY: the ABI version matched, so the symbol has the ABI's type.
        let init = unsafe { self.symbol::<unsafe extern "C" fn(*const HostVtable)>(abi::symbol::INIT) };
        let Some(init) = init else { return false };
        let vtable = HostVtable {
            context: std::ptr::from_ref(host).cast(),
            log: host_log,
            config: host_config,
            now_millis: host_now_millis,
            count: host_count,
        };
        // SAFETY: the vtable's functions accept any thread, and its context
        // is `'static`; the library copies the vtable during the call.
        unsafe { init(&vtable) };
        true
    }

    /// The export `name`, if the library has it.
    pub(super) fn export(&self, name: &[u8]) -> Option<Export> {
        // SAFETY: the ABI version matched, so every export has type `CallFn`.
        unsafe { self.symbol::<CallFn>(name) }.map(Export)
    }
}

impl Export {
    /// Call the export with `inputs`: its answer, or the text of the panic
    /// it caught. What it counts meanwhile is added to `counts`.
    pub(super) fn call(&self, given: &[&[u8]], counts: &mut CallCounts) -> Result<Vec<u8>, String> {
        let inputs: [Input; 2] = [0, 1].map(|at| Input::of(given.get(at).copied().unwrap_or_default()));
        let count = given.len().min(inputs.len());
        let mut answer = Vec::new();
        let sink = Sink { target: (&raw mut answer).cast(), write: append };
        CALL_COUNTS.set(Some(std::mem::take(counts)));
        // SAFETY: the inputs borrow live slices and the sink a live `Vec` for
        // the call, as `CallFn` requires; the plugin catches its panics.
        let status = unsafe { (self.0)(inputs.as_ptr(), count, &sink) };
        *counts = CALL_COUNTS.take().unwrap_or_default();
        match status {
            abi::ANSWERED => Ok(answer),
            _ => Err(String::from_utf8_lossy(&answer).into_owned()),
        }
    }
}

/// Borrow `len` bytes at `ptr` as text (lossily: trusted code, not hostile).
///
/// # Safety
/// `ptr` points to `len` readable bytes that outlive the returned string.
unsafe fn text<'a>(ptr: *const u8, len: usize) -> std::borrow::Cow<'a, str> {
    // SAFETY: the caller guarantees `len` readable bytes at `ptr`.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The host context behind a vtable's `context`.
///
/// # Safety
/// `context` is the pointer [`Library::init`] gave the library.
unsafe fn context<'a>(context: *const c_void) -> &'a HostContext {
    // SAFETY: `init` passes a `&'static HostContext`.
    unsafe { &*context.cast::<HostContext>() }
}

fn calls(context: &HostContext) -> std::sync::MutexGuard<'_, HostCalls> {
    context.0.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A [`Sink`] appending to a host `Vec<u8>`.
unsafe extern "C" fn append(target: *mut c_void, ptr: *const u8, len: usize) {
    // SAFETY: `target` is the `Vec<u8>` `Export::call` passed; the plugin
    // writes `len` readable bytes at `ptr`.
    unsafe { (*target.cast::<Vec<u8>>()).extend_from_slice(std::slice::from_raw_parts(ptr, len)) }
}

unsafe extern "C" fn host_log(host: *const c_void, level: u32, ptr: *const u8, len: usize) {
    let level = match level {
        0 => Level::Trace,
        1 => Level::Debug,
        2 => Level::Info,
        3 => Level::Warn,
        _ => Level::Error,
    };
    // SAFETY: the library passes back the context it was given, and its text.
    let (host, message) = unsafe { (context(host), text(ptr, len)) };
    calls(host).log(level, &message);
}

unsafe extern "C" fn host_config(host: *const c_void, ptr: *const u8, len: usize, out: *const Sink) -> bool {
    // SAFETY: the library passes back its context, its key and a live sink.
    let (host, key, out) = unsafe { (context(host), text(ptr, len), *out) };
    let Some(value) = calls(host).config(&key) else { return false };
    // SAFETY: the sink appends `len` bytes read at `ptr` to the plugin's buffer.
    unsafe { (out.write)(out.target, value.as_ptr(), value.len()) };
    true
}

unsafe extern "C" fn host_now_millis(_: *const c_void) -> u64 {
    HostCalls::now_millis()
}

unsafe extern "C" fn host_count(host: *const c_void, ptr: *const u8, len: usize, delta: u64) {
    // SAFETY: the library passes back the context it was given, and a name.
    let (host, name) = unsafe { (context(host), text(ptr, len)) };
    // Held for the call running on this thread; counted at once when none is (a thread of the
    // library's own).
    let held = CALL_COUNTS.with_borrow_mut(|held| held.as_mut().map(|held| held.add(&name, delta)));
    if held.is_none() {
        calls(host).count(&name, delta);
    }
}
