//! Hot reload: plugin files and configurations change while the host runs,
//! without a lock on the message path and without losing a message.
//!
//! A change is compiled on a blocking thread (from the on-disk compile cache
//! when warm), checked against its world, instantiated once, then swapped in
//! atomically. Batches already running keep the versions they pinned; a bad
//! file is rejected with its reason and the previous version keeps serving.

mod config_change;
mod events;
mod links;
mod open_writes;
mod plugin_sync;
mod prepared;
mod refusal;
mod reloader;
mod source;
mod watch;

pub use config_change::{ConfigChange, Replacement};
pub use events::{EventCounts, HostEvent};
pub use source::{ConfiguredPlugin, configured_settings, load_as_configured};
pub use watch::SETTLE;

pub(crate) use events::Events;
pub(crate) use reloader::{Reloader, Retry};
pub(crate) use watch::{WatchGuard, catch_up, watch};
