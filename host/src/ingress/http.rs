//! The HTTP ingress: `POST /v1/messages/{topic}`.
//!
//! Request headers whose names start with `x-` become message headers, as do
//! `content-type`, except `x-sy-` ones (the host's own: a client cannot set
//! them); the body is the payload. Answers: `202 {"id":…}` with the message's
//! unique id (its `x-sy-id`) when accepted; with `?wait=true`, `200` and the reply's payload (its headers as
//! `x-` response headers), `204` when the destination gives no reply, `422`
//! when the message was dropped or dead-lettered; `413` when too large, `400`
//! when malformed, `503` + `Retry-After` when the host is at capacity.

use crate::host::{BuildError, Host, RequestError, SendError, await_reply};
use crate::message::{ID_HEADER, Message, unique_id};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// A bound HTTP ingress, ready to serve.
#[derive(Debug)]
pub struct HttpIngress {
    host: Host,
    listener: TcpListener,
}

#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    wait: bool,
}

impl HttpIngress {
    /// Bind `addr` (port 0 picks a free port) for `host`.
    pub async fn bind(host: Host, addr: SocketAddr) -> Result<HttpIngress, BuildError> {
        let listener = TcpListener::bind(addr).await.map_err(|error| BuildError::Listen { addr, error })?;
        Ok(HttpIngress { host, listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serve until `shutdown` completes; in-flight requests finish first.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let limit = self.host.config().host.max_message_bytes;
        let app = Router::new()
            .route("/v1/messages/{topic}", post(accept))
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self.host);
        if let Err(err) = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(%err, "HTTP ingress stopped");
        }
    }
}

async fn accept(
    State(host): State<Host>,
    Path(topic): Path<String>,
    Query(options): Query<Options>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut message = Message::new(topic, body);
    for (name, value) in &headers {
        let name = name.as_str();
        if (name.starts_with("x-") && !name.starts_with("x-sy-")) || name == "content-type" {
            let Ok(value) = value.to_str() else {
                return error(StatusCode::BAD_REQUEST, format!("header {name} is not visible ASCII"));
            };
            message.headers.push((name.to_owned(), value.to_owned()));
        }
    }
    // The unique id is the ingress's to give: the host keeps it.
    let id = unique_id();
    message.headers.push((ID_HEADER.to_owned(), id.clone()));
    if !options.wait {
        return match host.try_send(message) {
            Ok(_) => (StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "id": id }))).into_response(),
            Err(err) => refused(err),
        };
    }
    let pending = match host.try_request(message) {
        Ok((_, pending)) => pending,
        Err(err) => return refused(err),
    };
    match await_reply(pending).await {
        Ok(Some(reply)) => reply_response(reply),
        Ok(None) => (StatusCode::NO_CONTENT, [(ID_HEADER, id)]).into_response(),
        Err(RequestError::DeadLettered(reason) | RequestError::ReplyFailed(reason)) => {
            let body = serde_json::json!({ "id": id, "error": reason.to_string(), "code": reason.code() });
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
        Err(err) => {
            let body = serde_json::json!({ "id": id, "error": err.to_string() });
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
    }
}

fn reply_response(reply: Message) -> Response {
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        let name = if name.starts_with("x-") { name.clone() } else { format!("x-sy-{name}") };
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.append(name, value);
        }
    }
    (StatusCode::OK, headers, reply.payload).into_response()
}

fn refused(err: SendError) -> Response {
    match err {
        SendError::TooLarge { .. } => error(StatusCode::PAYLOAD_TOO_LARGE, err.to_string()),
        SendError::Malformed(_) => error(StatusCode::BAD_REQUEST, err.to_string()),
        SendError::Backpressure | SendError::ShuttingDown => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
            response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            response
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::check_message;

    #[test]
    fn a_refused_topic_is_quoted_with_its_control_characters_escaped() {
        let message = Message::new("a..\u{1b}[2J", Bytes::new());
        let Err(SendError::Malformed(problem)) = check_message(&message, 0) else { panic!("admitted") };
        assert_eq!(problem, r#"topic "a..\u{1b}[2J" has an empty segment"#);
    }
}
