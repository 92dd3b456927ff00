//! Calls into a `transport` plugin: connections opened, sent on and closed
//! (the guest's `connection` resource), and health probes — each under the
//! call guard, with the caller's deadline (a destination's per-attempt
//! timeout) in place of the plugin's own.

use super::compiled::PluginKind;
use super::error::{PluginError, PluginFault};
use super::instance::{Exports, PluginInstance};
use std::time::Duration;
use wasmtime::component::ResourceAny;

/// One connection a transport plugin opened and keeps, owned by the
/// instance that opened it: use it with that instance only, and close it
/// with [`PluginInstance::close_connection`] (it is gone, unclosed, with its
/// instance).
#[derive(Debug)]
pub struct TransportConnection(ResourceAny);

impl PluginInstance {
    /// Ask the plugin to connect to `address`; within `timeout`.
    pub fn open_connection(
        &mut self,
        address: &str,
        timeout: Duration,
    ) -> Result<Result<TransportConnection, PluginError>, PluginFault> {
        let not_a = self.not_a(PluginKind::Transport);
        let Some((Exports::Transport(transport), guard)) = self.wasm() else { return Err(not_a) };
        let connection = transport.switchyard_plugin_transport().connection();
        let opened = guard.call_within(timeout, |store| connection.call_open(store, address))?;
        Ok(opened.map(TransportConnection).map_err(PluginError::from))
    }

    /// Send `message` (a one-message batch) on `connection`; the reply (a
    /// one-message batch), if any. Within `timeout`.
    pub fn send_on(
        &mut self,
        connection: &TransportConnection,
        message: &Vec<u8>,
        timeout: Duration,
    ) -> Result<Result<Option<Vec<u8>>, PluginError>, PluginFault> {
        let not_a = self.not_a(PluginKind::Transport);
        let Some((Exports::Transport(transport), guard)) = self.wasm() else { return Err(not_a) };
        let calls = transport.switchyard_plugin_transport().connection();
        let sent = guard.call_within(timeout, |store| calls.call_send(store, connection.0, message))?;
        Ok(sent.map_err(PluginError::from))
    }

    /// Close `connection`: the guest drops it (its destructor runs under the
    /// plugin's own deadline).
    pub fn close_connection(&mut self, connection: TransportConnection) -> Result<(), PluginFault> {
        let (timeout, not_a) = (self.plugin.settings.timeout(), self.not_a(PluginKind::Transport));
        let Some((_, guard)) = self.wasm() else { return Err(not_a) };
        guard.call_within(timeout, |store| connection.0.resource_drop(store))
    }

    /// Run the plugin's health check of `address`; within `timeout`.
    pub fn probe_endpoint(
        &mut self,
        address: &str,
        timeout: Duration,
    ) -> Result<Result<(), PluginError>, PluginFault> {
        let not_a = self.not_a(PluginKind::Transport);
        let Some((Exports::Transport(transport), guard)) = self.wasm() else { return Err(not_a) };
        let transport = transport.switchyard_plugin_transport();
        let probed = guard.call_within(timeout, |store| transport.call_probe(store, address))?;
        Ok(probed.map_err(PluginError::from))
    }
}
