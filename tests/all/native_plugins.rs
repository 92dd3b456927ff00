//! Native plugins: the same SDK sources built as shared libraries, loaded
//! only when `host.native_plugins` says so, checked before anything is
//! called, swapped like components, and their panics caught as faults.

use crate::cli::switchyard;
use crate::support::{
    MEMORY_OUT, builder, drain_and_account, event_where, host, memory_out_native, native_file,
    native_plugin_dir, next, plugin_dir, replace_file, within,
};
use std::path::Path;
use std::sync::Arc;
use switchyard::config::{PluginConfig, PluginLimits};
use switchyard::plugin::{
    EndpointRecord, MiddlewareAction, NativeRefusal, PluginEngine, PluginInstance, load_file,
};
use switchyard::{CompiledPlugin, Config, Host, HostEvent, LoadError, Message, Verdict};
use switchyard_plugin_artifacts as artifacts;
use switchyard_wire::{Head, Payload, write_message};

/// `artifact` loaded as plugin `name` with config `keys`.
fn load(engine: &PluginEngine, artifact: &str, keys: &[(&str, &str)]) -> Arc<CompiledPlugin> {
    let config = keys.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
    // A generous deadline: the comparison is of decisions, and a loaded machine must not time the WASM side out.
    let limits = PluginLimits { timeout_ms: 5_000, ..PluginLimits::default() };
    let config = PluginConfig { name: "tenant-filter".into(), config, limits, ..PluginConfig::default() };
    load_file(engine, Path::new(artifact), Some(&config)).unwrap_or_else(|err| panic!("{err}"))
}

/// Message `n` of a varied stream: topics in and out of the prefix, the
/// tenant header in several spellings and values, or missing.
pub fn varied_head(batch: &mut Vec<u8>, n: u64) {
    let topic = ["orders.eu", "orders.us", "billing.eu", "orders"][(n % 4) as usize];
    let tenant = ["acme", "acme", "acme", "other", "ACME", "acme "][(n / 4 % 6) as usize];
    let name = ["x-tenant", "X-Tenant", "X-TENANT", "x-tenants"][(n / 24 % 4) as usize];
    let mut headers = vec![("x-seq", "1")];
    if !n.is_multiple_of(7) {
        headers.push((name, tenant));
    }
    let head = Head { id: n, source: 0, priority: (n % 3) as u8, topic };
    write_message(batch, &head, headers, Payload::Omitted((n % 100) as usize));
}

#[test]
fn the_header_filter_decides_alike_native_and_as_a_component_on_ten_thousand_messages() {
    let engine = PluginEngine::new(None).unwrap();
    let keys = [("topic_prefix", "orders."), ("require_header", "x-tenant"), ("require_value", "acme")];
    let component = load(&engine, artifacts::HEADER_FILTER, &keys);
    let native = load(&engine, artifacts::native::HEADER_FILTER, &keys);
    assert!(native.is_native() && !component.is_native());
    let mut instances =
        [component.clone(), native.clone()].map(|plugin| PluginInstance::new(&engine, plugin).unwrap());
    let (mut kept, mut dropped) = (0, 0);
    for first in (0..10_000).step_by(64) {
        let mut batch = Vec::new();
        (first..(first + 64).min(10_000)).for_each(|n| varied_head(&mut batch, n));
        let [wasm, native] = instances.each_mut().map(|instance| {
            let decisions = instance.filter(&batch).unwrap();
            instance.commit_counts();
            decisions
        });
        for (offset, (wasm, native)) in wasm.iter().zip(&native).enumerate() {
            assert_eq!(wasm, native, "message {}", first + offset as u64);
        }
        assert_eq!(wasm.len(), native.len());
        kept += wasm.iter().filter(|decision| **decision == Ok(Verdict::Keep)).count();
        dropped += wasm.iter().filter(|decision| **decision == Ok(Verdict::Drop)).count();
    }
    assert_eq!(kept + dropped, 10_000);
    assert!(kept > 1000 && dropped > 1000, "both decisions occur: {kept} kept, {dropped} dropped");
    let counters = |plugin: &CompiledPlugin| plugin.settings.counters();
    assert_eq!(counters(&component), counters(&native), "the counters reach the host alike");
    assert_eq!(counters(&native).get("kept"), Some(&(kept as u64)));
    // A misconfiguration fails every message alike.
    let keys = [("require_value", "acme")];
    let [wasm, native] = [artifacts::HEADER_FILTER, artifacts::native::HEADER_FILTER]
        .map(|artifact| PluginInstance::new(&engine, load(&engine, artifact, &keys)).unwrap());
    let mut batch = Vec::new();
    varied_head(&mut batch, 1);
    let [wasm, native] = [wasm, native].map(|mut instance| instance.filter(&batch).unwrap());
    assert_eq!(wasm, native);
    assert!(wasm[0].as_ref().is_err_and(|error| error.to_string().contains("needs `require_header`")));
}

#[test]
fn a_filters_counts_count_once_its_answer_is_taken_native_and_as_a_component() {
    // A call's counts counted as it ran, so a batch whose answer was refused and ran again
    // counted twice. Now they are held until the answer is taken, and dropped if it never is.
    let engine = PluginEngine::new(None).unwrap();
    let mut batch = Vec::new();
    (0..10).for_each(|n| varied_head(&mut batch, n));
    for artifact in [artifacts::HEADER_FILTER, artifacts::native::HEADER_FILTER] {
        let plugin = load(&engine, artifact, &[]);
        let mut instance = PluginInstance::new(&engine, plugin.clone()).unwrap();
        instance.filter(&batch).unwrap();
        assert!(plugin.settings.counters().is_empty(), "{artifact}: counted before its answer was taken");
        instance.filter(&batch).unwrap();
        assert!(instance.commit_counts());
        let counted = plugin.settings.counters();
        assert_eq!(
            counted,
            [("kept".to_owned(), 10)].into(),
            "{artifact}: the refused call's counts are dropped"
        );
        assert!(!instance.commit_counts(), "{artifact}: a commit counts a call once");
    }
}

#[test]
fn a_middleware_and_a_balancer_answer_alike_native_and_as_components() {
    let engine = PluginEngine::new(None).unwrap();
    let [mut wasm, mut native] = [artifacts::ANNOTATE_MIDDLEWARE, artifacts::native::ANNOTATE_MIDDLEWARE]
        .map(|artifact| PluginInstance::new(&engine, load(&engine, artifact, &[("value", "v")])).unwrap());
    let one = |topic: &str, headers: &[(&str, &str)]| {
        let mut batch = Vec::new();
        let head = Head { id: 7, source: 0, priority: 1, topic };
        write_message(&mut batch, &head, headers.iter().copied(), Payload::Bytes(b"{}"));
        batch
    };
    let action =
        |instance: &mut PluginInstance, request: &Vec<u8>| match instance.on_request(request).unwrap() {
            Ok(MiddlewareAction::Forward(batch)) => ("forward", batch),
            Ok(MiddlewareAction::Respond(batch)) => ("respond", batch),
            Err(error) => panic!("{error}"),
        };
    for request in [one("orders", &[("k", "v")]), one("orders", &[("x-short-circuit", "1")])] {
        assert_eq!(action(&mut wasm, &request), action(&mut native, &request));
    }
    let (request, reply) = (one("q", &[]), one("r", &[("a", "b")]));
    let replies =
        [&mut wasm, &mut native].map(|instance| instance.on_reply(&request, &reply).unwrap().unwrap());
    assert_eq!(replies[0], replies[1]);
    assert!(
        switchyard_wire::decode(&replies[1]).next().unwrap().unwrap().header("x-reply-annotated").is_some()
    );

    let [mut wasm, mut native] = [artifacts::LEAST_LOADED_BALANCER, artifacts::native::LEAST_LOADED_BALANCER]
        .map(|artifact| PluginInstance::new(&engine, load(&engine, artifact, &[])).unwrap());
    let endpoint = |index: u32, in_flight: u32, healthy: bool| EndpointRecord {
        index,
        address: format!("10.0.0.{index}:9000"),
        weight: 1 + index % 2,
        in_flight,
        latency_micros: 5000,
        healthy,
    };
    let head = one("orders", &[]);
    for loads in [[3, 1, 2], [0, 5, 0], [9, 9, 1]] {
        let endpoints: Vec<_> =
            (0..3).map(|at| endpoint(at, loads[at as usize], at != 2 || loads[0] != 0)).collect();
        let picks = [&mut wasm, &mut native].map(|instance| instance.pick(&head, &endpoints).unwrap());
        assert_eq!(picks[0], picks[1], "{loads:?}");
        assert!(picks[1].is_some());
    }
}

#[tokio::test]
async fn a_native_transform_swapped_a_hundred_times_under_load_loses_nothing() {
    let dir = native_plugin_dir(&[("t", artifacts::native::REDACT_TRANSFORM)]);
    let host = crate::reload::host_with_transform_in(dir.path(), &memory_out_native()).await;
    assert!(host.plugins()[0].is_native());
    let versions = [artifacts::native::STAMP_TRANSFORM, artifacts::native::REDACT_TRANSFORM];
    crate::reload::swaps_lose_nothing(&host, &dir.path().join(native_file("t")), versions, 100).await;
    let files =
        std::fs::read_dir(dir.path()).unwrap().filter(|entry| entry.as_ref().unwrap().path().is_file());
    assert_eq!(files.count(), 1, "copies are made outside the plugin directory");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let in_dir = dir.path().to_str().unwrap();
    assert!(!maps.contains(in_dir), "no library is mapped from the plugin directory itself");
}

/// A host over `dir` with native plugins allowed, and what failed to load.
async fn native_host(dir: &Path, config: &str) -> Host {
    let config = Config::from_toml("test.toml", config).unwrap_or_else(|err| panic!("{err}"));
    builder(dir).config("test.toml", config).build().await.unwrap_or_else(|err| panic!("{err}"))
}

#[tokio::test]
pub async fn native_abi_mismatch() {
    // Refused at start with both versions named; so are a library that is no
    // Switchyard plugin and a file that is no library.
    let dir = native_plugin_dir(&[
        ("future", artifacts::native::NATIVE_ABI_MISMATCH),
        ("other", artifacts::native::FAULTY_WRONG_WORLD),
    ]);
    std::fs::write(dir.path().join(native_file("junk")), b"not a library").unwrap();
    let host = native_host(dir.path(), &memory_out_native()).await;
    let errors: Vec<String> = host.load_errors().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors[0],
        "plugin \"future\": built for native plugin ABI 999 (switchyard-plugin 9.9.9); this host speaks ABI 1: rebuild it against this host's SDK"
    );
    assert!(errors[1].starts_with("plugin \"junk\": cannot load the native library: "), "{}", errors[1]);
    assert_eq!(
        errors[2],
        "plugin \"other\": not a switchyard native plugin: it exports no `switchyard_native_abi`"
    );
    assert!(host.plugins().is_empty());
    // Swapped in over a serving native plugin, it is refused and the old one serves on.
    let dir = native_plugin_dir(&[("f", artifacts::native::HEADER_FILTER)]);
    let host = native_host(dir.path(), &memory_out_native()).await;
    let serving = host.plugins()[0].digest.clone();
    let mut events = host.subscribe();
    replace_file(
        &dir.path().join(native_file("f")),
        &std::fs::read(artifacts::native::NATIVE_ABI_MISMATCH).unwrap(),
    );
    let event = event_where(&mut events, |event| matches!(event, HostEvent::PluginRejected { .. })).await;
    let HostEvent::PluginRejected { name, reason } = event else { unreachable!() };
    assert_eq!(name, "f");
    assert!(reason.contains("built for native plugin ABI 999"), "{reason}");
    assert_eq!(host.plugins()[0].digest, serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_library_cut_short_is_refused_and_the_serving_one_serves_on() {
    // Opened, a library cut short (a copy still under way, a truncated download) killed the host
    // with SIGBUS when the loader touched a page past its end.
    let dir = native_plugin_dir(&[("t", artifacts::native::STAMP_TRANSFORM)]);
    let host = crate::reload::host_with_transform_in(dir.path(), &memory_out_native()).await;
    let serving = host.plugins()[0].digest.clone();
    let mut events = host.subscribe();
    let whole = std::fs::read(artifacts::native::REDACT_TRANSFORM).unwrap();
    for cut in [5000, whole.len() / 2, whole.len() - 1] {
        replace_file(&dir.path().join(native_file("t")), &whole[..cut]);
        let event = event_where(&mut events, |event| matches!(event, HostEvent::PluginRejected { .. })).await;
        let HostEvent::PluginRejected { reason, .. } = event else { unreachable!() };
        assert!(reason.contains(&format!("not a whole library ({cut} bytes")), "{reason}");
    }
    assert_eq!(host.plugins()[0].digest, serving);
    host.send(Message::new("any", "{}")).await.unwrap();
    let out = host.memory("out").unwrap();
    assert_eq!(crate::reload::version_seen(&next(&out).await), "stamp", "the serving library serves on");
    drain_and_account(&host).await;
}

/// How many times native plugin `name` was opened in this process: each opening maps a private
/// copy in a directory of its own, and none is ever unmapped (see `plugin/native`).
#[cfg(target_os = "linux")]
fn times_opened(name: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let file = native_file(name);
    let copies: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|line| line.find('/').map(|at| &line[at..]))
        .filter_map(|path| path.trim_end_matches(" (deleted)").rsplit_once('/'))
        .filter(|(_, mapped)| *mapped == file)
        .map(|(copy_dir, _)| copy_dir)
        .collect();
    copies.len()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_native_library_is_opened_once_however_often_the_host_reloads() {
    // Refused once opened (its ABI), by its trial (it panics on every message), and for its kind
    // (a filter where a route uses the serving transform). A library is never closed, and every
    // explicit reload opened each of them again: three more mapped copies a reload.
    let dir = native_plugin_dir(&[
        ("refused-abi", artifacts::native::NATIVE_ABI_MISMATCH),
        ("refused-trial", artifacts::native::FAULTY_TRAP),
        ("refused-kind", artifacts::native::STAMP_TRANSFORM),
    ]);
    let route = "[[route]]\nname = \"all\"\nstages = [\"transform:refused-kind\"]\nto = \"out\"\n";
    let host = native_host(dir.path(), &format!("{}{route}", memory_out_native())).await;
    let mut events = host.subscribe();
    let filter = std::fs::read(artifacts::native::HEADER_FILTER).unwrap();
    replace_file(&dir.path().join(native_file("refused-kind")), &filter);
    let kind =
        |event: &HostEvent| matches!(event, HostEvent::PluginRejected { name, .. } if name == "refused-kind");
    event_where(&mut events, kind).await;
    let names = ["refused-abi", "refused-trial", "refused-kind"];
    assert_eq!(names.map(times_opened), [1, 1, 2], "the serving transform and the refused filter");
    let (rejections, rejected) = (host.last_rejections(), host.event_counts().rejected);
    assert_eq!(rejections.len(), 3, "{rejections:?}");
    for _ in 0..5 {
        host.reload().await.unwrap();
    }
    assert_eq!(names.map(times_opened), [1, 1, 2], "a reload opened an unchanged library again");
    assert_eq!(host.last_rejections(), rejections, "each is refused for the same reason still");
    assert_eq!(host.event_counts().rejected, rejected, "and not reported again");
    assert_eq!(host.plugins().len(), 1);
    assert_eq!(host.plugins()[0].kind, switchyard::PluginKind::Transform, "the transform serves on");
    drain_and_account(&host).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_native_library_is_opened_once_however_often_the_host_reloads() {
    let dir = native_plugin_dir(&[("accepted-once", artifacts::native::HEADER_FILTER)]);
    let host = native_host(dir.path(), &memory_out_native()).await;
    let serving = host.plugins()[0].clone();
    assert_eq!(times_opened("accepted-once"), 1);
    for _ in 0..5 {
        host.reload().await.unwrap();
    }
    assert_eq!(times_opened("accepted-once"), 1, "a reload opened the serving library again");
    assert!(Arc::ptr_eq(&host.plugins()[0], &serving), "the same version serves on");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_library_written_in_place_in_two_steps_is_opened_once_its_writer_closes_it() {
    // Caught between its writer's two steps, the first half was read (and refused as cut short):
    // a library still being written is not read at all now, so none partly written is opened.
    let dir = native_plugin_dir(&[("t", artifacts::native::STAMP_TRANSFORM)]);
    let host = crate::reload::host_with_transform_in(dir.path(), &memory_out_native()).await;
    let file = native_file("t");
    crate::reload_once::plugin_written_in_two_steps(
        &host,
        dir.path(),
        &file,
        artifacts::native::REDACT_TRANSFORM,
    )
    .await;
    host.send(Message::new("any", "{}")).await.unwrap();
    let out = host.memory("out").unwrap();
    assert_eq!(crate::reload::version_seen(&next(&out).await), "redact", "the new library serves");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webassembly_plugin_removed_beside_a_library_left_unopened_is_gone_too() {
    // native_plugins off: t.so is refused unopened, and once t.wasm is removed t serves no more.
    let dir = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let host = crate::reload::host_with_transform_in(dir.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    std::fs::copy(artifacts::native::STAMP_TRANSFORM, dir.path().join(native_file("t"))).unwrap();
    std::fs::remove_file(dir.path().join("t.wasm")).unwrap();
    let removed = event_where(&mut events, |event| matches!(event, HostEvent::PluginRemoved { .. })).await;
    assert!(matches!(removed, HostEvent::PluginRemoved { name, .. } if name == "t"));
    assert!(host.plugins().is_empty());
    event_where(&mut events, |event| matches!(event, HostEvent::PluginRejected { name, .. } if name == "t"))
        .await;
    let refusal = &host.last_rejections()["t"];
    assert!(refusal.contains("host.native_plugins is false: it was not opened"), "{refusal}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_library_put_where_one_was_refused_unopened_is_reported_again() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), MEMORY_OUT).await;
    let mut events = host.subscribe();
    let rejected = |event: &HostEvent| matches!(event, HostEvent::PluginRejected { name, .. } if name == "n");
    for library in [artifacts::native::STAMP_TRANSFORM, artifacts::native::REDACT_TRANSFORM] {
        replace_file(&dir.path().join(native_file("n")), &std::fs::read(library).unwrap());
        event_where(&mut events, rejected).await;
    }
    assert_eq!(host.event_counts().rejected, 2, "each library is reported");
    assert!(host.plugins().is_empty());
    drain_and_account(&host).await;
}

#[tokio::test]
async fn a_native_panic_is_a_fault_that_dead_letters_its_message_with_the_panic_text() {
    let dir = native_plugin_dir(&[("bad", artifacts::native::FAULTY_TRAP)]);
    let config = format!(
        r#"{}
[[plugin]]
name = "bad"
config = {{ trigger = "x-poison" }}
[[route]]
name = "risky"
match = {{ topic = "risky.*" }}
stages = ["filter:bad"]
to = "out"
[[route]]
name = "safe"
to = "out"
"#,
        memory_out_native()
    );
    let host = host(dir.path(), &config).await;
    let reason = "trapped: panicked: faulty-trap traps on message ";
    crate::faulty::assert_isolated(&host, "plugin-trapped", reason).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_plugins_huge_panic_reaches_callers_and_its_last_fault_as_one_line_of_bounded_length() {
    // A component's panic reaches the host as a trap and the bounded line the plugin logged; a
    // native library's panic text came whole, newlines and all, into the caller's error, the
    // dead-letter log line and `/v1/plugins`' last fault.
    let dir = native_plugin_dir(&[("bad", artifacts::native::FAULTY_TRAP)]);
    let config = format!(
        r#"{}
[[plugin]]
name = "bad"
config = {{ trigger = "x-poison", panic_bytes = "{}" }}
[[route]]
name = "risky"
stages = ["filter:bad"]
to = "out"
"#,
        memory_out_native(),
        10 << 20
    );
    let host = host(dir.path(), &config).await;
    let poison = Message::new("risky", "{}").with_header("x-poison", "1");
    let Err(switchyard::RequestError::DeadLettered(reason)) = host.request(poison).await else {
        panic!("the panic dead-letters the message")
    };
    let fault = host.metrics().last_fault("bad").expect("the panic is the plugin's last fault");
    for text in [reason.to_string(), fault.message] {
        assert!(text.contains("faulty-trap traps on message"), "{text:.200}");
        assert!(!text.contains('\n') && text.len() <= 1100, "{} bytes: {text:.200}", text.len());
    }
    drain_and_account(&host).await;
}

#[tokio::test]
pub async fn native_constructor() {
    // Off by default: the library is reported, never opened (its
    // constructor would write the marker), whatever the config says of it.
    // Where the fixture's constructor writes (see `plugins/native-constructor`).
    let marker =
        std::env::temp_dir().join(format!("switchyard-native-constructor-ran-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let dir = native_plugin_dir(&[("c", artifacts::native::NATIVE_CONSTRUCTOR)]);
    let config = format!("{MEMORY_OUT}[[plugin]]\nname = \"c\"\n");
    let off = builder(dir.path()).config("test.toml", Config::from_toml("test.toml", &config).unwrap());
    let off = off.build().await.unwrap();
    let file = dir.path().join(native_file("c")).display().to_string();
    let refusal = NativeRefusal::Disabled { file: file.clone() };
    assert!(
        matches!(&off.load_errors(), [LoadError::NativeRefused { name, refusal: r }] if name == "c" && *r == refusal)
    );
    assert_eq!(
        off.load_errors()[0].to_string(),
        format!(
            "plugin \"c\": {file} is a native library and host.native_plugins is false: it was not opened (a native plugin runs unsandboxed in the host's process; set native_plugins = true under [host] to trust the plugin directory)"
        )
    );
    assert_eq!(off.event_counts().rejected, 1);
    assert!(off.plugins().is_empty());
    assert!(!marker.exists(), "the library was opened");
    within(off.shutdown()).await;
    // The proof is sound: allowed, the same library is opened and writes it.
    let on = host(dir.path(), &memory_out_native()).await;
    assert!(marker.exists(), "the constructor did not run");
    assert!(on.plugins()[0].is_native());
    std::fs::remove_file(&marker).unwrap();
}

#[test]
fn plugin_call_and_check_take_native_libraries() {
    let message = r#"{"topic":"orders.eu","headers":{"x-tenant":"acme"},"payload":"{\"card\":\"4111\"}"}"#;
    let (ok, out) = switchyard(&[
        "plugin",
        "call",
        artifacts::native::REDACT_TRANSFORM,
        "--message",
        message,
        "--config",
        "fields=card",
    ]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["answer"]["messages"][0]["payload"], r#"{"card":"[redacted]"}"#);
    let filter = ["--config", "require_header=x-tenant", "--config", "require_value=acme"];
    let call = ["plugin", "call", artifacts::native::HEADER_FILTER, "--message", message];
    let (ok, out) = switchyard(&[&call[..], &filter].concat());
    assert!(ok && out.contains(r#""verdict":"keep""#), "{out}");
    let (ok, out) = switchyard(&["plugin", "call", artifacts::native::FAULTY_TRAP, "--message", message]);
    assert!(!ok && out.contains("trapped: panicked: faulty-trap traps on message"), "{out}");
    // Loading a library runs its code: checking one does not load it unless told to.
    let (ok, out) = switchyard(&["check", artifacts::native::HEADER_FILTER]);
    assert!(!ok && out.contains("loading a native library runs its code"), "{out}");
    assert!(out.contains("switchyard check --load-native "), "{out}");
    let (ok, out) = switchyard(&["check", "--load-native", artifacts::native::HEADER_FILTER]);
    assert!(ok && out.contains("is a native filter plugin, version "), "{out}");
    let (ok, out) = switchyard(&["check", "--load-native", artifacts::native::NATIVE_ABI_MISMATCH]);
    assert!(!ok && out.contains("built for native plugin ABI 999 (switchyard-plugin 9.9.9)"), "{out}");
}

/// `switchyard check` of `config` in `dir` (with `flags` before it), its temporary directory one of
/// its own: its standard output, and whether it opened the `native-constructor` library there.
fn check_config(dir: &Path, flags: &[&str], config: &str) -> (String, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(crate::cli::BINARY)
        .arg("check")
        .args(flags)
        .arg(config)
        .current_dir(dir)
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run switchyard");
    // Where the fixture's constructor writes (see `plugins/native-constructor`).
    let marker = tmp.path().join(format!("switchyard-native-constructor-ran-{}", child.id()));
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{out}{}", String::from_utf8_lossy(&output.stderr));
    (out, marker.exists())
}

#[test]
fn check_of_a_config_opens_its_native_plugins_only_with_load_native() {
    let dir = native_plugin_dir(&[("c", artifacts::native::NATIVE_CONSTRUCTOR)]);
    let config = "[host]\nplugin_dir = \".\"\nnative_plugins = true\n\
                  [[route]]\nname = \"r\"\nstages = [\"transform:c\"]\nto = \"log\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let file = format!("./{}", native_file("c"));
    // Trusting the plugin directory to run is not trusting it to be looked at: check opens nothing.
    let (out, opened) = check_config(dir.path(), &[], "switchyard.toml");
    assert!(!opened, "check opened the library: {out}");
    let warning = format!(
        "warning: route \"r\": stage \"transform:c\": {file} is a native library, not opened: opening one runs its code; pass --load-native to check it (a library you trust)"
    );
    assert!(out.lines().any(|line| line == warning), "{out}");
    // Told to, it opens the library and checks it as `run` would load it.
    let (out, opened) = check_config(dir.path(), &["--load-native"], "switchyard.toml");
    assert!(opened, "check did not open the library: {out}");
    let warning = format!("warning: route \"r\": stage \"transform:c\": {file} is a filter plugin");
    assert!(out.lines().any(|line| line == warning), "{out}");
}
