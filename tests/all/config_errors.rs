//! Configuration errors: each `tests/ui/config/NAME.toml` must fail with
//! exactly the message in `NAME.err`.

use std::path::Path;
use switchyard::Config;
use switchyard::transport::TransportRegistry;

#[test]
fn every_bad_config_fails_with_its_expected_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected =
            std::fs::read_to_string(path.with_extension("err")).unwrap_or_else(|_| panic!("{name}: no .err"));
        let checked_transports =
            |config: Config| TransportRegistry::builtin().check(name, &config).map(|_| config);
        let error = Config::from_toml(name, &text).and_then(checked_transports).expect_err(name).to_string();
        assert_eq!(error.trim_end(), expected.trim_end(), "{name}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} config cases");
}

#[test]
fn the_builtin_default_is_valid() {
    let config = Config::builtin();
    config.validate("<built-in>", &[]).unwrap();
    assert_eq!(config.ingress.http.unwrap().listen.to_string(), "127.0.0.1:7070");
    assert_eq!(config.host.plugin_dir, Path::new("plugins.d"));
}

#[test]
fn an_endpoint_weight_set_in_code_is_checked_too() {
    let text = "[[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"10.0.0.8:8080\"]\n";
    let mut config = Config::from_toml("t.toml", text).unwrap();
    config.destinations[0].endpoints[0].weight = 0;
    let error = config.validate("t.toml", &[]).unwrap_err().to_string();
    assert_eq!(
        error,
        "t.toml: destination \"api\".endpoints = \"10.0.0.8:8080\": weight = 0: must be 1 to 10000"
    );
}

#[test]
fn an_in_process_destination_takes_what_it_uses_and_network_settings_left_at_their_defaults() {
    // A memory destination's capacity and any destination's dead letter are its own; a network
    // setting written at its default is as if unset (the bad cases are in tests/ui/config).
    let text = "[[destination]]\nname = \"out\"\ntransport = \"memory\"\nqueue = { capacity = 8 }\n\
                dead_letter = \"log\"\nbalancer = \"round-robin\"\nretry = { attempts = 3 }\n\
                [[destination]]\nname = \"audit\"\ntransport = \"log\"\ntimeout_ms = 5000\n";
    let config = Config::from_toml("t.toml", text).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.destinations[0].queue.capacity, 8);
}
