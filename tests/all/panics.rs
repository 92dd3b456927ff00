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
