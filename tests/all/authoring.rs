//! What a plugin author sees: counters in `/metrics` that outlive a swap,
//! and compiles told on standard error, then served from the compile cache.

use crate::exposition::{parse, sample};
use crate::support::{MEMORY_OUT, event_where, eventually, host, next, plugin_dir, replace_file};
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
