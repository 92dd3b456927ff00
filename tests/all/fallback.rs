//! `fallback = "DEST"`: what a network destination could not send within its queue timeout goes to
//! its fallback instead of a dead letter — counted, told once per spell — and a fallback that fails
//! too dead-letters with its own reason, as does one that keeps a message past an attempt's
//! deadline (no room in its queue, no answer in place).

use crate::exposition::sample;
use crate::support::{builder, drain_and_account, host, next, plugin_dir, within};
use std::time::Duration;
use switchyard::{DestinationEvent, HostEvent, Message, RequestError};

/// An address nothing listens on: connections to it are refused.
fn refusing_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn config(fallback: &str) -> String {
    format!(
        "[host]\nworkers = 1\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"spill\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"spill-api\"\ntransport = \"tcp\"\nendpoints = [\"{}\"]\nqueue = {{ timeout_ms = 100 }}\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
         queue = {{ timeout_ms = 200 }}\nfallback = \"{fallback}\"\n\
         [[route]]\nname = \"all\"\nto = \"api\"\n",
        refusing_address(),
        refusing_address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_no_endpoint_could_take_go_to_the_fallback_counted_and_told_once() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config("spill")).await;
    let mut events = host.subscribe();
    for n in 0..20 {
        host.send(Message::new("orders", format!("order {n}"))).await.unwrap();
    }
    let spill = host.memory("spill").unwrap();
    let mut payloads: Vec<String> = Vec::new();
    for _ in 0..20 {
        payloads.push(String::from_utf8(next(&spill).await.payload.to_vec()).unwrap());
    }
    payloads.sort_by_key(|payload| payload[6..].parse::<u32>().unwrap());
    assert_eq!(payloads, (0..20).map(|n| format!("order {n}")).collect::<Vec<_>>());
    let event = within(async {
        loop {
            if let Ok(HostEvent::Destination(event @ DestinationEvent::Fallback { .. })) = events.recv().await
            {
                return event;
            }
        }
    })
    .await;
    let DestinationEvent::Fallback { destination, fallback, reason } = event else { unreachable!() };
    assert_eq!((destination.as_str(), fallback.as_str()), ("api", "spill"));
    assert!(reason.contains("no endpoint could take a message within its queue timeout"), "{reason}");
    let text = host.metrics().encode();
    let fallbacks = sample(&text, "switchyard_destination_fallbacks_total", &[("destination", "api")]);
    assert_eq!(fallbacks, Some(20.0));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0));
    assert_eq!(host.event_counts().destination_fallbacks, 1, "one spell, told once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_that_cannot_take_it_either_dead_letters_it_with_its_own_reason() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config("spill-api")).await;
    let answer = within(host.request(Message::new("orders", "nowhere"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"));
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(reason.contains("spill-api"), "the fallback's own failure: {reason}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}

/// The config of a destination `api` whose endpoint refuses connections and whose attempts last
/// 1 s, handing what it cannot send within 200 ms to `fallback`, with `more` (destinations).
fn handing_to(fallback: &str, more: &str) -> String {
    format!(
        "[host]\nworkers = 1\ndead_letter = \"dead\"\nshutdown_grace_ms = 1000\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n{more}\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{}\"]\ntimeout_ms = 1000\n\
         queue = {{ timeout_ms = 200 }}\nfallback = \"{fallback}\"\n\
         [[route]]\nname = \"all\"\nto = \"api\"\n",
        refusing_address()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_fallback_whose_queue_stays_full_dead_letters_a_message_after_an_attempt_s_deadline() {
    // A full network fallback's queue was waited on until a shutdown's grace period: the
    // hand-off (and the stream's turn or rebuilt destination waiting on it) for as long.
    // Its endpoint takes connections and reads nothing: one message in flight, one queued.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spill = format!(
        "[[destination]]\nname = \"spill-api\"\ntransport = \"tcp\"\nendpoints = [\"{}\"]\n\
         timeout_ms = 600000\nqueue = {{ capacity = 1, timeout_ms = 600000, max_in_flight = 1 }}\n",
        silent.local_addr().unwrap()
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &handing_to("spill-api", &spill)).await;
    for n in 0..4 {
        host.send(Message::new("orders", format!("order {n}"))).await.unwrap();
    }
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("queue-timeout"));
    let reason = letter.header("x-sy-dead-letter-reason").unwrap();
    assert!(
        reason.starts_with("destination \"spill-api\": no room for it within 1000 ms (full)"),
        "{reason}"
    );
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 4), "the rest at the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_registered_in_code_that_never_answers_dead_letters_a_message_after_an_attempt_s_deadline()
{
    // Delivered to in place, a fallback that never answered kept the message (and its hand-off)
    // until a shutdown's grace period.
    let dir = plugin_dir(&[]);
    // A file, validated once the destination registered in code is known.
    let file = dir.path().join("t.toml");
    std::fs::write(&file, handing_to("spill", "")).unwrap();
    let host = builder(dir.path())
        .config_file(file)
        .unwrap()
        .destination("spill", |_: Message| std::future::pending())
        .build()
        .await
        .unwrap();
    let sent = std::time::Instant::now();
    let answer = within(host.request(Message::new("orders", "nowhere"))).await;
    let Err(RequestError::DeadLettered(reason)) = answer else { panic!("{answer:?}") };
    assert_eq!(reason.code(), "delivery-uncertain");
    assert_eq!(
        reason.to_string(),
        "destination \"spill\": not answered within 1000 ms; it may have been delivered"
    );
    // Its queue timeout in `api`, then one attempt's deadline in `spill`.
    assert!(sent.elapsed() >= Duration::from_millis(1200), "{:?}", sent.elapsed());
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-uncertain"));
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}
