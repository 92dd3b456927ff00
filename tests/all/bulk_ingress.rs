//! Bulk HTTP ingress, `POST /v1/messages`: NDJSON or a JSON array admitted as one batch, a result per
//! message, bad messages refused alone, a bad body refused whole, a full queue taking what fits, a
//! body cut off by a client that goes away admitting nothing, a body past the batch's limits
//! refused without the rest being read, one in a content coding refused as unsupported, and NDJSON
//! read under each of its media types.

use crate::routing::gated_host;
use crate::support::{drain_and_account, host, next, plugin_dir, post, start_ingress, within};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore};

const CONFIG: &str = "[host]\nworkers = 2\n[[destination]]\nname = \"out\"\ntransport = \"memory\"\n\
                      queue = { capacity = 100000 }\n[[route]]\nname = \"all\"\nto = \"out\"\n";

/// How a body that is not a JSON array is told that one message a line is NDJSON.
const NDJSON_HINT: &str = " (one message a line is NDJSON: content-type application/x-ndjson, \
                           application/ndjson or application/jsonl)";

async fn bulk(addr: std::net::SocketAddr, content_type: &str, body: String) -> (u16, serde_json::Value) {
    bulk_with(addr, &[("content-type", content_type)], body).await
}

/// [`bulk`], with `headers`.
async fn bulk_with(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, serde_json::Value) {
    let headers: Vec<_> = headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        post(addr, "/v1/messages", &headers, body.as_bytes())
    })
    .await
    .unwrap();
    (status, serde_json::from_str(&answer).unwrap_or_else(|err| panic!("{err}: {answer}")))
}

/// The ids a bulk answer gave, in order; `None` for a refused message.
fn ids(answer: &serde_json::Value) -> Vec<Option<String>> {
    let results = answer["results"].as_array().expect("results");
    results.iter().map(|result| result["id"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_and_json_arrays_are_admitted_whole_and_every_message_delivered() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    let lines: Vec<String> = (0..1000)
        .map(|n| {
            format!(
                r#"{{"topic":"orders.eu","headers":{{"x-n":"{n}"}},"payload":"order {n}","priority":{}}}"#,
                n % 3
            )
        })
        .collect();
    let (status, answer) = bulk(addr, "application/x-ndjson", lines.join("\n") + "\n").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["accepted"].as_u64(), answer["refused"].as_u64()), (Some(1000), Some(0)));
    let array = r#"[{"topic":"bytes","payload_base64":"AAH/"},{"topic":"empty"}]"#;
    let (status, second) = bulk(addr, "application/json", array.to_owned()).await;
    assert_eq!((status, second["accepted"].as_u64()), (200, Some(2)), "{second}");
    let given: Vec<String> = ids(&answer).into_iter().chain(ids(&second)).map(Option::unwrap).collect();
    let out = host.memory("out").unwrap();
    let mut delivered = HashSet::new();
    for _ in 0..1002 {
        let message = next(&out).await;
        if message.topic == "bytes" {
            assert_eq!(&message.payload[..], [0, 1, 255]);
        }
        delivered.insert(message.unique_id().unwrap().to_owned());
    }
    assert_eq!(
        delivered,
        given.into_iter().collect::<HashSet<_>>(),
        "each answer's id is its message's x-sy-id"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1002, 1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_is_refused_alone_and_a_body_that_does_not_parse_is_refused_whole() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    let mixed = r#"[{"topic":"ok.1"},{"topic":"bad..topic"},{"topic":"ok.2","headers":{"x-sy-id":"mine"}},{"topic":"ok.3"},{"topic":"ok.4","headers":{"x-a":"é"}}]"#;
    let (status, answer) = bulk(addr, "application/json", mixed.to_owned()).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(answer["accepted"].as_u64(), Some(2));
    assert_eq!(results[1]["status"], 400);
    assert!(results[1]["error"].as_str().unwrap().contains("empty segment"), "{answer}");
    assert_eq!(results[2]["status"], 400);
    assert!(results[2]["error"].as_str().unwrap().contains("x-sy- headers are the host's"), "{answer}");
    // Refused as a single POST refuses it (it was taken, and delivered as "é").
    assert_eq!(results[4]["status"], 400);
    assert!(results[4]["error"].as_str().unwrap().contains("visible-ASCII value"), "{answer}");
    let broken = "{\"topic\":\"a\"}\n{\"topic\":\"b\"}\n{\"topic\":\n";
    // Media types are case-insensitive: read as lines, it fails on its third.
    let (status, answer) = bulk(addr, "Application/X-NDJSON", broken.to_owned()).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().starts_with("line 3: "), "{answer}");
    let (status, answer) = bulk(addr, "application/json", "[]".to_owned()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("no messages")));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2), "nothing of a refused body was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_takes_what_fits_and_answers_503_when_nothing_did() {
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let (host, delivered) =
        gated_host(dir.path(), "[host]\nqueue_capacity = 2\nworkers = 1\nbatch_size = 1", &entered, &gate)
            .await;
    host.try_send(switchyard::Message::new("t", "first")).await.unwrap();
    within(entered.notified()).await;
    let addr = start_ingress(&host).await;
    let five = (0..5).map(|n| format!(r#"{{"topic":"t","payload":"{n}"}}"#)).collect::<Vec<_>>().join("\n");
    let (status, answer) = bulk(addr, "application/x-ndjson", five.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["accepted"].as_u64(), answer["refused"].as_u64()), (Some(2), Some(3)));
    assert_eq!(answer["results"][4]["status"], 503);
    let (status, answer) = bulk(addr, "application/x-ndjson", five).await;
    assert_eq!((status, answer["accepted"].as_u64()), (503, Some(0)), "{answer}");
    gate.add_permits(3);
    let payloads: Vec<_> = [next(&delivered).await, next(&delivered).await, next(&delivered).await]
        .into_iter()
        .map(|message| message.payload)
        .collect();
    assert_eq!(payloads, ["first", "0", "1"]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_off_by_a_client_that_goes_away_admits_nothing_and_the_resent_batch_goes_whole() {
    use std::io::Write;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    let lines: Vec<String> =
        (0..100).map(|n| format!(r#"{{"topic":"orders.eu","payload":"order {n}"}}"#)).collect();
    let body = lines.join("\n") + "\n";
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        // Half the body, then the client is gone.
        stream.write_all(&body.as_bytes()[..body.len() / 2]).unwrap();
    })
    .await
    .unwrap();
    let (status, answer) = bulk(addr, "application/x-ndjson", lines.join("\n") + "\n").await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(100)), "{answer}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (100, 100), "the cut batch admitted none of its messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_its_limits_is_refused_without_the_rest_being_read() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    // A line past the limit that does not parse: refused for the count, so it was never read (the
    // whole body was parsed before the count was looked at: a 400 naming line 10002).
    let lines = r#"{"topic":"a"}"#.repeat(10_001).replace("}{", "}\n{");
    let (status, answer) = bulk(addr, "application/x-ndjson", format!("{lines}\nx\n")).await;
    let too_many = "more than 10000 messages; at most 10000 per request";
    assert_eq!((status, answer["error"].as_str()), (413, Some(too_many)), "{answer}");
    let array = r#"{"topic":"a"},"#.repeat(10_001);
    let (status, answer) = bulk(addr, "application/json", format!("[{array}x]")).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some(too_many)), "{answer}");
    // Headers past the limit are counted, not read: the 1500th is not even a string, yet the message
    // is refused alone, for its count.
    let headers: Vec<String> = (0..2000)
        .map(|n| match n {
            1499 => format!(r#""x-{n}":{n}"#),
            _ => format!(r#""x-{n}":"v""#),
        })
        .collect();
    let crowded = format!(r#"{{"topic":"a","headers":{{{}}}}}"#, headers.join(","));
    let (status, answer) =
        bulk(addr, "application/x-ndjson", format!("{crowded}\n{{\"topic\":\"a\"}}\n")).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{answer}");
    let refused = &answer["results"][0];
    assert_eq!(
        (refused["status"].as_u64(), refused["error"].as_str()),
        (Some(400), Some("malformed message: 2000 headers; at most 1024")),
        "as admission refuses it: {answer}"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1), "nothing of a refused body was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_most_headers_a_client_may_give_is_admitted_with_the_hosts_id() {
    // The ingress gives each message its id before admission, which counted it among the
    // client's headers: a message of 1024 was refused as "1025 headers; at most 1024".
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    let line = |count: usize| {
        let headers: Vec<String> = (0..count).map(|n| format!(r#""x-{n}":"v""#)).collect();
        format!(r#"{{"topic":"a","headers":{{{}}}}}"#, headers.join(","))
    };
    let (status, answer) =
        bulk(addr, "application/x-ndjson", format!("{}\n{}\n", line(1024), line(1025))).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{answer}");
    let refused = &answer["results"][1];
    assert_eq!(
        (refused["status"].as_u64(), refused["error"].as_str()),
        (Some(400), Some("malformed message: 1025 headers; at most 1024")),
        "{answer}"
    );
    let delivered = next(&host.memory("out").unwrap()).await;
    assert_eq!(delivered.headers.len(), 1025, "the client's 1024 and the host's id");
    assert_eq!(delivered.unique_id(), answer["results"][0]["id"].as_str());
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_room_part_way_accepts_none_after_the_first_refused() {
    // A batch whose messages were each tried against the intake's byte budget alone took a small
    // message after a large one refused for room: an answer of [503, 202], so a client that sends
    // the refused one again has it accepted after the one behind it.
    let dir = plugin_dir(&[]);
    let (entered, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let text = "[host]\nqueue_capacity = 1000\nqueue_bytes = 1048576\nworkers = 1\nbatch_size = 1";
    let (host, delivered) = gated_host(dir.path(), text, &entered, &gate).await;
    host.try_send(switchyard::Message::new("t", "first")).await.unwrap();
    within(entered.notified()).await;
    host.try_send(switchyard::Message::new("t", vec![b'x'; 600 << 10])).await.unwrap();
    let batch =
        vec![switchyard::Message::new("t", vec![b'y'; 500 << 10]), switchyard::Message::new("t", "small")];
    let results = host.try_send_batch(batch).await;
    assert!(
        matches!(
            results[..],
            [Err(switchyard::SendError::Backpressure), Err(switchyard::SendError::Backpressure)]
        ),
        "the small one behind the refused one is refused too: {results:?}"
    );
    gate.add_permits(2);
    let payloads: Vec<_> =
        [next(&delivered).await, next(&delivered).await].into_iter().map(|m| m.payload.len()).collect();
    assert_eq!(payloads, [5, 600 << 10]);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_a_content_coding_is_refused_as_unsupported_and_an_identity_one_read() {
    // A gzip body was parsed as it came and refused as "not a JSON array of messages", which
    // sent its client looking for a fault in its JSON.
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    let array = r#"[{"topic":"a"}]"#;
    for coding in ["gzip", "br", "identity, gzip"] {
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let (status, answer) = bulk_with(addr, &headers, array.to_owned()).await;
        let problem = format!("content-encoding {coding:?} is not supported: send the body unencoded");
        assert_eq!((status, answer["error"].as_str()), (415, Some(problem.as_str())), "{answer}");
    }
    for coding in ["identity", "Identity"] {
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let (status, answer) = bulk_with(addr, &headers, array.to_owned()).await;
        assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{coding}: {answer}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (2, 2), "nothing of a refused body was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_is_read_under_each_of_its_media_types_and_an_array_refused_names_them() {
    // Only `application/x-ndjson` was read as lines: a body sent as `application/ndjson` or
    // `application/jsonl` was refused as "not a JSON array of messages", saying nothing of NDJSON.
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), CONFIG).await;
    let addr = start_ingress(&host).await;
    let lines = "{\"topic\":\"a\"}\n{\"topic\":\"b\"}\n";
    let media_types = [
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "Application/JSONL ; charset=utf-8",
    ];
    for media_type in media_types {
        let (status, answer) = bulk(addr, media_type, lines.to_owned()).await;
        assert_eq!((status, answer["accepted"].as_u64()), (200, Some(2)), "{media_type}: {answer}");
    }
    for media_type in ["application/json", "application/x-ndjsonl"] {
        let (status, answer) = bulk(addr, media_type, lines.to_owned()).await;
        let problem = answer["error"].as_str().unwrap();
        assert_eq!(status, 400, "{media_type}: {answer}");
        assert!(problem.starts_with("not a JSON array of messages: "), "{problem}");
        assert!(problem.ends_with(NDJSON_HINT), "{problem}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered), (10, 10));
}
