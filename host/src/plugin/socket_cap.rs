//! A plugin instance holds at most [`MAX_SOCKETS`] sockets open at once.
//! Every socket is a file descriptor of the host's, and WASI checks a socket's
//! address only when it binds, connects, listens or sends: creating one is
//! unchecked, so a plugin with any network grant (every transport plugin)
//! could otherwise keep sockets until the host runs out of descriptors (its
//! ingress accepts, spool and dead-letter writes failing). `create-tcp-socket`
//! and `create-udp-socket` are replaced by versions that count the instance's
//! sockets and answer `new-socket-limit` at the cap; the drop of a socket
//! counts it out.

use super::sandbox::StoreState;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as _;
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket::Host as _;
use wasmtime_wasi::p2::{SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;

/// Sockets (TCP and UDP together) one plugin instance may hold open at once:
/// a transport's lane holding a full pool of the default size (64
/// connections) has room for as many more, for its probes and for plugins
/// that use two sockets a connection.
pub const MAX_SOCKETS: usize = 128;

/// The interfaces shadowed, as the linker names them.
const TCP_CREATE_SOCKET: &str = "wasi:sockets/tcp-create-socket@0.2.12";
const UDP_CREATE_SOCKET: &str = "wasi:sockets/udp-create-socket@0.2.12";
const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";

/// Shadow the creation and the drop of TCP and UDP sockets with versions
/// that keep the instance within [`MAX_SOCKETS`].
pub(crate) fn cap_sockets(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.instance(TCP_CREATE_SOCKET)?.func_wrap(
        "create-tcp-socket",
        |mut store: StoreContextMut<'_, StoreState>, (family,): (IpAddressFamily,)| {
            let state = store.data_mut();
            state.open_socket(|state| state.sockets().create_tcp_socket(family)).map(|socket| (socket,))
        },
    )?;
    linker.instance(UDP_CREATE_SOCKET)?.func_wrap(
        "create-udp-socket",
        |mut store: StoreContextMut<'_, StoreState>, (family,): (IpAddressFamily,)| {
            let state = store.data_mut();
            state.open_socket(|state| state.sockets().create_udp_socket(family)).map(|socket| (socket,))
        },
    )?;
    linker.instance(TCP)?.resource(
        "tcp-socket",
        ResourceType::host::<TcpSocket>(),
        |mut store, socket| store.data_mut().close_socket(Resource::<TcpSocket>::new_own(socket)),
    )?;
    linker.instance(UDP)?.resource(
        "udp-socket",
        ResourceType::host::<UdpSocket>(),
        |mut store, socket| store.data_mut().close_socket(Resource::<UdpSocket>::new_own(socket)),
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl StoreState {
    /// What a socket's creation answers the guest: the socket `create` made,
    /// counted, its error, or `new-socket-limit` (and nothing created) when
    /// the instance holds [`MAX_SOCKETS`] already.
    fn open_socket<S: 'static>(
        &mut self,
        create: impl FnOnce(&mut StoreState) -> SocketResult<Resource<S>>,
    ) -> wasmtime::Result<Result<Resource<S>, ErrorCode>> {
        if self.open_sockets >= MAX_SOCKETS {
            return Ok(Err(ErrorCode::NewSocketLimit));
        }
        match create(self) {
            Ok(socket) => {
                self.open_sockets += 1;
                Ok(Ok(socket))
            }
            Err(err) => err.downcast().map(Err),
        }
    }

    /// Drop `socket` (closing it; as wasmtime-wasi's own drop does, a socket
    /// whose streams are still open is a trap) and count it out.
    fn close_socket<S: Send + 'static>(&mut self, socket: Resource<S>) -> wasmtime::Result<()> {
        self.table().delete(socket)?;
        self.open_sockets = self.open_sockets.saturating_sub(1);
        Ok(())
    }
}
