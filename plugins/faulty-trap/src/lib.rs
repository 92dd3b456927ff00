//! A test filter that panics on every call. Plugins are built with
//! `panic = "abort"`, so the host sees a WebAssembly trap. No config keys.

use switchyard_plugin::{Error, Filter, Message, Verdict, export_filter};

struct FaultyTrap;

impl Filter for FaultyTrap {
    fn filter(message: &Message<'_>) -> Result<Verdict, Error> {
        panic!("faulty-trap traps on every message (message {})", message.id);
    }
}

export_filter!(FaultyTrap);
