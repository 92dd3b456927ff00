//! The compile cache holds native code, so it lives outside the plugin
//! directory and every entry is checked before it is loaded: one swapped for
//! another plugin's, or patched, is discarded with an event and the plugin
//! compiled afresh.

use crate::support::{MEMORY_OUT, builder, drain_and_account, event_where, next, plugin_dir};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use switchyard::plugin::CacheOutcome;
use switchyard::{Config, ConfigChange, Host, HostEvent, Message};
use switchyard_plugin_artifacts as artifacts;

fn config(cache: &Path) -> Config {
    let text = MEMORY_OUT.replacen("[host]", &format!("[host]\ncache_dir = {:?}", cache), 1);
    let route = "[[route]]\nname = \"all\"\nstages = [\"filter:a\", \"transform:b\"]\nto = \"out\"\n";
    Config::from_toml("test.toml", &format!("{text}{route}")).unwrap()
}

async fn host(plugins: &Path, cache: &Path) -> Host {
    builder(plugins).config("test.toml", config(cache)).build().await.unwrap()
}

/// The cache entry of the plugin with digest `digest`.
fn entry(cache: &Path, digest: &str) -> PathBuf {
    let entries = std::fs::read_dir(cache).unwrap().map(|entry| entry.unwrap().path());
    let mut found: Vec<PathBuf> =
        entries.filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with(digest)).collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

fn outcomes(host: &Host) -> Vec<CacheOutcome> {
    host.plugins().iter().map(|plugin| plugin.cache.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_or_patched_cache_entry_is_discarded_and_the_plugin_compiled_afresh() {
    let plugins = plugin_dir(&[("a", artifacts::HEADER_FILTER), ("b", artifacts::REDACT_TRANSFORM)]);
    let cache = tempfile::tempdir().unwrap();
    let first = host(plugins.path(), cache.path()).await;
    assert_eq!(outcomes(&first), [CacheOutcome::Miss, CacheOutcome::Miss]);
    let digests: Vec<String> = first.plugins().iter().map(|plugin| plugin.digest.clone()).collect();
    drain_and_account(&first).await;
    assert!(
        std::fs::read_dir(plugins.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .all(|path| path.ends_with(".switchyard") || path.extension().unwrap() == "wasm"),
        "nothing but the plugins (and the test's state directory) in the plugin directory"
    );

    let (a, b) = (entry(cache.path(), &digests[0]), entry(cache.path(), &digests[1]));
    // `b` now holds `a`'s code, sealed for `a`; `a`'s code has one byte changed.
    std::fs::copy(&a, &b).unwrap();
    let mut patched = std::fs::read(&a).unwrap();
    let middle = patched.len() / 2;
    patched[middle] ^= 0x01;
    std::fs::write(&a, patched).unwrap();

    let second = host(plugins.path(), cache.path()).await;
    let [CacheOutcome::Discarded(why_a), CacheOutcome::Discarded(why_b)] = &outcomes(&second)[..] else {
        panic!("both entries discarded: {:?}", outcomes(&second))
    };
    for why in [why_a, why_b] {
        assert!(
            why.ends_with("its seal does not match (tampered, swapped or corrupted); discarded"),
            "{why}"
        );
    }
    assert_eq!(second.event_counts().cache_entries_discarded, 2);
    let message = Message::new("m", r#"{"card":"4111"}"#).with_header("x-tenant", "acme");
    second.send(message).await.unwrap();
    let delivered = next(&second.memory("out").unwrap()).await;
    assert_eq!(delivered.header("x-transformed-by"), Some("redact-transform"), "b runs its own code");
    drain_and_account(&second).await;

    let third = host(plugins.path(), cache.path()).await;
    assert_eq!(outcomes(&third), [CacheOutcome::Hit, CacheOutcome::Hit], "the fresh entries are sound");
    drain_and_account(&third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cache_entry_is_told_though_the_plugin_then_fails_its_trial() {
    // The event was told only for a compile whose plugin passed its trial: a plugin refused after
    // it, whose next compile finds a sound entry, never told that its entry had been bad.
    let plugins = plugin_dir(&[("b", artifacts::REDACT_TRANSFORM)]);
    let cache = tempfile::tempdir().unwrap();
    let text =
        MEMORY_OUT.replacen("[host]", &format!("[host]\nwatch = false\ncache_dir = {:?}", cache.path()), 1);
    let config = |plugin: &str| Config::from_toml("test.toml", &format!("{text}{plugin}")).unwrap();
    let host = builder(plugins.path()).config("test.toml", config("")).build().await.unwrap();
    assert_eq!(outcomes(&host), [CacheOutcome::Miss]);
    let digest = host.plugins()[0].digest.clone();
    std::fs::write(entry(cache.path(), &digest), b"cut short").unwrap();

    // New settings compile `b` again, through the bad entry; its trial then fails: it is granted
    // a directory that does not exist.
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("missing").display().to_string();
    let granted = format!("[[plugin]]\nname = \"b\"\ndirs = {{ \"/data\" = {missing:?} }}\n");
    let mut events = host.subscribe();
    assert_eq!(host.apply_config("test.toml", config(&granted)).await.unwrap(), ConfigChange::Applied);
    let told: Vec<HostEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let rejected =
        told.iter().any(|event| matches!(event, HostEvent::PluginRejected { name, .. } if name == "b"));
    assert!(rejected, "the trial refused it: {told:?}");
    let discarded: Vec<_> =
        told.iter().filter(|event| matches!(event, HostEvent::CacheEntryDiscarded { .. })).collect();
    let [HostEvent::CacheEntryDiscarded { name, reason }] = &discarded[..] else { panic!("{told:?}") };
    assert!(name == "b" && reason.ends_with("shorter than its seal; discarded"), "{name}: {reason}");
    assert_eq!(host.event_counts().cache_entries_discarded, 1);
    assert_eq!(outcomes(&host), [CacheOutcome::Miss], "the version before keeps serving");
    drain_and_account(&host).await;
}

/// The compile cache's entries, by name.
fn entries(cache: &Path) -> std::collections::BTreeSet<String> {
    let names =
        std::fs::read_dir(cache).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap());
    names.filter(|name| name.ends_with(".cwasm")).collect()
}

fn set_mtime(path: &Path, mtime: SystemTime) {
    std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
}

/// `artifact`'s bytes with a custom section named `note`: the same plugin under another digest.
fn noted(artifact: &str, note: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(artifact).unwrap();
    let body = [&[note.len() as u8][..], note.as_bytes()].concat();
    bytes.extend([0, body.len() as u8]);
    bytes.extend(body);
    bytes
}

/// How many entries the compile cache keeps (README, "Hot reload").
const KEPT_ENTRIES: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compile_cache_keeps_the_most_recently_used_entries_of_its_engine_and_none_of_refused_files() {
    let plugins = plugin_dir(&[("a", artifacts::HEADER_FILTER), ("b", artifacts::REDACT_TRANSFORM)]);
    let cache = tempfile::tempdir().unwrap();
    let other_engine = format!("{}-0123456789abcdef.cwasm", "0".repeat(64));
    std::fs::write(cache.path().join(&other_engine), b"code another wasmtime compiled").unwrap();
    let first = host(plugins.path(), cache.path()).await;
    let digests: Vec<String> = first.plugins().iter().map(|plugin| plugin.digest.clone()).collect();
    drain_and_account(&first).await;
    let (a, b) = (entry(cache.path(), &digests[0]), entry(cache.path(), &digests[1]));
    let name = |path: &Path| path.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(entries(cache.path()), [name(&a), name(&b)].into(), "another engine's entry went");

    // a and b last used long ago, then 63 more entries, each used later than the one before.
    let engine = name(&a)[digests[0].len()..].to_owned();
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    set_mtime(&a, long_ago);
    set_mtime(&b, long_ago);
    let filler = |n: usize| format!("{n:064x}{engine}");
    for n in 0..KEPT_ENTRIES - 1 {
        let path = cache.path().join(filler(n));
        std::fs::write(&path, b"never loaded").unwrap();
        set_mtime(&path, long_ago + Duration::from_secs(1 + n as u64));
    }
    // Starting uses a and b: they become the most recently used. A new plugin is stored: the two
    // least recently used go.
    let second = host(plugins.path(), cache.path()).await;
    assert_eq!(outcomes(&second), [CacheOutcome::Hit, CacheOutcome::Hit]);
    let mut events = second.subscribe();
    std::fs::write(plugins.path().join("t.wasm"), noted(artifacts::HEADER_FILTER, "t")).unwrap();
    event_where(&mut events, |event| matches!(event, HostEvent::PluginLoaded { name, .. } if name == "t"))
        .await;
    let t = second.plugins().iter().find(|plugin| plugin.name == "t").unwrap().digest.clone();
    let mut kept: std::collections::BTreeSet<String> = (2..KEPT_ENTRIES - 1).map(filler).collect();
    kept.extend([name(&a), name(&b), format!("{t}{engine}")]);
    assert_eq!(entries(cache.path()), kept, "the {KEPT_ENTRIES} most recently used");

    // A file refused after its compile (a component of no kind) leaves no entry.
    std::fs::write(plugins.path().join("x.wasm"), "(component)").unwrap();
    let refused = |event: &HostEvent| matches!(event, HostEvent::PluginRejected { name, .. } if name == "x");
    let HostEvent::PluginRejected { reason, .. } = event_where(&mut events, refused).await else {
        unreachable!()
    };
    assert!(reason.contains("must export exactly one Switchyard plugin interface"), "{reason}");
    assert_eq!(entries(cache.path()), kept, "nothing stored for x");
    drain_and_account(&second).await;
}

#[test]
fn a_compile_cache_inside_the_plugin_directory_is_refused_however_its_path_gets_there() {
    let plugins = plugin_dir(&[]);
    let elsewhere = tempfile::tempdir().unwrap();
    let link = elsewhere.path().join("plugins-link");
    std::os::unix::fs::symlink(plugins.path(), &link).unwrap();
    let ways_in = [
        plugins.path().join(".cache"),
        plugins
            .path()
            .parent()
            .unwrap()
            .join("state/..")
            .join(plugins.path().file_name().unwrap())
            .join("cache"),
        link.join("cache"),
    ];
    for cache in ways_in {
        let mut config = config(&cache);
        config.host.plugin_dir = plugins.path().to_owned();
        let refused = config.validate("test.toml", &["out", "dead"]).unwrap_err().to_string();
        assert!(refused.contains("host.cache_dir = "), "{refused}");
        assert!(refused.ends_with(": inside the plugin directory: the compile cache holds native code, and whoever writes plugins must not write it"), "{refused}");
    }
    let mut beside = config(&elsewhere.path().join("cache"));
    beside.host.plugin_dir = plugins.path().to_owned();
    assert!(beside.validate("test.toml", &[]).is_ok(), "a cache beside it is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compile_cache_makes_its_own_directory_private_and_leaves_an_operators_as_it_is() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let plugins = plugin_dir(&[("a", artifacts::HEADER_FILTER)]);
    let operators = tempfile::tempdir().unwrap();
    std::fs::set_permissions(operators.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let made = operators.path().join("made/cache");
    for cache in [operators.path(), made.as_path()] {
        drain_and_account(&host(plugins.path(), cache).await).await;
        assert_eq!(mode(&cache.join("key")), 0o600, "the key is the owner's alone");
    }
    assert_eq!(mode(operators.path()), 0o755, "the operator's directory keeps its mode");
    assert_eq!((mode(&made), mode(made.parent().unwrap())), (0o700, 0o700), "what the host made is private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_loads_no_code_from_a_configs_compile_cache() {
    // A config to vet comes with a compile cache of its own: a key and, sealed under it as the entry
    // of f.wasm's digest, another plugin's code. Native code is whatever such a bundle holds: the
    // check of a config loads none of it.
    use hmac::{Hmac, Mac};
    let bundle = tempfile::tempdir().unwrap();
    let (plugins, cache) = (bundle.path().join("plugins"), bundle.path().join("cache"));
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(artifacts::HEADER_FILTER, plugins.join("f.wasm")).unwrap();
    std::fs::copy(artifacts::REDACT_TRANSFORM, plugins.join("t.wasm")).unwrap();
    let cached = |plugins: &Path| {
        let config = Config::from_toml(
            "test.toml",
            &MEMORY_OUT.replacen("[host]", &format!("[host]\ncache_dir = {cache:?}"), 1),
        );
        builder(plugins).config("test.toml", config.unwrap()).build()
    };
    let host = cached(&plugins).await.unwrap();
    let digest =
        |name: &str| host.plugins().iter().find(|plugin| plugin.name == name).unwrap().digest.clone();
    let (f, t) = (entry(&cache, &digest("f")), entry(&cache, &digest("t")));
    let engine = t.file_name().unwrap().to_str().unwrap()[digest("t").len() + 1..]
        .trim_end_matches(".cwasm")
        .to_owned();
    let mut seal = Hmac::<sha2::Sha256>::new_from_slice(&std::fs::read(cache.join("key")).unwrap()).unwrap();
    let code = std::fs::read(&t).unwrap().split_off(32);
    seal.update(digest("f").as_bytes());
    seal.update(engine.as_bytes());
    seal.update(&code);
    let forged = [&seal.finalize().into_bytes()[..], &code].concat();
    std::fs::write(&f, &forged).unwrap();
    drain_and_account(&host).await;
    std::fs::remove_file(plugins.join("t.wasm")).unwrap();
    std::fs::remove_file(&t).unwrap();
    // The forged entry is sound to the cache: a host started on it runs t's code as f.
    let host = cached(&plugins).await.unwrap();
    let [plugin] = &host.plugins()[..] else { panic!("{:?}", host.plugins()) };
    assert_eq!((plugin.cache.clone(), plugin.kind.as_str()), (CacheOutcome::Hit, "transform"));
    drain_and_account(&host).await;

    let toml = "[host]\nplugin_dir = \"plugins\"\ncache_dir = \"cache\"\n\
                [ingress.http]\nlisten = \"127.0.0.1:7070\"\n[admin]\nlisten = \"127.0.0.1:7071\"\n\
                [[route]]\nname = \"r\"\nstages = [\"filter:f\"]\nto = \"log\"\n";
    std::fs::write(bundle.path().join("switchyard.toml"), toml).unwrap();
    let before = entries(&cache);
    let output = tokio::process::Command::new(crate::cli::BINARY)
        .args(["check", "switchyard.toml"])
        .current_dir(bundle.path())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        !out.contains("warning:"),
        "f is checked as the filter its file holds, not as the cached code: {out}"
    );
    assert_eq!(entries(&cache), before);
    assert_eq!(std::fs::read(&f).unwrap(), forged, "the entry is left as it was, unread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_cache_other_users_could_write_or_whose_key_they_could_read_is_not_used() {
    // Whoever can put a key and sealed entries in the cache makes the host run their native code:
    // the directory and its key must be this user's alone (as OpenSSH's StrictModes asks of ~/.ssh).
    use std::os::unix::fs::PermissionsExt;
    let plugins = plugin_dir(&[("a", artifacts::HEADER_FILTER)]);
    let chmod =
        |path: &Path, mode: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    let outcome = async |cache: &Path| {
        let text = MEMORY_OUT.replacen("[host]", &format!("[host]\ncache_dir = {cache:?}"), 1);
        let config = Config::from_toml("test.toml", &text).unwrap();
        let host = builder(plugins.path()).config("test.toml", config).build().await.unwrap();
        let [outcome] = &outcomes(&host)[..] else { panic!("{:?}", outcomes(&host)) };
        let outcome = outcome.clone();
        drain_and_account(&host).await;
        outcome
    };

    // Writable by all, as a shared /tmp/switchyard may be: another user's key and entries were adopted.
    let shared = tempfile::tempdir().unwrap();
    chmod(shared.path(), 0o1777).unwrap();
    let why = format!(
        "{}: mode 1777 lets other users write in it: one could put a key and native code there for this host to run",
        shared.path().display()
    );
    assert_eq!(outcome(shared.path()).await, CacheOutcome::Refused(why));
    assert_eq!(std::fs::read_dir(shared.path()).unwrap().count(), 0, "no key made, nothing stored");

    // A sound cache, whose key other users may then read: they could seal code for it.
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(outcome(cache.path()).await, CacheOutcome::Miss);
    let key = cache.path().join("key");
    chmod(&key, 0o640).unwrap();
    let why = format!(
        "{}: mode 0640 lets other users read or write it: one could seal native code for this host to run",
        key.display()
    );
    assert_eq!(outcome(cache.path()).await, CacheOutcome::Refused(why));
    chmod(&key, 0o600).unwrap();
    assert_eq!(
        outcome(cache.path()).await,
        CacheOutcome::Hit,
        "the entry is left for when it is private again"
    );

    // Owned by another user (where this one may give it away).
    if std::os::unix::fs::chown(cache.path(), Some(65534), None).is_ok() {
        let CacheOutcome::Refused(why) = outcome(cache.path()).await else { panic!("used") };
        let owned = format!("{}: owned by uid 65534, not by this user (uid ", cache.path().display());
        assert!(why.starts_with(&owned), "{why}");
    }
}
