//! NATS transport benchmark: messages a second and CPU time per message from `Host::send` through
//! the `nats` transport to a local `nats-server` and a subscriber in this process (publish, 256-byte
//! payloads), and through `reply = true` to a responder (requests, many in flight). The CPU time is
//! this process's (host and subscriber), not the server's.
//!
//! `cargo bench -p switchyard --bench nats` (needs `nats-server`: `apt-get install nats-server`)

#[path = "support/servers.rs"]
mod servers;

use cpu_time::ProcessTime;
use futures_util::StreamExt;
use std::time::Instant;
use switchyard::{Config, Host, Message};

/// Messages per timed run.
const MESSAGES: u64 = 50_000;
const RUNS: usize = 3;
/// Tasks sending into the host.
const SENDERS: u64 = 2;

#[tokio::main]
async fn main() {
    let server = servers::Server::nats();
    let client = async_nats::connect(&server.address).await.unwrap();
    let mut received = client.subscribe("bench.>").await.unwrap();
    // A request nobody answers comes back after the server has taken the subscription.
    assert!(client.request("bench-fence", bytes::Bytes::new()).await.is_err());
    let (seen, counted) = flume::unbounded::<()>();
    tokio::spawn(async move {
        while let Some(message) = received.next().await {
            if let Some(reply) = message.reply {
                client.publish(reply, message.payload).await.unwrap();
            }
            let _ = seen.send(());
        }
    });
    println!(
        "nats transport, Host::send -> nats-server -> subscriber, {MESSAGES} messages a run, median of {RUNS}:"
    );
    for reply in [false, true] {
        let host = host(&server.address, reply).await;
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let (wall, cpu) = (Instant::now(), ProcessTime::now());
            send(&host, MESSAGES).await;
            for _ in 0..MESSAGES {
                counted.recv_async().await.unwrap();
            }
            let (wall, cpu) = (wall.elapsed(), cpu.elapsed());
            runs.push((MESSAGES as f64 / wall.as_secs_f64(), cpu.as_secs_f64() * 1e6 / MESSAGES as f64));
        }
        host.shutdown().await;
        let stats = host.stats();
        assert_eq!(stats.delivered, stats.accepted, "every message delivered: {stats:?}");
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, cpu) = runs[RUNS / 2];
        let mode = if reply { "request (reply = true)" } else { "publish" };
        println!("  {mode:<24} {rate:>8.0} msgs/s  {cpu:>5.1} us CPU/msg  (runs {runs:.1?})");
    }
}

/// A host sending everything to the `nats` destination at `address`.
async fn host(address: &str, reply: bool) -> Host {
    let text = format!(
        "[host]\nwatch = false\n[[destination]]\nname = \"bus\"\ntransport = \"nats\"\n\
         endpoints = [\"{address}\"]\noptions = {{ subject = \"bench.{{topic}}\", reply = {reply} }}\n\
         [[route]]\nname = \"all\"\nto = \"bus\"\n"
    );
    let config = Config::from_toml("bench.toml", &text).unwrap();
    let plugins = tempfile::tempdir().unwrap();
    Host::builder().config("bench.toml", config).plugin_dir(plugins.path()).build().await.unwrap()
}

/// Send `messages` of 256 bytes from [`SENDERS`] tasks.
async fn send(host: &Host, messages: u64) {
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let senders = (0..SENDERS).map(|_| {
        let (host, payload) = (host.clone(), payload.clone());
        tokio::spawn(async move {
            for _ in 0..messages / SENDERS {
                host.send(Message::new("orders", payload.clone())).await.unwrap();
            }
        })
    });
    for sender in futures_util::future::join_all(senders).await {
        sender.unwrap();
    }
}
