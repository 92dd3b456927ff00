//! Generated host bindings, one per plugin world. Hand-written code uses the
//! aliases at the bottom, never paths deep inside the generated modules.

mod filter {
    wasmtime::component::bindgen!({ path: "../wit", world: "filter-plugin" });
}

mod transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform-plugin",
        with: { "switchyard:plugin/types": super::filter::switchyard::plugin::types,
                "switchyard:plugin/host": super::filter::switchyard::plugin::host },
    });
}

mod middleware {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "middleware-plugin",
        with: { "switchyard:plugin/types": super::filter::switchyard::plugin::types,
                "switchyard:plugin/host": super::filter::switchyard::plugin::host },
    });
}

mod balancer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "balancer-plugin",
        with: { "switchyard:plugin/types": super::filter::switchyard::plugin::types,
                "switchyard:plugin/host": super::filter::switchyard::plugin::host },
    });
}

mod transport {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transport-plugin",
        with: { "switchyard:plugin/types": super::filter::switchyard::plugin::types,
                "switchyard:plugin/host": super::filter::switchyard::plugin::host },
    });
}

pub(crate) use balancer::{BalancerPlugin, BalancerPluginPre};
pub(crate) use filter::switchyard::plugin::host::Level;
/// What a balancer plugin sees of one endpoint: the WIT `endpoint` record.
pub use filter::switchyard::plugin::types::Endpoint as EndpointRecord;
pub(crate) use filter::switchyard::plugin::types::{Error as WitError, Host as TypesImports};
pub(crate) use filter::{FilterPlugin, FilterPluginPre};
pub(crate) use middleware::exports::switchyard::plugin::middleware::Action;
pub(crate) use middleware::{MiddlewarePlugin, MiddlewarePluginPre};
pub(crate) use transform::{TransformPlugin, TransformPluginPre};
pub(crate) use transport::{TransportPlugin, TransportPluginPre};

/// The `host` interface, as plugins import it.
pub(crate) const HOST_INTERFACE: &str = "switchyard:plugin/host@0.1.0";

/// Register the `types` imports every world shares (the `host` ones are
/// registered by hand: `sandbox::add_host_imports`).
pub(crate) fn add_types_imports<T: TypesImports + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    filter::switchyard::plugin::types::add_to_linker::<T, wasmtime::component::HasSelf<T>>(linker, |state| {
        state
    })
}
