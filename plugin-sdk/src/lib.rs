//! Write Switchyard plugins in Rust.
//!
//! A plugin is a WebAssembly component (built for `wasm32-wasip2`) that
//! implements one kind's trait and exports it with one macro line:
//!
//! | Kind       | Trait          | Export with            | Called per            |
//! |------------|----------------|------------------------|-----------------------|
//! | filter     | [`Filter`]     | [`export_filter!`]     | message (head only)   |
//! | transform  | [`Transform`]  | [`export_transform!`]  | message               |
//! | middleware | [`Middleware`] | [`export_middleware!`] | request, reply        |
//! | balancer   | [`Balancer`]   | [`export_balancer!`]   | dispatch attempt      |
//! | transport  | [`Transport`]  | [`export_transport!`]  | delivery attempt      |
//!
//! The host hands a plugin whole batches of messages as one byte buffer; the
//! SDK reads each [`Message`] in place and calls your trait once per message:
//!
//! ```text
//! host ── batch: one list<u8> ──► export glue ── decode, no copy ──► Filter::filter(&Message)
//!      ◄── one decision per message ──┘                              (once per message)
//! ```
//!
//! A transport also opens connections (the host pools them per endpoint and
//! closes them) and may probe an endpoint's health; it reaches its
//! destination's endpoints only, through `std::net`.
//!
//! Plugins reach the host through [`log`], [`config`], [`now_millis`] and
//! [`count`]. Failures are [`Error`]s: [`Error::rejected`] (bad message,
//! dead-lettered), [`Error::retryable`] and [`Error::failed`] (plugin fault).
//!
//! # A complete filter plugin
//!
//! `Cargo.toml`: a `cdylib` depending on this crate only, by path (`cargo add
//! --path SWITCHYARD/plugin-sdk`, `SWITCHYARD` being a Switchyard checkout):
//! the crate is in no registry, since it reads the WIT in the checkout's `wit/`.
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! switchyard-plugin = { path = "SWITCHYARD/plugin-sdk" }
//! ```
//!
//! `src/lib.rs`: keep messages whose `x-tenant` header equals the config key
//! `tenant`, counting both outcomes.
//!
//! ```
//! use std::sync::LazyLock;
//!
//! use switchyard_plugin::{Error, Filter, Message, Verdict, config, count, export_filter};
//!
//! struct TenantFilter;
//!
//! /// Read from the host once per instance, on first use.
//! static TENANT: LazyLock<Option<String>> = LazyLock::new(|| config("tenant"));
//!
//! impl Filter for TenantFilter {
//!     fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
//!         let tenant = TENANT.as_deref().ok_or_else(|| Error::failed("config key `tenant` is unset"))?;
//!         if message.header("x-tenant") == Some(tenant) {
//!             count("kept", 1);
//!             Ok(Verdict::Keep)
//!         } else {
//!             count("dropped", 1);
//!             Ok(Verdict::Drop)
//!         }
//!     }
//! }
//!
//! export_filter!(TenantFilter);
//! # fn main() {}
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` writes the component to
//! `target/wasm32-wasip2/release/<crate>.wasm`; drop it into the host's plugin
//! directory and name it in a route (`stages = ["filter:<file stem>"]`).
//!
//! # Native builds
//!
//! The same crate built without `--target` (`cargo build --release`) is a
//! native library (`lib<crate>.so`, `.dylib`, `.dll`): the export macros emit
//! the C ABI of `switchyard_wire::native` for every non-wasm target. A host
//! loads it only when `[host] native_plugins = true`, as trusted code with no
//! sandbox; [`log`], [`config`], [`now_millis`] and [`count`] reach the host
//! as they do from a component, and a panic is caught at the boundary and
//! becomes a fault of the call (build with `panic = "unwind"`, cargo's default
//! outside the `plugin` profile; a library that aborts on panic is refused).

//!
//! # Memory
//!
//! A component built with this crate allocates through the standard
//! allocator behind a cache of freed blocks of up to 512 bytes (at most 64
//! per 16-byte size class): a plugin call allocates and frees the same small
//! sizes over and over, and a cached block costs a few instructions. It is
//! the component's `#[global_allocator]`, so a plugin cannot declare its own.
//!
//! # Unit tests
//!
//! `cargo test` in a plugin crate runs its logic natively, without a host:
//! [`testing`] sets config values, reads back counters and log lines, and
//! builds the [`Message`]s the trait methods take.

#![deny(missing_docs)]

// The generated bindings name the runtime by this absolute path, so that they
// work in plugin crates that do not depend on `wit-bindgen` themselves.
extern crate self as switchyard_plugin;

#[cfg(any(test, all(target_family = "wasm", not(target_feature = "atomics"))))]
mod allocator;
mod bindings;

mod error;
mod format;
mod host;
#[cfg(not(target_family = "wasm"))]
#[expect(unsafe_code, reason = "the C-ABI boundary of native builds reads the host's raw pointers")]
#[doc(hidden)]
pub mod native;
#[cfg(any(test, target_family = "wasm"))]
mod memcmp;
mod message;
mod output;
#[cfg(not(target_family = "wasm"))]
pub mod testing;

mod balancer;
mod filter;
mod middleware;
mod transform;
mod transport;

pub use balancer::{Balancer, Endpoint};
pub use error::{Error, Verdict};
pub use filter::Filter;
pub use host::{Level, config, count, debug, error, info, log, now_millis, trace, warn};
pub use message::{Headers, Message, OwnedMessage};
pub use middleware::{Action, Middleware};
pub use output::{Emit, Output};
pub use transform::Transform;
pub use transport::Transport;

/// Every single-threaded component built with this SDK allocates through the
/// cache of freed small blocks (see `allocator.rs`).
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: allocator::CachingAllocator = allocator::CachingAllocator::new();

/// Used by the `export_*!` macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::balancer::{BalancerExport, is_balancer};
    pub use crate::bindings::{balancer, filter, format, middleware, transform, transport};
    pub use crate::filter::{FilterExport, is_filter};
    pub use crate::format::FormatExport;
    pub use crate::middleware::{MiddlewareExport, is_middleware};
    #[cfg(not(target_family = "wasm"))]
    pub use crate::native;
    pub use crate::transform::{TransformExport, is_transform};
    pub use crate::transport::{TransportExport, is_transport};
    pub use wit_bindgen;
}
