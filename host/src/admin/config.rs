//! The configuration over the admin API: `GET /v1/config` shows the effective
//! configuration (JSON, or TOML with `?format=toml`) with secrets redacted,
//! `POST /v1/config/validate` checks a TOML body without applying it, and
//! `PUT /v1/config` applies one as a reload of the file would and writes it
//! to the config file, so a restart keeps it. A refused config answers 422
//! with the same message a bad file gets, and changes nothing.

use crate::config::{names_a_secret, secret_pairs, url_password, without_secrets};
use crate::host::Host;
use crate::reload::Replacement;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};
use std::borrow::Cow;

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
    match host.replace_config(text).await {
        Ok(Replacement { change, written, plugins_refused: refused }) => {
            let file = written.map(|path| path.display().to_string());
            // Applied, the config may still have refused a plugin's new file or settings: said here too.
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

/// The answer to a refused config change: 422, or 503 once the host is shutting down (the config
/// was not at fault).
pub(super) fn refused(err: crate::config::ConfigError) -> Response {
    let status = match err {
        crate::config::ConfigError::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(json!({ "error": err.to_string() }))).into_response()
}

/// Replace the secrets in a serialized config, or a part of one such as its routes (see
/// [`each_secret`]), with [`REDACTED`]. Nulls are dropped (TOML has none).
pub(super) fn redact(value: &mut Value) {
    each_secret(value, Within::Config, &mut |secret| match secret {
        Secret::Whole(text) | Secret::HeaderMatch(text) => *text = REDACTED.into(),
        Secret::InUrl(text) => {
            if let Cow::Owned(hidden) = without_secrets(text, REDACTED) {
                *text = hidden;
            }
        }
    });
}

/// Where a config `text` (TOML) still holds a secret as `GET /v1/config` hid it, if anywhere:
/// applied, the secret would become the text `[redacted]`.
fn redacted_secret(text: &str) -> Option<String> {
    let mut config = serde_json::to_value(toml::from_str::<toml::Table>(text).ok()?).ok()?;
    let mut found = None;
    each_secret(&mut config, Within::Config, &mut |secret| {
        let hidden = match secret {
            Secret::Whole(text) if text == REDACTED => Some("a token or secret plugin setting".to_owned()),
            Secret::HeaderMatch(text) if text == REDACTED => {
                Some("a route's match on a secret header".to_owned())
            }
            Secret::InUrl(url) if url_password(url) == Some(REDACTED) => {
                Some(format!("the password of {url}"))
            }
            Secret::InUrl(text) if secret_pairs(text).any(|(_, value)| value == REDACTED) => {
                Some(format!("a secret in {text}"))
            }
            _ => None,
        };
        found = found.take().or(hidden);
    });
    found
}

/// A secret in a serialized config.
enum Secret<'a> {
    /// A `token`, or a plugin config or destination option value whose key names a secret.
    Whole(&'a mut String),
    /// The value a route's `match.headers` requires of a header whose name names a secret
    /// (`authorization`, `x-api-key`).
    HeaderMatch(&'a mut String),
    /// A string that may be a URL with a password (`redis://user:secret@host`), or hold a secret
    /// as `name=value` (`--password=…`, `?access_token=…`).
    InUrl(&'a mut String),
}

/// Where [`each_secret`] is in a serialized config.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    /// Anywhere but the tables below.
    Config,
    /// A route's `match`.
    Match,
    /// A route's `match.headers`: header name → the value required (`*`: only there).
    MatchHeaders,
    /// A `[[plugin]]`'s `config` or a destination's `options`, or a table inside one.
    Settings,
}

/// Call `found` with every secret of a serialized config: every `token`; the values of a
/// `[[plugin]]`'s `config` and of a destination's `options` (a subprocess's `env` too) whose key
/// names a secret (`password`, `secret`, `token`, `api_key`, `authorization`...), and the value a
/// route's `match.headers` requires of a header so named (but `*`, which asks only that it be
/// there); and every other string as text that may carry one (a URL's password, `name=value`).
/// Nulls are dropped.
fn each_secret(value: &mut Value, within: Within, found: &mut impl FnMut(Secret<'_>)) {
    match value {
        Value::Object(map) => {
            map.retain(|_, value| !value.is_null());
            for (key, value) in map.iter_mut() {
                let secret = match within {
                    Within::Config | Within::Match => key == "token",
                    Within::MatchHeaders => names_a_secret(key) && *value != "*",
                    Within::Settings => names_a_secret(key),
                };
                match value {
                    Value::String(text) if secret && within == Within::MatchHeaders => {
                        found(Secret::HeaderMatch(text))
                    }
                    Value::String(text) if secret => found(Secret::Whole(text)),
                    _ => {
                        let inner = match (key.as_str(), within) {
                            ("config" | "options", _) | (_, Within::Settings) => Within::Settings,
                            ("match", Within::Config) => Within::Match,
                            ("headers", Within::Match) => Within::MatchHeaders,
                            _ => Within::Config,
                        };
                        each_secret(value, inner, found)
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| each_secret(item, Within::Config, found)),
        Value::String(text) => found(Secret::InUrl(text)),
        _ => {}
    }
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
    fn secrets_in_destination_options_arguments_queries_and_odd_urls_are_redacted() {
        // A helper found each of these shown whole by GET /v1/config.
        let mut config = json!({
            "destination": [{
                "name": "job", "transport": "subprocess",
                "options": {
                    "command": ["tool", "--password=ZZARG", "--level=3"],
                    "env": { "DB_PASSWORD": "ZZDB", "X-API-KEY": "ZZKEY", "HOME": "/srv" },
                    "path": "/hook?access_token=ZZQUERY&mode=fast",
                    "authorization": "Bearer ZZAUTH",
                },
                "endpoints": ["postgres://app:pa/ss1@db:5432", "postgres://app:p@ss2@db:5432"],
            }],
        });
        redact(&mut config);
        let shown = config.to_string();
        assert!(!shown.contains("ZZ") && !shown.contains("ss1") && !shown.contains("ss2"), "{shown}");
        for kept in ["--level=3", "\"HOME\":\"/srv\"", "mode=fast", "postgres://app:[redacted]@db:5432"] {
            assert!(shown.contains(kept), "{kept} in {shown}");
        }
        let put_back = "[[destination]]\nname = \"j\"\noptions = { path = \"/h?token=[redacted]\" }\n";
        assert_eq!(redacted_secret(put_back).as_deref(), Some("a secret in /h?token=[redacted]"));
    }

    #[test]
    fn a_route_match_on_a_secret_header_is_redacted_but_a_presence_check_and_other_headers_are_not() {
        let headers = json!({
            "authorization": "Bearer ZZAUTH", "X-Api-Key": "ZZKEY", "x-auth-token": "*", "x-tenant": "acme"
        });
        let mut config =
            json!({ "route": [{ "name": "r", "match": { "topic": "a.*", "headers": headers } }] });
        redact(&mut config);
        let shown = json!({
            "authorization": REDACTED, "X-Api-Key": REDACTED, "x-auth-token": "*", "x-tenant": "acme"
        });
        assert_eq!(config["route"][0]["match"], json!({ "topic": "a.*", "headers": shown }));
        let put_back = "[[route]]\nname = \"r\"\nmatch = { headers = { authorization = \"[redacted]\" } }\n";
        assert_eq!(redacted_secret(put_back).as_deref(), Some("a route's match on a secret header"));
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
