//! The alerts over the admin API: `GET /v1/alerts` lists every rule and where it stands,
//! `POST /v1/alerts/{id}/ack` acknowledges a firing one (404 for an unknown id, 409 when the
//! alert is not firing, each with an `error` saying so).

use crate::alert::AckError;
use crate::host::Host;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

pub(super) async fn list(State(host): State<Host>) -> Json<Value> {
    let refused = host.metrics().alert_messages_refused();
    Json(json!({ "alerts": host.alerts(), "messages_refused": refused }))
}

pub(super) async fn acknowledge(State(host): State<Host>, Path(id): Path<String>) -> Response {
    match host.acknowledge_alert(&id) {
        Ok(status) => Json(json!(status)).into_response(),
        Err(error) => {
            let status = match error {
                AckError::Unknown(_) => StatusCode::NOT_FOUND,
                AckError::NotFiring { .. } => StatusCode::CONFLICT,
            };
            (status, Json(json!({ "error": error.to_string() }))).into_response()
        }
    }
}
