//! The call deadline holds while a plugin waits inside WASI. Epoch
//! interruption stops wasm code only; a plugin asleep, waiting on a socket
//! or blocked reading or writing a stream waits in the host, in
//! `wasi:io/poll` or `wasi:io/streams`, and one that reads, writes, syncs or
//! lists a granted directory's files waits in `wasi:filesystem/types` for a
//! thread of WASI's blocking pool that does the work (an fsync of much data,
//! any call on a hung network or FUSE mount, takes seconds or for good).
//! Every import of those that can wait is replaced by one that waits at most
//! until the call's deadline, then ends the call with a trap that is reported
//! as a timeout, like a spin. Nothing interrupts a blocking thread: its work
//! goes on past the deadline, on data of its own, and its result is dropped;
//! the instance that asked for it is thrown away, as after any timeout.
//! A wait ends as early once the engine [cuts](super::PluginEngine::cut_calls)
//! its calls (the host's stop past its grace period).

use super::sandbox::StoreState;
use std::future::Future;
use std::pin::Pin;
use tokio_util::sync::CancellationToken;
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentNamedList, Lift, Linker, LinkerInstance, Lower, Resource, ResourceType};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, HostDescriptor as _};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, FsResult, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    Host as _, HostInputStream, HostOutputStream, StreamError,
};

/// The `wasi:io/poll` interface as the linker names it.
const POLL: &str = "wasi:io/poll@0.2.12";

/// The `wasi:io/streams` interface as the linker names it.
const STREAMS: &str = "wasi:io/streams@0.2.12";

/// The `wasi:filesystem/types` interface as the linker names it.
pub(super) const FILESYSTEM: &str = "wasi:filesystem/types@0.2.12";

/// Shadow every WASI import that waits with a deadline-bound version:
/// `poll` and `pollable.block`; the blocking reads, skips, writes, flushes
/// and splices of streams; the drop of a stream, which waits for the
/// stream's background work (a TCP output stream, for its last write to go
/// out, however long the peer takes to read it); and every call of a file or
/// directory descriptor that wasmtime-wasi hands to its blocking pool
/// (`open-at` is [`dir_grant`](super::dir_grant)'s, bound there).
pub(crate) fn bound_blocking_calls(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    bound_polls(linker)?;
    bound_streams(linker)?;
    bound_filesystem(linker)?;
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
            let end = state.wait_end();
            let ready = until(end, state.table().poll(pollables));
            state.settle_wait(ready).map(|ready| (ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, StoreState>, (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let end = state.wait_end();
            let ready = until(end, state.table().block(pollable));
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
            let end = state.wait_end();
            let read = until(end, state.table().blocking_read(stream, len));
            state.settle_stream(read).map(|read| (read,))
        },
    )?;
    streams.func_wrap(
        "[method]input-stream.blocking-skip",
        |mut store: StoreContextMut<'_, StoreState>, (stream, len): StreamAndLength<DynInputStream>| {
            let state = store.data_mut();
            let end = state.wait_end();
            let skipped = until(end, state.table().blocking_skip(stream, len));
            state.settle_stream(skipped).map(|skipped| (skipped,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-and-flush",
        |mut store: StoreContextMut<'_, StoreState>,
         (stream, bytes): (Resource<DynOutputStream>, Vec<u8>)| {
            let state = store.data_mut();
            let end = state.wait_end();
            let written = until(end, state.table().blocking_write_and_flush(stream, bytes));
            state.settle_stream(written).map(|written| (written,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-write-zeroes-and-flush",
        |mut store: StoreContextMut<'_, StoreState>, (stream, len): StreamAndLength<DynOutputStream>| {
            let state = store.data_mut();
            let end = state.wait_end();
            let written = until(end, state.table().blocking_write_zeroes_and_flush(stream, len));
            state.settle_stream(written).map(|written| (written,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-flush",
        |mut store: StoreContextMut<'_, StoreState>, (stream,): (Resource<DynOutputStream>,)| {
            let state = store.data_mut();
            let end = state.wait_end();
            let flushed = until(end, state.table().blocking_flush(stream));
            state.settle_stream(flushed).map(|flushed| (flushed,))
        },
    )?;
    streams.func_wrap(
        "[method]output-stream.blocking-splice",
        |mut store: StoreContextMut<'_, StoreState>,
         (to, from, len): (Resource<DynOutputStream>, Resource<DynInputStream>, u64)| {
            let state = store.data_mut();
            let end = state.wait_end();
            let spliced = until(end, state.table().blocking_splice(to, from, len));
            state.settle_stream(spliced).map(|spliced| (spliced,))
        },
    )?;
    streams.resource("input-stream", ResourceType::host::<DynInputStream>(), |mut store, stream| {
        let state = store.data_mut();
        let end = state.wait_end();
        let dropped = until(end, HostInputStream::drop(state.table(), Resource::new_own(stream)));
        state.settle_wait(dropped)
    })?;
    streams.resource("output-stream", ResourceType::host::<DynOutputStream>(), |mut store, stream| {
        let state = store.data_mut();
        let end = state.wait_end();
        let dropped = until(end, HostOutputStream::drop(state.table(), Resource::new_own(stream)));
        state.settle_wait(dropped)
    })
}

/// The work of one filesystem call, started on the instance's filesystem.
type FilesystemWork<'a, T> = Pin<Box<dyn Future<Output = FsResult<T>> + Send + 'a>>;

/// Shadow the descriptor calls that wait for the blocking pool (all but the
/// cheap ones that make streams, and `open-at`): wasmtime-wasi's own versions
/// wait for it without bound.
fn bound_filesystem(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut fs = linker.instance(FILESYSTEM)?;
    bound_filesystem_call(&mut fs, "[method]descriptor.read", |mut fs, (fd, len, offset)| {
        Box::pin(async move { fs.read(fd, len, offset).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.write", |mut fs, (fd, bytes, offset)| {
        Box::pin(async move { fs.write(fd, bytes, offset).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.sync", |mut fs, (fd,)| {
        Box::pin(async move { fs.sync(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.sync-data", |mut fs, (fd,)| {
        Box::pin(async move { fs.sync_data(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.read-directory", |mut fs, (fd,)| {
        Box::pin(async move { fs.read_directory(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.advise", |mut fs, (fd, offset, len, advice)| {
        Box::pin(async move { fs.advise(fd, offset, len, advice).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.set-size", |mut fs, (fd, size)| {
        Box::pin(async move { fs.set_size(fd, size).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.set-times", |mut fs, (fd, atime, mtime)| {
        Box::pin(async move { fs.set_times(fd, atime, mtime).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.get-flags", |mut fs, (fd,)| {
        Box::pin(async move { fs.get_flags(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.get-type", |mut fs, (fd,)| {
        Box::pin(async move { fs.get_type(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.stat", |mut fs, (fd,)| {
        Box::pin(async move { fs.stat(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.metadata-hash", |mut fs, (fd,)| {
        Box::pin(async move { fs.metadata_hash(fd).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.stat-at", |mut fs, (fd, follow, path)| {
        Box::pin(async move { fs.stat_at(fd, follow, path).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.metadata-hash-at", |mut fs, (fd, follow, path)| {
        Box::pin(async move { fs.metadata_hash_at(fd, follow, path).await })
    })?;
    bound_filesystem_call(
        &mut fs,
        "[method]descriptor.set-times-at",
        |mut fs, (fd, follow, path, atime, mtime)| {
            Box::pin(async move { fs.set_times_at(fd, follow, path, atime, mtime).await })
        },
    )?;
    bound_filesystem_call(&mut fs, "[method]descriptor.readlink-at", |mut fs, (fd, path)| {
        Box::pin(async move { fs.readlink_at(fd, path).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.create-directory-at", |mut fs, (fd, path)| {
        Box::pin(async move { fs.create_directory_at(fd, path).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.remove-directory-at", |mut fs, (fd, path)| {
        Box::pin(async move { fs.remove_directory_at(fd, path).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.unlink-file-at", |mut fs, (fd, path)| {
        Box::pin(async move { fs.unlink_file_at(fd, path).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.symlink-at", |mut fs, (fd, target, path)| {
        Box::pin(async move { fs.symlink_at(fd, target, path).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.rename-at", |mut fs, (fd, from, to_fd, to)| {
        Box::pin(async move { fs.rename_at(fd, from, to_fd, to).await })
    })?;
    bound_filesystem_call(&mut fs, "[method]descriptor.link-at", |mut fs, (fd, follow, from, to_fd, to)| {
        Box::pin(async move { fs.link_at(fd, follow, from, to_fd, to).await })
    })?;
    // Its only failure is a trap (a descriptor that is not the guest's).
    fs.func_wrap(
        "[method]descriptor.is-same-object",
        |mut store: StoreContextMut<'_, StoreState>, (a, b): (Resource<Descriptor>, Resource<Descriptor>)| {
            let state = store.data_mut();
            let end = state.wait_end();
            let same = until(end, state.filesystem().is_same_object(a, b));
            state.settle_wait(same).map(|same| (same,))
        },
    )
}

/// Shadow the filesystem call `name` with one that waits for the work
/// `start` starts at most until the call's deadline.
fn bound_filesystem_call<Params, T>(
    fs: &mut LinkerInstance<'_, StoreState>,
    name: &str,
    start: for<'a> fn(WasiFilesystemCtxView<'a>, Params) -> FilesystemWork<'a, T>,
) -> wasmtime::Result<()>
where
    Params: ComponentNamedList + Lift + 'static,
    (Result<T, ErrorCode>,): ComponentNamedList + Lower + 'static,
{
    fs.func_wrap(name, move |mut store: StoreContextMut<'_, StoreState>, params: Params| {
        let state = store.data_mut();
        let end = state.wait_end();
        let done = until(end, start(state.filesystem(), params));
        state.settle_filesystem(done).map(|done| (done,))
    })
}

/// When a wait inside WASI ends at the latest: at `deadline`, or once `cut` is cancelled (the
/// engine [cut](super::PluginEngine::cut_calls) its calls), whichever comes first; never, for
/// what is not given.
pub(super) struct WaitEnd {
    pub(super) deadline: Option<tokio::time::Instant>,
    pub(super) cut: Option<CancellationToken>,
}

/// Run `wait` on the runtime WASI uses, until `end` at the latest (`None`: it came first).
pub(super) fn until<F: Future>(end: WaitEnd, wait: F) -> Option<F::Output> {
    wasmtime_wasi::runtime::in_tokio(async move {
        let deadline = async {
            match end.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let cut = async {
            match &end.cut {
                Some(cut) => cut.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            output = wait => Some(output),
            () = deadline => None,
            () = cut => None,
        }
    })
}

impl StoreState {
    /// When a wait inside WASI during the current call ends at the latest: the call's deadline,
    /// or the engine's cut of its calls.
    pub(super) fn wait_end(&self) -> WaitEnd {
        WaitEnd { deadline: self.call_deadline, cut: Some(self.calls_cut.clone()) }
    }

    /// What a wait that ended as `ended` returns to the guest: its result, or
    /// a trap when the deadline passed (marked, so it counts as a timeout).
    pub(super) fn settle_wait<T>(&mut self, ended: Option<wasmtime::Result<T>>) -> wasmtime::Result<T> {
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

    /// What a filesystem call that ended as `ended` returns to the guest: as
    /// [`settle_wait`](Self::settle_wait), its error in the form the guest
    /// receives (an error code, or a trap the call asked for).
    fn settle_filesystem<T>(&mut self, ended: Option<FsResult<T>>) -> wasmtime::Result<Result<T, ErrorCode>> {
        match self.settle_wait(ended.map(Ok))? {
            Ok(value) => Ok(Ok(value)),
            Err(err) => err.downcast().map(Err),
        }
    }
}
