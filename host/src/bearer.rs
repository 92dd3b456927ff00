//! Bearer tokens, checked in constant time: both tokens are hashed first, so
//! the comparison takes as long whatever the length of the token presented.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub(crate) fn presented(headers: &HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(Sha256::digest(presented).ct_eq(&Sha256::digest(token.as_bytes())))
}

/// The answer to a request without the right token: 401, saying nothing more.
pub(crate) fn unauthorized() -> Response {
    let body = axum::Json(serde_json::json!({ "error": "unauthorized" }));
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
}
