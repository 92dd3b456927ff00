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
    redact(&mut config);
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
    if let Some(secret) = redacted_secret(text) {
        return still_redacted(&secret);
    }
    match host.check_config_text(text).await {
        Ok(change) => Json(json!({ "valid": true, "change": change })).into_response(),
        Err(err) => refused(err),
    }
}

pub(super) async fn replace(State(host): State<Host>, body: Bytes) -> Response {
    let Some(text) = text(&body) else { return not_utf8() };
    if let Some(secret) = redacted_secret(text) {
        return still_redacted(&secret);
    }
    let refused_before = host.last_rejections();
    match host.replace_config(text).await {
        Ok((change, written)) => {
            let file = written.map(|path| path.display().to_string());
            // Applied, the config may still leave a plugin's new settings refused: said here too.
            let mut refused = host.last_rejections();
            refused.retain(|name, reason| refused_before.get(name) != Some(reason));
            let body =
                json!({ "applied": true, "change": change, "written": file, "plugins_refused": refused });
            Json(body).into_response()
        }
        // Running, but not on disk: no refusal, which would say that nothing changed.
        Err(err @ crate::config::ConfigError::Write { .. }) => {
            let body = json!({ "applied": true, "written": null, "error": err.to_string() });
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
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

fn still_redacted(secret: &str) -> Response {
    let error = format!(
        "{secret} reads {REDACTED}, as GET /v1/config hides it: send the real value (applied, this text would replace it)"
    );
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": error }))).into_response()
}

fn refused(err: crate::config::ConfigError) -> Response {
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": err.to_string() }))).into_response()
}

/// Replace the secrets in a serialized config (see [`each_secret`]) with
/// [`REDACTED`]. Nulls are dropped (TOML has none).
fn redact(value: &mut Value) {
    each_secret(value, false, &mut |secret| match secret {
        Secret::Whole(text) => *text = REDACTED.into(),
        Secret::InUrl(url) => {
            if let Some(hidden) = without_url_password(url) {
                *url = hidden;
            }
        }
    });
}

/// Where a config `text` (TOML) still holds a secret as `GET /v1/config` hid it, if anywhere:
/// applied, the secret would become the text `[redacted]`.
fn redacted_secret(text: &str) -> Option<String> {
    let mut config = serde_json::to_value(toml::from_str::<toml::Table>(text).ok()?).ok()?;
    let mut found = None;
    each_secret(&mut config, false, &mut |secret| {
        let hidden = match secret {
            Secret::Whole(text) if text == REDACTED => Some("a token or secret plugin setting".to_owned()),
            Secret::InUrl(url) if url_password(url) == Some(REDACTED) => {
                Some(format!("the password of {url}"))
            }
            _ => None,
        };
        found = found.take().or(hidden);
    });
    found
}

/// A secret in a serialized config.
enum Secret<'a> {
    /// A `token`, or a plugin config value whose key names a secret.
    Whole(&'a mut String),
    /// A string that may be a URL with a password (`redis://user:secret@host`).
    InUrl(&'a mut String),
}

/// Call `found` with every secret of a serialized config: every `token`, plugin config values whose
/// key names a secret (`password`, `secret`, `token`, `api_key`...), and every other string as a
/// URL that may carry a password. Nulls are dropped. `in_plugin_config` is true inside a
/// `[[plugin]]`'s `config` table.
fn each_secret(value: &mut Value, in_plugin_config: bool, found: &mut impl FnMut(Secret<'_>)) {
    match value {
        Value::Object(map) => {
            map.retain(|_, value| !value.is_null());
            for (key, value) in map.iter_mut() {
                let secret = key == "token" || (in_plugin_config && names_a_secret(key));
                match value {
                    Value::String(text) if secret => found(Secret::Whole(text)),
                    _ => {
                        each_secret(value, key == "config" || (in_plugin_config && value.is_object()), found)
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| each_secret(item, false, found)),
        Value::String(text) => found(Secret::InUrl(text)),
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
    let (user, _password) = userinfo.split_once(':').filter(|_| !userinfo.contains('/'))?;
    Some(format!("{scheme}://{user}:{REDACTED}@{host}"))
}

/// The password of a URL with credentials (`scheme://user:password@rest`), if it has one.
fn url_password(text: &str) -> Option<&str> {
    let (_scheme, rest) = text.split_once("://")?;
    let (userinfo, _host) = rest.split_once('@')?;
    userinfo.split_once(':').filter(|_| !userinfo.contains('/')).map(|(_user, password)| password)
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
        redact(&mut config);
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

    #[test]
    fn a_config_still_holding_a_redacted_secret_is_found_and_the_word_elsewhere_is_not() {
        let hidden = |text: &str| redacted_secret(text);
        assert_eq!(
            hidden("[admin]\ntoken = \"[redacted]\"\n").as_deref(),
            Some("a token or secret plugin setting")
        );
        let plugin = "[[plugin]]\nname = \"p\"\nconfig = { db_password = \"[redacted]\" }\n";
        assert_eq!(hidden(plugin).as_deref(), Some("a token or secret plugin setting"));
        let url = "[[destination]]\nname = \"r\"\nendpoints = [\"redis://app:[redacted]@127.0.0.1:6379\"]\n";
        assert_eq!(hidden(url).as_deref(), Some("the password of redis://app:[redacted]@127.0.0.1:6379"));
        // The redact plugin's own replacement text is no secret; real secrets pass.
        let replacement = "[[plugin]]\nname = \"redact\"\nconfig = { replacement = \"[redacted]\" }\n";
        assert_eq!(hidden(replacement), None);
        assert_eq!(hidden("[admin]\ntoken = \"hunter2\"\n"), None);
        assert_eq!(hidden("not = [toml"), None, "the parse error is the config check's to give");
    }
}
