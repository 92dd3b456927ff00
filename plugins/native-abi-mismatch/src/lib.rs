//! A native library claiming native plugin ABI 999, as one built against a
//! future SDK would: the host must refuse it, naming both versions, before
//! it calls anything else. Only its two frozen symbols are written by hand;
//! built for `wasm32-wasip2` it is an empty component.

#![cfg(not(target_family = "wasm"))]
#![expect(unsafe_code, reason = "exporting C symbols by hand is what this fixture is for")]

/// The ABI version this library claims.
#[unsafe(no_mangle)]
pub extern "C" fn switchyard_native_abi() -> u32 {
    999
}

/// The SDK version it claims to be built with.
#[unsafe(no_mangle)]
pub extern "C" fn switchyard_native_sdk_version() -> *const std::ffi::c_char {
    c"9.9.9".as_ptr()
}

/// Must never be called: the ABI check comes first.
#[unsafe(no_mangle)]
pub extern "C" fn switchyard_native_describe() -> u64 {
    std::process::abort()
}
