//! The single-message HTTP ingress, `POST /v1/messages/{topic}`: which of a request's headers its
//! message keeps, and how many a request may carry.

use crate::support::{MEMORY_OUT, drain_and_account, host, next, plugin_dir, post, start_ingress};
use std::net::SocketAddr;

const ROUTE: &str = "[[route]]\nname = \"all\"\nto = \"out\"\n";

/// POST `body` to `/v1/messages/t` at `addr` with `headers`: the status and the answer's body.
async fn post_message(
    addr: SocketAddr,
    headers: Vec<(String, String)>,
    body: &'static [u8],
) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        post(addr, "/v1/messages/t", &headers, body)
    })
    .await
    .unwrap()
}

/// `count` headers `x-h0: v` … .
fn x_headers(count: usize) -> Vec<(String, String)> {
    (0..count).map(|n| (format!("x-h{n}"), "v".to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_of_the_most_headers_a_client_may_give_is_taken_and_one_of_more_refused_saying_so() {
    // hyper's default of 100 header lines refused a POST of 200 `x-` headers with a bare, empty
    // 431, where the bulk, WebSocket, gRPC and NATS ingresses take the host's 1024 a message.
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{MEMORY_OUT}{ROUTE}")).await;
    let addr = start_ingress(&host).await;
    let out = host.memory("out").unwrap();
    for count in [200, 1024] {
        let (status, answer) = post_message(addr, x_headers(count), b"{}").await;
        assert_eq!(status, 202, "{count} headers: {answer}");
        assert_eq!(next(&out).await.headers.len(), count + 1, "the client's and the host's id");
    }
    let (status, answer) = post_message(addr, x_headers(1100), b"{}").await;
    let answer: serde_json::Value =
        serde_json::from_str(&answer).unwrap_or_else(|err| panic!("{err}: {answer}"));
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("malformed message: 1100 headers; at most 1024")),
        "refused as the other ingresses refuse it"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posts_content_encoding_is_kept_as_its_content_type_is() {
    // Only `x-` headers and `content-type` were kept: a gzip body sent with `content-encoding:
    // gzip` became a message of compressed bytes labelled JSON, which nothing could read.
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{MEMORY_OUT}{ROUTE}")).await;
    let addr = start_ingress(&host).await;
    let headers =
        [("content-type", "application/json"), ("content-encoding", "gzip"), ("accept-encoding", "gzip")];
    let headers = headers.map(|(name, value)| (name.to_owned(), value.to_owned())).to_vec();
    // The start of a gzip stream: the body is the client's, taken as it is.
    let (status, answer) = post_message(addr, headers, b"\x1f\x8b\x08\x00").await;
    assert_eq!(status, 202, "{answer}");
    let message = next(&host.memory("out").unwrap()).await;
    let kept: Vec<(&str, &str)> = message
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("x-sy-"))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    assert_eq!(kept, [("content-type", "application/json"), ("content-encoding", "gzip")]);
    assert_eq!(&message.payload[..], b"\x1f\x8b\x08\x00");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1);
}
