//! The single-message HTTP ingress, `POST /v1/messages/{topic}`: which of a request's headers its
//! message keeps, and how many header lines a request may carry.

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
async fn a_post_of_up_to_100_header_lines_is_taken_and_one_of_more_refused_431() {
    // The documented cap of a single POST (hyper's default, kept for its cost: README "HTTP
    // ingress"): the client's `host` and `content-length` count among the 100.
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &format!("{MEMORY_OUT}{ROUTE}")).await;
    let addr = start_ingress(&host).await;
    let out = host.memory("out").unwrap();
    let (status, answer) = post_message(addr, x_headers(95), b"{}").await;
    assert_eq!(status, 202, "95 x- headers: {answer}");
    assert_eq!(next(&out).await.headers.len(), 95 + 1, "the client's and the host's id");
    let (status, answer) = post_message(addr, x_headers(101), b"{}").await;
    assert_eq!((status, answer.as_str()), (431, ""), "refused unread");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.accepted, 1);
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
