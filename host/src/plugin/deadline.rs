//! The call deadline holds while a plugin waits inside WASI. Epoch
//! interruption stops wasm code only; a plugin asleep, waiting on a socket
//! or blocked reading or writing a stream waits in the host, in
//! `wasi:io/poll` or `wasi:io/streams`. Every import of those two that can
//! wait is replaced by one that waits at most until the call's deadline,
//! then ends the call with a trap that is reported as a timeout, like a spin.

use super::sandbox::StoreState;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    Host as _, HostInputStream, HostOutputStream, StreamError,
};

/// The `wasi:io/poll` interface as the linker names it.
const POLL: &str = "wasi:io/poll@0.2.12";

/// The `wasi:io/streams` interface as the linker names it.
const STREAMS: &str = "wasi:io/streams@0.2.12";

/// Shadow every `wasi:io` import that waits with a deadline-bound version:
/// `poll` and `pollable.block`; the blocking reads, skips, writes, flushes
/// and splices of streams; and the drop of a stream, which waits for the
/// stream's background work (a TCP output stream, for its last write to go
/// out, however long the peer takes to read it).
pub(crate) fn bound_blocking_calls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    bound_polls(linker)?;
    bound_streams(linker)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Shadow `poll` and `pollable.block`.
fn bound_polls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
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
    )
}

/// The arguments of a stream's blocking read or skip, and of its blocking
/// write of zeroes: the stream and a length.
type StreamAndLength<S> = (Resource<S>, u64);

/// Shadow the stream calls that wait (wasmtime-wasi's own versions wait
/// without bound on the runtime WASI uses).
fn bound_streams(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut streams = linker.instance(STREAMS)?;
    streams.func_wrap(
        "[method]input-stream.blocking-read",
        |mut store: StoreContextMut<'_, StoreState>, (stream, len): StreamAndLength<DynInputStream>| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let read = until(deadline, state.table().blocking_read(stream, len));
            state.settle_stream(read).map(|read| (read,))
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-skip",
        |mut store: StoreContextMut<'_, StoreState>, (stream, len): StreamAndLength<DynInputStream>| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let skipped = until(deadline, state.table().blocking_skip(stream, len));
            state.settle_stream(skipped).map(|skipped| (skipped,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut store: StoreContextMut<'_, StoreState>,
         (stream, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let written = until(deadline, state.table().blocking_write_and_flush(stream, bytes));
            state.settle_stream(written).map(|written| (written,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut store: StoreContextMut<'_, StoreState>, (stream, len): StreamAndLength<DynOutputStream>| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let written = until(deadline, state.table().blocking_write_zeroes_and_flush(stream, len));
            state.settle_stream(written).map(|written| (written,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut store: StoreContextMut<'_, StoreState>, (stream,): (Resource<DynOutputStream>,)| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let flushed = until(deadline, state.table().blocking_flush(stream));
            state.settle_stream(flushed).map(|flushed| (flushed,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-splice",
        |mut store: StoreContextMut<'_, StoreState>,
         (to, from, len): (Resource<DynOutputStream>, Resource<DynInputStream>, u64)| {
            let state = store.data_mut();
            let deadline = state.call_deadline;
            let spliced = until(deadline, state.table().blocking_splice(to, from, len));
            state.settle_stream(spliced).map(|spliced| (spliced,))
        },
    )?;
    streams.resource("input-stream", ResourceType::host::<DynInputStream>(), |mut store, stream| {
        let state = store.data_mut();
        let deadline = state.call_deadline;
        let dropped = until(deadline, HostInputStream::drop(state.table(), Resource::new_own(stream)));
        state.settle_wait(dropped)
    })?;
    streams.resource("output-stream", ResourceType::host::<DynOutputStream>(), |mut store, stream| {
        let state = store.data_mut();
        let deadline = state.call_deadline;
        let dropped = until(deadline, HostOutputStream::drop(state.table(), Resource::new_own(stream)));
        state.settle_wait(dropped)
    })
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

    /// What a stream call that ended as `ended` returns to the guest: as
    /// [`settle_wait`](Self::settle_wait), its stream error in the form the
    /// guest receives (an `error` resource, or a trap the stream asked for).
    fn settle_stream<T>(
        &mut self,
        ended: Option<StreamResult<T>>,
    ) -> wasmtime::Result<Result<T, StreamError>> {
        match self.settle_wait(ended.map(Ok))? {
            Ok(value) => Ok(Ok(value)),
            Err(err) => self.table().convert_stream_error(err).map(Err),
        }
    }
}
