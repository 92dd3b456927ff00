//! Hot reload on real files: plugins replaced, rejected, removed and
//! reconfigured while messages flow, with every message accounted for.

use crate::support::{
    MEMORY_OUT, builder, drain_and_account, event_where, eventually, host, next, plugin_dir, replace_file,
    within,
};
use std::sync::Arc;
use switchyard::{Config, ConfigChange, ConfigError, Host, HostEvent, Message, RouteConfig};
use switchyard_plugin_artifacts as artifacts;
use tokio::sync::{Notify, Semaphore};

/// Whether an event is plugin `name`'s replacement.
pub fn replaced(name: &str) -> impl Fn(&HostEvent) -> bool + '_ {
    move |event| matches!(event, HostEvent::PluginReplaced { name: n, .. } if n == name)
}

fn rejected(name: &str) -> impl Fn(&HostEvent) -> bool + '_ {
    move |event| matches!(event, HostEvent::PluginRejected { name: n, .. } if n == name)
}

/// A host over a directory holding `t.wasm` (redact-transform), routing
/// every message through `transform:t` twice to `out`.
async fn host_with_transform() -> (tempfile::TempDir, Host) {
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let host = host_with_transform_in(dir.path(), MEMORY_OUT).await;
    (dir, host)
}

/// A host over `dir`, whose plugin `t` is a redact- or stamp-transform,
/// routing every message through `transform:t` twice to `out`; `memory_out`
/// is [`MEMORY_OUT`] or a variant of it.
pub async fn host_with_transform_in(dir: &std::path::Path, memory_out: &str) -> Host {
    let routes = "[[route]]\nname = \"all\"\nstages = [\"transform:t\", \"transform:t\"]\nto = \"out\"\n";
    host(dir, &format!("{memory_out}{routes}")).await
}

/// Which version handled `message`: both stages must have been the same one
/// (a mix would carry both versions' headers).
pub fn version_seen(message: &Message) -> &'static str {
    let count = |name: &str| message.headers.iter().filter(|(key, _)| key == name).count();
    match (count("x-transformed-by"), count("x-stamp")) {
        (1, 0) => "redact",
        (0, 1) => "stamp",
        other => panic!("message {} saw a mix of versions {other:?}: {:?}", message.id, message.headers),
    }
}

#[tokio::test]
pub async fn stamp_transform() {
    // Replaced while messages flow: each message sees exactly one version,
    // and every message sent after the swap was announced sees the new one.
    let (dir, host) = host_with_transform().await;
    let mut events = host.subscribe();
    let out = host.memory("out").unwrap();
    let sender = {
        let host = host.clone();
        tokio::spawn(async move {
            for n in 0..3000 {
                host.send(Message::new("flow", format!("{{\"n\":{n}}}"))).await.unwrap();
            }
        })
    };
    for _ in 0..200 {
        version_seen(&next(&out).await);
    }
    replace_file(&dir.path().join("t.wasm"), &std::fs::read(artifacts::STAMP_TRANSFORM).unwrap());
    event_where(&mut events, replaced("t")).await;
    let after = host.send(Message::new("after", "{}")).await.unwrap();
    within(sender).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 200..3001 {
        let message = next(&out).await;
        let version = version_seen(&message);
        *seen.entry(version).or_insert(0) += 1;
        if message.id == after {
            assert_eq!(version, "stamp", "a message sent after the swap saw the old version");
        }
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.accepted, stats.delivered, stats.dead_lettered), (3001, 3001, 0));
    assert!(seen.contains_key("stamp"), "{seen:?}");
}

#[tokio::test]
async fn hundred_swaps_under_steady_load_lose_nothing() {
    // About swaps, not deadlines: on a loaded machine a call (or a trial run)
    // can pass the default 100 ms, and dead-letter a message or reject a version.
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let generous = format!("{MEMORY_OUT}[[plugin]]\nname = \"t\"\nlimits = {{ timeout_ms = 10000 }}\n");
    let host = host_with_transform_in(dir.path(), &generous).await;
    let versions = [artifacts::STAMP_TRANSFORM, artifacts::REDACT_TRANSFORM];
    swaps_lose_nothing(&host, &dir.path().join("t.wasm"), versions, 100).await;
}

/// Replace `file`, plugin `t` of a [`host_with_transform_in`], `swaps` times
/// with the two `versions` in turn while a sender keeps messages flowing:
/// every message accepted is delivered, none lost.
pub async fn swaps_lose_nothing(host: &Host, file: &std::path::Path, versions: [&str; 2], swaps: usize) {
    let mut events = host.subscribe();
    let stop = tokio::sync::watch::channel(false);
    // A reader keeps up, as a real consumer does: `out` is bounded.
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (out, delivered) = (host.memory("out").unwrap(), delivered.clone());
        tokio::spawn(async move {
            while let Ok(message) = out.recv_async().await {
                version_seen(&message);
                delivered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let sender = {
        let (host, stop) = (host.clone(), stop.1.clone());
        tokio::spawn(async move {
            let mut sent = 0_u64;
            while !*stop.borrow() {
                host.send(Message::new("load", "{}")).await.unwrap();
                sent += 1;
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    let versions = versions.map(|path| std::fs::read(path).unwrap());
    for swap in 0..swaps {
        replace_file(file, &versions[swap % 2]);
        event_where(&mut events, replaced("t")).await;
    }
    stop.0.send(true).unwrap();
    let sent = within(sender).await.unwrap();
    let stats = drain_and_account(host).await;
    assert_eq!(stats.accepted, sent);
    assert_eq!((stats.delivered, stats.dead_lettered, stats.filtered), (sent, 0, 0));
    assert_eq!(host.event_counts().replaced, swaps as u64);
    let read = || delivered.load(std::sync::atomic::Ordering::SeqCst);
    within(async {
        while read() < sent {
            tokio::task::yield_now().await;
        }
    })
    .await;
    reader.abort();
    assert_eq!(read(), sent);
}

#[tokio::test]
async fn bad_replacements_are_rejected_and_the_previous_version_keeps_serving() {
    let (dir, host) = host_with_transform().await;
    let mut events = host.subscribe();
    let out = host.memory("out").unwrap();
    let serving = host.plugins()[0].digest.clone();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "corrupt",
            b"\0asm\x0d\0\x01\0 definitely not a component".to_vec(),
            "not a valid WebAssembly component",
        ),
        ("wrong world", std::fs::read(artifacts::FAULTY_WRONG_WORLD).unwrap(), "does not match world"),
        (
            "traps in its trial",
            std::fs::read(artifacts::FAULTY_TRAP).unwrap(),
            "failed its trial run: trapped",
        ),
        (
            "spins in its trial",
            std::fs::read(artifacts::FAULTY_SPIN).unwrap(),
            "failed its trial run: timed out",
        ),
    ];
    for (case, bytes, reason) in cases {
        replace_file(&dir.path().join("t.wasm"), &bytes);
        let HostEvent::PluginRejected { reason: why, .. } = event_where(&mut events, rejected("t")).await
        else {
            unreachable!()
        };
        assert!(why.contains(reason), "{case}: {why}");
        assert_eq!(host.plugins()[0].digest, serving, "{case}");
        host.send(Message::new("still", "{}")).await.unwrap();
        assert_eq!(version_seen(&next(&out).await), "redact", "{case}");
    }
    assert_eq!(host.event_counts().rejected, 4);
    drain_and_account(&host).await;
}

#[tokio::test]
async fn a_replacement_whose_trial_answer_is_malformed_is_rejected_and_the_previous_version_keeps_serving() {
    // Its trial's answer was dropped unread: it replaced the good version, and every message
    // through it was then dead-lettered plugin-malformed.
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let config = format!("{MEMORY_OUT}[[plugin]]\nname = \"t\"\nconfig = {{ fault = \"one-based\" }}\n");
    let host = host_with_transform_in(dir.path(), &config).await;
    let mut events = host.subscribe();
    let serving = host.plugins()[0].digest.clone();
    replace_file(&dir.path().join("t.wasm"), &std::fs::read(artifacts::FAULTY_ERRORS).unwrap());
    let swapped = |event: &HostEvent| rejected("t")(event) || replaced("t")(event);
    let HostEvent::PluginRejected { reason, .. } = event_where(&mut events, swapped).await else {
        panic!("the malformed version replaced the good one")
    };
    let problem = "failed its trial run: returned a malformed answer: an error names input 1 of 1";
    assert!(reason.ends_with(problem), "{reason}");
    assert_eq!(host.plugins()[0].digest, serving);
    host.send(Message::new("still", "{}")).await.unwrap();
    assert_eq!(version_seen(&next(&host.memory("out").unwrap()).await), "redact");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test]
async fn half_written_file_is_never_loaded() {
    let (dir, host) = host_with_transform().await;
    let mut events = host.subscribe();
    let out = host.memory("out").unwrap();
    let full = std::fs::read(artifacts::STAMP_TRANSFORM).unwrap();
    let path = dir.path().join("t.wasm");
    // A slow copy, caught half-way: written in place, not renamed.
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    event_where(&mut events, rejected("t")).await;
    host.send(Message::new("during", "{}")).await.unwrap();
    assert_eq!(version_seen(&next(&out).await), "redact");
    std::fs::write(&path, &full).unwrap();
    let HostEvent::PluginReplaced { version, .. } = event_where(&mut events, replaced("t")).await else {
        unreachable!()
    };
    assert_eq!(version, host.plugins()[0].digest);
    host.send(Message::new("after", "{}")).await.unwrap();
    assert_eq!(version_seen(&next(&out).await), "stamp");
    drain_and_account(&host).await;
}

#[tokio::test]
async fn removed_plugin_makes_its_route_follow_the_failure_policy() {
    let (dir, host) = host_with_transform().await;
    let mut events = host.subscribe();
    std::fs::remove_file(dir.path().join("t.wasm")).unwrap();
    event_where(&mut events, |e| matches!(e, HostEvent::PluginRemoved { name, .. } if name == "t")).await;
    assert!(host.plugins().is_empty());
    host.send(Message::new("orphan", "{}")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("stage-unavailable"));
    assert_eq!(
        letter.header("x-sy-dead-letter-reason"),
        Some("stage \"transform:t\" is unavailable: no plugin \"t\" is loaded (loaded: )")
    );
    let stats = drain_and_account(&host).await;
    assert_eq!(stats.dead_lettered, 1);
}

#[tokio::test]
async fn sidecar_settings_reconfigure_a_plugin_and_bad_ones_are_refused() {
    let (dir, host) = host_with_transform().await;
    let mut events = host.subscribe();
    let out = host.memory("out").unwrap();
    std::fs::write(dir.path().join("t.toml"), "config = { fields = \"card\" }\n").unwrap();
    event_where(&mut events, replaced("t")).await;
    host.send(Message::new("pay", r#"{"card":"4111"}"#)).await.unwrap();
    assert_eq!(next(&out).await.payload, r#"{"card":"[redacted]"}"#);
    std::fs::write(dir.path().join("t.toml"), "limits = { memory_mb = 0 }\n").unwrap();
    let HostEvent::PluginRejected { reason, .. } = event_where(&mut events, rejected("t")).await else {
        unreachable!()
    };
    assert!(reason.contains("t.toml: plugin \"t\".limits.memory_mb = 0: must be at least 1"), "{reason}");
    // A value of the wrong type: the key and the value are named.
    std::fs::write(
        dir.path().join("t.toml"),
        "config = { fields = \"card\" }\nlimits = { memory_mb = \"big\" }\n",
    )
    .unwrap();
    let HostEvent::PluginRejected { reason, .. } = event_where(&mut events, rejected("t")).await else {
        unreachable!()
    };
    assert!(
        reason.contains("t.toml: limits = { memory_mb = \"big\" }: invalid type: string \"big\""),
        "{reason}"
    );
    host.send(Message::new("pay", r#"{"card":"4111"}"#)).await.unwrap();
    assert_eq!(next(&out).await.payload, r#"{"card":"[redacted]"}"#, "the previous settings still serve");
    drain_and_account(&host).await;
}

#[tokio::test]
async fn invalid_config_file_is_rejected_whole_and_a_valid_one_applies() {
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    // A config whose only route goes to destination `to`.
    let config = |to: &str| {
        let text = format!("{MEMORY_OUT}[[route]]\nname = \"all\"\nto = \"{to}\"\n");
        text.replacen("[host]", &format!("[host]\nplugin_dir = {:?}", dir.path()), 1)
    };
    std::fs::write(&config_path, config("out")).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let mut events = host.subscribe();
    std::fs::write(&config_path, config("nowhere")).unwrap();
    let HostEvent::ConfigRejected { reason, .. } =
        event_where(&mut events, |e| matches!(e, HostEvent::ConfigRejected { .. })).await
    else {
        unreachable!()
    };
    assert!(reason.contains("route \"all\".to = \"nowhere\": unknown destination"), "{reason}");
    host.send(Message::new("x", "1")).await.unwrap();
    assert_eq!(next(&host.memory("out").unwrap()).await.payload, "1", "the running config stays");
    std::fs::write(&config_path, config("dead")).unwrap();
    event_where(&mut events, |e| matches!(e, HostEvent::ConfigApplied { .. })).await;
    host.send(Message::new("x", "2")).await.unwrap();
    assert_eq!(next(&host.memory("dead").unwrap()).await.payload, "2", "the new route applies");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_may_name_a_destination_registered_in_code_at_start_and_at_reload() {
    // The file was validated as it was read, before the builder knew of the registered
    // destination: naming one was "unknown destination", at start and at every reload.
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    let config = |topic: &str| {
        let text = format!(
            "{MEMORY_OUT}[[route]]\nname = \"coded\"\nmatch = {{ topic = \"{topic}\" }}\nto = \"coded\"\n"
        );
        text.replacen("[host]", &format!("[host]\nplugin_dir = {:?}", dir.path()), 1)
    };
    std::fs::write(&config_path, config("first")).unwrap();
    let (coded, taken) = switchyard::MemoryDestination::new();
    let host = Host::builder().config_file(&config_path).unwrap().destination("coded", coded);
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    host.send(Message::new("first", "1")).await.unwrap();
    assert_eq!(within(taken.recv_async()).await.unwrap().payload, "1");
    std::fs::write(&config_path, config("second")).unwrap();
    within(host.reload()).await.unwrap();
    host.send(Message::new("second", "2")).await.unwrap();
    assert_eq!(within(taken.recv_async()).await.unwrap().payload, "2", "the reloaded route applies");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_keeps_what_the_builder_set_in_code() {
    let plugins = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let config_dir = plugin_dir(&[]);
    let config_path = config_dir.path().join("switchyard.toml");
    // The file names a plugin directory without the plugin; code overrides it.
    let config = |dead_letter: &str| {
        let text = MEMORY_OUT.replace("dead_letter = \"dead\"", &format!("dead_letter = \"{dead_letter}\""));
        format!("{text}[[route]]\nname = \"file\"\nmatch = {{ topic = \"file\" }}\nto = \"out\"\n")
    };
    std::fs::write(&config_path, config("dead")).unwrap();
    let code_route = RouteConfig::new("code", "code", "out").stage("transform:t");
    let host =
        Host::builder().config_file(&config_path).unwrap().state_dir(config_dir.path().join(".switchyard"));
    let host = host.plugin_dir(plugins.path()).route(code_route).build().await.unwrap();
    std::fs::write(&config_path, config("log")).unwrap();
    within(host.reload()).await.unwrap();
    assert_eq!(host.config().host.dead_letter, "log", "the file's change applies");
    assert!(host.unavailable_stages().is_empty(), "plugins still come from the code's directory");
    host.send(Message::new("code", "c")).await.unwrap();
    let through_code_route = next(&host.memory("out").unwrap()).await;
    assert!(through_code_route.header("x-stamp").is_some(), "{through_code_route:?}");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_a_plugin_still_loading_and_drops_it() {
    // Untriggered, faulty-sleep sleeps 10 s on every message, its load trial's sample too: a
    // load as slow as a big plugin's compile, under a deadline that lets it end.
    let plugins = plugin_dir(&[]);
    let config = MEMORY_OUT.replacen("[host]\n", "[host]\nwatch = false\n", 1)
        + "[[plugin]]\nname = \"sleepy\"\nlimits = { timeout_ms = 60000 }\n\
           [[route]]\nname = \"all\"\nto = \"out\"\n";
    let host = host(plugins.path(), &config).await;
    let mut events = host.subscribe();
    let file = plugins.path().join("sleepy.wasm");
    std::fs::copy(artifacts::FAULTY_SLEEP, &file).unwrap();
    let opens = crate::reload_once::OpenCounter::new(file);
    let reload = tokio::spawn({
        let host = host.clone();
        async move { host.reload().await }
    });
    // The reload read the file: it is loading it.
    let read = move || eventually(|| (opens.count() > 0).then_some(()).ok_or("unread"));
    tokio::task::spawn_blocking(read).await.unwrap();
    let ids =
        [host.send(Message::new("a", "1")).await.unwrap(), host.send(Message::new("b", "2")).await.unwrap()];
    let stats = drain_and_account(&host).await;
    assert!(host.plugins().iter().all(|plugin| plugin.name != "sleepy"), "the stop waited for the load");
    assert_eq!((stats.accepted, stats.delivered), (2, 2), "{stats:?}");
    let out = host.memory("out").unwrap();
    let mut delivered = [next(&out).await.id, next(&out).await.id];
    delivered.sort();
    assert_eq!(delivered, ids);
    // The load ends after the stop: what it made is dropped, not swapped in.
    within(reload).await.unwrap().unwrap();
    assert!(host.plugins().iter().all(|plugin| plugin.name != "sleepy"), "loaded after the stop");
    let loaded = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|event| matches!(event, HostEvent::PluginLoaded { .. }))
        .collect::<Vec<_>>();
    assert!(loaded.is_empty(), "{loaded:?}");
}

#[tokio::test]
async fn a_removed_middleware_leaves_no_instance_behind_once_replies_pass_again() {
    let annotate = artifacts::ANNOTATE_MIDDLEWARE;
    let dir = plugin_dir(&[("gone", annotate), ("kept", annotate)]);
    let echo = |message: Message| async move { Ok(Some(message)) };
    // One pipeline worker: the one that made an instance is the one that takes the next request.
    let config = switchyard::Config::from_toml("t", "[host]\nworkers = 1\nwatch = false\n").unwrap();
    let host = crate::support::builder(dir.path())
        .config("t", config)
        .destination("echo", echo)
        .route(RouteConfig::new("gone", "gone", "echo").stage("middleware:gone"))
        .route(RouteConfig::new("kept", "kept", "echo").stage("middleware:kept"))
        .build()
        .await
        .unwrap();
    within(host.request(Message::new("gone", "1"))).await.unwrap().unwrap();
    let gone = host.plugins().into_iter().find(|plugin| plugin.name == "gone").unwrap();
    assert_eq!(gone.live_instances(), 2, "the pipeline worker's, for the request; the reply worker's");
    std::fs::remove_file(dir.path().join("gone.wasm")).unwrap();
    host.reload().await.unwrap();
    // A request and its reply after the removal: the workers they pass let the removed version go.
    within(host.request(Message::new("kept", "2"))).await.unwrap().unwrap();
    assert_eq!(gone.live_instances(), 0, "an instance of the removed middleware is kept");
    drain_and_account(&host).await;
}

#[tokio::test]
async fn a_reply_pinned_to_a_removed_middleware_leaves_no_instance_behind() {
    // The reply worker let go of the versions no longer serving before it passed a reply back, then
    // made an instance of the removed version the reply was pinned to: it stayed until the plugins
    // changed again, as the set it had checked against was still the one serving.
    let annotate = artifacts::ANNOTATE_MIDDLEWARE;
    let dir = plugin_dir(&[("gone", annotate), ("kept", annotate)]);
    let (arrived, gate) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let held = {
        let (arrived, gate) = (arrived.clone(), gate.clone());
        move |message: Message| {
            let (arrived, gate) = (arrived.clone(), gate.clone());
            async move {
                arrived.notify_one();
                gate.acquire().await.unwrap().forget();
                Ok(Some(message))
            }
        }
    };
    let echo = |message: Message| async move { Ok(Some(message)) };
    let config = switchyard::Config::from_toml("t", "[host]\nworkers = 1\nwatch = false\n").unwrap();
    let host = crate::support::builder(dir.path())
        .config("t", config)
        .destination("held", held)
        .destination("echo", echo)
        .route(RouteConfig::new("gone", "gone", "held").stage("middleware:gone"))
        .route(RouteConfig::new("kept", "kept", "echo").stage("middleware:kept"))
        .build()
        .await
        .unwrap();
    let gone = host.plugins().into_iter().find(|plugin| plugin.name == "gone").unwrap();
    let request = tokio::spawn({
        let host = host.clone();
        async move { host.request(Message::new("gone", "1")).await }
    });
    within(arrived.notified()).await;
    std::fs::remove_file(dir.path().join("gone.wasm")).unwrap();
    host.reload().await.unwrap();
    gate.add_permits(1);
    within(request).await.unwrap().unwrap().unwrap();
    // A request and its reply through the reply worker (route `kept` runs a middleware) after it.
    within(host.request(Message::new("kept", "2"))).await.unwrap().unwrap();
    assert_eq!(gone.live_instances(), 0, "an instance of the removed middleware is kept");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_destination_added_back_with_another_capacity_is_refused_naming_the_key() {
    // Its channel outlives a reload that removes it (an embedder may hold its receiver): added back
    // with another capacity, it was that channel again, of its first capacity, and "applied".
    let dir = plugin_dir(&[]);
    let route = "[[route]]\nname = \"all\"\nto = \"out\"\n";
    let with_extra = |capacity: usize| {
        let extra = format!(
            "[[destination]]\nname = \"extra\"\ntransport = \"memory\"\nqueue = {{ capacity = {capacity} }}\n"
        );
        Config::from_toml("test.toml", &format!("{MEMORY_OUT}{extra}{route}")).unwrap()
    };
    let host = host(dir.path(), &format!("{MEMORY_OUT}{route}")).await;
    let apply = |config: Config| host.apply_config("test.toml", config);
    assert_eq!(within(apply(with_extra(2))).await.unwrap(), ConfigChange::Applied);
    let without = Config::from_toml("test.toml", &format!("{MEMORY_OUT}{route}")).unwrap();
    assert_eq!(within(apply(without)).await.unwrap(), ConfigChange::Applied, "removed");
    let refused = within(apply(with_extra(6))).await.unwrap_err();
    assert!(matches!(refused, ConfigError::NeedsRestart { .. }), "{refused}");
    assert!(refused.to_string().contains("a memory destination's queue.capacity"), "{refused}");
    assert!(host.config().destinations.iter().all(|dest| dest.name != "extra"), "nothing was applied");
    assert_eq!(within(apply(with_extra(2))).await.unwrap(), ConfigChange::Applied, "added back as it was");
    assert_eq!(host.memory("extra").unwrap().capacity(), Some(2));
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_plugin_dir_that_the_builder_overrides_is_told_once_not_silently_dropped() {
    // `switchyard run --plugins DIR` is the builder's `plugin_dir`: an edit of the file's
    // `host.plugin_dir` changed nothing, and nothing said so.
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    let config = |plugin_dir: &str| {
        let route = "[[route]]\nname = \"all\"\nto = \"out\"\n";
        let text = format!("{MEMORY_OUT}{route}");
        text.replacen("[host]", &format!("[host]\nwatch = false\nplugin_dir = \"{plugin_dir}\""), 1)
    };
    std::fs::write(&config_path, config("first")).unwrap();
    let host = builder(dir.path()).config_file(&config_path).unwrap().build().await.unwrap();
    let mut events = host.subscribe();
    std::fs::write(&config_path, config("second")).unwrap();
    let change = within(host.reload()).await.unwrap();
    assert_eq!(change, ConfigChange::Unchanged, "plugins still come from the builder's directory");
    assert_eq!(host.config().host.plugin_dir, dir.path());
    let told: Vec<serde_json::Value> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|event| event.name() == "config-overridden")
        .map(|event| serde_json::to_value(event).unwrap())
        .collect();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["key"], "host.plugin_dir");
    assert_eq!(told[0]["value"], "second");
    assert_eq!(told[0]["used"], dir.path().display().to_string());
    // The same value again is not told again.
    std::fs::write(&config_path, config("second") + "# a comment\n").unwrap();
    within(host.reload()).await.unwrap();
    assert!(std::iter::from_fn(|| events.try_recv().ok()).all(|event| event.name() != "config-overridden"));
    drain_and_account(&host).await;
}
