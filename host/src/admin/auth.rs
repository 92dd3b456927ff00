//! Bearer-token check, in constant time: both tokens are hashed first, so
//! the comparison takes as long whatever the length of the token presented.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Let the request through only with the right bearer token (or when no token
/// is set, which `AdminServer::bind` allows on loopback only).
pub(super) async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else { return next.run(request).await };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(Sha256::digest(presented).ct_eq(&Sha256::digest(token.as_bytes()))) {
        return next.run(request).await;
    }
    let body = axum::Json(serde_json::json!({ "error": "unauthorized" }));
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
}
