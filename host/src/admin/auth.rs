//! The admin token check (in constant time, see [`crate::bearer`]). The
//! token is looked up at each request, so a reloaded `[admin] token` takes
//! effect at once.

use crate::host::Host;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// Where the admin token comes from, first found wins: one given in code at
/// bind, the host's current `[admin] token`, `SWITCHYARD_ADMIN_TOKEN` as it
/// was at bind.
#[derive(Clone)]
pub(super) struct TokenSource {
    pub(super) fixed: Option<Arc<str>>,
    pub(super) host: Host,
    pub(super) env: Option<Arc<str>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("TokenSource").field("required", &self.current().is_some()).finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The token required now, if any.
    pub(super) fn current(&self) -> Option<Arc<str>> {
        let configured = || {
            let config = self.host.config();
            config
                .admin
                .as_ref()
                .and_then(|admin| admin.token.as_deref())
                .filter(|token| !token.is_empty())
                .map(Arc::from)
        };
        self.fixed.clone().or_else(configured).or_else(|| self.env.clone())
    }
}

/// Let the request through only with the right bearer token (or when no token
/// is set, which `AdminServer::bind` allows on loopback only). A WebSocket
/// upgrade may present it as a subprotocol instead, as browsers must (see
/// [`crate::bearer::WEBSOCKET_PROTOCOL_PREFIX`]).
pub(super) async fn require_token(
    State(source): State<TokenSource>,
    request: Request,
    next: Next,
) -> Response {
    match source.current() {
        Some(token) if !presented(&request, &token) => crate::bearer::unauthorized(),
        _ => next.run(request).await,
    }
}

/// Whether `request` carries `token`: as its bearer header, or as a
/// subprotocol of a WebSocket upgrade.
fn presented(request: &Request, token: &str) -> bool {
    let headers = request.headers();
    crate::bearer::presented(headers, token)
        || (headers.contains_key(axum::http::header::UPGRADE)
            && crate::bearer::presented_as_protocol(headers, token))
}
