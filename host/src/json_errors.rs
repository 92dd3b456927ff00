//! Error answers as JSON, from every route of the HTTP ingress and the admin
//! API. Their handlers answer `{"error": "..."}`, but axum's own rejections
//! (a body past its limit, a topic that is not UTF-8, a query string that does
//! not parse) answer in plain text, and an unknown path or method with an
//! empty body: this turns those into the same JSON, their text kept.

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;

/// The most of a plain-text error answer kept: axum's are one line.
const KEPT: usize = 64 * 1024;

/// `response`, with an error answered in plain text or with no body answered
/// as `{"error": "<its text, or its status's reason>"}` instead.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let plain = content_type.is_none_or(|kind| kind.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, KEPT).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim_end().to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let json = serde_json::json!({ "error": text }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(json))
}
