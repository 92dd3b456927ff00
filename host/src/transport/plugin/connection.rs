//! A transport plugin's connection as the host pools it: the lane that
//! opened it and its key there. Dropping it closes it, on its lane.

use super::lane::{Answer, Lane, SocketClaim};
use std::sync::Arc;
use std::time::Instant;

/// One open connection of a transport plugin, to one endpoint.
pub(super) struct PluginConnection {
    lane: Arc<Lane>,
    /// Its id on the lane, and the lane's generation when it was opened.
    key: (u64, u64),
}

impl PluginConnection {
    /// Ask `lane`'s plugin to connect to `address`, on the socket `claim`ed.
    /// Any failure means nothing was sent: the plugin's error or fault, as text.
    pub(super) async fn open(
        lane: Arc<Lane>,
        claim: SocketClaim,
        address: &str,
        deadline: Instant,
    ) -> std::io::Result<PluginConnection> {
        match lane.open(claim, address, deadline).await {
            Ok(Ok(key)) => Ok(PluginConnection { lane, key }),
            Ok(Err(error)) => Err(std::io::Error::other(format!("open: the plugin {error}"))),
            Err(error) => Err(std::io::Error::other(format!("open: {error}"))),
        }
    }

    /// Send `message` (a one-message batch); the plugin's answer.
    pub(super) async fn send(&self, message: Arc<Vec<u8>>, deadline: Instant) -> Answer<Option<Vec<u8>>> {
        self.lane.send(self.key, message, deadline).await
    }

    /// Whether it may be reused: its instance has not faulted since it was
    /// opened, and its plugin version still serves.
    pub(super) fn is_open(&self) -> bool {
        !self.lane.is_retired() && self.lane.generation() == self.key.1
    }
}

impl Drop for PluginConnection {
    fn drop(&mut self) {
        self.lane.close(self.key);
    }
}
