//! Keys a running host cannot change: they size or place what is built once
//! at start (threads, queues, listeners, the watched directory). A reload
//! that changes one is refused with the keys named, never silently ignored.

use super::Config;
use std::collections::BTreeMap;

/// The start-only keys whose values differ between `running` and `new`; `memory_channels` holds
/// the capacity of each memory destination's channel the host made, those of destinations removed
/// since included.
pub(crate) fn restart_only_changes(
    running: &Config,
    new: &Config,
    memory_channels: &BTreeMap<String, usize>,
) -> Vec<&'static str> {
    let (a, b) = (&running.host, &new.host);
    // The listeners' settings but their tokens, which change live.
    let ingress = |config: &Config| {
        let http = config.ingress.http.as_ref();
        http.map(|http| {
            (http.listen, http.max_connections, http.header_timeout_ms, http.max_batch_bytes, http.ping_ms)
        })
    };
    let admin = |config: &Config| {
        let admin = config.admin.as_ref();
        admin.map(|admin| (admin.listen, admin.max_connections, admin.header_timeout_ms, admin.ping_ms))
    };
    let grpc = |config: &Config| {
        config.ingress.grpc.as_ref().map(|grpc| (grpc.listen, grpc.max_connections, grpc.header_timeout_ms))
    };
    // An empty token is none: the admin API checks none.
    let has_token = |config: &Config| {
        config.admin.as_ref().and_then(|admin| admin.token.as_deref()).is_some_and(|token| !token.is_empty())
    };
    // A memory destination's channel is made once and kept, also by a reload that removes the
    // destination (an embedder may hold its receiver): its capacity is its first.
    let memory_capacity_changed =
        new.destinations.iter().filter(|dest| dest.transport == "memory").any(|dest| {
            memory_channels.get(&dest.name).is_some_and(|&capacity| capacity != dest.queue.capacity)
        });
    let changes = [
        ("host.plugin_dir", a.plugin_dir != b.plugin_dir),
        ("host.workers", a.workers != b.workers),
        ("host.io_threads", a.io_threads != b.io_threads),
        ("host.queue_capacity", a.queue_capacity != b.queue_capacity),
        ("host.max_message_bytes", a.max_message_bytes != b.max_message_bytes),
        ("host.batch_size", a.batch_size != b.batch_size),
        ("host.watch", a.watch != b.watch),
        ("host.cache_dir", a.cache_dir != b.cache_dir),
        ("host.max_in_flight", a.max_in_flight != b.max_in_flight),
        ("host.metrics", a.metrics != b.metrics),
        ("host.queue_bytes", a.queue_bytes != b.queue_bytes),
        ("host.state_dir", a.state_dir != b.state_dir),
        ("host.durability", a.durability != b.durability),
        ("host.spool_max_bytes", a.spool_max_bytes != b.spool_max_bytes),
        // Trust in native code is given at start: a loaded library is never unloaded.
        ("host.native_plugins", a.native_plugins != b.native_plugins),
        ("ingress.http (but its token)", ingress(running) != ingress(new)),
        ("ingress.grpc (but its token)", grpc(running) != grpc(new)),
        ("ingress.nats", running.ingress.nats != new.ingress.nats),
        ("admin (but its token)", admin(running) != admin(new)),
        // A token may change live; removing one would open the admin API.
        ("admin.token (removed)", has_token(running) && !has_token(new)),
        ("a memory destination's queue.capacity", memory_capacity_changed),
    ];
    changes.into_iter().filter_map(|(key, changed)| changed.then_some(key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::from_toml("t.toml", text).unwrap()
    }

    #[test]
    fn live_keys_are_not_start_only() {
        let running =
            parse("[host]\ndead_letter = \"log\"\n[admin]\nlisten = \"127.0.0.1:1\"\ntoken = \"a\"\n");
        let new = parse("[host]\ndead_letter = \"log\"\n[admin]\nlisten = \"127.0.0.1:1\"\ntoken = \"b\"\n");
        assert!(restart_only_changes(&running, &new, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn emptying_the_admin_token_removes_it_and_needs_a_restart() {
        let admin = |token: &str| parse(&format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken = \"{token}\"\n"));
        assert_eq!(
            restart_only_changes(&admin("a"), &admin(""), &BTreeMap::new()),
            ["admin.token (removed)"]
        );
        assert!(
            restart_only_changes(&admin(""), &admin("a"), &BTreeMap::new()).is_empty(),
            "adding one is live"
        );
    }

    #[test]
    fn a_memory_destination_keeps_its_capacity_until_a_restart() {
        let memory = |capacity: usize| {
            parse(&format!(
                "[[destination]]\nname = \"m\"\ntransport = \"memory\"\nqueue = {{ capacity = {capacity} }}\n"
            ))
        };
        let made = BTreeMap::from([("m".to_owned(), 2)]);
        let key = ["a memory destination's queue.capacity"];
        assert_eq!(restart_only_changes(&memory(2), &memory(6), &made), key);
        assert!(restart_only_changes(&memory(2), &memory(2), &made).is_empty());
        assert!(restart_only_changes(&memory(2), &parse(""), &made).is_empty(), "removing one is live");
        assert_eq!(restart_only_changes(&parse(""), &memory(6), &made), key, "its channel outlived it");
        assert!(restart_only_changes(&parse(""), &memory(2), &made).is_empty(), "added back as it was");
        assert!(restart_only_changes(&parse(""), &memory(6), &BTreeMap::new()).is_empty(), "a new one");
    }

    #[test]
    fn a_changed_nats_subscription_needs_a_restart() {
        let nats = |subjects: &str| {
            parse(&format!("[[ingress.nats]]\nurl = \"127.0.0.1:4222\"\nsubjects = [{subjects}]\n"))
        };
        assert!(restart_only_changes(&nats("\"a.>\""), &nats("\"a.>\""), &BTreeMap::new()).is_empty());
        assert_eq!(
            restart_only_changes(&nats("\"a.>\""), &nats("\"b.>\""), &BTreeMap::new()),
            ["ingress.nats"]
        );
    }

    #[test]
    fn the_grpc_ingress_s_limits_need_a_restart_and_its_token_does_not() {
        let grpc = |settings: &str| parse(&format!("[ingress.grpc]\nlisten = \"127.0.0.1:1\"\n{settings}"));
        let running = grpc("");
        assert!(restart_only_changes(&running, &grpc("token = \"a\"\n"), &BTreeMap::new()).is_empty());
        for limit in ["max_connections = 8\n", "header_timeout_ms = 500\n"] {
            assert_eq!(
                restart_only_changes(&running, &grpc(limit), &BTreeMap::new()),
                ["ingress.grpc (but its token)"],
                "{limit}"
            );
        }
    }

    #[test]
    fn a_changed_websocket_ping_interval_needs_a_restart() {
        for section in ["ingress.http", "admin"] {
            let config = |ping: &str| parse(&format!("[{section}]\nlisten = \"127.0.0.1:1\"\n{ping}"));
            let changed = restart_only_changes(&config(""), &config("ping_ms = 500\n"), &BTreeMap::new());
            assert_eq!(changed, [format!("{section} (but its token)")]);
        }
    }

    #[test]
    fn start_only_keys_are_named() {
        let running = parse("[admin]\nlisten = \"127.0.0.1:1\"\ntoken = \"a\"\n");
        let new =
            parse("[host]\nworkers = 3\nio_threads = 1\nbatch_size = 8\n[admin]\nlisten = \"127.0.0.1:2\"\n");
        assert_eq!(
            restart_only_changes(&running, &new, &BTreeMap::new()),
            [
                "host.workers",
                "host.io_threads",
                "host.batch_size",
                "admin (but its token)",
                "admin.token (removed)"
            ]
        );
    }
}
