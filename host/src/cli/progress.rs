//! What `run` and `check` say on standard error while a plugin compiles, so a
//! large component (a Python or JavaScript one is 10–20 MB) does not look hung.

use std::sync::Arc;
use switchyard::plugin::{CompileObserver, CompileProgress};

/// `run` tells of compiles of components from this size up.
pub const LONG_COMPILE_BYTES: usize = 1_000_000;

/// Print `compiling NAME (N MB)…` before and `compiled NAME in X s` after
/// each compile of a component of at least `min_bytes` (cache hits are silent);
/// one that fails is told by the error that follows.
pub fn compile_notices(min_bytes: usize) -> CompileObserver {
    Arc::new(move |progress| match progress {
        CompileProgress::Started { plugin, bytes } if bytes >= min_bytes => {
            super::status::info(format!("compiling {plugin} ({})…", size(bytes)));
        }
        CompileProgress::Finished { plugin, bytes, took, compiled: true } if bytes >= min_bytes => {
            super::status::info(format!("compiled {plugin} in {:.2} s", took.as_secs_f64()));
        }
        _ => {}
    })
}

/// `bytes` for people: MB with one decimal, KB below 1 MB.
fn size(bytes: usize) -> String {
    match bytes {
        0..1_000_000 => format!("{} KB", bytes.div_ceil(1000)),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}
