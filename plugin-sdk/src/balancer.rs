//! Balancers: choose the endpoint a message goes to.

use std::marker::PhantomData;

use crate::Message;
use crate::bindings::balancer::exports::switchyard::plugin::balancer::Guest;
use crate::host::FlushCounts;
use crate::message::single;

/// What a balancer sees of one endpoint: `index`, `address`, `weight`,
/// `in_flight`, `latency_micros` (peak EWMA) and `healthy`.
pub use crate::bindings::types::Endpoint;

/// A load-balancing strategy.
///
/// Export it with [`export_balancer!`](crate::export_balancer).
pub trait Balancer {
    /// Pick an endpoint for `message` by its [`Endpoint::index`].
    ///
    /// The host uses the pick only if that endpoint is
    /// [`healthy`](Endpoint::healthy), and `None` only while no endpoint is:
    /// any other answer (`None` while one is healthy, an index out of range
    /// or of an unhealthy endpoint) is invalid, and the host picks as the
    /// `p2c-ewma` balancer does instead, counting an `invalid` fallback.
    ///
    /// Called once per dispatch attempt (a retry calls it again) of every
    /// message sent to a destination using this balancer. The message
    /// carries its head only (`payload` is `None`). `endpoints` lists the
    /// destination's endpoints, healthy or not.
    fn pick(message: &Message<'_>, endpoints: &[Endpoint]) -> Option<u32>;
}

/// Glue between a [`Balancer`] and the generated export.
#[doc(hidden)]
pub struct BalancerExport<T>(PhantomData<T>);

/// Compiles only for a `T` that implements [`Balancer`]: the export macro's check.
#[doc(hidden)]
pub const fn is_balancer<T: Balancer>() {}

impl<T: Balancer> Guest for BalancerExport<T> {
    fn pick(message: Vec<u8>, endpoints: Vec<Endpoint>) -> Option<u32> {
        crate::host::forward_panics();
        let _flush = FlushCounts;
        // A head the SDK cannot decode picks nothing: the WIT has no error here.
        T::pick(&single(&message).ok()?, &endpoints)
    }
}

/// Export a [`Balancer`] as this component's `switchyard:plugin/balancer`.
#[macro_export]
macro_rules! export_balancer {
    ($plugin:ty) => {
        const _: () = $crate::__private::is_balancer::<$plugin>();
        // A native build (a `cdylib` for the host's target) exports the C ABI instead.
        #[cfg(not(target_family = "wasm"))]
        $crate::__native_entry_points!($plugin, BALANCER, switchyard_native_pick => pick);
        #[cfg(target_family = "wasm")]
        $crate::__format_export!();
        #[cfg(target_family = "wasm")]
        const _: () = {
            type SwitchyardBalancerExport = $crate::__private::BalancerExport<$plugin>;
            $crate::__private::balancer::export!(SwitchyardBalancerExport with_types_in $crate::__private::balancer);
        };
    };
}
