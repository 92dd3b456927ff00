//! Transports: deliver a message to an endpoint the host names.

use std::marker::PhantomData;

use crate::bindings::transport::exports::switchyard::plugin::transport::Guest;
use crate::host::FlushCounts;
use crate::message::single;
use crate::{Error, Message, OwnedMessage};

/// A transport: delivers messages to endpoints.
///
/// Export it with [`export_transport!`](crate::export_transport).
pub trait Transport {
    /// Send `message` to `address` (an endpoint address from the config) and
    /// return its reply, if the protocol has one.
    ///
    /// Called once per delivery attempt (a retry calls it again) of every
    /// message sent to a destination using this transport, with the payload.
    /// Return [`Error::retryable`] for transient failures so the host retries.
    fn send(address: &str, message: &Message<'_>) -> Result<Option<OwnedMessage>, Error>;
}

/// Glue between a [`Transport`] and the generated export.
#[doc(hidden)]
pub struct TransportExport<T>(PhantomData<T>);

/// Compiles only for a `T` that implements [`Transport`]: the export macro's check.
#[doc(hidden)]
pub const fn is_transport<T: Transport>() {}

impl<T: Transport> Guest for TransportExport<T> {
    fn send(address: String, message: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        let reply = T::send(&address, &single(&message)?)?;
        Ok(reply.map(|reply| reply.to_batch()))
    }
}

/// Export a [`Transport`] as this component's `switchyard:plugin/transport`.
#[macro_export]
macro_rules! export_transport {
    ($plugin:ty) => {
        const _: () = $crate::__private::is_transport::<$plugin>();
        // Export names such as `switchyard:plugin/transport@0.1.0#...` only link for wasm;
        // elsewhere (`cargo check`, `clippy`, doctests) the check above suffices.
        #[cfg(target_family = "wasm")]
        $crate::__format_export!();
        #[cfg(target_family = "wasm")]
        const _: () = {
            type SwitchyardTransportExport = $crate::__private::TransportExport<$plugin>;
            $crate::__private::transport::export!(SwitchyardTransportExport with_types_in $crate::__private::transport);
        };
    };
}
