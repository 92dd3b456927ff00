//! Guards against browsers turned on the admin API: a page elsewhere can
//! point its own name at 127.0.0.1 (DNS rebinding) or send a cross-site
//! request that needs no preflight. So, without a token, the `Host` must be a
//! loopback name; and a request that changes something, or opens the event
//! stream, is refused when it carries a foreign `Origin`: one that is neither
//! a loopback name nor the `Host` asked (the dashboard's own page, served from
//! wherever the admin listener is reached, is not foreign).

use super::auth::TokenSource;
use crate::authority::{authority_host, is_loopback_name};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Refuse a request with a non-loopback `Host` (when no token is needed) or a
/// foreign `Origin` (on anything but a plain GET).
pub(super) async fn same_host_only(
    State(token): State<TokenSource>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(&token, &request) {
        Some(error) => {
            (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({ "error": error }))).into_response()
        }
        None => next.run(request).await,
    }
}

/// Why `request` is refused, if it is.
fn refusal(token: &TokenSource, request: &Request) -> Option<String> {
    let text = |name| request.headers().get(name).and_then(|value| value.to_str().ok());
    if token.current().is_none() {
        let host = text(header::HOST).unwrap_or("");
        if !is_loopback_name(authority_host(host)) {
            return Some(format!(
                "Host {host:?} is not a loopback name; without a token only those are served"
            ));
        }
    }
    let upgrade = request.headers().contains_key(header::UPGRADE);
    let origin = text(header::ORIGIN).filter(|_| request.method() != Method::GET || upgrade)?;
    let authority = origin.split_once("://").map_or("", |(_, authority)| authority);
    let same_origin = text(header::HOST).is_some_and(|host| host.eq_ignore_ascii_case(authority));
    (!same_origin && !is_loopback_name(authority_host(authority)))
        .then(|| format!("Origin {origin:?} is not allowed"))
}
