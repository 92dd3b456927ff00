//! The configuration over the admin API: `GET /v1/config` shows the effective
//! configuration (JSON, or TOML with `?format=toml`) with secrets redacted,
//! `POST /v1/config/validate` checks a TOML body without applying it, and
//! `PUT /v1/config` applies one as a reload of the file would and writes it
//! to the config file, so a restart keeps it. A refused config answers 422
//! with the same message a bad file gets, and changes nothing.

use crate::host::Host;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

/// What replaces a secret in `GET /v1/config`.
pub const REDACTED: &str = "[redacted]";

/// `?format=` of `GET /v1/config`.
#[derive(serde::Deserialize)]
pub(super) struct Format {
    #[serde(default)]
    format: Option<String>,
}

pub(super) async fn show(State(host): State<Host>, Query(query): Query<Format>) -> Response {
    let mut config = serde_json::to_value(&*host.config()).expect("a config serializes");
    redact(&mut config, false);
    match query.format.as_deref() {
        None | Some("json") => Json(config).into_response(),
        Some("toml") => match toml::to_string(&config) {
            Ok(text) => ([(header::CONTENT_TYPE, "application/toml")], text).into_response(),
            Err(err) => {
                (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": err.to_string() }))).into_response()
            }
        },
        Some(other) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": format!("format={other}: use json or toml") })))
                .into_response()
        }
    }
}

pub(super) async fn validate(State(host): State<Host>, body: Bytes) -> Response {
    let Some(text) = text(&body) else { return not_utf8() };
    match host.check_config_text(text).await {
        Ok(change) => Json(json!({ "valid": true, "change": change })).into_response(),
        Err(err) => refused(err),
    }
}

pub(super) async fn replace(State(host): State<Host>, body: Bytes) -> Response {
    let Some(text) = text(&body) else { return not_utf8() };
    match host.replace_config(text).await {
        Ok((change, written)) => {
            let file = written.map(|path| path.display().to_string());
            Json(json!({ "applied": true, "change": change, "written": file })).into_response()
        }
        Err(err) => refused(err),
    }
}

fn text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(body).ok()
}

fn not_utf8() -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": "the body is not UTF-8 TOML" }))).into_response()
}

fn refused(err: crate::config::ConfigError) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": err.to_string() }))).into_response()
}

/// Replace the secrets in a serialized config: every `token`, the password
/// of a URL with credentials (`redis://user:secret@host`), and plugin config
/// values whose key names a secret (`password`, `secret`, `token`,
/// `api_key`...). Nulls are dropped (TOML has none). `in_plugin_config` is
/// true inside a `[[plugin]]`'s `config` table.
fn redact(value: &mut Value, in_plugin_config: bool) {
    match value {
        Value::Object(map) => {
            map.retain(|_, value| !value.is_null());
            for (key, value) in map.iter_mut() {
                let secret = key == "token" || (in_plugin_config && names_a_secret(key));
                if secret && value.is_string() {
                    *value = Value::String(REDACTED.into());
                } else {
                    redact(value, key == "config" || (in_plugin_config && value.is_object()));
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| redact(item, false)),
        Value::String(text) => {
            if let Some(hidden) = without_url_password(text) {
                *text = hidden;
            }
        }
        _ => {}
    }
}

fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "api_key", "apikey", "credential"].iter().any(|word| key.contains(word))
}

/// `scheme://user:REDACTED@rest` for a URL carrying a password, else `None`.
fn without_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    if userinfo.contains('/') {
        return None;
    }
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{REDACTED}@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_url_passwords_and_secret_plugin_keys_are_redacted_and_the_rest_kept() {
        let mut config = json!({
            "admin": { "listen": "127.0.0.1:7071", "token": "hunter2" },
            "ingress": { "http": { "token": "t0k", "listen": "127.0.0.1:7070" }, "grpc": null },
            "plugin": [{ "name": "p", "config": { "api_key": "k", "tenant": "acme", "db_password": "pw" } }],
            "destination": [{
                "name": "r", "endpoints": ["redis://app:s3cret@127.0.0.1:6379", "redis://127.0.0.1:6380"],
                "options": { "key": "orders" }
            }],
        });
        redact(&mut config, false);
        assert_eq!(
            config,
            json!({
                "admin": { "listen": "127.0.0.1:7071", "token": REDACTED },
                "ingress": { "http": { "token": REDACTED, "listen": "127.0.0.1:7070" } },
                "plugin": [{ "name": "p", "config": { "api_key": REDACTED, "tenant": "acme", "db_password": REDACTED } }],
                "destination": [{
                    "name": "r",
                    "endpoints": [format!("redis://app:{REDACTED}@127.0.0.1:6379"), "redis://127.0.0.1:6380"],
                    "options": { "key": "orders" }
                }],
            })
        );
    }
}
