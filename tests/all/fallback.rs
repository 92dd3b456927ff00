//! `fallback = "DEST"`: what a network destination could not send within its queue timeout goes to
//! its fallback instead of a dead letter — counted, told once per spell — and a fallback that fails
//! too dead-letters with its own reason.

use crate::exposition::sample;
use crate::support::{drain_and_account, host, next, plugin_dir, within};
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
