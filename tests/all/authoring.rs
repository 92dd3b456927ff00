//! What a plugin author sees: counters in `/metrics` that outlive a swap,
//! and compiles told on standard error, then served from the compile cache.

use crate::exposition::{parse, sample};
use crate::support::{
    MEMORY_OUT, builder, drain_and_account, event_where, eventually, host, next, plugin_dir, replace_file,
    within,
};
use std::sync::Arc;
use switchyard::{Host, HostEvent, Message};
use switchyard_plugin_artifacts as artifacts;

const BINARY: &str = env!("CARGO_BIN_EXE_switchyard");

/// `bytes`, a component, with a custom section appended: a new version that
/// behaves the same.
fn new_version(mut bytes: Vec<u8>) -> Vec<u8> {
    let name = b"switchyard-test";
    bytes.extend_from_slice(&[0, name.len() as u8 + 2, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.push(1);
    bytes
}

/// Wait until `f`'s counter `name` in `/metrics` is `expected`.
fn counter_reaches(host: &Host, name: &str, expected: f64) {
    eventually(|| {
        let text = host.metrics().encode();
        let seen = sample(&text, "switchyard_plugin_counter_total", &[("plugin", "f"), ("name", name)]);
        if seen == Some(expected) { Ok(()) } else { Err(seen) }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_a_plugin_bumps_appear_in_metrics_and_add_up_across_a_swap() {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"f\"\nconfig = {{ topic_prefix = \"keep.\" }}\n\
         [[route]]\nname = \"all\"\nstages = [\"filter:f\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    for topic in ["keep.a", "keep.b", "other"] {
        host.send(Message::new(topic, "{}")).await.unwrap();
    }
    counter_reaches(&host, "kept", 2.0);
    counter_reaches(&host, "dropped", 1.0);

    let mut events = host.subscribe();
    let file = dir.path().join("f.wasm");
    replace_file(&file, &new_version(std::fs::read(&file).unwrap()));
    event_where(&mut events, |event| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "f"))
        .await;
    for topic in ["keep.c", "other"] {
        host.send(Message::new(topic, "{}")).await.unwrap();
    }
    counter_reaches(&host, "kept", 3.0);
    counter_reaches(&host, "dropped", 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_has_at_most_256_counter_series_over_all_its_versions() {
    // Each version had room for 256 names of its own: a plugin counting new names in each version
    // added up to 256 series to /metrics with every swap. Here three versions count 200 new names
    // each (faulty-flood counting each message's topic).
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"flood\"\nconfig = {{ copies = \"1\", count_topics = \"yes\" }}\n\
         [[route]]\nname = \"all\"\nstages = [\"transform:flood\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let (out, mut events) = (host.memory("out").unwrap(), host.subscribe());
    let file = dir.path().join("flood.wasm");
    for version in 0..3 {
        if version > 0 {
            replace_file(&file, &new_version(std::fs::read(&file).unwrap()));
            let replaced = |event: &HostEvent| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "flood");
            event_where(&mut events, replaced).await;
        }
        for n in 0..200 {
            host.send(Message::new(format!("v{version}.{n}"), "{}")).await.unwrap();
        }
        // A stage's counts reach the metrics before its output goes on.
        for _ in 0..200 {
            next(&out).await;
        }
    }
    let text = host.metrics().encode();
    let series = parse(&text)
        .into_iter()
        .filter(|s| s.name == "switchyard_plugin_counter_total" && s.labels["plugin"] == "flood")
        .count();
    assert_eq!(series, 256, "one series per name, for the first 256 names the plugin counted");
    let first = sample(&text, "switchyard_plugin_counter_total", &[("plugin", "flood"), ("name", "v0.0")]);
    assert_eq!(first, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_again_one_by_one_after_a_fault_counts_each_message_once() {
    // A transform's counts were counted as its call ran: when the answer was then refused (here one
    // message made 1025 of itself, an output-limit fault) and the batch's messages ran again one
    // by one, the others counted twice, and the refused one twice too.
    let dir = plugin_dir(&[("flood", artifacts::FAULTY_FLOOD)]);
    let config = MEMORY_OUT.replacen("[host]\n", "[host]\nworkers = 1\nbatch_size = 64\n", 1)
        + "[[plugin]]\nname = \"flood\"\n\
           config = { trigger = \"x-poison\", copies = \"1025\", count_topics = \"yes\" }\n\
           [[route]]\nname = \"gate\"\nmatch = { topic = \"gate\" }\nstages = [\"filter:gate\"]\nto = \"out\"\n\
           [[route]]\nname = \"all\"\nstages = [\"transform:flood\"]\nto = \"out\"\n";
    let (entered, (open, gate)) = (Arc::new(tokio::sync::Notify::new()), flume::unbounded::<()>());
    let said = entered.clone();
    let host = builder(dir.path())
        .config("t", switchyard::Config::from_toml("t", &config).unwrap())
        .filter("gate", move |_: &Message| {
            said.notify_one();
            let _ = gate.recv();
            Ok(switchyard::Verdict::Keep)
        })
        .build()
        .await
        .unwrap();
    // The only worker waits in the gate while the others queue up behind it: then it takes them
    // all in one batch, whose call faults.
    host.send(Message::new("gate", "hold")).await.unwrap();
    within(entered.notified()).await;
    let topics = ["t0", "t1", "t2", "t3", "t4"];
    for topic in topics {
        host.send(Message::new(topic, "{}")).await.unwrap();
    }
    let poison = host.send(Message::new("poison", "{}").with_header("x-poison", "1")).await.unwrap();
    drop(open);
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!((letter.id, letter.header("x-sy-dead-letter")), (poison, Some("plugin-output-limit")));
    let out = host.memory("out").unwrap();
    for _ in 0..=topics.len() {
        next(&out).await;
    }
    let text = host.metrics().encode();
    let counter =
        |name| sample(&text, "switchyard_plugin_counter_total", &[("plugin", "flood"), ("name", name)]);
    let counted: Vec<_> = topics.iter().map(|topic| counter(topic)).collect();
    assert_eq!(counted, [Some(1.0); 5], "each message counted once\n{text}");
    assert_eq!(counter("poison"), None, "a refused answer counts nothing");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (7, 6, 1));
}

#[test]
fn check_tells_of_a_compile_then_finds_the_plugin_in_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let check = || {
        let output = std::process::Command::new(BINARY)
            .args(["check", artifacts::HEADER_FILTER])
            .env("XDG_CACHE_HOME", cache.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stderr).unwrap()
    };
    let first = check();
    assert!(first.contains("compiling header_filter ("), "{first}");
    assert!(first.contains("compiled header_filter in "), "{first}");
    let second = check();
    assert!(!second.contains("compiling"), "the second check compiles again: {second}");
}
