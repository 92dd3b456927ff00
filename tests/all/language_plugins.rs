//! Plugins written in Python (componentize-py) and JavaScript
//! (componentize-js) with the SDKs in `plugin-sdk/`: run through routes,
//! swapped under load, compared with their Rust twins, and their codecs
//! checked against the golden vectors of wire format 1. Without the tools these tests fail saying
//! how to install them (`switchyard_plugin_artifacts::require`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use crate::native_plugins::varied_head;
use crate::plugins::keeps_one_tenants_orders;
use crate::reload::{host_with_transform_in, swaps_lose_nothing};
use crate::support::{MEMORY_OUT, drain_and_account, host, next, plugin_dir};
use switchyard::config::{PluginConfig, PluginLimits};
use switchyard::plugin::{PluginEngine, PluginInstance, load_file};
use switchyard::{CompiledPlugin, Message, Verdict};
use switchyard_plugin_artifacts::{self as artifacts, require};
use switchyard_wire::{Head, Payload, write_message};

/// Swaps per language: a few, since every first compile of a big component
/// takes seconds; the compile cache serves the rest.
const SWAPS: usize = 10;

/// A call deadline for a plugin swapped under load: instantiating a 12–18 MB
/// interpreter component can pass the default 100 ms on a busy machine.
const GENEROUS_LIMITS: &str = "limits = { timeout_ms = 10000 }";

/// `artifact` loaded as a plugin with config `keys`, with [`GENEROUS_LIMITS`]' deadline (its trial
/// instantiates it).
fn load(engine: &PluginEngine, artifact: &str, keys: &[(&str, &str)]) -> Arc<CompiledPlugin> {
    let config = keys.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
    let limits = PluginLimits { timeout_ms: 10_000, ..PluginLimits::default() };
    let config = PluginConfig { name: "p".into(), config, limits, ..PluginConfig::default() };
    load_file(engine, Path::new(artifact), Some(&config)).unwrap_or_else(|err| panic!("{err}"))
}

#[tokio::test]
pub async fn python_filter() {
    keeps_one_tenants_orders(require(artifacts::PYTHON_FILTER)).await;
}

#[tokio::test]
pub async fn js_filter() {
    keeps_one_tenants_orders(require(artifacts::JS_FILTER)).await;
}

#[tokio::test]
pub async fn js_transform() {
    stamps_in_a_route(require(artifacts::JS_TRANSFORM)).await;
}

#[tokio::test]
pub async fn python_transform() {
    stamps_in_a_route(require(artifacts::PYTHON_TRANSFORM)).await;
}

/// The stamping transform at `artifact`, configured with the stamp `js`,
/// replaces a message's `x-stamp` header in a route and keeps the rest.
async fn stamps_in_a_route(artifact: &str) {
    let dir = plugin_dir(&[("t", artifact)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"t\"\nconfig = {{ stamp = \"js\" }}\n\
         [[route]]\nname = \"all\"\nstages = [\"transform:t\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let out = host.memory("out").unwrap();
    let sent = Message::new("orders.eu", "{\"n\":1}").with_header("X-Stamp", "old").with_header("k", "v");
    host.send(sent.clone()).await.unwrap();
    let delivered = next(&out).await;
    assert_eq!((delivered.topic.as_str(), &delivered.payload), (sent.topic.as_str(), &sent.payload));
    let headers: Vec<_> = delivered.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(headers.starts_with(&[("x-stamp", "js"), ("k", "v")]), "{headers:?}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[test]
fn the_python_and_js_filters_decide_as_the_rust_header_filter_on_a_thousand_messages() {
    let engine = PluginEngine::new(None).unwrap();
    let keys = [("topic_prefix", "orders."), ("require_header", "x-tenant"), ("require_value", "acme")];
    let artifacts =
        [artifacts::HEADER_FILTER, require(artifacts::PYTHON_FILTER), require(artifacts::JS_FILTER)];
    let plugins = artifacts.map(|artifact| load(&engine, artifact, &keys));
    let mut instances =
        plugins.each_ref().map(|plugin| PluginInstance::new(&engine, plugin.clone()).unwrap());
    let mut kept = 0;
    for first in (0..1000).step_by(64) {
        let mut batch = Vec::new();
        (first..(first + 64).min(1000)).for_each(|n| varied_head(&mut batch, n));
        let [rust, python, js] = instances.each_mut().map(|instance| {
            let decisions = instance.filter(&batch).unwrap();
            instance.commit_counts();
            decisions
        });
        assert_eq!(rust, python, "Python: batch from message {first}");
        assert_eq!(rust, js, "JavaScript: batch from message {first}");
        kept += rust.iter().filter(|decision| **decision == Ok(Verdict::Keep)).count();
    }
    assert!(kept > 100 && kept < 900, "both decisions occur: {kept} of 1000 kept");
    let counters = |plugin: &CompiledPlugin| plugin.settings.counters();
    let [rust, python, js] = plugins.each_ref().map(|plugin| counters(plugin));
    assert_eq!(rust, python, "the Python plugin's counters reach the host alike");
    assert_eq!(rust, js, "the JavaScript plugin's counters reach the host alike");
    // A misconfiguration fails every message alike.
    let keys = [("require_value", "acme")];
    let mut batch = Vec::new();
    varied_head(&mut batch, 1);
    let [rust, python, js] = artifacts.map(|artifact| {
        let mut instance = PluginInstance::new(&engine, load(&engine, artifact, &keys)).unwrap();
        instance.filter(&batch).unwrap()
    });
    assert!(matches!(rust.as_slice(), [Err(_)]), "{rust:?}");
    assert_eq!((&rust, &rust), (&python, &js));
}

/// Message `n` of a varied full stream: topics, priorities, headers with and
/// without an `x-stamp` in several spellings, UTF-8 and empty payloads.
fn varied_message(batch: &mut Vec<u8>, n: u64) {
    let topic = ["orders.eu", "billing", "ünïcode.topic", ""][(n % 4) as usize];
    let stamp = ["x-stamp", "X-Stamp", "x-stamps"][(n / 4 % 3) as usize];
    let mut headers = vec![("k", "v")];
    if !n.is_multiple_of(5) {
        headers.extend([(stamp, "old"), ("x-STAMP", "dup")]);
    }
    let payload = format!("{{\"n\":{n},\"s\":\"{}\"}}", "é".repeat((n % 9) as usize));
    let payload = if n.is_multiple_of(11) { "" } else { payload.as_str() };
    let head = Head { id: n * 7919, source: 0, priority: (n % 3) as u8, topic };
    write_message(batch, &head, headers, Payload::Bytes(payload.as_bytes()));
}

#[test]
fn the_js_and_python_transforms_output_what_the_rust_stamp_transform_does_on_a_thousand_messages() {
    let engine = PluginEngine::new(None).unwrap();
    let artifacts =
        [artifacts::STAMP_TRANSFORM, require(artifacts::JS_TRANSFORM), require(artifacts::PYTHON_TRANSFORM)];
    let mut instances = artifacts
        .map(|artifact| PluginInstance::new(&engine, load(&engine, artifact, &[("stamp", "S")])).unwrap());
    for first in (0..1000).step_by(64) {
        let mut batch = Vec::new();
        (first..(first + 64).min(1000)).for_each(|n| varied_message(&mut batch, n));
        let [rust, js, python] = instances.each_mut().map(|instance| instance.transform(&batch).unwrap());
        for (language, other) in [("JavaScript", js), ("Python", python)] {
            assert!(other.errors.is_empty(), "{language}: {:?}", other.errors);
            assert_eq!(rust.messages, other.messages, "{language}: the outputs differ from message {first}");
        }
    }
}

#[tokio::test]
async fn the_python_filter_swapped_under_load_loses_nothing() {
    // Plugin `t` is the filter (Python, then the Rust header filter, in
    // turn), keeping everything; `s` stamps what passes, as the swap helper expects.
    let dir = plugin_dir(&[("t", require(artifacts::PYTHON_FILTER)), ("s", artifacts::STAMP_TRANSFORM)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"t\"\nconfig = {{ topic_prefix = \"lo\" }}\n{GENEROUS_LIMITS}\n\
         [[route]]\nname = \"all\"\nstages = [\"filter:t\", \"transform:s\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let versions = [artifacts::HEADER_FILTER, artifacts::PYTHON_FILTER];
    swaps_lose_nothing(&host, &dir.path().join("t.wasm"), versions, SWAPS).await;
}

#[tokio::test]
async fn the_js_transform_swapped_under_load_loses_nothing() {
    let dir = plugin_dir(&[("t", require(artifacts::JS_TRANSFORM))]);
    let config = format!("{MEMORY_OUT}[[plugin]]\nname = \"t\"\n{GENEROUS_LIMITS}\n");
    let host = host_with_transform_in(dir.path(), &config).await;
    let versions = [artifacts::STAMP_TRANSFORM, artifacts::JS_TRANSFORM];
    swaps_lose_nothing(&host, &dir.path().join("t.wasm"), versions, SWAPS).await;
}

/// Run `program args` from the repository root; its standard error.
fn run_checked(program: &str, args: &[&str], install: &str) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program} ({err}): {install}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// How many golden vectors `plugin-sdk/wire/vectors/{dir}` holds (its `NAME.bin` files).
fn vector_count(dir: &str) -> usize {
    let dir = format!("{}/../plugin-sdk/wire/vectors/{dir}", env!("CARGO_MANIFEST_DIR"));
    let entries = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path());
    entries.filter(|path| path.extension().is_some_and(|ext| ext == "bin")).count()
}

#[test]
fn the_python_codec_passes_the_golden_vectors() {
    let out = run_checked(
        "python3",
        &["plugin-sdk/python/test_vectors.py"],
        "install Python 3 (apt-get install python3)",
    );
    assert!(out.contains(&format!("{} vectors passed", vector_count(""))), "{out}");
    assert!(out.contains(&format!("{} filter answers passed", vector_count("decisions"))), "{out}");
}

#[test]
fn the_js_codec_passes_the_golden_vectors() {
    let out = run_checked(
        "node",
        &["--test", "plugin-sdk/js/vectors.test.js"],
        "install Node.js (apt-get install nodejs)",
    );
    // One test a vector, and one that there are vectors, of each kind.
    assert!(out.contains(&format!("# pass {}", vector_count("") + vector_count("decisions") + 2)), "{out}");
}

/// The SDKs' own tests (counts, output checks, all-or-nothing writes, what a transform returns or leaves
/// unfinished, log levels, the JS build's staging): every one runs, none fails.
#[test]
fn the_python_sdk_passes_its_unit_tests() {
    let out = run_checked(
        "python3",
        &["-m", "unittest", "discover", "-s", "plugin-sdk/python", "-p", "test_*.py"],
        "install Python 3 (apt-get install python3)",
    );
    assert!(out.contains("Ran 22 tests") && out.contains("\nOK"), "{out}");
}

#[test]
fn the_js_sdk_passes_its_unit_tests() {
    let out = run_checked("node", &["--test", "plugin-sdk/js/"], "install Node.js (apt-get install nodejs)");
    assert!(out.contains("# pass 36") && out.contains("# fail 0"), "{out}");
}
