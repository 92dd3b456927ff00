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
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        .and_then(|value| value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
        .map_or("", |(_, token)| token);
    same(presented.as_bytes(), token)
}

/// How a browser presents the token when it opens a WebSocket: a page cannot
/// set `Authorization` on `new WebSocket(..)`, only subprotocols, so it
/// offers one more, this prefix followed by the token in unpadded base64url
/// (which keeps any token within the characters a protocol name may hold).
pub(crate) const WEBSOCKET_PROTOCOL_PREFIX: &str = "bearer.";

/// Whether `headers` offer the WebSocket subprotocol
/// [`WEBSOCKET_PROTOCOL_PREFIX`] + base64url(`token`).
pub(crate) fn presented_as_protocol(headers: &HeaderMap, token: &str) -> bool {
    use base64::Engine;
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(WEBSOCKET_PROTOCOL_PREFIX));
    let decoded =
        offered.and_then(|encoded| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).ok());
    decoded.is_some_and(|presented| same(&presented, token))
}

/// `presented` equals `token`, compared in constant time.
fn same(presented: &[u8], token: &str) -> bool {
    bool::from(Sha256::digest(presented).ct_eq(&Sha256::digest(token.as_bytes())))
}

/// The answer to a request without the right token: 401, saying nothing more.
pub(crate) fn unauthorized() -> Response {
    let body = axum::Json(serde_json::json!({ "error": "unauthorized" }));
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offering(protocols: &str) -> HeaderMap {
        HeaderMap::from_iter([(header::SEC_WEBSOCKET_PROTOCOL, protocols.parse().unwrap())])
    }

    #[test]
    fn the_bearer_scheme_is_named_in_any_case_and_the_token_must_match() {
        let authorizing =
            |value: &str| HeaderMap::from_iter([(header::AUTHORIZATION, value.parse().unwrap())]);
        for scheme in ["Bearer", "bearer", "BEARER"] {
            assert!(presented(&authorizing(&format!("{scheme} s3cret")), "s3cret"), "{scheme}");
        }
        for refused in ["Bearer s3cre", "Basic s3cret", "Bearers3cret", "s3cret"] {
            assert!(!presented(&authorizing(refused), "s3cret"), "{refused}");
        }
    }

    #[test]
    fn a_token_offered_as_a_websocket_subprotocol_is_presented_only_when_it_matches() {
        // base64url("s3cret/+token") without padding.
        let offered = offering("switchyard.events, bearer.czNjcmV0Lyt0b2tlbg");
        assert!(presented_as_protocol(&offered, "s3cret/+token"));
        assert!(!presented_as_protocol(&offered, "s3cret/+toke"));
        assert!(!presented(&offered, "s3cret/+token"), "a protocol is not an Authorization header");
        for refused in ["switchyard.events", "bearer.", "bearer.!!notbase64", "Bearer czNjcmV0Lyt0b2tlbg"] {
            assert!(!presented_as_protocol(&offering(refused), "s3cret/+token"), "{refused}");
        }
    }
}
