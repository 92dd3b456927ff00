//! Plugins: WebAssembly components compiled, sandboxed, versioned and called
//! (and trusted native libraries, called the same way).

mod answers;
mod bindings;
mod cache;
mod compiled;
mod deadline;
mod dir_grant;
mod engine;
mod error;
mod format;
mod host_calls;
mod instance;
mod native;
mod net_grant;
mod output_limits;
mod registry;
mod sandbox;
mod socket_cap;
mod ticker;
mod transport;

pub(crate) use answers::read_one;
pub use answers::{check_decisions, check_transformed, read_forward, read_reply};
pub use bindings::EndpointRecord;
pub use cache::CacheOutcome;
pub use compiled::{CompiledPlugin, PluginKind};
pub use engine::{CompileObserver, CompileProgress, EPOCH_TICK, PluginEngine};
pub use error::{EngineError, LoadError, NativeRefusal, PluginError, PluginFault};
pub(crate) use host_calls::MAX_COUNTERS;
pub use instance::{MiddlewareAction, PluginInstance, Transformed};
pub use net_grant::NetGrant;
pub(crate) use output_limits::{check_native_outputs, made_message_size, made_size};
pub use registry::{
    PluginFormat, PluginRegistry, PluginSet, load_bytes, load_file, plugin_files, plugin_name,
};
pub(crate) use registry::{compile_bytes, trial_instantiation};
pub use sandbox::PluginSettings;
pub(crate) use socket_cap::MAX_SOCKETS;
pub use transport::TransportConnection;
