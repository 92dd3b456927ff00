//! The call deadline holds while a plugin waits inside WASI. Epoch
//! interruption stops wasm code only; a plugin asleep or waiting on a socket
//! waits in the host, in `wasi:io/poll`. These imports are replaced by ones
//! that wait at most until the call's deadline, then end the call with a
//! trap that is reported as a timeout, like a spin.

use super::sandbox::StoreState;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

/// The `wasi:io/poll` interface as the linker names it.
const POLL: &str = "wasi:io/poll@0.2.12";

/// Shadow `poll` and `pollable.block` with deadline-bound versions.
pub(crate) fn bound_blocking_calls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, StoreState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let ready = until(deadline, state.table().poll(pollables));
            state.settle_wait(ready).map(|ready| (ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, StoreState>, (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let ready = until(deadline, state.table().block(pollable));
            state.settle_wait(ready)
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Run `wait` on the runtime WASI uses, until `deadline` at the latest
/// (`None`: the deadline passed first).
fn until<F: std::future::Future>(deadline: Option<tokio::time::Instant>, wait: F) -> Option<F::Output> {
    wasmtime_wasi::runtime::in_tokio(async move {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, wait).await.ok(),
            None => Some(wait.await),
        }
    })
}

impl StoreState {
    /// What a wait that ended as `ended` returns to the guest: its result, or
    /// a trap when the deadline passed (marked, so it counts as a timeout).
    fn settle_wait<T>(&mut self, ended: Option<wasmtime::Result<T>>) -> wasmtime::Result<T> {
        match ended {
            Some(result) => result,
            None => {
                self.waited_past_deadline = true;
                Err(wasmtime::Error::msg("the call's deadline passed while the plugin waited in WASI"))
            }
        }
    }
}
