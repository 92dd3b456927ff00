//! The admin API: see and steer a running host over HTTP, on its own listener.
//!
//! `GET /health` and `GET /ready` are open (they say nothing but up/ready);
//! everything else needs `Authorization: Bearer <token>` when a token is set
//! (given at bind, or the host's `[admin] token`, which a reload changes live,
//! or `SWITCHYARD_ADMIN_TOKEN`). Without a token the admin listener binds only
//! to loopback addresses and answers only requests whose `Host` is a loopback
//! name; a foreign `Origin` is refused on every request but a plain GET.
//!
//! `GET /` is the dashboard: a page (embedded in the binary) that asks for the
//! token, keeps it in the tab's session storage, and shows the host live
//! through the endpoints below, the event stream and `GET /v1/history`.

mod alerts;
mod auth;
mod browser;
mod config;
mod dashboard;
mod history;
mod plugins;
mod routes;

use crate::host::{BuildError, Host};
use auth::TokenSource;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Environment variable holding the admin token when the config has none.
pub const TOKEN_ENV: &str = crate::config::ADMIN_TOKEN_ENV;

/// The token [`TOKEN_ENV`] holds, if any; refused as `admin.token` would be when no client could
/// present it (not visible ASCII, or not Unicode at all), rather than read as no token or one that
/// locks every client out.
fn token_from_env() -> Result<Option<String>, BuildError> {
    let refused = || BuildError::AdminTokenEnv { variable: TOKEN_ENV };
    match std::env::var(TOKEN_ENV) {
        Ok(token) if !token.bytes().all(|byte| byte.is_ascii_graphic()) => Err(refused()),
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(refused()),
    }
}

/// A bound admin listener, ready to serve.
#[derive(Debug)]
pub struct AdminServer {
    host: Host,
    listener: TcpListener,
    token: TokenSource,
    /// The counters when bound: the history's first sample counts from here.
    baseline: history::Reading,
}

impl AdminServer {
    /// Bind `addr` for `host`, requiring `token` if given, else the host's
    /// `[admin] token` of the moment, else `SWITCHYARD_ADMIN_TOKEN`. Refuses a
    /// non-loopback address when there is no token, so an unprotected admin
    /// API is never reachable from outside (and a reload cannot remove the
    /// configured token).
    pub async fn bind(
        host: Host,
        addr: SocketAddr,
        token: Option<String>,
    ) -> Result<AdminServer, BuildError> {
        let non_empty = |token: Option<String>| token.filter(|token| !token.is_empty()).map(Into::into);
        let token =
            TokenSource { fixed: non_empty(token), host: host.clone(), env: non_empty(token_from_env()?) };
        if token.current().is_none() && !addr.ip().is_loopback() {
            return Err(BuildError::AdminUnprotected { addr });
        }
        let listener = TcpListener::bind(addr).await.map_err(|error| BuildError::Listen { addr, error })?;
        let baseline = history::Reading::of(&host);
        Ok(AdminServer { host, listener, token, baseline })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let admin = self.host.config().admin.clone();
        let admin = admin.unwrap_or_else(|| crate::config::AdminConfig::new(self.local_addr()));
        let limits = crate::listener::ListenerLimits::new(admin.max_connections, admin.header_timeout_ms);
        let history = history::History::default();
        tokio::spawn(history::record(self.host.clone(), self.baseline, history.clone(), stopping.clone()));
        let ping = std::time::Duration::from_millis(admin.ping_ms);
        let app = routes::router(self.host, self.token, stopping, history, ping);
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        crate::listener::serve(self.listener, app, limits, shutdown).await;
    }
}
