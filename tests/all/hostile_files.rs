//! Files in the plugin directory that are not plugins — a FIFO, a link to
//! `/dev/zero`, a link out of the directory, a file over the size limit — are
//! refused with their reasons, at start and when they appear, and reloads
//! keep working.

use crate::support::{MEMORY_OUT, builder, drain_and_account, event_where, mkfifo, plugin_dir, within};
use switchyard::{Config, HostEvent};
use switchyard_plugin_artifacts as artifacts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_plugins_are_refused_with_reasons_and_reloads_keep_working() {
    let dir = plugin_dir(&[]);
    let elsewhere = plugin_dir(&[("real", artifacts::HEADER_FILTER)]);
    mkfifo(&dir.path().join("fifo.wasm"));
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.wasm")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("real.wasm"), dir.path().join("outside.wasm")).unwrap();
    // Sparse: 2 MiB on paper, nothing on disk.
    std::fs::File::create(dir.path().join("huge.wasm")).unwrap().set_len(2 << 20).unwrap();
    let config = MEMORY_OUT.replacen("[host]", "[host]\nmax_plugin_bytes = 1048576", 1);
    let config = Config::from_toml("test.toml", &config).unwrap();
    let host = within(builder(dir.path()).config("test.toml", config).build()).await.unwrap();
    let reasons: Vec<String> = host.load_errors().iter().map(ToString::to_string).collect();
    let expected = [
        ("fifo", "not a regular file but a FIFO".to_owned()),
        ("huge", "2097152 bytes, over the limit of 1048576".to_owned()),
        (
            "outside",
            format!(
                "a symbolic link out of its directory, to {}",
                elsewhere.path().join("real.wasm").canonicalize().unwrap().display()
            ),
        ),
        ("zero", "a symbolic link out of its directory, to /dev/zero".to_owned()),
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:#?}");
    for (reason, (name, problem)) in reasons.iter().zip(&expected) {
        let path = dir.path().join(format!("{name}.wasm"));
        assert_eq!(reason, &format!("plugin \"{name}\": cannot read {}: {problem}", path.display()));
    }
    assert!(host.plugins().is_empty());

    let mut events = host.subscribe();
    mkfifo(&dir.path().join("late.wasm"));
    let HostEvent::PluginRejected { reason, .. } =
        event_where(&mut events, |e| matches!(e, HostEvent::PluginRejected { name, .. } if name == "late"))
            .await
    else {
        unreachable!()
    };
    assert!(reason.ends_with("late.wasm: not a regular file but a FIFO"), "{reason}");
    std::fs::copy(artifacts::HEADER_FILTER, dir.path().join("good.wasm")).unwrap();
    event_where(&mut events, |e| matches!(e, HostEvent::PluginLoaded { name, .. } if name == "good")).await;
    within(host.reload()).await.unwrap();
    assert_eq!(host.plugins().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_config_takes_away_is_not_kept_by_a_plugin_whose_new_settings_are_refused() {
    // The entry and a sidecar both give 127.0.0.1:22; the entry then gives nothing: the sidecar
    // widens it now and is refused, and the serving version, which holds the address, stops.
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let entry = |grant: &str| format!("{MEMORY_OUT}[[plugin]]\nname = \"t\"\nallow_net = [{grant}]\n");
    std::fs::write(dir.path().join("t.toml"), b"allow_net = [\"127.0.0.1:22\"]\n").unwrap();
    let host = crate::support::host(dir.path(), &entry("\"127.0.0.1:22\"")).await;
    assert_eq!(host.plugins()[0].settings.config.allow_net, ["127.0.0.1:22"]);
    let mut events = host.subscribe();
    let config = Config::from_toml("test.toml", &entry("")).unwrap();
    within(host.apply_config("test.toml", config)).await.unwrap();
    let removed =
        event_where(&mut events, |e| matches!(e, HostEvent::PluginRemoved { name, .. } if name == "t"));
    removed.await;
    let HostEvent::PluginRejected { reason, .. } =
        event_where(&mut events, |e| matches!(e, HostEvent::PluginRejected { name, .. } if name == "t"))
            .await
    else {
        unreachable!()
    };
    assert!(
        reason.contains("allow_net \"127.0.0.1:22\" widens what the main config grants ([])"),
        "{reason}"
    );
    assert!(host.plugins().is_empty(), "nothing serves with the address taken away");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_may_narrow_what_the_main_config_grants_but_never_widen_it() {
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let config = format!("{MEMORY_OUT}[[plugin]]\nname = \"t\"\nlimits = {{ memory_mb = 32 }}\n");
    let host = crate::support::host(dir.path(), &config).await;
    let mut events = host.subscribe();
    let sidecar = dir.path().join("t.toml");
    let widenings = [
        (
            "dirs = { \"/host\" = \"/etc\" }\n",
            "dirs.\"/host\" = \"/etc\" widens what the main config grants ({})",
        ),
        ("env = [\"HOME\"]\n", "env \"HOME\" widens what the main config grants ([])"),
        (
            "allow_net = [\"127.0.0.1:22\"]\n",
            "allow_net \"127.0.0.1:22\" widens what the main config grants ([])",
        ),
        (
            "limits = { memory_mb = 1024 }\n",
            "limits.memory_mb = 1024 widens what the main config grants (32)",
        ),
    ];
    for (text, problem) in widenings {
        crate::support::replace_file(&sidecar, text.as_bytes());
        let HostEvent::PluginRejected { reason, .. } =
            event_where(&mut events, |e| matches!(e, HostEvent::PluginRejected { name, .. } if name == "t"))
                .await
        else {
            unreachable!()
        };
        let expected = format!("{}: {problem}; a sidecar may only narrow it", sidecar.display());
        assert!(reason.contains(&expected), "{reason}\nexpected: {expected}");
        assert_eq!(
            host.plugins()[0].settings.config.limits.memory_mb,
            32,
            "the entry's settings still serve"
        );
    }
    crate::support::replace_file(&sidecar, b"limits = { memory_mb = 16, timeout_ms = 50 }\n");
    event_where(&mut events, |e| matches!(e, HostEvent::PluginReplaced { name, .. } if name == "t")).await;
    assert_eq!(host.plugins()[0].settings.config.limits.memory_mb, 16, "narrowing applies");
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_directory_that_does_not_exist_is_refused_as_such_not_as_a_wrong_world() {
    // The plugin is this host's own build: its refusal names the grant, and says nothing of a
    // rebuild with another SDK.
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("no-such-dir");
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"t\"\ndirs = {{ \"/data\" = {:?} }}\n",
        missing.display().to_string()
    );
    let config = Config::from_toml("test.toml", &config).unwrap();
    let host = builder(dir.path()).config("test.toml", config).build().await.unwrap();
    let [switchyard::LoadError::Grant { name, reason }] = host.load_errors() else {
        panic!("one grant refused: {:?}", host.load_errors());
    };
    assert_eq!(name, "t");
    assert!(reason.starts_with(&format!("dirs.\"/data\" = \"{}\": ", missing.display())), "{reason}");
    assert!(host.plugins().is_empty());
    drain_and_account(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_directory_is_granted_over_the_plugin_directory_code_or_the_command_line_sets() {
    // Written for `plugins.d`, the config grants the directory the host is then told to load
    // plugins from (`switchyard run --plugins`): there a plugin could write the plugins it runs.
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let granted = dir.path().display().to_string();
    let config = format!("{MEMORY_OUT}[[plugin]]\nname = \"t\"\ndirs = {{ \"/data\" = \"{granted}:rw\" }}\n");
    let config = Config::from_toml("test.toml", &config).unwrap();
    let built = within(builder(dir.path()).config("test.toml", config).build()).await;
    let refused = built.expect_err("refused");
    assert_eq!(
        refused.to_string(),
        format!(
            "test.toml: plugin \"t\".dirs.\"/data\" = \"{granted}:rw\": overlaps host.plugin_dir (\"{granted}\"), \
             the plugins the host runs: no plugin may reach it"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_whose_name_is_not_utf8_is_refused_as_such() {
    // A plugin is named by its file's stem, which must be text: at the start and when one appears,
    // such a file is refused saying so (its name shown lossily), and nothing else happens.
    use std::os::unix::ffi::OsStrExt;
    let dir = plugin_dir(&[]);
    let file = |bytes: &[u8]| dir.path().join(std::ffi::OsStr::from_bytes(bytes));
    std::fs::copy(artifacts::HEADER_FILTER, file(b"caf\xe9.wasm")).unwrap();
    let config = Config::from_toml("test.toml", MEMORY_OUT).unwrap();
    let host = within(builder(dir.path()).config("test.toml", config).build()).await.unwrap();
    let refusal = |name: &str, bytes: &[u8]| {
        let path = file(bytes).display().to_string();
        format!(
            "plugin \"{name}\": the name of {path} is not UTF-8: rename the file (a plugin is named by its stem)"
        )
    };
    let reasons: Vec<String> = host.load_errors().iter().map(ToString::to_string).collect();
    assert_eq!(reasons, [refusal("caf\u{fffd}", b"caf\xe9.wasm")]);
    let mut events = host.subscribe();
    std::fs::copy(artifacts::HEADER_FILTER, file(b"na\xefve.wasm")).unwrap();
    let event = within(events.recv()).await.unwrap();
    let HostEvent::PluginRejected { name, reason } = event else { panic!("{event:?}") };
    assert_eq!((name.as_str(), reason), ("na\u{fffd}ve", refusal("na\u{fffd}ve", b"na\xefve.wasm")));
    // Quiet otherwise: the next event is that of a plugin added after.
    std::fs::copy(artifacts::HEADER_FILTER, dir.path().join("good.wasm")).unwrap();
    let event = within(events.recv()).await.unwrap();
    assert!(matches!(&event, HostEvent::PluginLoaded { name, .. } if name == "good"), "{event:?}");
    assert_eq!(host.plugins().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
    drain_and_account(&host).await;
}
