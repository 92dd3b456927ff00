//! A panic in code the host calls — a native stage, a destination —
//! dead-letters the message it happened on (`host-panic`), and the host,
//! down to the same worker thread, keeps serving.

use crate::support::{builder, drain_and_account, next, plugin_dir, within};
use switchyard::{Config, MemoryDestination, Message, RouteConfig, Verdict};

/// One worker thread, dead letters to `dead` (a destination set in code).
fn one_worker() -> Config {
    let mut config = Config::default();
    config.host.workers = 1;
    config.host.dead_letter = "dead".into();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_native_stage_dead_letters_only_its_message_and_the_host_keeps_serving() {
    let dir = plugin_dir(&[]);
    let ((out, delivered), (dead, letters)) = (MemoryDestination::new(), MemoryDestination::new());
    let host = builder(dir.path())
        .config("t.toml", one_worker())
        .destination("out", out)
        .destination("dead", dead)
        .filter("touchy", |m: &Message| match m.header("boom") {
            Some(_) => panic!("touchy exploded on {}", m.topic),
            None => Ok(Verdict::Keep),
        })
        .route(RouteConfig::new("all", ">", "out").stage("filter:touchy"))
        .build()
        .await
        .unwrap();
    for n in 0..10 {
        let message = Message::new(format!("m{n}"), "{}");
        host.send(if n == 5 { message.with_header("boom", "yes") } else { message }).await.unwrap();
    }
    let letter = next(&letters).await;
    assert_eq!(letter.topic, "m5");
    assert_eq!(letter.header("x-sy-dead-letter"), Some("host-panic"));
    assert_eq!(
        letter.header("x-sy-dead-letter-reason"),
        Some("stage \"filter:touchy\" panicked: touchy exploded on m5")
    );
    let topics: Vec<String> = within(async {
        let mut topics = Vec::new();
        for _ in 0..9 {
            topics.push(delivered.recv_async().await.unwrap().topic);
        }
        topics
    })
    .await;
    assert_eq!(topics, ["m0", "m1", "m2", "m3", "m4", "m6", "m7", "m8", "m9"]);
    host.send(Message::new("after", "{}")).await.unwrap();
    assert_eq!(next(&delivered).await.topic, "after", "the one worker lives on");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (10, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_panics_dead_letters_the_message_and_takes_the_next() {
    let dir = plugin_dir(&[]);
    let (dead, letters) = MemoryDestination::new();
    let host = builder(dir.path())
        .config("t.toml", one_worker())
        .destination("dead", dead)
        .destination("fragile", |m: Message| async move {
            match &m.payload[..] {
                b"boom" => panic!("fragile cannot take {}", m.topic),
                _ => Ok(None),
            }
        })
        .route(RouteConfig::new("all", ">", "fragile"))
        .build()
        .await
        .unwrap();
    host.send(Message::new("first", "boom")).await.unwrap();
    let letter = next(&letters).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("host-panic"));
    assert_eq!(
        letter.header("x-sy-dead-letter-reason"),
        Some("destination \"fragile\": the destination panicked: fragile cannot take first")
    );
    assert_eq!(within(host.request(Message::new("second", "fine"))).await.unwrap(), None);
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_panic_of_a_native_stage_or_destination_reaches_callers_as_one_line_of_bounded_length() {
    // An embedder's stage or destination panicking with a 10 MiB text of many lines: the caller's
    // error (and the dead-letter log line) carried it whole, where a plugin's text is kept as one
    // line of at most 1 KiB.
    let huge = || "line\n".repeat(2 << 20);
    let dir = plugin_dir(&[]);
    let (dead, _letters) = MemoryDestination::new();
    let host = builder(dir.path())
        .config("t.toml", one_worker())
        .destination("dead", dead)
        .destination("fragile", move |_: Message| async move { panic!("fragile gave way: {}", huge()) })
        .filter("touchy", move |m: &Message| match m.topic.as_str() {
            "boom" => panic!("touchy exploded: {}", huge()),
            _ => Ok(Verdict::Keep),
        })
        .route(RouteConfig::new("all", ">", "fragile").stage("filter:touchy"))
        .build()
        .await
        .unwrap();
    for (topic, said) in [("boom", "touchy exploded: line\\nline"), ("fine", "fragile gave way: line\\nline")]
    {
        let Err(switchyard::RequestError::DeadLettered(reason)) =
            host.request(Message::new(topic, "{}")).await
        else {
            panic!("the panic dead-letters the message")
        };
        let text = reason.to_string();
        assert!(text.contains(said), "{text:.200}");
        assert!(!text.contains('\n') && text.len() <= 1100, "{} bytes: {text:.200}", text.len());
    }
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 2);
}
