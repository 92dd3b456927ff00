//! The transport layer's seam: a transport an embedder registers from Rust gets the whole destination
//! core (balancing, retries on another endpoint, dead letters) and its own checked options, and a
//! transport nobody registered is refused before anything runs.

use crate::support::{builder, drain_and_account, plugin_dir, within};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use switchyard::config::DestinationConfig;
use switchyard::resilience::{Outcome, RetryReason};
use switchyard::transport::{AttemptFuture, Transport, TransportContext, TransportOptions, typed};
use switchyard::{Config, Host, Message};

/// `options = {..}` of the test transport.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopbackOptions {
    /// Stamped on every reply as `x-tag`.
    tag: String,
    /// The endpoint whose every attempt fails as a reset.
    failing: String,
}

impl TransportOptions for LoopbackOptions {}

/// Answers each message in place, except on its failing endpoint; records every attempt's address.
struct Loopback {
    options: LoopbackOptions,
    attempts: Arc<Mutex<Vec<String>>>,
}

impl Transport for Loopback {
    fn attempt<'a>(&'a self, address: &'a str, message: &'a Message) -> AttemptFuture<'a> {
        self.attempts.lock().unwrap().push(address.to_owned());
        Box::pin(async move {
            if address == self.options.failing {
                return Err((Outcome::Retryable(RetryReason::Reset), "connection reset".to_owned()));
            }
            let reply = Message::new(&message.topic, message.payload.clone());
            Ok(Some(reply.with_header("x-tag", &self.options.tag).with_header("x-endpoint", address)))
        })
    }
}

fn config(options: &str) -> Config {
    let text = format!(
        "[host]\nworkers = 1\ndead_letter = \"dead\"\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"out\"\ntransport = \"loopback\"\nendpoints = [\"a:1\", \"b:2\"]\n\
         idempotent = true\nretry = {{ attempts = 2, base_ms = 1, max_ms = 1 }}\n{options}\n\
         [[route]]\nname = \"all\"\nto = \"out\"\n"
    );
    Config::from_toml("test.toml", &text).unwrap_or_else(|err| panic!("{err}"))
}

/// A host whose `loopback` transport records its attempts in `attempts`.
async fn host(config: Config, attempts: &Arc<Mutex<Vec<String>>>) -> Result<Host, switchyard::BuildError> {
    let attempts = attempts.clone();
    let factory = typed(move |options: LoopbackOptions, _: &DestinationConfig, _: &TransportContext| {
        Arc::new(Loopback { options, attempts: attempts.clone() }) as Arc<dyn Transport>
    });
    let dir = plugin_dir(&[]);
    builder(dir.path()).config("test.toml", config).transport("loopback", factory).build().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_registered_in_rust_gets_its_options_and_retries_on_another_endpoint() {
    let attempts = Arc::default();
    let host = host(config("options = { tag = \"seen\", failing = \"a:1\" }"), &attempts).await.unwrap();
    for n in 0..6 {
        let reply = within(host.request(Message::new("orders", format!("m{n}")))).await.unwrap();
        let reply = reply.expect("the transport replies");
        assert_eq!(reply.header("x-tag"), Some("seen"));
        assert_eq!(reply.header("x-endpoint"), Some("b:2"), "only b answers");
    }
    let text = host.metrics().encode();
    let counted = |outcome| {
        let labels = [("transport", "loopback"), ("destination", "out"), ("outcome", outcome)];
        crate::exposition::sample(&text, "switchyard_transport_attempts_total", &labels)
    };
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (6, 0));
    let attempts = attempts.lock().unwrap();
    assert_eq!(counted("ok"), Some(6.0), "per-transport metrics count every attempt");
    let failed = attempts.iter().filter(|address| *address == "a:1").count() as f64;
    assert_eq!(counted("retryable"), Some(failed));
    assert_eq!(attempts.iter().filter(|address| *address == "b:2").count(), 6);
    let failed = attempts.iter().filter(|address| *address == "a:1").count();
    assert!(failed >= 1, "round-robin sent some to the failing endpoint first: {attempts:?}");
}

#[tokio::test]
async fn an_option_a_registered_transport_does_not_know_is_refused_naming_it() {
    let attempts = Arc::default();
    let config = config("options = { tag = \"seen\", failing = \"a:1\", colour = \"red\" }");
    let error = host(config, &attempts).await.expect_err("refused").to_string();
    assert_eq!(
        error,
        "test.toml: destination \"out\".options = { colour = \"red\", failing = \"a:1\", tag = \"seen\" }: \
         unknown field `colour`, expected `tag` or `failing`"
    );
}

#[tokio::test]
async fn a_transport_nobody_registered_is_refused_before_the_host_starts() {
    let dir = plugin_dir(&[]);
    let error = builder(dir.path()).config("test.toml", config("")).build().await;
    assert_eq!(
        error.expect_err("refused").to_string(),
        "test.toml: destination \"out\".transport = \"loopback\": unknown transport (known: file, http, nats, plugin:NAME, redis, subprocess, tcp, websocket, log, memory)"
    );
}

#[tokio::test]
async fn a_transport_registered_twice_is_refused_and_one_replacing_a_built_in_is_not() {
    let factory = || {
        typed(|options: LoopbackOptions, _: &DestinationConfig, _: &TransportContext| {
            Arc::new(Loopback { options, attempts: Arc::default() }) as Arc<dyn Transport>
        })
    };
    let dir = plugin_dir(&[]);
    let config = || config("options = { tag = \"seen\", failing = \"a:1\" }");
    let twice = builder(dir.path())
        .config("test.toml", config())
        .transport("loopback", factory())
        .transport("loopback", factory());
    let error = twice.build().await.expect_err("refused").to_string();
    assert_eq!(error, "transport \"loopback\" is registered twice on the builder");
    let replacing = builder(dir.path())
        .config("test.toml", config())
        .transport("loopback", factory())
        .transport("http", factory());
    replacing.build().await.expect("the built-in http transport replaced once").shutdown().await;
}
