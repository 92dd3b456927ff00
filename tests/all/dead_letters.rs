//! Dead letters when the dead-letter path is down: kept in the dead-letter
//! file (counted only once there), re-delivered when a destination takes
//! them again, across a restart too; fallbacks; labels any transport takes.

use crate::cli::Running;
use crate::exposition::sample;
use crate::support::{
    HungFile, PATIENCE, builder, drain_and_account, eventually, http, next, plugin_dir, start_ingress, within,
};
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use switchyard::admin::AdminServer;
use switchyard::dead_letter::{
    DAMAGED_FILE_NAME, DeadLetterReason, DeadLetterRecord, FILE_NAME, LISTED_BYTES, REASON_CODE_HEADER,
    REASON_HEADER,
};
use switchyard::{
    Config, DeliveryError, Destination, Host, Message, MessageId, PluginError, RequestError, RouteConfig,
};

/// A dead-letter destination that refuses while `up` is false and hands
/// what it takes to `taken`.
struct Switchable {
    up: Arc<AtomicBool>,
    taken: flume::Receiver<Message>,
}

impl Switchable {
    fn new(up: bool) -> (Switchable, impl Destination) {
        let (up, (sender, taken)) = (Arc::new(AtomicBool::new(up)), flume::unbounded());
        let is_up = up.clone();
        let destination = move |message: Message| {
            let (is_up, sender) = (is_up.clone(), sender.clone());
            async move {
                match is_up.load(Ordering::SeqCst) {
                    true => {
                        sender.send(message).map(|()| None).map_err(|_| DeliveryError::Fatal("gone".into()))
                    }
                    false => Err(DeliveryError::Retryable("down for the test".into())),
                }
            }
        };
        (Switchable { up, taken }, destination)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// The ids of the next `count` letters taken.
    async fn ids(&self, count: usize) -> HashSet<MessageId> {
        let mut ids = HashSet::new();
        for _ in 0..count {
            ids.insert(next(&self.taken).await.id);
        }
        ids
    }
}

/// A host over `state` with no routes, whose dead letters go to native
/// destination `dlq`.
async fn host(state: &Path, dlq: impl Destination) -> Host {
    let plugins = plugin_dir(&[]);
    let mut config = Config::default();
    config.host.dead_letter = "dlq".into();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state);
    host.destination("dlq", dlq).build().await.unwrap_or_else(|err| panic!("{err}"))
}

/// Send `count` messages no route takes; their ids.
async fn send_unroutable(host: &Host, count: usize) -> HashSet<MessageId> {
    let mut ids = HashSet::new();
    for n in 0..count {
        ids.insert(host.send(Message::new("nowhere", format!("letter {n}"))).await.unwrap());
    }
    ids
}

/// The ids in the dead-letter file, once every accepted message is counted;
/// `elsewhere` dead letters went to a destination.
fn spooled_once_settled(host: &Host, elsewhere: u64) -> HashSet<MessageId> {
    eventually(|| {
        let stats = host.stats();
        let held = host.dead_letters(1000).unwrap();
        // What counts as dead-lettered is in the file already.
        let found = elsewhere + held.count as u64;
        assert!(stats.dead_lettered <= found, "{stats:?} with {} in the file", held.count);
        match stats.in_flight() {
            0 => Ok(held.letters.iter().map(|letter| letter.id.parse().unwrap()).collect()),
            _ => Err(stats),
        }
    })
}

fn metric(host: &Host, name: &str) -> f64 {
    sample(&host.metrics().encode(), name, &[]).unwrap_or_else(|| panic!("no {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_in_the_file_while_their_destination_is_down_and_follow_when_it_is_back() {
    let state = tempfile::tempdir().unwrap();
    let (dlq, destination) = Switchable::new(false);
    let host = host(state.path(), destination).await;
    let sent = send_unroutable(&host, 20).await;

    assert_eq!(spooled_once_settled(&host, 0), sent);
    assert_eq!(host.stats().dead_lettered, 20);
    let held = host.dead_letters(1).unwrap();
    assert_eq!((held.count, held.letters.len(), held.file.clone()), (20, 1, state.path().join(FILE_NAME)));
    assert_eq!((held.letters[0].code.as_str(), held.letters[0].destination.as_str()), ("no-route", "dlq"));
    let lines = std::fs::read_to_string(state.path().join(FILE_NAME)).unwrap();
    assert_eq!(lines.lines().count(), 20);
    assert_eq!(metric(&host, "switchyard_dead_letters_spooled"), 20.0);
    assert!(dlq.taken.is_empty(), "nothing reached the destination while it was down");

    dlq.set_up(true);
    assert_eq!(dlq.ids(20).await, sent, "every letter re-delivered");
    eventually(|| {
        let left = host.dead_letters(0).unwrap().count;
        let spooled = metric(&host, "switchyard_dead_letters_spooled");
        let redelivered = metric(&host, "switchyard_dead_letters_redelivered_total");
        // Cut out of the file once the pass that re-delivered them is over.
        let bytes = std::fs::metadata(state.path().join(FILE_NAME)).unwrap().len();
        match (left, spooled, redelivered, bytes) {
            (0, 0.0, 20.0, 0) => Ok(()),
            seen => Err(seen),
        }
    });
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 20, "counted once, not again when re-delivered");
    assert!(dlq.taken.is_empty(), "each letter re-delivered once: {:?}", dlq.taken.try_iter().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_a_host_left_in_the_file_are_re_delivered_by_the_next_one_and_only_once() {
    let state = tempfile::tempdir().unwrap();
    let (first_dlq, destination) = Switchable::new(false);
    let first = host(state.path(), destination).await;
    let sent = send_unroutable(&first, 10).await;
    assert_eq!(spooled_once_settled(&first, 0), sent);
    within(first.shutdown()).await;
    drop(first);
    assert!(first_dlq.taken.is_empty());

    let (dlq, destination) = Switchable::new(true);
    let second = host(state.path(), destination).await;
    assert_eq!(dlq.ids(10).await, sent, "the second host re-delivered what the first left");
    eventually(|| match second.dead_letters(0).unwrap().count {
        0 => Ok(()),
        left => Err(left),
    });
    let stats = drain_and_account(&second).await;
    assert_eq!((stats.accepted, stats.dead_lettered), (0, 0), "re-delivery is no new dead letter");

    let (third_dlq, destination) = Switchable::new(true);
    let third = host(state.path(), destination).await;
    assert_eq!(third.dead_letters(10).unwrap().count, 0, "nothing left to send twice");
    let sent = send_unroutable(&third, 1).await;
    assert_eq!(third_dlq.ids(1).await, sent, "only the third host's own letter arrives");
    drain_and_account(&third).await;
    assert!(third_dlq.taken.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_a_state_directory_in_use_is_refused_and_the_first_keeps_its_letters() {
    let state = tempfile::tempdir().unwrap();
    let (first_dlq, destination) = Switchable::new(false);
    let first = host(state.path(), destination).await;
    let sent = send_unroutable(&first, 5).await;
    assert_eq!(spooled_once_settled(&first, 0), sent);
    // A second host would rewrite the file under the first (and re-deliver its letters too).
    let plugins = plugin_dir(&[]);
    let second = Host::builder().plugin_dir(plugins.path()).state_dir(state.path()).build().await;
    let refused = second.expect_err("the state directory is the first host's").to_string();
    let expected = format!("state directory {}: in use by another host", state.path().display());
    assert!(refused.starts_with(&expected) && refused.contains("host.state_dir"), "{refused}");
    assert_eq!(first.dead_letters(10).unwrap().count, 5, "the first host's letters are whole");
    first_dlq.set_up(true);
    assert_eq!(first_dlq.ids(5).await, sent);
    within(first.shutdown()).await;

    // Once the first has shut down, the directory is free.
    let (dlq, destination) = Switchable::new(true);
    let next = host(state.path(), destination).await;
    assert_eq!(next.dead_letters(10).unwrap().count, 0);
    drain_and_account(&next).await;
    assert!(dlq.taken.is_empty() && first_dlq.taken.is_empty(), "each letter was sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_destination_that_hangs_holds_up_no_other_message() {
    // One worker: it used to wait for each dead letter of a batch before the next batch.
    let (release, held) = flume::unbounded::<()>();
    let (took, taken) = flume::unbounded();
    let hanging = move |message: Message| {
        let (held, took) = (held.clone(), took.clone());
        async move {
            let _ = held.recv_async().await;
            took.send(message).unwrap();
            Ok(None)
        }
    };
    let route = "[[route]]\nname = \"t\"\nmatch = { topic = \"t\" }\nto = \"out\"\n";
    let mut config =
        Config::from_toml("test.toml", &format!("{}{route}", crate::support::MEMORY_OUT)).unwrap();
    (config.host.dead_letter, config.host.workers) = ("dlq".into(), 1);
    let plugins = plugin_dir(&[]);
    let host = builder(plugins.path()).config("test.toml", config).destination("dlq", hanging);
    let host = host.build().await.unwrap();
    let out = host.memory("out").unwrap();
    let letter = host.send(Message::new("nowhere", "no route")).await.unwrap();
    for n in 0..3 {
        let sent = host.send(Message::new("t", format!("{n}"))).await.unwrap();
        assert_eq!(next(&out).await.id, sent, "delivered while the dead letter hangs");
    }
    release.send(()).unwrap();
    assert_eq!(next(&taken).await.id, letter);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (3, 1));
    // A dead-letter destination counts what it took as any destination does.
    let deliveries = |destination| {
        let labels = [("destination", destination), ("result", "ok")];
        sample(&host.metrics().encode(), "switchyard_destination_deliveries_total", &labels)
    };
    assert_eq!((deliveries("dlq"), deliveries("out")), (Some(1.0), Some(3.0)));
}

/// Config of an `api` destination at `refusing` (which answers every
/// message with a final error) taking every message.
fn api_with_fallback(refusing: SocketAddr) -> String {
    format!(
        r#"
[[destination]]
name = "api"
transport = "http"
endpoints = ["{refusing}"]
[[route]]
name = "all"
to = "api"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_destination_falls_back_to_the_hosts_then_to_the_file() {
    let state = tempfile::tempdir().unwrap();
    let (dlq, destination) = Switchable::new(false);
    let (backup, backup_destination) = Switchable::new(true);
    let plugins = plugin_dir(&[]);
    let (refusing, _) = header_server(axum::http::StatusCode::BAD_REQUEST).await;
    let mut config = Config::from_toml("test.toml", &api_with_fallback(refusing)).unwrap();
    config.host.dead_letter = "backup".into();
    config.destinations[0].dead_letter = Some("dlq".into());
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("dlq", destination).destination("backup", backup_destination);
    let host = host.build().await.unwrap();

    let mut sent = HashSet::new();
    for n in 0..5 {
        sent.insert(host.send(Message::new("orders", format!("{n}"))).await.unwrap());
    }
    assert_eq!(backup.ids(5).await, sent, "the fallback took what dlq refused");
    assert_eq!(spooled_once_settled(&host, 5), HashSet::new(), "so nothing went to the file");

    backup.set_up(false);
    let mut sent = HashSet::new();
    for n in 0..5 {
        sent.insert(host.send(Message::new("orders", format!("{n}"))).await.unwrap());
    }
    assert_eq!(spooled_once_settled(&host, 5), sent, "with the fallback down too, the file has them");
    let held = host.dead_letters(10).unwrap();
    assert!(
        held.letters.iter().all(|letter| letter.destination == "dlq" && letter.code == "delivery-failed")
    );
    assert!(backup.taken.is_empty() && dlq.taken.is_empty());

    backup.set_up(true);
    assert_eq!(backup.ids(5).await, sent, "re-delivered along the same fallbacks");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 10);
    assert_eq!(host.dead_letters(0).unwrap().count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_re_delivered_while_the_file_cannot_be_rewritten_are_not_sent_again() {
    // The rewrite that takes re-delivered letters out of the file fails
    // (a directory where its temporary file goes, as a full disk would):
    // they stay in the file, but wait no more and are not sent again; once it
    // can be rewritten, they leave it.
    let state = tempfile::tempdir().unwrap();
    let (dlq, destination) = Switchable::new(false);
    let host = host(state.path(), destination).await;
    let sent = send_unroutable(&host, 5).await;
    assert_eq!(spooled_once_settled(&host, 0), sent);
    let blocker = state.path().join(format!("{FILE_NAME}.tmp"));
    std::fs::create_dir(&blocker).unwrap();

    dlq.set_up(true);
    assert_eq!(dlq.ids(5).await, sent);
    eventually(|| match host.dead_letters(0).unwrap().count {
        0 => Ok(()),
        waiting => Err(waiting),
    });
    // Over a quiet second of passes that cannot rewrite the file, none is sent again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let lines = || std::fs::read_to_string(state.path().join(FILE_NAME)).unwrap().lines().count();
    let listed = host.dead_letters(10).unwrap();
    assert_eq!((lines(), listed.count), (5, 0), "still in the file, not waiting");
    assert!(listed.letters.is_empty() && listed.next.is_none(), "listed: {listed:?}");
    assert_eq!(metric(&host, "switchyard_dead_letters_redelivered_total"), 5.0, "counted once taken");
    assert!(dlq.taken.is_empty(), "sent again: {:?}", dlq.taken.try_iter().count());

    std::fs::remove_dir(&blocker).unwrap();
    eventually(|| match lines() {
        0 => Ok(()),
        left => Err(left),
    });
    assert_eq!(metric(&host, "switchyard_dead_letters_redelivered_total"), 5.0);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 5);
    assert!(dlq.taken.is_empty(), "each letter delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_for_a_dead_letter_destination_that_is_back_are_not_held_up_by_many_for_one_still_down() {
    // More letters for the down `dlx` at the head of the file than one
    // re-delivery pass reads, then some for `dly`: once `dly` is back, its
    // letters reach it while `dlx` stays down.
    let state = tempfile::tempdir().unwrap();
    let (dlx, dlx_destination) = Switchable::new(false);
    let (dly, dly_destination) = Switchable::new(false);
    let plugins = plugin_dir(&[]);
    let (refusing, _) = header_server(axum::http::StatusCode::BAD_REQUEST).await;
    let text = format!(
        "[[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n\
         [[route]]\nname = \"b\"\nmatch = {{ topic = \"b.*\" }}\nto = \"api\"\n"
    );
    let mut config = Config::from_toml("test.toml", &text).unwrap();
    config.host.dead_letter = "dlx".into();
    config.destinations[0].dead_letter = Some("dly".into());
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("dlx", dlx_destination).destination("dly", dly_destination);
    let host = host.build().await.unwrap();

    let for_dlx = send_unroutable(&host, 300).await;
    let mut for_dly = HashSet::new();
    for n in 0..10 {
        for_dly.insert(host.send(Message::new("b.y", format!("{n}"))).await.unwrap());
    }
    let mut all = for_dlx.clone();
    all.extend(&for_dly);
    assert_eq!(spooled_once_settled(&host, 0), all);

    dly.set_up(true);
    assert_eq!(dly.ids(10).await, for_dly, "dly's letters went out while dlx stayed down");
    dlx.set_up(true);
    assert_eq!(dlx.ids(300).await, for_dlx);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 310);
}

/// A server answering every POST with `status` and handing its headers to
/// the returned receiver.
async fn header_server(
    status: axum::http::StatusCode,
) -> (SocketAddr, flume::Receiver<axum::http::HeaderMap>) {
    let (sender, received) = flume::unbounded();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(headers);
            status
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_a_reason_do_not_make_an_http_dead_letter_destination_refuse_it() {
    let state = tempfile::tempdir().unwrap();
    let (addr, received) = header_server(axum::http::StatusCode::NO_CONTENT).await;
    let toml = format!(
        "[host]\ndead_letter = \"dlq\"\n[[destination]]\nname = \"dlq\"\ntransport = \"http\"\nendpoints = [\"{addr}\"]\n"
    );
    let plugins = plugin_dir(&[]);
    let config = Config::from_toml("test.toml", &toml).unwrap();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let refuse = |_: &Message| Err(PluginError::Rejected("bad\r\nx-injected: yes\u{0}".repeat(200)));
    let host = host.destination("out", |_: Message| async { Ok(None) }).filter("refuse", refuse);
    let host =
        host.route(RouteConfig::new("all", "orders", "out").stage("filter:refuse")).build().await.unwrap();

    host.send(Message::new("orders", "{}")).await.unwrap();
    let headers = within(received.recv_async()).await.unwrap();
    assert_eq!(headers[REASON_CODE_HEADER], "plugin-rejected");
    let reason = std::str::from_utf8(headers[REASON_HEADER].as_bytes()).unwrap();
    assert!(reason.contains(r"bad\r\nx-injected: yes\u{0}bad"), "{reason}");
    assert!(reason.len() <= 1024 + 3 && reason.ends_with("..."), "capped: {} bytes", reason.len());
    assert!(!headers.contains_key("x-injected"));
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(host.dead_letters(0).unwrap().count, 0, "the destination took it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedders_stage_error_reaches_callers_as_one_line_of_bounded_length_as_a_plugins_does() {
    // The error text of a native stage, built by the embedder, reached callers (and the log) whole,
    // where a plugin's is kept as one line of at most 1 KiB.
    let (plugins, state) = (plugin_dir(&[]), tempfile::tempdir().unwrap());
    let text = format!("bad\nWARN forged log line{}", "x".repeat(1 << 20));
    let failing = move |_: &Message| Err(PluginError::Failed(text.clone()));
    let host = Host::builder().plugin_dir(plugins.path()).state_dir(state.path()).filter("failing", failing);
    let host = host.destination("out", |_: Message| async { Ok(None) });
    let host =
        host.route(RouteConfig::new("all", "orders", "out").stage("filter:failing")).build().await.unwrap();
    let ingress = start_ingress(&host).await;

    let post = move || http(ingress, "POST", "/v1/messages/orders?wait=true", &[], b"{}");
    let (status, body) = tokio::task::spawn_blocking(post).await.unwrap();
    assert_eq!(status, 422, "{body:.200}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains(r#"plugin "failing" (native) failed: bad\nWARN forged log line"#), "{error:.200}");
    assert!(error.len() < 1200 && error.ends_with("..."), "bounded: {} bytes", error.len());
    let answer = host.request(Message::new("orders", "{}")).await;
    let Err(RequestError::DeadLettered(DeadLetterReason::PluginError {
        error: PluginError::Failed(kept),
        ..
    })) = answer
    else {
        panic!("{answer:?}")
    };
    assert!(kept.starts_with(r"bad\nWARN forged log line") && kept.len() <= 1024 + 3, "{} bytes", kept.len());
    assert_eq!(drain_and_account(&host).await.dead_lettered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_shows_the_dead_letter_file_to_token_holders() {
    let state = tempfile::tempdir().unwrap();
    let (_dlq, destination) = Switchable::new(false);
    let host = host(state.path(), destination).await;
    let sent = send_unroutable(&host, 3).await;
    assert_eq!(spooled_once_settled(&host, 0), sent);
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), Some("t0ken".into()));
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));

    let get = |path: &'static str, token: &'static str| {
        tokio::task::spawn_blocking(move || http(addr, "GET", path, &[("authorization", token)], b""))
    };
    assert_eq!(get("/v1/dead-letters", "Bearer wrong").await.unwrap().0, 401);
    let (status, body) = get("/v1/dead-letters?limit=2", "Bearer t0ken").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["count"], 3, "{view}");
    let letters = view["letters"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["code"], "no-route");
    assert_eq!(view["file"], state.path().join(FILE_NAME).display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_large_letters_a_few_mib_at_a_time_and_pages_on_to_every_one() {
    // One answer held every letter asked for (up to 1000 of 1 MiB each) three times over, and
    // there was no reading on past them.
    let state = tempfile::tempdir().unwrap();
    let (dlq, destination) = Switchable::new(false);
    let host = host(state.path(), destination).await;
    let payload = vec![b'x'; (1 << 20) - 4096];
    let mut sent = HashSet::new();
    for _ in 0..20 {
        sent.insert(host.send(Message::new("nowhere", payload.clone())).await.unwrap());
    }
    eventually(|| match (host.stats().in_flight(), host.dead_letters(0).unwrap().count) {
        (0, 20) => Ok(()),
        seen => Err(seen),
    });
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let get = |path: String| within(tokio::task::spawn_blocking(move || http(addr, "GET", &path, &[], b"")));

    let (mut listed, mut after, mut answers) = (Vec::new(), String::new(), 0);
    loop {
        let (status, body) = get(format!("/v1/dead-letters?limit=1000{after}")).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.len() <= LISTED_BYTES + 1024, "answer {answers}: {} bytes", body.len());
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(view["count"], 20);
        let letters = view["letters"].as_array().unwrap();
        assert!(!letters.is_empty(), "each answer has a letter at least");
        listed.extend(
            letters.iter().map(|letter| letter["id"].as_str().unwrap().parse::<MessageId>().unwrap()),
        );
        answers += 1;
        match view["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert!(answers >= 5, "cut short: {answers} answers");
    assert_eq!(listed.len(), 20, "each letter once");
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), sent, "paging on reaches every letter");

    // Re-delivered, the letters left the file: a place in it from before is refused, not read.
    dlq.set_up(true);
    assert_eq!(dlq.ids(20).await, sent);
    eventually(|| match host.dead_letters(0).unwrap().count {
        0 => Ok(()),
        left => Err(left),
    });
    let (status, body) = get(format!("/v1/dead-letters{}", after.replacen('&', "?", 1))).await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("look again without `after`"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_for_an_http_dead_letter_destination_that_refuses_connections_reach_it_once_it_listens() {
    let state = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let toml = format!(
        r#"
[host]
dead_letter = "dlq"
[[destination]]
name = "dlq"
transport = "http"
endpoints = ["{addr}"]
retry = {{ attempts = 2, base_ms = 1, max_ms = 5 }}
"#
    );
    let plugins = plugin_dir(&[]);
    let config = Config::from_toml("test.toml", &toml).unwrap();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.build().await.unwrap();
    let sent = send_unroutable(&host, 10).await;
    assert_eq!(spooled_once_settled(&host, 0), sent, "refused connections: the file has every letter");

    let (sender, received) = flume::unbounded();
    let app = axum::Router::new().fallback(move |body: String| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(body);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut arrived = HashSet::new();
    while arrived.len() < sent.len() {
        arrived.insert(within(received.recv_async()).await.unwrap());
    }
    let letters: HashSet<String> = (0..10).map(|n| format!("letter {n}")).collect();
    assert_eq!(arrived, letters, "each letter, by its payload");
    eventually(|| match host.dead_letters(0).unwrap().count {
        0 => Ok(()),
        left => Err(left),
    });
    assert_eq!(drain_and_account(&host).await.dead_lettered, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_an_http_dead_letter_destination_answers_5xx_wait_in_the_file_and_reach_it_once_it_takes_them()
 {
    // A dead-letter destination that is not idempotent (the default) and answers 502 did not take
    // the letter: it neither refused it for good nor took it unanswered. Before, the answer ended
    // the delivery as a 4xx does, the letter was noted refused for good, and it sat in the file,
    // never sent again in this run, the destination back or not.
    let up = Arc::new(AtomicBool::new(false));
    let (failed, (sender, received)) = (Arc::new(AtomicUsize::new(0)), flume::unbounded());
    let (is_up, failures) = (up.clone(), failed.clone());
    let app = axum::Router::new().fallback(move |body: String| {
        let (is_up, failures, sender) = (is_up.clone(), failures.clone(), sender.clone());
        async move {
            if !is_up.load(Ordering::SeqCst) {
                failures.fetch_add(1, Ordering::SeqCst);
                return axum::http::StatusCode::BAD_GATEWAY;
            }
            let _ = sender.send(body);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let toml = format!(
        "[host]\ndead_letter = \"dlq\"\n[[destination]]\nname = \"dlq\"\ntransport = \"http\"\nendpoints = [\"{addr}\"]\n"
    );
    let (state, plugins) = (tempfile::tempdir().unwrap(), plugin_dir(&[]));
    let config = Config::from_toml("test.toml", &toml).unwrap();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.build().await.unwrap();
    let sent = send_unroutable(&host, 3).await;
    assert_eq!(spooled_once_settled(&host, 0), sent, "answered 502: the file has every letter");
    assert!(failed.load(Ordering::SeqCst) >= 1, "the destination answered 502");

    up.store(true, Ordering::SeqCst);
    let arrived = eventually(|| {
        let (held, arrived) = (host.dead_letters(0).unwrap().count, received.len());
        match (held, arrived) {
            (0, 3) => Ok(received.drain().collect::<Vec<_>>()),
            seen => Err(seen),
        }
    });
    let mut arrived: Vec<_> = arrived.iter().map(String::as_str).collect();
    arrived.sort();
    assert_eq!(arrived, ["letter 0", "letter 1", "letter 2"], "each letter once, by its payload");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 3);
    assert!(received.is_empty(), "no letter sent twice: {:?}", received.drain().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_neither_a_destination_nor_the_file_takes_are_counted_lost_not_dead_lettered() {
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    let (_dlq, destination) = Switchable::new(false);
    let host = host(&state, destination).await;
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "a file where the state directory should be").unwrap();

    let refused = host.request(Message::new("nowhere", "{}")).await;
    assert!(
        matches!(refused, Err(switchyard::RequestError::Lost(_))),
        "not called dead-lettered: {refused:?}"
    );
    send_unroutable(&host, 2).await;
    within(host.shutdown()).await;
    let stats = host.stats();
    assert_eq!((stats.dead_lettered, stats.dead_letter_failures), (0, 3), "{stats:?}");
    assert_eq!(stats.in_flight(), 3, "the oracle shows the loss: {stats:?}");
    // The loss showed in the stats only: `/metrics` and alert rules did not see it.
    assert_eq!(metric(&host, "switchyard_dead_letters_lost_total"), 3.0);
    assert_eq!(host.metrics().read("dead_letters_lost", &[]), Some(3.0), "an alert rule can watch it");
    assert!(host.dead_letters(10).is_err(), "the file cannot be read either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_after_the_state_directory_was_removed_is_kept_only_in_one_made_anew_and_locked_for_the_host()
 {
    // The dead-letter file made the whole state directory anew to keep a letter, without the
    // host.lock that keeps it one host's: a second host started on it then, and shared the file
    // (each re-delivering the other's letters); one that had made and locked it meanwhile got the
    // first host's letters in its own file.
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    let (_dlq, destination) = Switchable::new(false);
    let host = host(&state, destination).await;
    std::fs::remove_dir_all(&state).unwrap();
    let kept = send_unroutable(&host, 1).await;
    assert_eq!(spooled_once_settled(&host, 0), kept, "the letter is kept in the directory made anew");
    let second = |destination| {
        let (plugins, mut config) = (plugin_dir(&[]), Config::default());
        config.host.dead_letter = "dlq".into();
        let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(&state);
        host.destination("dlq", destination).build()
    };
    let refused = second(Switchable::new(false).1).await.map(drop).unwrap_err().to_string();
    assert!(refused.contains("in use by another host"), "{refused}");

    // Removed again, and taken by another host, whose file holds a letter of its own: that file
    // is not the first host's to read, and its next letter is not the other host's to keep, nor
    // counted as dead-lettered.
    std::fs::remove_dir_all(&state).unwrap();
    let other = second(Switchable::new(false).1).await.unwrap();
    let others = send_unroutable(&other, 1).await;
    assert_eq!(spooled_once_settled(&other, 0), others);
    let read = host.dead_letters(10).map(|held| held.count);
    assert!(
        read.as_ref().is_err_and(|error| error.to_string().contains("in use by another host")),
        "{read:?}"
    );
    let lost = host.request(Message::new("nowhere", "{}")).await;
    assert!(matches!(lost, Err(RequestError::Lost(_))), "{lost:?}");
    assert_eq!(spooled_once_settled(&other, 0), others, "the other host's file holds its letter alone");
    within(host.shutdown()).await;
    let stats = host.stats();
    assert_eq!((stats.dead_lettered, stats.dead_letter_failures), (1, 1), "{stats:?}");
    drain_and_account(&other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_after_the_dead_letter_file_was_removed_waits_in_a_new_one_and_is_delivered() {
    // The operator removes the file (its letters exported, say) while the dead-letter destination
    // is down. Before, the host went on appending to the removed file it held open: the next
    // letter counted as dead-lettered but was never re-delivered, and was gone at exit.
    let state = tempfile::tempdir().unwrap();
    let (dlq, destination) = Switchable::new(false);
    let host = host(state.path(), destination).await;
    let removed = send_unroutable(&host, 1).await;
    assert_eq!(spooled_once_settled(&host, 0), removed);
    a_letter_after_the_file_is_removed_reaches_the_destination(host, state.path(), dlq, removed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_after_the_dead_letter_file_was_removed_is_not_padded_to_its_old_length() {
    // The file was rewritten (an unreadable line set aside) while the dead-letter destination is
    // down, so the host does not hold it open, and then removed. Before, the file made anew was
    // extended to the old one's length: the next letter came after as many zero bytes, unreadable,
    // yet counted as dead-lettered.
    let state = tempfile::tempdir().unwrap();
    let mut message = Message::new("nowhere", "left by a previous run");
    message.id = 7;
    let letter = DeadLetterReason::NoRoute { topic: "nowhere".into() }.label(message, None);
    let line = serde_json::to_string(&DeadLetterRecord::new(&letter, "dlq")).unwrap();
    std::fs::write(state.path().join(FILE_NAME), format!("{line}\nnot json\n")).unwrap();
    let (dlq, destination) = Switchable::new(false);
    let host = host(state.path(), destination).await;
    let damaged = state.path().join(format!("{FILE_NAME}.damaged"));
    eventually(|| match std::fs::read_to_string(state.path().join(FILE_NAME)).unwrap() {
        left if left == format!("{line}\n") && damaged.exists() => Ok(()),
        left => Err(left),
    });
    let removed = HashSet::from([letter.id]);
    a_letter_after_the_file_is_removed_reaches_the_destination(host, state.path(), dlq, removed).await;
}

/// Remove the dead-letter file of `host` (over `state`), holding the letters `removed`, while its
/// dead-letter destination `dlq` is down: a letter sent then waits in the file, alone, and reaches
/// `dlq` once it is up.
async fn a_letter_after_the_file_is_removed_reaches_the_destination(
    host: Host,
    state: &Path,
    dlq: Switchable,
    removed: HashSet<MessageId>,
) {
    let before = host.stats().dead_lettered;
    std::fs::remove_file(state.join(FILE_NAME)).unwrap();
    let sent = send_unroutable(&host, 1).await;
    assert_eq!(spooled_once_settled(&host, before), sent, "the letter is in the file, alone");
    dlq.set_up(true);
    // A re-delivery pass may have read a removed letter before its file was removed, to send it
    // once the destination is up: that one comes first, if at all.
    let mut taken = next(&dlq.taken).await.id;
    while removed.contains(&taken) {
        taken = next(&dlq.taken).await.id;
    }
    assert_eq!(HashSet::from([taken]), sent);
    eventually(|| match host.dead_letters(0).unwrap().count {
        0 => Ok(()),
        left => Err(left),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, before + 1);
    assert!(dlq.taken.is_empty(), "sent again: {:?}", dlq.taken.try_iter().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_destination_nobody_reads_hands_each_message_back_whole_to_be_dead_lettered() {
    // The memory destination is given the message itself, not a copy, and hands it back when it
    // cannot deliver it: what is dead-lettered must be the message as it was routed.
    let (state, plugins) = (tempfile::tempdir().unwrap(), plugin_dir(&[]));
    let (out, reader) = switchyard::MemoryDestination::new();
    drop(reader);
    let (dlq, letters) = switchyard::MemoryDestination::new();
    let mut config = Config::default();
    config.host.dead_letter = "dlq".into();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("out", out).destination("dlq", dlq);
    let host = host.route(RouteConfig::new("all", "orders", "out")).build().await.unwrap();

    for n in 0..3 {
        let message = Message::new("orders", format!("payload {n}")).with_header("x-tenant", "acme");
        let id = host.send(message.with_priority(n)).await.unwrap();
        let letter = next(&letters).await;
        assert_eq!((letter.id, letter.topic.as_str(), letter.priority), (id, "orders", n));
        let payload = format!("payload {n}");
        assert_eq!((&letter.payload[..], letter.header("x-tenant")), (payload.as_bytes(), Some("acme")));
        assert_eq!(letter.header(REASON_CODE_HEADER), Some("delivery-failed"));
        let reason = letter.header(REASON_HEADER).unwrap();
        assert!(reason.contains("the memory destination's receiver was dropped"), "{reason}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_its_destination_refuses_for_good_stays_in_the_file_sent_once_and_holds_up_no_other() {
    // The dead-letter destination takes every letter but one, which it
    // refuses as a 4xx would: that one cannot be delivered there, ever.
    let (taken, took) = flume::unbounded();
    let poison_tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tries = poison_tries.clone();
    let picky = move |message: Message| {
        let (taken, tries) = (taken.clone(), tries.clone());
        async move {
            if &message.payload[..] == b"poison" {
                tries.fetch_add(1, Ordering::SeqCst);
                return Err(DeliveryError::Fatal("HTTP 413: refused for good".into()));
            }
            taken.send(message).unwrap();
            Ok(None)
        }
    };
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path(), picky).await;
    for payload in ["fine 0", "poison", "fine 1", "fine 2", "fine 3"] {
        host.send(Message::new("nowhere", payload)).await.unwrap();
    }
    let mut fine = Vec::new();
    for _ in 0..4 {
        fine.push(next(&took).await.payload);
    }
    fine.sort();
    assert_eq!(fine, ["fine 0", "fine 1", "fine 2", "fine 3"], "the refused one held up none");
    eventually(|| match host.dead_letters(10).unwrap() {
        held if held.count == 1 && host.stats().in_flight() == 0 => Ok(held),
        held => Err((held.count, host.stats())),
    });
    // Over a quiet second, the refused letter is not sent again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(poison_tries.load(Ordering::SeqCst), 1, "refused for good once: not retried, not re-sent");
    let held = host.dead_letters(10).unwrap();
    assert_eq!(held.letters.len(), 1);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 5, "counted once each: four delivered, one in the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_letters_of_a_message_fanned_out_are_known_apart_by_their_dead_letter_destination() {
    // The copies of a message fanned out share its x-sy-id. d1 refuses a's letter for good; b's
    // letter waits in the file for d2. Before, the refusal was noted by the id alone, so b's letter
    // was passed over for the rest of the run, d2 back or not (and a letter taken could have had
    // another removed from the file unsent, by the same mistake).
    let state = tempfile::tempdir().unwrap();
    let (refusing, _) = header_server(axum::http::StatusCode::BAD_REQUEST).await;
    let d1 = |_: Message| async { Err(DeliveryError::Fatal("HTTP 400: refused for good".into())) };
    let (d2, d2_destination) = Switchable::new(false);
    let plugins = plugin_dir(&[]);
    let toml = format!(
        r#"
[[destination]]
name = "a"
transport = "http"
endpoints = ["{refusing}"]
[[destination]]
name = "b"
transport = "http"
endpoints = ["{refusing}"]
[[route]]
name = "both"
fan_out = ["a", "b"]
"#
    );
    let mut config = Config::from_toml("test.toml", &toml).unwrap();
    config.host.dead_letter = "d1".into();
    config.destinations[1].dead_letter = Some("d2".into());
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("d1", d1).destination("d2", d2_destination).build().await.unwrap();
    let id = host.send(Message::new("orders", "x")).await.unwrap();
    let held = eventually(|| match host.dead_letters(10).unwrap() {
        held if held.count == 2 && host.stats().in_flight() == 0 => Ok(held),
        held => Err((held.count, host.stats())),
    });
    let mut for_destinations: Vec<_> = held.letters.iter().map(|letter| letter.destination.clone()).collect();
    for_destinations.sort();
    assert_eq!(for_destinations, ["d1", "d2"]);
    d2.set_up(true);
    assert_eq!(d2.ids(1).await, HashSet::from([id]), "b's letter reached d2 once it was back");
    eventually(|| match host.dead_letters(10).unwrap() {
        held if held.count == 1 && held.letters[0].destination == "d1" => Ok(()),
        held => Err(held.count),
    });
    assert_eq!(drain_and_account(&host).await.dead_lettered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_behind_more_refused_letters_than_a_pass_reads_is_still_delivered() {
    // 300 letters refused for good at the head of the file, more than one
    // re-delivery pass reads: a letter written after them still goes out.
    let (taken, took) = flume::unbounded();
    let picky = move |message: Message| {
        let taken = taken.clone();
        async move {
            if message.payload.starts_with(b"poison") {
                return Err(DeliveryError::Fatal("HTTP 413: refused for good".into()));
            }
            taken.send(message).unwrap();
            Ok(None)
        }
    };
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path(), picky).await;
    for n in 0..300 {
        host.send(Message::new("nowhere", format!("poison {n}"))).await.unwrap();
    }
    eventually(|| match host.dead_letters(1).unwrap() {
        held if held.count == 300 && host.stats().in_flight() == 0 => Ok(()),
        held => Err((held.count, host.stats())),
    });
    host.send(Message::new("nowhere", "fine")).await.unwrap();
    assert_eq!(&next(&took).await.payload[..], b"fine");
    // Taken out of the file once its pass is over; the refused ones stay.
    let held = eventually(|| match host.dead_letters(1000).unwrap() {
        held if held.count == 300 => Ok(held),
        held => Err(held.count),
    });
    assert!(held.letters.iter().all(|letter| letter.to_message().unwrap().payload.starts_with(b"poison")));
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_a_dead_letter_destination_may_have_taken_is_not_sent_again_but_kept_in_the_file() {
    // The dead-letter endpoint takes each request and never answers: after
    // its 100 ms the letter may have been delivered, and the destination is
    // not idempotent, so it is never sent again; the file keeps it.
    let endpoint = crate::endpoint::TestEndpoint::start(crate::endpoint::Mode::Hold).await;
    let state = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(&[]);
    let text = format!(
        "[host]\ndead_letter = \"dlq\"\n[[destination]]\nname = \"dlq\"\ntransport = \"http\"\n\
         endpoints = [\"{}\"]\ntimeout_ms = 100\n",
        endpoint.addr
    );
    let config = Config::from_toml("test.toml", &text).unwrap();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.build().await.unwrap();
    host.send(Message::new("nowhere", "once")).await.unwrap();
    let held = eventually(|| match host.dead_letters(10).unwrap() {
        held if held.count == 1 && host.stats().in_flight() == 0 => Ok(held),
        held => Err((held.count, host.stats())),
    });
    assert_eq!(held.letters[0].code, "no-route");
    // Over a quiet second, it is not sent again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(endpoint.arrived(), 1, "sent once: it may have been taken");
    endpoint.release(1);
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_letter_of_a_message_fanned_out_is_sent_while_the_file_cannot_be_rewritten() {
    // The copies of a message fanned out to `a` and `b` share its x-sy-id, and their letters the
    // dead-letter destination `dlq`. a's letter is re-delivered while the file cannot be rewritten
    // (a directory where its temporary file goes, as a full disk would), so it stays in the file,
    // not to be sent again; b's letter comes after, while `dlq` is down again. Before, the letters
    // were known by destination and x-sy-id: b's was taken for a's, and removed from the file
    // unsent.
    let state = tempfile::tempdir().unwrap();
    let (dlq, dlq_destination) = Switchable::new(false);
    let a = |_: Message| async { Err(DeliveryError::Fatal("a refuses".into())) };
    let (release, held) = flume::unbounded::<()>();
    let b = move |_: Message| {
        let held = held.clone();
        async move {
            let _ = held.recv_async().await;
            Err(DeliveryError::Fatal("b refuses".into()))
        }
    };
    let mut config = Config::default();
    config.host.dead_letter = "dlq".into();
    let fan_out = vec!["a".into(), "b".into()];
    let both = RouteConfig { to: None, fan_out, ..RouteConfig::new("both", "orders", "a") };
    let plugins = plugin_dir(&[]);
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("a", a).destination("b", b).destination("dlq", dlq_destination);
    let host = host.route(both).build().await.unwrap();
    let id = host.send(Message::new("orders", "x")).await.unwrap();
    let count = |expected| {
        eventually(|| match host.dead_letters(0).unwrap().count {
            count if count == expected => Ok(()),
            count => Err(count),
        })
    };
    count(1);
    let blocker = state.path().join(format!("{FILE_NAME}.tmp"));
    std::fs::create_dir(&blocker).unwrap();
    dlq.set_up(true);
    let first = next(&dlq.taken).await;
    assert_eq!(first.id, id);
    let reason = |letter: &Message| letter.header(REASON_HEADER).unwrap().to_owned();
    assert!(reason(&first).contains("a refuses"), "{first:?}");
    count(0);

    dlq.set_up(false);
    release.send(()).unwrap();
    count(1);
    let lines = || std::fs::read_to_string(state.path().join(FILE_NAME)).unwrap().lines().count();
    assert_eq!(lines(), 2, "a's letter is still in the file, b's behind it");
    dlq.set_up(true);
    let second = next(&dlq.taken).await;
    assert_eq!(second.id, id);
    assert!(reason(&second).contains("b refuses"), "{second:?}");
    count(0);
    std::fs::remove_dir(&blocker).unwrap();
    eventually(|| match lines() {
        0 => Ok(()),
        left => Err(left),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 2);
    assert!(dlq.taken.is_empty(), "each letter sent once: {:?}", dlq.taken.try_iter().count());
}

/// Leave two letters alike in every byte, the millisecond they were written included, in the
/// dead-letter file of `state`, as a host may (the copies of a message fanned out to two
/// destinations that share a fallback, refused by it alike in one millisecond); their message.
fn leave_two_letters_alike(state: &Path) -> Message {
    let mut message = Message::new("nowhere", "x");
    message.id = 7;
    let letter = DeadLetterReason::NoRoute { topic: "nowhere".into() }.label(message, None);
    let line = serde_json::to_string(&DeadLetterRecord::new(&letter, "dlq")).unwrap();
    std::fs::write(state.join(FILE_NAME), format!("{line}\n{line}\n")).unwrap();
    letter
}

/// A dead-letter destination answering its `n`th call (from 0) with `refusal(n)`, if any, else
/// handing the letter to the receiver.
fn answering(
    refusal: impl Fn(usize) -> Option<DeliveryError> + Send + Sync + 'static,
) -> (flume::Receiver<Message>, impl Destination) {
    let (taken, took) = flume::unbounded();
    let (calls, refusal) = (Arc::new(AtomicUsize::new(0)), Arc::new(refusal));
    let destination = move |message: Message| {
        let (taken, calls, refusal) = (taken.clone(), calls.clone(), refusal.clone());
        async move {
            match refusal(calls.fetch_add(1, Ordering::SeqCst)) {
                Some(error) => Err(error),
                None => taken.send(message).map(|()| None).map_err(|_| DeliveryError::Fatal("gone".into())),
            }
        }
    };
    (took, destination)
}

/// Each attempt of one delivery to a destination registered in code (given the default attempts).
fn one_delivery() -> std::ops::RangeInclusive<usize> {
    1..=switchyard::config::RetrySettings::default().attempts as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_alike_in_every_byte_are_each_sent_while_the_file_cannot_be_rewritten() {
    // The first of two letters alike is re-delivered while the file cannot be rewritten (a
    // directory where its temporary file goes, as a full disk would), so it stays in the file, not
    // to be sent again; the dead-letter destination refuses the second for now. Before, letters
    // were known by their record's digest alone: the second was taken for the first, never sent,
    // and removed from the file with it.
    let state = tempfile::tempdir().unwrap();
    let letter = leave_two_letters_alike(state.path());
    let blocker = state.path().join(format!("{FILE_NAME}.tmp"));
    std::fs::create_dir(&blocker).unwrap();
    let (took, dlq) = answering(|call| {
        one_delivery().contains(&call).then(|| DeliveryError::Retryable("down for the second letter".into()))
    });
    let host = host(state.path(), dlq).await;
    assert_eq!(next(&took).await, letter);
    let second = tokio::time::timeout(PATIENCE, took.recv_async()).await;
    let second = second.ok().map(Result::unwrap);
    assert_eq!(second, Some(letter), "the second letter is sent (safety net: PATIENCE)");
    std::fs::remove_dir(&blocker).unwrap();
    eventually(|| match std::fs::metadata(state.path().join(FILE_NAME)).unwrap().len() {
        0 => Ok(()),
        left => Err(left),
    });
    drain_and_account(&host).await;
    assert!(took.is_empty(), "each letter sent once: {:?}", took.try_iter().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_letters_alike_only_as_many_as_were_refused_for_good_are_passed_over() {
    // The dead-letter destination refuses the first of two letters alike for good, as a 4xx would,
    // and the second for now. Before, letters were known by their record's digest alone: the
    // second was taken for the refused one and passed over for the rest of the run.
    let state = tempfile::tempdir().unwrap();
    let letter = leave_two_letters_alike(state.path());
    let (took, dlq) = answering(|call| match call {
        0 => Some(DeliveryError::Fatal("HTTP 400: refused for good".into())),
        call if one_delivery().contains(&call) => Some(DeliveryError::Retryable("down for now".into())),
        _ => None,
    });
    let host = host(state.path(), dlq).await;
    let second = tokio::time::timeout(PATIENCE, took.recv_async()).await;
    let second = second.ok().map(Result::unwrap);
    assert_eq!(second, Some(letter), "the second letter is sent (safety net: PATIENCE)");
    eventually(|| match host.dead_letters(0).unwrap().count {
        1 => Ok(()),
        left => Err(left),
    });
    drain_and_account(&host).await;
    assert!(took.is_empty(), "the refused letter is not sent again: {:?}", took.try_iter().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_while_a_re_delivery_from_the_file_hangs_and_the_letter_stays_in_it() {
    // The dead-letter destination refuses until the letter is in the file, then takes the
    // re-delivery and never answers. Before, the shutdown stopped the clock of its grace period
    // and then waited for the re-delivery pass, which only that clock could cut: forever.
    let state = tempfile::tempdir().unwrap();
    let hanging = Arc::new(AtomicBool::new(false));
    let (entered, deliveries) = flume::unbounded();
    let hangs = hanging.clone();
    let dlq = move |message: Message| {
        let (hangs, entered) = (hangs.clone(), entered.clone());
        async move {
            if !hangs.load(Ordering::SeqCst) {
                return Err(DeliveryError::Retryable("down for the test".into()));
            }
            entered.send(message).unwrap();
            std::future::pending().await
        }
    };
    let mut config = Config::default();
    (config.host.dead_letter, config.host.shutdown_grace_ms) = ("dlq".into(), 200);
    let plugins = plugin_dir(&[]);
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("dlq", dlq).build().await.unwrap();
    let sent = send_unroutable(&host, 1).await;
    assert_eq!(spooled_once_settled(&host, 0), sent);
    hanging.store(true, Ordering::SeqCst);
    assert_eq!(HashSet::from([next(&deliveries).await.id]), sent, "re-delivered, and hanging");

    within(host.shutdown()).await;
    let held = host.dead_letters(10).unwrap();
    let ids: HashSet<MessageId> = held.letters.iter().map(|letter| letter.id.parse().unwrap()).collect();
    assert_eq!(ids, sent, "the letter whose re-delivery was cut stays in the file");
    assert_eq!(host.stats().dead_lettered, 1);
}

/// A shutdown does not wait for good on a dead letter that a hung disk holds on its way into the
/// dead-letter file: a second past its grace period it stops without it, and keeps the state
/// directory locked, since the letter may still land there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_without_a_dead_letter_a_hung_disk_holds_and_keeps_the_state_locked() {
    let state = tempfile::tempdir().unwrap();
    let (_dlq, destination) = Switchable::new(false);
    let mut config = Config::default();
    (config.host.dead_letter, config.host.shutdown_grace_ms) = ("dlq".into(), 200);
    let plugins = plugin_dir(&[]);
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("dlq", destination).build().await.unwrap();
    // The dead-letter file, made for the first letter, hangs as the host opens it.
    let hung = HungFile::at(state.path().join(FILE_NAME));
    send_unroutable(&host, 1).await;

    within(host.shutdown()).await;
    let stats = host.stats();
    assert_eq!(
        (stats.dead_lettered, stats.dead_letter_failures),
        (0, 0),
        "the letter is still on its way: {stats:?}"
    );
    // On a spawned task: a second host that took the directory would hang on the file too.
    let second = Host::builder().plugin_dir(plugins.path()).state_dir(state.path()).build();
    let second = within(tokio::spawn(async move { second.await.map(drop) })).await.unwrap();
    let refused = second.expect_err("the state directory is still the first host's").to_string();
    assert!(refused.contains("in use by another host"), "{refused}");
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_dead_letter_destination_nobody_reads_keeps_a_letter_waiting_at_most_an_attempt_s_deadline()
{
    // Its channel full, a letter waited for room until a shutdown: its message (one a network
    // destination's queue timed out, one no route takes) stayed in flight, and never reached the
    // dead-letter file, while the dispatcher and the worker took more.
    let (state, plugins) = (tempfile::tempdir().unwrap(), plugin_dir(&[]));
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "[host]\ndead_letter = \"dlq\"\nshutdown_grace_ms = 1000\n\
         [[destination]]\nname = \"dlq\"\ntransport = \"memory\"\nqueue = {{ capacity = 1 }}\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n\
         queue = {{ timeout_ms = 100 }}\n\
         [[route]]\nname = \"orders\"\nmatch = {{ topic = \"orders\" }}\nto = \"api\"\n"
    );
    let config = Config::from_toml("test.toml", &text).unwrap();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.build().await.unwrap();
    let mut sent = send_unroutable(&host, 5).await;
    for n in 0..5 {
        sent.insert(host.send(Message::new("orders", format!("order {n}"))).await.unwrap());
    }
    // One letter fills the channel; each other waits for room 5 s at most, then goes to the file.
    let held = spooled_once_settled(&host, 1);
    assert_eq!(held.len(), 9, "all but the one the channel holds");
    assert!(held.is_subset(&sent));
    assert_eq!(host.stats().dead_lettered, 10);
    // Not refused for good: read, the channel takes the file's letters too.
    let dlq = host.memory("dlq").unwrap();
    let mut taken = HashSet::new();
    for _ in 0..10 {
        taken.insert(next(&dlq).await.id);
    }
    assert_eq!(taken, sent);
    eventually(|| match host.dead_letters(0).unwrap().count {
        0 => Ok(()),
        left => Err(left),
    });
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 10, "counted once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_destination_registered_in_code_that_never_answers_keeps_a_letter_at_most_an_attempt_s_deadline()
 {
    // A letter waited for its answer until a shutdown, its message in flight. Unanswered, it may
    // have been taken: it is kept in the file, and not sent there again in this run.
    let (entered, deliveries) = flume::unbounded();
    let dlq = move |message: Message| {
        let entered = entered.clone();
        async move {
            entered.send(message.id).unwrap();
            std::future::pending().await
        }
    };
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path(), dlq).await;
    let sent = send_unroutable(&host, 3).await;
    assert_eq!(spooled_once_settled(&host, 0), sent);
    assert_eq!(host.stats().dead_lettered, 3);
    let mut tried = HashSet::new();
    for _ in 0..3 {
        tried.insert(within(deliveries.recv_async()).await.unwrap());
    }
    assert_eq!(tried, sent);
    // Over a quiet second, none is sent again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(deliveries.is_empty(), "sent again: {:?}", deliveries.try_iter().collect::<Vec<_>>());
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(host.dead_letters(10).unwrap().count, 3, "kept in the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_delivering_ten_reads_of_letters_rewrites_the_file_a_few_times_not_once_a_read() {
    // 2560 letters a host left, alike in length: ten reads of a re-delivery pass (256 letters
    // each). Before, the letters of each read were cut out by rewriting the whole file (to a
    // temporary file, renamed over it): ten rewrites, each as long as what was left, so draining
    // N letters wrote O(N²) bytes. Cut out once they are half the file, they take four (after the
    // 5th, 8th, 9th and 10th reads), each writing no more than it cuts out.
    let state = tempfile::tempdir().unwrap();
    let lines: String = (1000..3560)
        .map(|n| {
            let mut message = Message::new("nowhere", format!("letter {n}"));
            message.id = n;
            let letter = DeadLetterReason::NoRoute { topic: "nowhere".into() }.label(message, None);
            serde_json::to_string(&DeadLetterRecord::new(&letter, "dlq")).unwrap() + "\n"
        })
        .collect();
    std::fs::write(state.path().join(FILE_NAME), lines).unwrap();
    let (events, seen) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(events).unwrap();
    notify::Watcher::watch(&mut watcher, state.path(), notify::RecursiveMode::NonRecursive).unwrap();

    let (dlq, destination) = Switchable::new(true);
    let host = host(state.path(), destination).await;
    assert_eq!(dlq.ids(2560).await.len(), 2560);
    eventually(|| match std::fs::metadata(state.path().join(FILE_NAME)).unwrap().len() {
        0 => Ok(()),
        left => Err(left),
    });
    // Events of one directory come in order: once this one is seen, every rewrite's is.
    std::fs::write(state.path().join("seen-all"), "").unwrap();
    let named = |event: &notify::Event, name: &str| event.paths.iter().any(|path| path.ends_with(name));
    let mut rewrites = 0;
    loop {
        let event = seen.recv_timeout(PATIENCE).expect("the watcher's events (safety net)").unwrap();
        if !matches!(event.kind, notify::EventKind::Create(_)) {
            continue;
        }
        if named(&event, "seen-all") {
            break;
        }
        rewrites += usize::from(named(&event, &format!("{FILE_NAME}.tmp")));
    }
    assert!((1..=4).contains(&rewrites), "{rewrites} rewrites of the file");
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 0);
    assert!(dlq.taken.is_empty(), "each letter re-delivered once: {:?}", dlq.taken.try_iter().count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_refused_for_good_in_the_file_does_not_send_later_letters_for_its_destination_there() {
    // A letter the dead-letter destination refused for good waits in the file, never to be sent
    // again in this run. Before, it counted as a letter waiting for that destination, as if it
    // were down: every later letter for it went straight into the file behind it (one fsync and
    // one rewrite each, and one attempt a re-delivery pass instead of a delivery's attempts).
    let (entered, deliveries) = flume::unbounded();
    let (release, released) = flume::unbounded::<()>();
    let dlq = move |message: Message| {
        let (entered, released) = (entered.clone(), released.clone());
        async move {
            if &message.payload[..] == b"poison" {
                return Err(DeliveryError::Fatal("HTTP 400: refused for good".into()));
            }
            entered.send(message).unwrap();
            released.recv_async().await.map(|()| None).map_err(|_| DeliveryError::Fatal("gone".into()))
        }
    };
    let state = tempfile::tempdir().unwrap();
    let host = host(state.path(), dlq).await;
    host.send(Message::new("nowhere", "poison")).await.unwrap();
    eventually(|| match host.dead_letters(10).unwrap() {
        held if held.count == 1 && host.stats().in_flight() == 0 => Ok(()),
        held => Err((held.count, host.stats())),
    });

    let fine = host.send(Message::new("nowhere", "fine")).await.unwrap();
    // Held by the destination until released: where the letter is now stays so.
    assert_eq!(next(&deliveries).await.id, fine);
    let held = host.dead_letters(10).unwrap();
    let payloads: Vec<_> = held.letters.iter().map(|letter| letter.to_message().unwrap().payload).collect();
    assert_eq!(payloads, ["poison"], "the later letter went to its destination, not into the file");
    release.send(()).unwrap();
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 2);
    assert_eq!(metric(&host, "switchyard_dead_letters_redelivered_total"), 0.0);
    assert_eq!(host.dead_letters(10).unwrap().count, 1, "the refused one stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_reads_no_further_than_its_batch_when_only_refused_letters_are_for_destinations_not_down() {
    // The file holds a letter for `dlb` that every destination of its chain (`dlb`, then `dla`)
    // refuses for good, then more letters for the down `dla` than a pass reads, then a line that
    // cannot be read: once read, it is set aside beside the file, which shows how far passes read. Once a pass finds `dla`
    // down, no letter waits for another destination: it stops. Before, the refused letter counted
    // as one waiting for `dlb`, and each pass read on to the end of the file, under the lock every
    // letter written waits for.
    let state = tempfile::tempdir().unwrap();
    let line = |payload: &str, destination: &str| {
        let letter = DeadLetterReason::NoRoute { topic: "nowhere".into() }
            .label(Message::new("nowhere", payload.to_owned()), None);
        serde_json::to_string(&DeadLetterRecord::new(&letter, destination)).unwrap() + "\n"
    };
    let mut file = line("poison", "dlb");
    (0..300).for_each(|n| file += &line(&format!("{n}"), "dla"));
    file += "not a letter\n";
    std::fs::write(state.path().join(FILE_NAME), file).unwrap();
    let damaged = state.path().join(DAMAGED_FILE_NAME);

    let (up, tries, (taken, took)) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), flume::unbounded());
    let (is_up, tried) = (up.clone(), tries.clone());
    let dla = move |message: Message| {
        let (is_up, tried, taken) = (is_up.clone(), tried.clone(), taken.clone());
        async move {
            tried.fetch_add(1, Ordering::SeqCst);
            match (&message.payload[..], is_up.load(Ordering::SeqCst)) {
                (b"poison", _) => Err(DeliveryError::Fatal("HTTP 400: refused for good".into())),
                (_, true) => {
                    taken.send(message).map(|()| None).map_err(|_| DeliveryError::Fatal("gone".into()))
                }
                (_, false) => Err(DeliveryError::Retryable("down for the test".into())),
            }
        }
    };
    let dlb = |_: Message| async { Err(DeliveryError::Fatal("HTTP 400: refused for good".into())) };
    let plugins = plugin_dir(&[]);
    let mut config = Config::default();
    config.host.dead_letter = "dla".into();
    let host = Host::builder().config("test.toml", config).plugin_dir(plugins.path()).state_dir(state.path());
    let host = host.destination("dla", dla).destination("dlb", dlb).build().await.unwrap();

    // The first pass tries `dla` once for the refused letter; each pass tries it once (with its
    // retries) for the first letter for it: a try past these begins the third pass, the first two
    // over.
    let per_pass = one_delivery().count();
    eventually(|| match tries.load(Ordering::SeqCst) {
        tried if tried > 1 + 2 * per_pass => Ok(()),
        tried => Err(tried),
    });
    assert!(!damaged.exists(), "a pass read past its batch, to the unreadable line at the end of the file");
    assert_eq!(host.dead_letters(0).unwrap().count, 301);

    // Back, `dla` takes its letters, and the pass reads on to the end of the file.
    up.store(true, Ordering::SeqCst);
    for _ in 0..300 {
        next(&took).await;
    }
    eventually(|| match (host.dead_letters(0).unwrap().count, damaged.exists()) {
        (1, true) => Ok(()),
        seen => Err(seen),
    });
    drain_and_account(&host).await;
}

#[test]
fn a_host_started_on_a_large_dead_letter_file_counts_it_without_holding_its_letters() {
    // The count at start kept every letter of the file, to count them by destination: a file
    // grown for days while its dead-letter destination was down needed about its size in memory.
    const LETTERS: usize = 70_000;
    let dir = plugin_dir(&[]);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(state.join(FILE_NAME)).unwrap());
    for n in 1..=LETTERS {
        let mut message = Message::new("orders.eu", vec![b'x'; 1024]);
        message.id = n as MessageId;
        let line = serde_json::to_string(&DeadLetterRecord::new(&message, "log")).unwrap();
        writeln!(file, "{line}").unwrap();
    }
    let size = file.into_inner().unwrap().metadata().unwrap().len();
    let config = "[host]\nplugin_dir = \".\"\nstate_dir = \"state\"\nwatch = false\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();

    let host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    // Said once the host is built, the file counted.
    host.line_where(|line| line.starts_with("switchyard: config"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.pid())).unwrap();
    let peak = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).expect("a peak resident size");
    let peak_bytes = peak.trim().strip_suffix(" kB").unwrap().trim().parse::<u64>().unwrap() * 1024;
    drop(host.kill());
    assert!(
        peak_bytes < size,
        "the host's peak resident memory ({peak_bytes} bytes) reached the size of the file it counted ({size} bytes)"
    );
}
