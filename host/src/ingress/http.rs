//! The HTTP ingress: `POST /v1/messages/{topic}`, and `POST /v1/messages` for many at once
//! (see [`bulk`](super::bulk)).
//!
//! Request headers whose names start with `x-` become message headers, as do
//! `content-type` and `content-encoding` (what the body is, and how it is encoded: it is taken as
//! sent), except `x-sy-` ones (the host's own: a client cannot set them); the body is the payload.
//! Answers: `202 {"id":…}` with the message's unique id (its `x-sy-id`) when accepted; with
//! `?wait=true`, `200` and the reply's payload (its headers as `x-` response headers), `204` when the
//! destination gives no reply, `422` when the message was dropped or dead-lettered,
//! `502 {"delivered": true, …}` when it was delivered but the endpoint's reply refused (too large,
//! malformed, cut off); `413` when too large, `400` when malformed, `503` + `Retry-After` when the
//! host is at capacity (its queue, or its budget for bodies not yet admitted: such a body is refused
//! unread).

use crate::config::HttpIngressConfig;
use crate::host::{BodyHold, BuildError, Host, RequestError, SendError, await_reply};
use crate::listener::ListenerLimits;
use crate::message::{ID_HEADER, Message, is_host_header, unique_id};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

    /// Serve until `shutdown` completes; in-flight requests finish first, and open WebSockets once
    /// their answers still due are sent (a client that does not take them is not waited for: see
    /// the README's WebSocket ingress). The stop has no deadline of its own: a request waiting
    /// with `?wait=true` waits for its message to settle, and a client that reads its answer a
    /// little at a time is cut only once it takes nothing for `header_timeout_ms`. [`Host::run`]
    /// bounds it by the shutdown's grace period; an embedder serving the ingress itself does the
    /// same by awaiting what this returns with [`Host::shutdown_after`] once `shutdown` completed,
    /// e.g. `host.shutdown_after(serving).await` (the host then shuts down within
    /// `host.shutdown_grace_ms`, settling what the requests wait for).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let config = self.host.config();
        let http = config.ingress.http.clone().unwrap_or_else(|| HttpIngressConfig::new(self.local_addr()));
        let limits = ListenerLimits::new(http.max_connections, http.header_timeout_ms);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let sockets = super::websocket::Sockets {
            stopping,
            largest_frame: crate::message::largest_json(config.host.max_message_bytes),
            ping: std::time::Duration::from_millis(http.ping_ms),
            max_message_bytes: config.host.max_message_bytes,
        };
        let app = Router::new()
            .route(
                "/v1/messages/{topic}",
                post(accept).layer(DefaultBodyLimit::max(config.host.max_message_bytes)),
            )
            .route("/v1/messages", post(accept_bulk).layer(DefaultBodyLimit::max(http.max_batch_bytes)))
            // Only sockets need their settings: a layer over every route would add them to each request.
            .route("/v1/ws", get(accept_socket).layer(axum::Extension(sockets)))
            .layer(axum::middleware::map_response(crate::json_errors::json_errors))
            .with_state(self.host);
        // Open sockets end when the ingress stops, so that its graceful shutdown can finish.
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        crate::listener::serve(self.listener, app, limits, shutdown).await;
    }
}

/// The ingress token, presented, and no browser turned against the ingress (see [`browser_refusal`]):
/// extracted first, so that a request refused is refused before its body is read.
struct Authorized {
    /// The token the request was let in with, if one was required: a socket serves while it is
    /// still the one required (see [`websocket`](super::websocket)).
    token: Option<String>,
}

impl axum::extract::FromRequestParts<Host> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        host: &Host,
    ) -> Result<Self, Response> {
        let config = host.config();
        let token =
            config.ingress.http.as_ref().and_then(HttpIngressConfig::required_token).map(str::to_owned);
        if token.as_ref().is_some_and(|token| !crate::bearer::presented(&parts.headers, token)) {
            return Err(crate::bearer::unauthorized());
        }
        match browser_refusal(&parts.headers, token.is_some()) {
            Some(problem) => Err(error(StatusCode::FORBIDDEN, problem)),
            None => Ok(Authorized { token }),
        }
    }
}

async fn accept_bulk(
    _: Authorized,
    State(host): State<Host>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let limit = host.config().ingress.max_batch_bytes();
    match held_body(&host, request, limit).await {
        // Held until every message of it is admitted or refused.
        Ok((body, _hold)) => super::bulk::accept_batch(&host, &headers, body).await,
        Err(refused) => refused,
    }
}

/// The body of `request`, read once the host's budget for bodies not yet admitted holds what it
/// may be: its length (`content-length`), at most `limit` (the route's, which a longer one is
/// refused at, `413`); `limit` when its length is not told (chunked). Refused unread (`503` +
/// `Retry-After`) when the budget has no room for it now: past that, bodies read at once by any
/// number of clients would be bounded only by the number of connections. The [`BodyHold`] is to be
/// kept until the body's message(s) are admitted or refused.
async fn held_body(host: &Host, request: Request, limit: usize) -> Result<(Bytes, BodyHold), Response> {
    let length = hyper::body::Body::size_hint(request.body()).upper();
    let share = length.map_or(limit, |length| usize::try_from(length).unwrap_or(usize::MAX).min(limit));
    let hold = match host.try_hold_body(share) {
        Ok(hold) => hold,
        Err(problem) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, problem);
            response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            // The body is left unread: the connection cannot carry another request.
            response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
            return Err(response);
        }
    };
    // The route's own extractor: its limit, and its answers to a body too long or cut off.
    match Bytes::from_request(request, &()).await {
        Ok(body) => Ok((body, hold)),
        Err(rejection) => Err(rejection.into_response()),
    }
}

/// Why a request a browser sent (it carries an `Origin`; programs send none) is refused, if it is.
/// A page elsewhere must not use a visitor's browser to send messages: a cross-site POST (a form,
/// a `fetch` of `text/plain`) needs no preflight, nor does a WebSocket, so an `Origin` that is not
/// this host is refused. Nor may a page that pointed a name of its own at this machine (DNS
/// rebinding: its `Origin` and `Host` agree): without a token, a browser is served only at a name
/// that cannot be pointed anywhere, an address or `localhost`.
fn browser_refusal(headers: &HeaderMap, token_required: bool) -> Option<String> {
    let text = |name| headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok());
    let origin = text(axum::http::header::ORIGIN)?;
    let origin_host = origin.split_once("://").map_or(origin, |(_, authority)| authority);
    if Some(origin_host) != text(axum::http::header::HOST) {
        return Some(format!("Origin {origin:?} is not this host"));
    }
    (!token_required && !crate::authority::cannot_be_rebound(crate::authority::authority_host(origin_host)))
        .then(|| {
            format!(
                "Origin {origin:?} names this host by a name any site could point here; \
                 without a token a browser is served only at an address or localhost"
            )
        })
}

/// `GET /v1/ws`: a socket of messages (see [`websocket`](super::websocket)); [`Authorized`] refuses
/// a cross-site WebSocket hijacking.
async fn accept_socket(
    Authorized { token }: Authorized,
    State(host): State<Host>,
    axum::Extension(sockets): axum::Extension<super::websocket::Sockets>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let upgrade = crate::listener::socket::reading_at_most(upgrade, sockets.largest_frame);
    upgrade.on_upgrade(move |socket| super::websocket::serve_socket(host, socket, sockets, token))
}

async fn accept(
    _: Authorized,
    State(host): State<Host>,
    Path(topic): Path<String>,
    Query(options): Query<Options>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let (body, hold) = match held_body(&host, request, host.config().host.max_message_bytes).await {
        Ok(held) => held,
        Err(refused) => return refused,
    };
    let message = match message_from_request(topic, &headers, body) {
        Ok(message) => message,
        Err(problem) => return error(StatusCode::BAD_REQUEST, problem),
    };
    let id = message.unique_id().expect("the ingress gives every message its id").to_owned();
    if !options.wait {
        return match host.try_send(message).await {
            Ok(_) => accepted(&id),
            Err(err) => refused(err),
        };
    }
    let pending = match host.try_request(message).await {
        Ok((_, pending)) => pending,
        Err(err) => return refused(err),
    };
    // Admitted: `host.queue_bytes` counts the message now, however long its reply takes.
    drop(hold);
    match await_reply(pending).await {
        Ok(Some(reply)) => reply_response(reply, &id),
        Ok(None) => (StatusCode::NO_CONTENT, [(ID_HEADER, id)]).into_response(),
        Err(RequestError::DeadLettered(reason) | RequestError::ReplyFailed(reason)) => {
            let body = serde_json::json!({ "id": id, "error": reason.to_string(), "code": reason.code() });
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
        // Delivered: the client must not send it again, though it gets no reply.
        Err(err @ RequestError::ReplyRefused { .. }) => {
            let body = serde_json::json!({ "id": id, "error": err.to_string(), "delivered": true });
            (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
        }
        Err(err) => {
            let body = serde_json::json!({ "id": id, "error": err.to_string() });
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
    }
}

/// The message a request posts: the body on `topic`, the client's `x-`
/// headers except `x-sy-` ones, `content-type`, `content-encoding`, and a new unique id. Refused
/// (why, for a 400) when a kept header's value is not visible ASCII.
fn message_from_request(topic: String, headers: &HeaderMap, body: Bytes) -> Result<Message, String> {
    let mut message = Message::new(topic, body);
    for (name, value) in headers {
        let name = name.as_str();
        // The body is taken as sent: the coding it was sent in stays with it, as its type does.
        let about_the_body = name == "content-type" || name == "content-encoding";
        if (name.starts_with("x-") && !is_host_header(name)) || about_the_body {
            let Ok(value) = value.to_str() else {
                return Err(format!("header {name} is not visible ASCII"));
            };
            message.headers.push((name.to_owned(), value.to_owned()));
        }
    }
    // The unique id is the ingress's to give: the host keeps it.
    message.headers.push((ID_HEADER.to_owned(), unique_id()));
    Ok(message)
}

/// `202 {"id":…}`: the id is a UUID, which needs no escaping in JSON. Joined, not
/// formatted: the `http_message` guard case counted 3 % fewer instructions so.
fn accepted(id: &str) -> Response {
    let body = [r#"{"id":""#, id, r#""}"#].concat();
    (StatusCode::ACCEPTED, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `200` with the reply: its payload, its headers (a name not starting `x-` given the prefix
/// `x-sy-`), and the request's `x-sy-id`, as every other answer to a request has it.
fn reply_response(reply: Message, id: &str) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(id) = HeaderValue::try_from(id) {
        headers.insert(ID_HEADER, id);
    }
    for (name, value) in reply.headers.iter().filter(|(name, _)| name != ID_HEADER) {
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
        SendError::Backpressure | SendError::ShuttingDown | SendError::Unrecorded(_) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, err.to_string());
            response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            response
        }
    }
}

pub(super) fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::admission::check_message;
    use proptest::prelude::*;

    /// A segment that is neither empty nor a wildcard, of any other characters.
    fn segment() -> impl Strategy<Value = String> {
        let plain = "[a-zA-Z0-9_-]{1,6}";
        let any = r"[^.\s\p{Cc}]{1,6}";
        prop_oneof![plain, any].prop_filter("a wildcard", |s| s != "*" && s != ">")
    }

    fn valid_topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 1..5).prop_map(|segments| segments.join("."))
    }

    /// A valid topic with one defect that makes it invalid.
    fn invalid_topic() -> impl Strategy<Value = String> {
        let defect = prop_oneof![
            Just("..".to_owned()),
            Just(".*.".to_owned()),
            Just(".>.".to_owned()),
            r"[\s\p{Cc}]",
        ];
        (valid_topic(), defect, any::<prop::sample::Index>()).prop_map(|(topic, defect, at)| {
            let bounds: Vec<usize> = topic.char_indices().map(|(i, _)| i).chain([topic.len()]).collect();
            let at = bounds[at.index(bounds.len())];
            format!("{}{defect}{}", &topic[..at], &topic[at..])
        })
    }

    /// Header names a client may send, `x-sy-` ones and look-alikes first.
    fn header_name() -> impl Strategy<Value = HeaderName> {
        let name = prop_oneof![
            "[xX]-[sS][yY]-[a-zA-Z-]{0,8}",
            "[xX]-[a-zA-Z-]{0,8}",
            Just("content-type".to_owned()),
            Just("content-encoding".to_owned()),
            "[!#$%&'*+.^_`|~0-9a-zA-Z-]{1,12}",
        ];
        name.prop_map(|name| HeaderName::try_from(name).expect("a token is a header name"))
    }

    /// Any value HTTP lets through: visible ASCII, tabs, spaces and obs-text.
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        let byte = prop_oneof![0x20..0x7fu8, Just(b'\t'), 0x80..=0xffu8];
        proptest::collection::vec(byte, 0..12)
            .prop_filter_map("no trailing whitespace", |bytes| HeaderValue::from_bytes(&bytes).ok())
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec((header_name(), header_value()), 0..8)
            .prop_map(|pairs| pairs.into_iter().collect::<HeaderMap>())
    }

    /// The headers a request keeps: its `x-` ones but `x-sy-`, `content-type` and `content-encoding`.
    fn kept(headers: &HeaderMap) -> Vec<(&str, &HeaderValue)> {
        let kept = |name: &str| {
            (name.starts_with("x-") && !name.starts_with("x-sy-"))
                || name == "content-type"
                || name == "content-encoding"
        };
        headers.iter().map(|(name, value)| (name.as_str(), value)).filter(|(name, _)| kept(name)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_request_never_carries_a_client_sy_header(topic in any::<String>(), headers in headers()) {
            let kept = kept(&headers);
            match message_from_request(topic.clone(), &headers, Bytes::from_static(b"body")) {
                Ok(message) => {
                    let ours: Vec<_> = message.headers.iter().filter(|(name, _)| name.starts_with("x-sy-")).collect();
                    prop_assert_eq!(ours.len(), 1, "{:?}", message.headers);
                    prop_assert_eq!(&ours[0].0, ID_HEADER);
                    prop_assert!(uuid::Uuid::parse_str(&ours[0].1).is_ok());
                    let theirs: Vec<_> = message.headers[..message.headers.len() - 1]
                        .iter()
                        .map(|(name, value)| (name.as_str(), value.as_bytes()))
                        .collect();
                    let sent: Vec<_> = kept.iter().map(|(name, value)| (*name, value.as_bytes())).collect();
                    prop_assert_eq!(theirs, sent);
                    prop_assert_eq!(message.topic, topic);
                }
                Err(problem) => {
                    let bad = kept.iter().find(|(_, value)| value.to_str().is_err());
                    let (name, _) = bad.expect("only a kept header that is not visible ASCII is refused");
                    prop_assert_eq!(problem, format!("header {name} is not visible ASCII"));
                }
            }
        }

        #[test]
        fn a_valid_topic_is_admitted(topic in valid_topic()) {
            let message = Message::new(topic, Bytes::new());
            prop_assert!(check_message(&message, usize::MAX).is_ok(), "{:?}", check_message(&message, usize::MAX));
        }

        #[test]
        fn an_invalid_topic_is_refused_quoting_it(topic in invalid_topic()) {
            let message = Message::new(topic.clone(), Bytes::new());
            let Err(SendError::Malformed(problem)) = check_message(&message, 0) else {
                return Err(TestCaseError::fail(format!("{topic:?} admitted")));
            };
            prop_assert!(problem.starts_with(&format!("topic {topic:?} ")), "{}", problem);
        }

        #[test]
        fn any_topic_is_admitted_or_refused(topic in any::<String>()) {
            let _ = check_message(&Message::new(topic, Bytes::new()), 0);
        }
    }

    #[test]
    fn a_topic_counts_in_the_size_and_a_long_one_is_refused() {
        // A topic was neither counted nor bounded: a megabyte of it went in as a message of no size.
        let message = Message::new("a".repeat(1024), "x");
        assert_eq!(check_message(&message, 1025).unwrap(), 1025);
        let Err(SendError::TooLarge { size: 1025, limit: 1024 }) = check_message(&message, 1024) else {
            panic!("admitted past the limit")
        };
        let long = Message::new("a".repeat(1025), Bytes::new());
        let Err(SendError::Malformed(problem)) = check_message(&long, usize::MAX) else { panic!("admitted") };
        assert_eq!(problem, "a topic of 1025 bytes; at most 1024");
    }

    #[test]
    fn a_header_no_transport_could_carry_is_refused_at_admission() {
        // A NATS message's header named `Bad Name`, or an embedder's value with a line break, was
        // admitted and then failed every attempt at an http destination.
        let with_header =
            |name: &str, value: &str| check_message(&Message::new("t", "").with_header(name, value), 1024);
        assert!(with_header("Nats-Msg-Id", "abc ünïcode").is_ok());
        let Err(SendError::Malformed(problem)) = with_header("Bad Name", "v") else { panic!("admitted") };
        assert_eq!(problem, r#"header name "Bad Name" is not an HTTP token"#);
        let Err(SendError::Malformed(problem)) = with_header("x-a", "1\r\n2") else { panic!("admitted") };
        assert_eq!(problem, "header x-a: its value holds a control character");
        let long = format!("{}\n", "n".repeat(100));
        let Err(SendError::Malformed(problem)) = with_header(&long, "v") else { panic!("admitted") };
        assert_eq!(problem, format!(r#"header name "{}..." is not an HTTP token"#, "n".repeat(64)));
    }

    #[test]
    fn a_refused_topic_is_quoted_with_its_control_characters_escaped() {
        let message = Message::new("a..\u{1b}[2J", Bytes::new());
        let Err(SendError::Malformed(problem)) = check_message(&message, 0) else { panic!("admitted") };
        assert_eq!(problem, r#"topic "a..\u{1b}[2J" has an empty segment"#);
    }
}
