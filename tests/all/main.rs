//! Switchyard's integration tests: one binary, real plugins built from
//! `plugins/`, real sockets on 127.0.0.1, the real `switchyard` binary.

mod admin;
mod alerts;
mod authoring;
mod bulk_ingress;
mod balancer_plugin;
mod body_budget;
mod chromium;
mod cli;
mod compile_cache;
mod config_errors;
mod crash_recovery;
mod dashboard;
mod dead_letters;
mod destination_core;
mod endpoint;
mod exposition;
mod file_transport;
mod fake_nats_server;
mod fallback;
mod faulty;
mod grpc_ingress;
mod hostile_files;
mod http_destination;
mod http_ingress;
mod listeners;
mod ingress_properties;
mod jetstream;
mod jetstream_scale;
mod language_plugins;
mod message_ids;
mod nats_ingress;
mod nats_server;
mod nats_transport;
mod native_plugins;
mod panics;
mod plugin_destination;
mod plugin_new;
mod plugins;
mod redis_transport;
mod reload;
mod reload_during_compile;
mod reload_once;
mod retries;
mod routing;
mod soak;
mod spool;
mod stream_affinity;
mod subprocess_transport;
mod support;
mod tcp_destination;
mod transports;
mod wasm_transport;
mod websocket_ingress;
mod websocket_tls;
mod websocket_transport;
mod wire_format;

/// Every plugin under `plugins/` must have a test named after it here.
macro_rules! assert_test_exists {
    ($name:ident) => {
        #[expect(unused_imports, reason = "the import only proves the test exists")]
        use plugins::$name as _;
    };
}
switchyard_plugin_artifacts::foreach_plugin!(assert_test_exists);
