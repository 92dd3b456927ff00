//! Properties of the HTTP ingress over a real socket: arbitrary topics and
//! headers are accepted (202, delivered with the client's `x-` headers and
//! the ingress's own `x-sy-id`) or refused (400, nothing accepted), never a
//! client's `x-sy-` header, never a crash.

use crate::support::{MEMORY_OUT, PATIENCE, drain_and_account, host, plugin_dir, post};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::collections::BTreeSet;

/// Topics of plain, wildcard, empty and odd segments, and any text.
fn topic() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => "[a-z0-9_-]{1,5}",
        1 => Just("*".to_owned()),
        1 => Just(">".to_owned()),
        1 => Just(String::new()),
        1 => "[^.]{1,4}",
    ];
    prop_oneof![
        3 => proptest::collection::vec(segment, 0..4).prop_map(|segments| segments.join(".")),
        1 => any::<String>(),
    ]
}

/// Header names, `x-sy-` in any case among them; values of visible ASCII
/// with inner spaces, or with a non-ASCII character.
fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        "[xX]-[sS][yY]-[a-zA-Z-]{1,8}",
        "[xX]-[a-zA-Z0-9-]{1,8}",
        Just("Content-Type".to_owned()),
        Just("Content-Encoding".to_owned()),
        "[a-z][a-z0-9-]{0,8}",
    ];
    let value = prop_oneof![4 => "[!-~]([ -~]{0,10}[!-~])?", 1 => "[!-~]{0,3}[\u{80}-\u{10ffff}][!-~]{0,3}"];
    proptest::collection::vec((name, value), 0..6).prop_map(|mut headers| {
        let mut seen = BTreeSet::new();
        headers.retain(|(name, _)| seen.insert(name.to_ascii_lowercase()));
        headers.retain(|(name, _)| !["host", "connection", "content-length"].contains(&name.as_str()));
        headers
    })
}

/// What the README promises of a topic: dot-separated segments, none empty,
/// none a wildcard, no whitespace or control characters.
fn topic_is_valid(topic: &str) -> bool {
    topic.split('.').all(|segment| !["", "*", ">"].contains(&segment))
        && !topic.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn percent_encoded(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_topic_and_headers_are_accepted_or_refused_and_no_client_sy_header_passes() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{MEMORY_OUT}[[route]]\nname = \"all\"\nto = \"out\"\n")).await;
    let addr = crate::support::start_ingress(&host).await;
    let out = host.memory("out").unwrap();
    let checked = host.clone();
    let accepted = tokio::task::spawn_blocking(move || {
        let accepted = std::cell::Cell::new(0u64);
        let config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
        let result = TestRunner::new(config).run(&(topic(), headers()), |(topic, headers)| {
            let sent: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let path = format!("/v1/messages/{}", percent_encoded(&topic));
            let (status, body) = post(addr, &path, &sent, b"payload");
            let lower = |name: &str| name.to_ascii_lowercase();
            let kept: Vec<(String, String)> = headers
                .iter()
                .map(|(name, value)| (lower(name), value.clone()))
                .filter(|(name, _)| {
                    (name.starts_with("x-") && !name.starts_with("x-sy-"))
                        || name == "content-type"
                        || name == "content-encoding"
                })
                .collect();
            let visible = kept.iter().all(|(_, value)| value.is_ascii());
            if status != 202 {
                // Every refusal says why in JSON, axum's own rejections too.
                let answer = serde_json::from_str::<serde_json::Value>(&body).ok();
                let why = answer.as_ref().and_then(|answer| answer["error"].as_str());
                prop_assert!(why.is_some_and(|why| !why.is_empty()), "{}: {}", status, body);
            }
            if topic.is_empty() {
                prop_assert_eq!(status, 404, "no topic, no such resource: {}", body);
                return Ok(());
            }
            if !(visible && topic_is_valid(&topic)) {
                prop_assert_eq!(status, 400, "{:?} {:?}: {}", topic, headers, body);
                return Ok(());
            }
            prop_assert_eq!(status, 202, "{:?} {:?}: {}", topic, headers, body);
            accepted.set(accepted.get() + 1);
            let id =
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
            let message = out.recv_timeout(PATIENCE).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(&message.topic, &topic);
            prop_assert_eq!(message.unique_id(), Some(id.as_str()));
            let mut expected = kept;
            expected.push(("x-sy-id".to_owned(), id));
            prop_assert_eq!(message.headers, expected);
            Ok(())
        });
        result.unwrap_or_else(|failure| panic!("{failure}"));
        assert!(checked.memory("out").unwrap().is_empty(), "a refused request was delivered");
        accepted.get()
    });
    let accepted = crate::support::within(accepted).await.unwrap();
    assert!(accepted > 0, "no request was accepted: the strategy is off");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, accepted, "only the answered 202s were accepted");
}
