//! The admin endpoints.

use super::auth::{TokenSource, require_token};
use super::browser::same_host_only;
use super::history::History;
use crate::dead_letter::Position;
use crate::host::Host;
use crate::listener::socket::{Silence, Silent};
use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The largest config text the admin API takes: as large as a config file may be.
const SETTINGS: usize = crate::regular_file::MAX_SETTINGS_BYTES as usize;

/// The admin router; `stopping` turns true when the server shuts down, which
/// ends open event streams; an event stream is pinged after `ping` of silence.
pub(super) fn router(
    host: Host,
    token: TokenSource,
    stopping: watch::Receiver<bool>,
    history: History,
    ping: Duration,
) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/plugins", get(plugins))
        .route("/v1/routes", get(routes))
        .route("/v1/destinations", get(destinations))
        .route("/v1/destinations/{name}/streams", get(streams))
        .route("/v1/destinations/{name}/streams/verify", post(verify_streams))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/spool", get(spool))
        .route("/v1/reload", post(reload))
        // A config sent is held to what a config file may be (axum's default body limit is 2 MB).
        .route(
            "/v1/config",
            get(super::config::show).put(super::config::replace).layer(DefaultBodyLimit::max(SETTINGS)),
        )
        .route("/v1/config/validate", post(super::config::validate).layer(DefaultBodyLimit::max(SETTINGS)))
        .route("/v1/events", get(events).layer(Extension(EventsPing(ping))))
        .route("/v1/alerts", get(super::alerts::list))
        .route("/v1/alerts/{id}/ack", post(super::alerts::acknowledge))
        .route("/v1/history", get(history_since))
        .layer(middleware::from_fn_with_state(token.clone(), require_token));
    Router::new()
        .merge(super::dashboard::router())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(protected)
        .layer(middleware::from_fn_with_state(token.clone(), same_host_only))
        .layer(Extension(token))
        .layer(Extension(stopping))
        .layer(Extension(history))
        .layer(middleware::map_response(crate::json_errors::json_errors))
        .with_state(host)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when every stage the routes name is available and every
/// destination has an endpoint serving; else 503 and why not.
///
/// Open to every caller, like `/health`, for probes; the problems (the plugins and destinations they
/// name) only to one with the admin token, when there is one.
async fn ready(
    State(host): State<Host>,
    Extension(token): Extension<TokenSource>,
    headers: axum::http::HeaderMap,
) -> Response {
    let problems = host.unready();
    if problems.is_empty() {
        return Json(json!({ "ready": true })).into_response();
    }
    let told = token.current().is_none_or(|token| crate::bearer::presented(&headers, &token));
    let body = match told {
        true => json!({ "ready": false, "problems": problems }),
        false => json!({ "ready": false }),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn metrics(State(host): State<Host>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], host.metrics().encode()).into_response()
}

async fn plugins(State(host): State<Host>) -> Json<Value> {
    Json(super::plugins::list(&host))
}

/// The routes as configured, their secrets redacted as `GET /v1/config` redacts them (the
/// dashboard shows this).
async fn routes(State(host): State<Host>) -> Json<Value> {
    let mut routes = json!({ "routes": host.config().routes });
    super::config::redact(&mut routes);
    Json(routes)
}

async fn destinations(State(host): State<Host>) -> Json<Value> {
    Json(json!({ "destinations": host.destinations() }))
}

/// `?limit=N` of `GET /v1/destinations/{name}/streams`.
#[derive(serde::Deserialize)]
struct StreamsQuery {
    #[serde(default = "default_streams_limit")]
    limit: usize,
}

fn default_streams_limit() -> usize {
    1000
}

/// The answer when destination `name` keeps no streams.
fn no_streams(name: &str) -> Response {
    let error = format!("no destination {name:?} with an affinity:header:KEY balancer");
    (StatusCode::NOT_FOUND, Json(json!({ "error": error }))).into_response()
}

/// The stream table of a destination: its summary and the most recently active `limit` streams
/// (at most 100 000).
async fn streams(
    State(host): State<Host>,
    Path(name): Path<String>,
    Query(query): Query<StreamsQuery>,
) -> Response {
    let (limit, destination) = (query.limit.min(100_000), name.clone());
    // A pass over the whole table (up to `max_streams_tracked`): not on a runtime thread.
    let read = tokio::task::spawn_blocking(move || host.streams(&destination, limit));
    match read.await.expect("reading the stream table does not panic") {
        Some((summary, streams)) => {
            Json(json!({ "destination": name, "summary": summary, "streams": streams })).into_response()
        }
        None => no_streams(&name),
    }
}

/// Runs the consistency check of a destination's stream table: what it found and repaired.
async fn verify_streams(State(host): State<Host>, Path(name): Path<String>) -> Response {
    // A pass over the whole table (up to `max_streams_tracked`): not on a runtime thread.
    let destination = name.clone();
    let check = tokio::task::spawn_blocking(move || host.verify_streams(&destination));
    match check.await.expect("the consistency check does not panic") {
        Some(report) => Json(json!(report)).into_response(),
        None => no_streams(&name),
    }
}

/// `?limit=N&after=NEXT` of `GET /v1/dead-letters`.
#[derive(serde::Deserialize)]
struct DeadLetterQuery {
    #[serde(default = "default_dead_letter_limit")]
    limit: usize,
    /// The `next` of an earlier answer: read on from there.
    after: Option<Position>,
}

fn default_dead_letter_limit() -> usize {
    100
}

/// What the dead-letter file holds: its path, how many letters, and the
/// oldest `limit` (at most 1000) of them from `after` on, as many as fit in
/// [`LISTED_BYTES`](crate::dead_letter::LISTED_BYTES), with where the next begin.
async fn dead_letters(State(host): State<Host>, Query(query): Query<DeadLetterQuery>) -> Response {
    let (from, limit) = (query.after.unwrap_or(Position::HEAD), query.limit.min(1000));
    let read = tokio::task::spawn_blocking(move || host.dead_letters_after(from, limit));
    match read.await.expect("reading the dead-letter file does not panic") {
        Ok(Some(letters)) => Json(letters).into_response(),
        Ok(None) => {
            let error = format!(
                "the dead-letter file changed since `next` {from} was given (rewritten to cut out re-delivered letters, or replaced): look again without `after`"
            );
            (StatusCode::CONFLICT, Json(json!({ "error": error }))).into_response()
        }
        Err(err) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": err.to_string() }))).into_response()
        }
    }
}

/// What the spool holds (`durability = "spool"`): depth, bytes, oldest age, recovered at start;
/// with `durability = "memory"`, only that.
async fn spool(State(host): State<Host>) -> Json<Value> {
    match host.spool() {
        Some(status) => {
            let mut answer = json!({ "durability": "spool" });
            answer
                .as_object_mut()
                .expect("an object")
                .extend(json!(status).as_object().cloned().unwrap_or_default());
            Json(answer)
        }
        None => Json(json!({ "durability": "memory" })),
    }
}

async fn reload(State(host): State<Host>) -> Response {
    match host.reload_telling_refusals().await {
        // Reloaded, it may still have refused plugin files: said here too, as `PUT /v1/config` does.
        Ok((config, refused)) => {
            Json(json!({ "reloaded": true, "config": config, "plugins_refused": refused })).into_response()
        }
        Err(err) => super::config::refused(err),
    }
}

/// `?since=MS` of `GET /v1/history`.
#[derive(serde::Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    since: u64,
}

/// The samples of the last five minutes that ended after `since` (ms since the Unix epoch).
async fn history_since(
    Extension(history): Extension<History>,
    Query(query): Query<HistoryQuery>,
) -> Json<Value> {
    Json(json!({
        "interval_ms": super::history::INTERVAL.as_millis() as u64,
        "capacity": super::history::CAPACITY,
        "samples": history.since(query.since),
    }))
}

/// The subprotocol the event stream answers a browser with: it must name one
/// of those offered, and the other one a browser offers carries its token.
const EVENTS_PROTOCOL: &str = "switchyard.events";

/// `[admin] ping_ms`: an event stream is pinged after this long a silence (see [`Silence`]).
#[derive(Clone, Copy)]
struct EventsPing(Duration);

/// A WebSocket of host events as JSON text frames.
async fn events(
    State(host): State<Host>,
    Extension(stopping): Extension<watch::Receiver<bool>>,
    Extension(token): Extension<TokenSource>,
    Extension(EventsPing(ping)): Extension<EventsPing>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Subscribe before the upgrade, so nothing between request and stream is missed.
    let feed = host.subscribe();
    // The token the request was let in with: the stream ends when another replaces it.
    let granted = token.current();
    let stream = EventStream { feed, stopping, token, granted, ping };
    let upgrade = crate::listener::socket::reading_at_most(upgrade, EVENTS_CLIENT_BYTES);
    upgrade.protocols([EVENTS_PROTOCOL]).on_upgrade(move |socket| stream.serve(socket))
}

/// The largest frame or message an event stream reads: what a client sends it is read only to see it
/// close (a close or ping frame holds at most 125 bytes).
const EVENTS_CLIENT_BYTES: usize = 4 << 10;

/// What an event stream sends, and to whom.
struct EventStream {
    feed: broadcast::Receiver<crate::HostEvent>,
    stopping: watch::Receiver<bool>,
    token: TokenSource,
    /// The admin token when the stream was opened.
    granted: Option<std::sync::Arc<str>>,
    /// See [`EventsPing`].
    ping: Duration,
}

/// The close code of a stream whose admin token was replaced: policy violation.
const TOKEN_REPLACED: u16 = 1008;

impl EventStream {
    /// Send the events on `socket` until the host stops, the client goes (what it sends is read
    /// only to see it close: a stream left to a quiet host would otherwise hold its socket until
    /// the next event), or a reload replaces the admin token the client was let in with: the next
    /// event is not sent, the stream is closed instead (1008). A frame past [`EVENTS_CLIENT_BYTES`]
    /// closes it too (1009), and so does a client silent for two ping intervals (1001): it is
    /// pinged after one, and its pong (which a browser sends by itself) ends the silence.
    async fn serve(mut self, mut socket: WebSocket) {
        let mut silence = Silence::begin(self.ping);
        let why = loop {
            let frame = tokio::select! {
                // The stop first; what the client sent is read before its silence is judged, and
                // that before an event is sent (a stream of events never keeps it from being judged).
                biased;
                _ = self.stopping.wait_for(|stop| *stop) => return,
                received = socket.recv() => match received {
                    Some(Ok(WsMessage::Close(_))) | None => return,
                    // A frame past EVENTS_CLIENT_BYTES is answered; a broken connection is not.
                    Some(Err(err)) => break crate::listener::socket::refusal(err),
                    Some(Ok(_)) => None,
                },
                silent = silence.lasted() => match silent {
                    Silent::Ping => Some(WsMessage::Ping(Default::default())),
                    Silent::TooLong(why) => break Some(why),
                },
                event = self.feed.recv() => Some(WsMessage::Text(match event {
                    Ok(event) => serde_json::to_string(&event).expect("events serialize"),
                    Err(broadcast::error::RecvError::Lagged(missed)) => json!({ "event": "lagged", "missed": missed }).to_string(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }.into())),
            };
            // A frame from the client (a pong, most likely) ends its silence.
            let Some(frame) = frame else {
                silence = Silence::begin(self.ping);
                continue;
            };
            if self.token.current() != self.granted {
                let reason = "the admin token was replaced: open the stream again with the new one";
                break Some(axum::extract::ws::CloseFrame { code: TOKEN_REPLACED, reason: reason.into() });
            }
            if socket.send(frame).await.is_err() {
                return;
            }
        };
        if let Some(why) = why {
            let _ = socket.send(WsMessage::Close(Some(why))).await;
        }
    }
}
