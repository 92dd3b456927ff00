//! Properties of the config loader: any text is loaded or refused with an
//! error naming the file, valid configs survive a write and a read, and a
//! value out of range is refused naming file, key and value.

use super::{
    Config, ConfigError, DestinationConfig, EndpointConfig, HealthSettings, PluginConfig, RouteConfig,
    StageRef,
};
use proptest::prelude::*;

const FILE: &str = "gen.toml";

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,7}"
}

fn destination(name: String, transport: &str) -> DestinationConfig {
    let mut text = format!("name = {name:?}\ntransport = \"{transport}\"\n");
    if !matches!(transport, "memory" | "log") {
        text.push_str("endpoints = [\"127.0.0.1:1\"]\n");
    }
    toml::from_str(&text).expect("a minimal destination")
}

/// A destination with settings in range.
fn any_destination() -> impl Strategy<Value = DestinationConfig> {
    let transport = prop_oneof![Just("memory"), Just("log"), Just("http"), Just("tcp")];
    let weight = prop_oneof![1..=3u32, 1..=super::MAX_WEIGHT];
    let endpoints = proptest::collection::vec(("[a-z0-9.]{1,12}", any::<u16>(), weight), 1..4);
    let balancer = prop_oneof![
        Just("round-robin".to_owned()),
        Just("weighted".to_owned()),
        Just("least-inflight".to_owned()),
        Just("p2c-ewma".to_owned()),
        "hash:header:[a-z-]{1,8}",
    ];
    let sizes = (1..=1_000_000usize, 1..=1_000_000usize, 1..=1_000_000usize);
    let times = (1..=86_400_000u64, 0..=86_400_000u64, 1..=86_400_000u64);
    let health = proptest::option::of((1..=1_000_000u64, 1..=1_000_000u64, 1..=10u32, 1..=10u32));
    let breaker = (proptest::option::of(1..=100u32), 1..=10_000usize);
    (name(), transport, endpoints, balancer, "/[a-z/]{0,8}", sizes, times, health, breaker).prop_map(
        |(name, transport, endpoints, balancer, path, sizes, times, health, breaker)| {
            let mut destination = destination(name, transport);
            // Delivered in place, a destination takes none of the network settings but a memory
            // one's capacity.
            if destination.is_in_process() {
                if transport == "memory" {
                    destination.queue.capacity = sizes.0;
                }
                return destination;
            }
            // One address is one endpoint: a second draw of it (rare, but it happens) is left out.
            let mut seen = std::collections::HashSet::new();
            destination.endpoints = endpoints
                .into_iter()
                .map(|(host, port, weight)| EndpointConfig { address: format!("{host}:{port}"), weight })
                .filter(|endpoint| seen.insert(endpoint.address.clone()))
                .collect();
            destination.health = health.map(|(interval_ms, timeout_ms, rise, fall)| HealthSettings {
                path: path.clone(),
                interval_ms,
                timeout_ms,
                rise,
                fall,
            });
            if transport == "http" {
                destination.options.insert("path".into(), path.into());
            }
            destination.balancer = balancer;
            (destination.queue.capacity, destination.queue.max_in_flight, destination.pool.max_size) = sizes;
            (destination.queue.timeout_ms, destination.retry.base_ms, destination.timeout_ms) = times;
            destination.retry.max_ms = destination.retry.max_ms.max(destination.retry.base_ms);
            (destination.breaker.failure_percent, destination.breaker.window) = breaker;
            destination
        },
    )
}

fn topic_pattern() -> impl Strategy<Value = String> {
    let segment = prop_oneof!["[a-z0-9]{1,5}", Just("*".to_owned())];
    (proptest::collection::vec(segment, 1..4), any::<bool>()).prop_map(|(mut segments, rest)| {
        if rest {
            segments.push(">".to_owned());
        }
        segments.join(".")
    })
}

fn stage() -> impl Strategy<Value = StageRef> {
    let kind = prop_oneof!["filter", "transform", "middleware"];
    prop_oneof![
        Just(StageRef::AllPlugins),
        (kind, name()).prop_map(|(kind, name)| StageRef::try_from(format!("{kind}:{name}")).unwrap()),
    ]
}

/// A valid config: a few destinations, routes to them, plugin settings.
fn valid_config() -> impl Strategy<Value = Config> {
    let destinations = proptest::collection::vec(any_destination(), 0..4);
    let routes = proptest::collection::vec(
        (
            topic_pattern(),
            proptest::collection::vec(stage(), 0..3),
            any::<prop::sample::Index>(),
            any::<bool>(),
        ),
        0..4,
    );
    let plugins = proptest::collection::vec((name(), 1..=4096u64, 1..=60_000u64, "[a-z]{0,5}"), 0..3);
    (destinations, routes, plugins, 1..=100_000usize, 1..=1024usize).prop_map(
        |(destinations, routes, plugins, queue_capacity, batch_size)| {
            let mut config = Config::default();
            config.host.queue_capacity = queue_capacity;
            config.host.batch_size = batch_size;
            for (n, mut destination) in destinations.into_iter().enumerate() {
                destination.name = format!("{}-{n}", destination.name);
                config.destinations.push(destination);
            }
            let mut targets: Vec<String> = config.destinations.iter().map(|d| d.name.clone()).collect();
            targets.push("log".into());
            for (n, (topic, stages, target, fan_out)) in routes.into_iter().enumerate() {
                let target = target.get(&targets);
                let mut route = RouteConfig::new(&format!("route-{n}"), &topic, target);
                route.stages = stages;
                if fan_out {
                    route.to = None;
                    route.fan_out = targets.clone();
                }
                config.routes.push(route);
            }
            for (n, (name, memory_mb, timeout_ms, setting)) in plugins.into_iter().enumerate() {
                let mut plugin = PluginConfig { name: format!("{name}-{n}"), ..PluginConfig::default() };
                (plugin.limits.memory_mb, plugin.limits.timeout_ms) = (memory_mb, timeout_ms);
                plugin.config.insert("setting".into(), setting);
                config.plugins.push(plugin);
            }
            config
        },
    )
}

/// Load `text`; an error must name the file.
fn load(text: &str) -> Result<Config, String> {
    Config::from_toml(FILE, text).map_err(|err| {
        let message = err.to_string();
        assert!(message.starts_with(&format!("{FILE}: ")), "{message}");
        assert!(matches!(err, ConfigError::Parse { .. } | ConfigError::Invalid { .. }), "{err:?}");
        message
    })
}

/// A way to damage a config's text.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove the characters in `at..at + len`.
    Cut { at: prop::sample::Index, len: usize },
    /// Insert `text` at `at`.
    Insert { at: prop::sample::Index, text: String },
    /// Replace the `n`th number by `number`.
    Number { n: prop::sample::Index, number: String },
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        Just("[[route]]\n".to_owned()),
        Just("[[destination]]\n".to_owned()),
        Just("[host]\n".to_owned()),
        Just("\"".to_owned()),
        Just(" = ".to_owned()),
        Just("\n".to_owned()),
        Just("{".to_owned()),
        any::<String>(),
    ];
    let number = prop_oneof![
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("nan".to_owned()),
        Just("3000000000000000000".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), 1..40usize).prop_map(|(at, len)| Edit::Cut { at, len }),
        (any::<prop::sample::Index>(), token).prop_map(|(at, text)| Edit::Insert { at, text }),
        (any::<prop::sample::Index>(), number).prop_map(|(n, number)| Edit::Number { n, number }),
    ]
}

impl Edit {
    fn apply(&self, text: &mut String) {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        match self {
            Edit::Cut { at, len } => {
                let start = at.index(bounds.len());
                let end = bounds[(start + len).min(bounds.len() - 1)];
                text.replace_range(bounds[start]..end, "");
            }
            Edit::Insert { at, text: inserted } => text.insert_str(bounds[at.index(bounds.len())], inserted),
            Edit::Number { n, number } => {
                let digits: Vec<(usize, usize)> = text
                    .match_indices(|c: char| c.is_ascii_digit())
                    .map(|(i, _)| i)
                    .fold(Vec::new(), |mut runs: Vec<(usize, usize)>, i| {
                        match runs.last_mut() {
                            Some(run) if run.1 == i => run.1 = i + 1,
                            _ => runs.push((i, i + 1)),
                        }
                        runs
                    });
                if !digits.is_empty() {
                    let (start, end) = digits[n.index(digits.len())];
                    text.replace_range(start..end, number);
                }
            }
        }
    }
}

/// A key checked by `validate`, set to a value out of its range: (key as the
/// error names it, value as written).
#[derive(Debug, Clone)]
enum OutOfRange {
    HostSize(usize, usize),
    DestinationSize(usize, usize),
    DestinationAtLeastOne(usize),
    FailurePercent(u32),
    Health(usize),
    PluginLimit(bool),
}

fn out_of_range() -> impl Strategy<Value = OutOfRange> {
    let oversize = prop_oneof![Just(0usize), 1_000_001..=i64::MAX as usize];
    prop_oneof![
        (0..3usize, oversize.clone()).prop_map(|(key, value)| OutOfRange::HostSize(key, value)),
        (0..3usize, oversize).prop_map(|(key, value)| OutOfRange::DestinationSize(key, value)),
        (0..4usize).prop_map(OutOfRange::DestinationAtLeastOne),
        prop_oneof![Just(0u32), 101..=u32::MAX].prop_map(OutOfRange::FailurePercent),
        (0..4usize).prop_map(OutOfRange::Health),
        any::<bool>().prop_map(OutOfRange::PluginLimit),
    ]
}

impl OutOfRange {
    /// Set the value in `config` (adding a destination `probe` or plugin
    /// `probe`); the key and value the error must name.
    fn apply(&self, config: &mut Config) -> (String, String) {
        let mut probe = destination("probe".into(), "http");
        let (key, value) = match *self {
            OutOfRange::HostSize(key, value) => {
                let host = &mut config.host;
                let (key, field) = [
                    ("queue_capacity", &mut host.queue_capacity),
                    ("batch_size", &mut host.batch_size),
                    ("max_in_flight", &mut host.max_in_flight),
                ]
                .into_iter()
                .nth(key)
                .unwrap();
                *field = value;
                return (format!("host.{key}"), value.to_string());
            }
            OutOfRange::DestinationSize(key, value) => {
                let (key, field) = [
                    ("queue.capacity", &mut probe.queue.capacity),
                    ("queue.max_in_flight", &mut probe.queue.max_in_flight),
                    ("pool.max_size", &mut probe.pool.max_size),
                ]
                .into_iter()
                .nth(key)
                .unwrap();
                *field = value;
                (key, value.to_string())
            }
            OutOfRange::DestinationAtLeastOne(key) => {
                match key {
                    0 => probe.retry.attempts = 0,
                    1 => probe.queue.timeout_ms = 0,
                    2 => probe.breaker.window = 0,
                    _ => probe.pool.acquire_timeout_ms = 0,
                }
                let key =
                    ["retry.attempts", "queue.timeout_ms", "breaker.window", "pool.acquire_timeout_ms"][key];
                (key, "0".into())
            }
            OutOfRange::FailurePercent(value) => {
                probe.breaker.failure_percent = Some(value);
                ("breaker.failure_percent", value.to_string())
            }
            OutOfRange::Health(key) => {
                let mut health = HealthSettings::default();
                match key {
                    0 => health.interval_ms = 0,
                    1 => health.timeout_ms = 0,
                    2 => health.rise = 0,
                    _ => health.fall = 0,
                }
                probe.health = Some(health);
                (["health.interval_ms", "health.timeout_ms", "health.rise", "health.fall"][key], "0".into())
            }
            OutOfRange::PluginLimit(memory) => {
                let mut plugin = PluginConfig { name: "probe".into(), ..PluginConfig::default() };
                let key = if memory { "memory_mb" } else { "timeout_ms" };
                if memory {
                    plugin.limits.memory_mb = 0;
                } else {
                    plugin.limits.timeout_ms = 0;
                }
                config.plugins.push(plugin);
                return (format!("plugin \"probe\".limits.{key}"), "0".into());
            }
        };
        config.destinations.push(probe);
        (format!("destination \"probe\".{key}"), value)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_valid_config_reads_back_equal(config in valid_config()) {
        config.validate(FILE, &[]).map_err(|err| TestCaseError::fail(err.to_string()))?;
        let transports = crate::transport::TransportRegistry::builtin();
        transports.check(FILE, &config).map_err(|err| TestCaseError::fail(err.to_string()))?;
        let text = toml::to_string(&config).expect("a config writes as TOML");
        let read = load(&text).map_err(|err| TestCaseError::fail(format!("{err}\n{text}")))?;
        prop_assert_eq!(serde_json::to_value(&read).unwrap(), serde_json::to_value(&config).unwrap(), "{}", text);
        // Every field, also those the serializer might leave out.
        prop_assert_eq!(format!("{read:?}"), format!("{config:?}"), "{}", text);
    }

    #[test]
    fn any_text_loads_or_is_refused_naming_the_file(text in any::<String>()) {
        let _ = load(&text);
    }

    #[test]
    fn a_damaged_config_loads_or_is_refused_naming_the_file(
        config in valid_config(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let mut text = toml::to_string(&config).expect("a config writes as TOML");
        for edit in &edits {
            edit.apply(&mut text);
        }
        let _ = load(&text);
    }

    #[test]
    fn a_value_out_of_range_is_refused_naming_file_key_and_value(
        mut config in valid_config(),
        wrong in out_of_range(),
    ) {
        let (key, value) = wrong.apply(&mut config);
        let text = toml::to_string(&config).expect("a config writes as TOML");
        let Err(err) = load(&text) else { return Err(TestCaseError::fail(format!("accepted:\n{text}"))) };
        // Destination values are quoted as text: `= "0"` where a host key says `= 0`.
        let named = [format!("{FILE}: {key} = {value}: "), format!("{FILE}: {key} = \"{value}\": ")];
        prop_assert!(named.iter().any(|named| err.starts_with(named)), "{}", err);
    }
}
