//! Bulk HTTP ingress: `POST /v1/messages` carries many messages, admitted as one batch.
//!
//! The body is NDJSON (one message per line: `content-type` `application/x-ndjson`,
//! `application/ndjson`, or JSON Lines' `application/jsonl` or `application/x-jsonlines`) or a JSON
//! array (any other type) of `{"topic": …, "headers": {…}, "payload": "…"}` objects; `payload_base64`
//! carries bytes that are not UTF-8, `priority` 0–255 is optional. The whole body is read and parsed
//! before anything is admitted: a body that does not parse is a `400` naming the line or position,
//! and nothing of it is accepted. Parsing stops at the message past [`MAX_BATCH`] (`413`), and a
//! message's headers past the host's limit are counted, not kept, so that a body is never built
//! into more than its limits allow. Each message is then checked and admitted like a single POST's
//! (`x-sy-` headers are the host's: refused), and the answer lists a result per message, in order:
//! `{"id": "<x-sy-id>"}` or `{"error": "…", "status": 400|413|503}`. The status is `200` when any was
//! accepted, `503` + `Retry-After` when none was for lack of room, `400`/`413` otherwise. The body is
//! read as sent: one in a content coding (`content-encoding: gzip`…) is refused whole, `415`.

use crate::host::{Host, SendError};
use crate::message::{ID_HEADER, Message, is_host_header, unique_id};
use axum::body::Bytes;
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;

/// The most messages one request may carry.
pub(super) const MAX_BATCH: usize = 10_000;

/// The media types of a body of one message a line, NDJSON or JSON Lines (the same format), in
/// lower case.
const NDJSON: [&str; 4] =
    ["application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"];

/// One message of a bulk request (and, with its own fields, of a WebSocket frame).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkMessage {
    pub(super) topic: String,
    #[serde(default)]
    pub(super) headers: ClientHeaders,
    pub(super) payload: Option<String>,
    pub(super) payload_base64: Option<String>,
    #[serde(default)]
    pub(super) priority: u8,
}

/// A message's headers as a client wrote them: kept up to the host's limit
/// ([`MAX_HEADERS`](crate::host::MAX_HEADERS)), counted past it. A message with a million headers is
/// refused for its count (by [`message_of`], alone, as admission would) without a million being built.
#[derive(Default)]
pub(super) struct ClientHeaders {
    kept: BTreeMap<String, String>,
    /// Entries written, a name given twice counted twice (as kept, the last value wins).
    written: usize,
}

impl<'de> Deserialize<'de> for ClientHeaders {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ClientHeaders::default())
    }
}

impl<'de> Visitor<'de> for ClientHeaders {
    type Value = ClientHeaders;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an object of header names and values")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut entries: A) -> Result<ClientHeaders, A::Error> {
        while self.written < crate::host::MAX_HEADERS {
            let Some((name, value)) = entries.next_entry()? else { return Ok(self) };
            self.kept.insert(name, value);
            self.written += 1;
        }
        // Past the limit, the rest are only counted (skipped, not even read as strings).
        while entries.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            self.written += 1;
        }
        Ok(self)
    }
}

/// Why a bulk body is refused whole.
enum BodyProblem {
    /// It does not parse: a `400` saying where.
    Malformed(String),
    /// It holds more than [`MAX_BATCH`] messages: a `413`, the rest unread.
    TooMany,
}

/// Accept the messages of a bulk request (see the module docs).
pub(super) async fn accept_batch(host: &Host, headers: &HeaderMap, body: Bytes) -> Response {
    if let Some(problem) = coding_problem(headers) {
        let mut refused = super::http::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, problem);
        // RFC 9110 (15.5.16): the codings that would have been taken.
        refused.headers_mut().insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        return refused;
    }
    let parsed = match is_ndjson(headers) {
        true => parse_ndjson(&body),
        false => parse_array(&body),
    };
    // Its messages hold copies of what they need of it.
    drop(body);
    let bulk = match parsed {
        Ok(bulk) if bulk.is_empty() => {
            return super::http::error(StatusCode::BAD_REQUEST, "no messages".into());
        }
        Ok(bulk) => bulk,
        Err(BodyProblem::TooMany) => {
            let problem = format!("more than {MAX_BATCH} messages; at most {MAX_BATCH} per request");
            return super::http::error(StatusCode::PAYLOAD_TOO_LARGE, problem);
        }
        Err(BodyProblem::Malformed(problem)) => return super::http::error(StatusCode::BAD_REQUEST, problem),
    };
    let mut results: Vec<Result<String, SendError>> = Vec::with_capacity(bulk.len());
    let mut admissible = Vec::with_capacity(bulk.len());
    for (at, message) in bulk.into_iter().enumerate() {
        match message_of(message) {
            Ok(message) => {
                results.push(Ok(message.unique_id().expect("given above").to_owned()));
                admissible.push((at, message));
            }
            Err(problem) => results.push(Err(SendError::Malformed(problem))),
        }
    }
    let (positions, messages): (Vec<usize>, Vec<Message>) = admissible.into_iter().unzip();
    for (at, admitted) in positions.into_iter().zip(host.try_send_batch(messages).await) {
        if let Err(err) = admitted {
            results[at] = Err(err);
        }
    }
    answer(results)
}

/// Whether a body sent with `headers` is NDJSON: its media type, parameters aside, is one of
/// [`NDJSON`] (in any case: media types are case-insensitive, RFC 9110).
fn is_ndjson(headers: &HeaderMap) -> bool {
    let Some(kind) = headers.get(CONTENT_TYPE) else { return false };
    let media_type = kind.as_bytes().split(|byte| *byte == b';').next().unwrap_or_default().trim_ascii();
    NDJSON.iter().any(|ndjson| media_type.eq_ignore_ascii_case(ndjson.as_bytes()))
}

/// Why a body sent with `headers` cannot be read, if it cannot: it is in a content coding other
/// than `identity`. The body is parsed as sent, and a compressed one was refused as JSON that does
/// not parse, which sent its client looking for a fault in its JSON.
fn coding_problem(headers: &HeaderMap) -> Option<String> {
    headers.get_all(CONTENT_ENCODING).iter().find_map(|codings| {
        let mut each = codings.as_bytes().split(|byte| *byte == b',').map(<[u8]>::trim_ascii);
        let identity = each.all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(b"identity"));
        (!identity).then(|| {
            let codings = crate::bounded_text::one_line(&String::from_utf8_lossy(codings.as_bytes()), 64);
            format!("content-encoding \"{codings}\" is not supported: send the body unencoded")
        })
    })
}

/// The messages of an NDJSON body, blank lines skipped, read up to the line of the message past
/// [`MAX_BATCH`].
fn parse_ndjson(body: &[u8]) -> Result<Vec<BulkMessage>, BodyProblem> {
    let lines = body.split(|byte| *byte == b'\n').enumerate();
    let mut lines = lines.filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace));
    let mut bulk = Vec::new();
    for (at, line) in lines.by_ref().take(MAX_BATCH) {
        let message = serde_json::from_slice(line).map_err(|err| format!("line {}: {err}", at + 1));
        bulk.push(message.map_err(BodyProblem::Malformed)?);
    }
    match lines.next() {
        Some(_) => Err(BodyProblem::TooMany),
        None => Ok(bulk),
    }
}

/// The messages of a JSON array body, read up to the one past [`MAX_BATCH`].
fn parse_array(body: &[u8]) -> Result<Vec<BulkMessage>, BodyProblem> {
    let mut too_many = false;
    let mut reader = serde_json::Deserializer::from_slice(body);
    let parsed = CappedBatch { too_many: &mut too_many }.deserialize(&mut reader);
    match parsed.and_then(|bulk| reader.end().map(|()| bulk)) {
        Ok(bulk) => Ok(bulk),
        Err(_) if too_many => Err(BodyProblem::TooMany),
        // A body of lines sent under another type (`application/json`) is told what to send it as.
        Err(err) => Err(BodyProblem::Malformed(format!(
            "not a JSON array of messages: {err} (one message a line is NDJSON: content-type \
             application/x-ndjson, application/ndjson or application/jsonl)"
        ))),
    }
}

/// Reads a JSON array of at most [`MAX_BATCH`] messages; one past them is refused unread (see
/// [`PastTheBatch`]).
struct CappedBatch<'a> {
    too_many: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for CappedBatch<'_> {
    type Value = Vec<BulkMessage>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CappedBatch<'_> {
    type Value = Vec<BulkMessage>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut messages: A) -> Result<Self::Value, A::Error> {
        let mut bulk = Vec::new();
        while bulk.len() < MAX_BATCH {
            match messages.next_element()? {
                Some(message) => bulk.push(message),
                None => return Ok(bulk),
            }
        }
        match messages.next_element_seed(PastTheBatch { too_many: self.too_many })? {
            Some(never) => match never {},
            None => Ok(bulk),
        }
    }
}

/// The element of an array past [`MAX_BATCH`]: refused before anything of it is read (an error, the
/// only way to stop a reader midway), saying so in `too_many`.
struct PastTheBatch<'a> {
    too_many: &'a mut bool,
}

impl<'de> DeserializeSeed<'de> for PastTheBatch<'_> {
    type Value = std::convert::Infallible;

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<Self::Value, D::Error> {
        *self.too_many = true;
        Err(serde::de::Error::custom(format!("more than {MAX_BATCH} messages")))
    }
}

/// The message `bulk` describes, with a new unique id, or why it is refused.
pub(super) fn message_of(bulk: BulkMessage) -> Result<Message, String> {
    let payload = match (bulk.payload, bulk.payload_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|err| format!("payload_base64: {err}"))?
            .into(),
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => return Err("both payload and payload_base64: give one".into()),
    };
    if let Some(problem) = crate::host::header_count_problem(bulk.headers.written) {
        return Err(problem);
    }
    let message = Message::new(bulk.topic, payload).with_priority(bulk.priority);
    with_headers(message, bulk.headers.kept)
}

/// `message` with a client's `headers` (refused when one is the host's `x-sy-` or not a valid HTTP
/// header) and a new unique id.
pub(super) fn with_headers(
    mut message: Message,
    headers: impl IntoIterator<Item = (String, String)>,
) -> Result<Message, String> {
    for (name, value) in headers {
        // A name is quoted in part: a long one would be kept whole in its result.
        let quoted = || crate::bounded_text::one_line(&name, 64);
        if is_host_header(&name) {
            return Err(format!("header {}: x-sy- headers are the host's to set", quoted()));
        }
        // As a single POST's headers: bytes past ASCII (which an HTTP header may carry) are refused.
        let valid = axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && HeaderValue::from_str(&value).is_ok_and(|value| value.to_str().is_ok());
        if !valid {
            return Err(format!("header \"{}\": not a valid header name and visible-ASCII value", quoted()));
        }
        message.headers.push((name, value));
    }
    message.headers.push((ID_HEADER.to_owned(), unique_id()));
    Ok(message)
}

/// The answer listing each message's result.
fn answer(results: Vec<Result<String, SendError>>) -> Response {
    let accepted = results.iter().filter(|result| result.is_ok()).count();
    let status_of = |err: &SendError| match err {
        SendError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SendError::Malformed(_) => StatusCode::BAD_REQUEST,
        SendError::Backpressure | SendError::ShuttingDown | SendError::Unrecorded(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let full = |result: &Result<String, SendError>| {
        matches!(result, Err(SendError::Backpressure | SendError::ShuttingDown | SendError::Unrecorded(_)))
    };
    let status = match results.iter().find_map(|result| result.as_ref().err()) {
        _ if accepted > 0 => StatusCode::OK,
        _ if results.iter().any(full) => StatusCode::SERVICE_UNAVAILABLE,
        Some(err) => status_of(err),
        None => StatusCode::OK,
    };
    let listed: Vec<serde_json::Value> = results
        .iter()
        .map(|result| match result {
            Ok(id) => serde_json::json!({ "id": id }),
            Err(err) => serde_json::json!({ "error": err.to_string(), "status": status_of(err).as_u16() }),
        })
        .collect();
    let body =
        serde_json::json!({ "accepted": accepted, "refused": results.len() - accepted, "results": listed });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_header_name_is_quoted_in_part() {
        // A 1 MB name was quoted whole: a 1 MB error kept with the message's result.
        let long = "n".repeat(1 << 20);
        for name in [format!("x-sy-{long}"), format!("bad name {long}")] {
            let refused = with_headers(Message::new("t", "p"), [(name, "v".to_owned())]).unwrap_err();
            assert!(refused.len() < 200, "{} bytes: {}...", refused.len(), &refused[..100]);
        }
    }
}
