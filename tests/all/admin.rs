//! The admin API of a running host: every endpoint, with and without the token.

use crate::exposition::sample;
use crate::support::{MEMORY_OUT, PATIENCE, eventually, host, http, next, plugin_dir, within};
use futures_util::StreamExt;
use std::net::SocketAddr;
use switchyard::admin::AdminServer;
use switchyard::{BuildError, Config, Host, Message};
use switchyard_plugin_artifacts as artifacts;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKEN: &str = "s3cret-admin-token";
const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-admin-token");

/// `GET path` from a plain thread (the test's runtime keeps serving).
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (path, headers) =
        (path.to_owned(), headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http(addr, "GET", &path, &headers, b"")
    })
    .await
    .unwrap()
}

async fn start_admin(host: &Host) -> SocketAddr {
    let admin =
        AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), Some(TOKEN.into())).await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_endpoint_answers_and_guards_with_the_token() {
    let dir = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let route = "[[route]]\nname = \"all\"\nstages = [\"transform:t\"]\nto = \"out\"\n";
    let host = host(dir.path(), &format!("{MEMORY_OUT}{route}")).await;
    let addr = start_admin(&host).await;

    assert_eq!(get(addr, "/health", &[]).await.0, 200);
    assert_eq!(get(addr, "/ready", &[]).await, (200, r#"{"ready":true}"#.into()));
    for path in ["/metrics", "/v1/plugins", "/v1/routes", "/v1/destinations", "/v1/dead-letters"] {
        let (status, body) = get(addr, path, &[]).await;
        assert_eq!((status, body.as_str()), (401, r#"{"error":"unauthorized"}"#), "{path} without a token");
        let (status, body) = get(addr, path, &[("authorization", "Bearer wrong")]).await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"error":"unauthorized"}"#),
            "{path} with a wrong token"
        );
        assert_eq!(get(addr, path, &[AUTH]).await.0, 200, "{path} with the token");
    }

    for n in 0..3 {
        host.send(Message::new("m", format!("{n}"))).await.unwrap();
    }
    let out = host.memory("out").unwrap();
    for _ in 0..3 {
        next(&out).await;
    }
    let instances = |plugins: &str| {
        let plugins: serde_json::Value = serde_json::from_str(plugins).unwrap();
        plugins["plugins"][0]["instances"].as_u64().unwrap()
    };
    let running = instances(&get(addr, "/v1/plugins", &[AUTH]).await.1);
    let workers = std::thread::available_parallelism().unwrap().get() as u64;
    assert!((1..=workers).contains(&running), "one per worker that ran it: {running}");
    // Drained, every message is settled and counted; the admin API still answers.
    within(host.shutdown()).await;
    assert_eq!(host.stats().delivered, 3);
    let (_, metrics) = get(addr, "/metrics", &[AUTH]).await;
    let delivered = [("route", "all"), ("outcome", "delivered")];
    assert_eq!(sample(&metrics, "switchyard_route_messages_total", &delivered), Some(3.0), "{metrics}");
    assert_eq!(sample(&metrics, "switchyard_messages_accepted_total", &[]), Some(3.0));
    assert_eq!(sample(&metrics, "switchyard_route_accepted_total", &[("route", "all")]), Some(3.0));
    let latency = sample(&metrics, "switchyard_route_latency_seconds_count", &[("route", "all")]);
    assert_eq!(latency, Some(3.0), "one latency per settled message");
    let calls = sample(&metrics, "switchyard_plugin_calls_total", &[("plugin", "t")]).unwrap();
    let timed = sample(&metrics, "switchyard_plugin_call_seconds_count", &[("plugin", "t")]);
    assert!(calls >= 1.0 && timed == Some(calls), "one call time per call: {calls} {timed:?}");

    let (_, plugins) = get(addr, "/v1/plugins", &[AUTH]).await;
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap();
    let t = &plugins["plugins"][0];
    assert_eq!(
        (t["name"].as_str(), t["kind"].as_str(), t["state"].as_str()),
        (Some("t"), Some("transform"), Some("serving"))
    );
    assert_eq!(t["version"].as_str().unwrap().len(), 64);
    assert!(t["calls"].as_u64().unwrap() >= 1);
    assert_eq!(t["instances"], 0, "the workers stopped: no instance left");
    let (_, routes) = get(addr, "/v1/routes", &[AUTH]).await;
    assert!(routes.contains(r#""name":"all""#), "{routes}");
    let (_, destinations) = get(addr, "/v1/destinations", &[AUTH]).await;
    let names: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&destinations).unwrap()["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(names, ["dead", "log", "out"]);

    let reload = tokio::task::spawn_blocking(move || http(addr, "POST", "/v1/reload", &[AUTH], b""));
    let shutting_down = r#"{"error":"test.toml: not applied: the host is shutting down"}"#;
    assert_eq!(reload.await.unwrap(), (503, shutting_down.into()), "after the shutdown above");
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let refused = tokio::task::spawn_blocking(move || http(addr, "POST", "/v1/reload", &headers, b""));
        assert_eq!(refused.await.unwrap(), (401, r#"{"error":"unauthorized"}"#.into()));
    }
}

/// The status a WebSocket handshake to `url` with `token` (if any) was refused with.
pub async fn refused_handshake(url: &str, token: Option<&str>) -> u16 {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match within(tokio_tungstenite::connect_async(request)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("the handshake was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_websocket_streams_a_plugin_replacement() {
    let dir = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    let host = host(dir.path(), "").await;
    let addr = start_admin(&host).await;
    let url = format!("ws://{addr}/v1/events");
    assert_eq!(refused_handshake(&url, None).await, 401, "no token, no stream");
    assert_eq!(refused_handshake(&url, Some("wrong")).await, 401, "a wrong token, no stream");
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("authorization", AUTH.1.parse().unwrap());
    let (mut socket, _) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
    std::fs::write(dir.path().join("t.partial"), std::fs::read(artifacts::REDACT_TRANSFORM).unwrap())
        .unwrap();
    std::fs::rename(dir.path().join("t.partial"), dir.path().join("t.wasm")).unwrap();
    let frame = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap().unwrap().unwrap();
    let event: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(event["event"], "plugin-replaced");
    assert_eq!(event["name"], "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_its_client_closed_lets_go_of_its_socket_on_a_quiet_host() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), "").await;
    let addr = start_admin(&host).await;
    for _ in 0..20 {
        let mut request = format!("ws://{addr}/v1/events").into_client_request().unwrap();
        request.headers_mut().insert("authorization", AUTH.1.parse().unwrap());
        let (mut socket, _) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
        within(socket.close(None)).await.unwrap();
    }
    // The host's end of a connection its client closed waits in CLOSE_WAIT until the host closes it.
    eventually(|| match half_closed(addr.port()) {
        0 => Ok(()),
        held => Err(held),
    });
}

/// Sockets on local port `port` in CLOSE_WAIT (state 08 in /proc/net/tcp).
fn half_closed(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[1].ends_with(&local) && fields[3] == "08"
        })
        .count()
}

#[tokio::test]
async fn admin_without_a_token_refuses_to_listen_beyond_loopback() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), "").await;
    let refused = AdminServer::bind(host.clone(), "0.0.0.0:0".parse().unwrap(), None).await;
    assert!(matches!(refused, Err(BuildError::AdminUnprotected { .. })), "{refused:?}");
    let loopback = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None).await;
    assert!(loopback.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_websocket_streams_endpoint_down_and_ready_follows_it() {
    let endpoint = crate::endpoint::TestEndpoint::start(crate::endpoint::Mode::Answer).await;
    let config = format!(
        "[[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{}\"]\n\
         health = {{ interval_ms = 10, timeout_ms = 60000, rise = 1, fall = 1 }}\n\
         [[route]]\nname = \"all\"\nto = \"api\"\n",
        endpoint.addr
    );
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config).await;
    let addr = start_admin(&host).await;
    assert_eq!(get(addr, "/ready", &[AUTH]).await.0, 200);
    let mut request = format!("ws://{addr}/v1/events").into_client_request().unwrap();
    request.headers_mut().insert("authorization", AUTH.1.parse().unwrap());
    let (mut socket, _) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
    endpoint.stop().await;
    let event = within(async {
        loop {
            let frame = socket.next().await.unwrap().unwrap();
            let event: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
            if event["event"] == "endpoint-down" {
                return event;
            }
        }
    })
    .await;
    assert_eq!(event["destination"], "api");
    assert_eq!(event["endpoint"], endpoint.addr.to_string());
    // The kill may refuse the next check's connect, or cut a check in flight: before its request
    // went out (canceled), or after, before the answer (closed before the message completed).
    // (Its timeout is a minute: however loaded the machine, no check goes down by it before the kill.)
    let reason = event["reason"].as_str().unwrap();
    let killed = [
        "health check failed: connect",
        "health check failed: GET /health: connection error",
        "health check failed: GET /health: operation was canceled",
        "health check failed: GET /health: connection closed before message completed",
    ];
    assert!(killed.iter().any(|killed| reason.starts_with(killed)), "{event}");
    let (status, body) = get(addr, "/ready", &[AUTH]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("destination api has no endpoint serving"), "{body}");
    // Without the token: not ready, and nothing of what this host runs.
    assert_eq!(get(addr, "/ready", &[]).await, (503, r#"{"ready":false}"#.into()));
    let (_, body) = get(addr, "/v1/destinations", &[AUTH]).await;
    let destinations: serde_json::Value = serde_json::from_str(&body).unwrap();
    let api = destinations["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "api").unwrap();
    assert_eq!(api["queued"], 0);
    assert_eq!(api["endpoints"][0]["health"], "down");
}

/// The first plugin of a `/v1/plugins` body.
/// `GET /metrics` once what it shows is `ready`: what a dead letter counts, or a reload removed,
/// changes just after the event the test waits for.
async fn metrics_once(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    within(async {
        loop {
            let (_, metrics) = get(addr, "/metrics", &[AUTH]).await;
            if ready(&metrics) {
                return metrics;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

fn first_plugin(body: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["plugins"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_show_a_timed_out_plugin_s_faults_serving_removed_and_back_never_going_down() {
    let dir = plugin_dir(&[("bad", artifacts::FAULTY_SPIN)]);
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"bad\"\nlimits = {{ timeout_ms = 50 }}\n\
         config = {{ trigger = \"x-poison\" }}\n\
         [[route]]\nname = \"risky\"\nstages = [\"filter:bad\"]\nto = \"out\"\n"
    );
    let host = host(dir.path(), &config).await;
    let addr = start_admin(&host).await;
    let fresh = first_plugin(&get(addr, "/v1/plugins", &[AUTH]).await.1);
    assert_eq!((fresh["state"].as_str(), fresh["errors"].as_u64()), (Some("serving"), Some(0)), "{fresh}");
    let counts = ["deadline_hits", "faults", "renewals"].map(|key| fresh[key].as_u64());
    assert_eq!(counts, [Some(0), Some(0), Some(0)], "{fresh}");
    assert_eq!(
        (&fresh["problems"]["timed_out"], &fresh["last_fault"]),
        (&0.into(), &serde_json::Value::Null)
    );

    let id = host.send(Message::new("job", "poison").with_header("x-poison", "1")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!((letter.id, letter.header("x-sy-dead-letter")), (id, Some("plugin-timed-out")));
    // Faults are counted before the letter is handed over.
    let faulted = first_plugin(&get(addr, "/v1/plugins", &[AUTH]).await.1);
    assert_eq!(faulted["state"], "serving", "a fault discards the instance, not the plugin");
    let counts = ["errors", "faults", "deadline_hits"].map(|key| faulted[key].as_u64());
    assert_eq!(counts, [Some(0), Some(1), Some(1)], "{faulted}");
    assert_eq!((&faulted["problems"]["timed_out"], &faulted["problems"]["trapped"]), (&1.into(), &0.into()));
    let fault = &faulted["last_fault"];
    assert_eq!(
        (fault["kind"].as_str(), fault["message"].as_str()),
        (Some("timed_out"), Some("timed out after 50ms"))
    );
    let version = faulted["version"].as_str().unwrap().to_owned();
    assert_eq!(fault["version"].as_str(), Some(&version[..12]));

    // A dead letter counts once its destination took it, just after the
    // letter arrives, and its route's outcome just after that: wait for both counts.
    let lettered = [("route", "risky"), ("reason", "plugin-timed-out")];
    let settled = [("route", "risky"), ("outcome", "dead_lettered")];
    let metrics = metrics_once(addr, |m| {
        sample(m, "switchyard_dead_letters_total", &lettered) == Some(1.0)
            && sample(m, "switchyard_route_messages_total", &settled) == Some(1.0)
    })
    .await;
    let problem = [("plugin", "bad"), ("problem", "timed_out")];
    assert_eq!(sample(&metrics, "switchyard_plugin_problems_total", &problem), Some(1.0));

    let mut events = host.subscribe();
    std::fs::remove_file(dir.path().join("bad.wasm")).unwrap();
    within(async {
        while !matches!(events.recv().await.unwrap(), switchyard::HostEvent::PluginRemoved { .. }) {}
    })
    .await;
    let removed = first_plugin(&get(addr, "/v1/plugins", &[AUTH]).await.1);
    assert_eq!((removed["state"].as_str(), removed["version"].as_str()), (Some("removed"), Some(&*version)));
    assert_eq!((removed["deadline_hits"].as_u64(), &removed["last_fault"]), (Some(1), fault), "{removed}");

    // Back, it counts on from what it had: a counter that fell (to 0, as it did) reads as a reset
    // to a scrape and to an alert rule's `rate(..)`, and `plugin_faults > 0` stopped holding.
    crate::support::replace_file(
        &dir.path().join("bad.wasm"),
        &std::fs::read(artifacts::FAULTY_SPIN).unwrap(),
    );
    within(async {
        while !matches!(events.recv().await.unwrap(), switchyard::HostEvent::PluginLoaded { .. }) {}
    })
    .await;
    let bad = [("plugin".to_owned(), "bad".to_owned())];
    for faults in [1, 2] {
        if faults == 2 {
            host.send(Message::new("job", "poison").with_header("x-poison", "1")).await.unwrap();
            next(&host.memory("dead").unwrap()).await;
        }
        let back = first_plugin(&get(addr, "/v1/plugins", &[AUTH]).await.1);
        assert_eq!(
            (back["state"].as_str(), back["faults"].as_u64()),
            (Some("serving"), Some(faults)),
            "{back}"
        );
        assert_eq!(&back["last_fault"]["kind"], &fault["kind"], "{back}");
        let (_, metrics) = get(addr, "/metrics", &[AUTH]).await;
        assert_eq!(sample(&metrics, "switchyard_plugin_problems_total", &problem), Some(faults as f64));
        assert_eq!(
            host.metrics().read("plugin_faults", &bad),
            Some(faults as f64),
            "an alert rule's reading"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_and_a_plugin_a_reload_removes_leave_no_series_in_metrics() {
    // The dead letters of a route a reload removed, and the series of a plugin whose file was
    // deleted, stayed in /metrics for good: a host whose routes and plugins change kept exporting
    // every one it ever had.
    let dir = plugin_dir(&[("bad", artifacts::FAULTY_SPIN)]);
    let kept = "[[route]]\nname = \"kept\"\nmatch = { topic = \"kept\" }\nto = \"out\"\n";
    let config = format!(
        "{MEMORY_OUT}[[plugin]]\nname = \"bad\"\nlimits = {{ timeout_ms = 50 }}\n\
         config = {{ trigger = \"x-poison\" }}\n\
         [[route]]\nname = \"risky\"\nstages = [\"filter:bad\"]\nto = \"out\"\n{kept}"
    );
    let host = host(dir.path(), &config).await;
    let addr = start_admin(&host).await;
    host.send(Message::new("job", "poison").with_header("x-poison", "1")).await.unwrap();
    next(&host.memory("dead").unwrap()).await;
    let lettered = [("route", "risky"), ("reason", "plugin-timed-out")];
    let metrics =
        metrics_once(addr, |m| sample(m, "switchyard_dead_letters_total", &lettered) == Some(1.0)).await;
    let faulted = [("plugin", "bad"), ("problem", "timed_out")];
    assert_eq!(sample(&metrics, "switchyard_plugin_problems_total", &faulted), Some(1.0));

    let without = Config::from_toml("test.toml", &format!("{MEMORY_OUT}{kept}")).unwrap();
    within(host.apply_config("test.toml", without)).await.unwrap();
    let mut events = host.subscribe();
    std::fs::remove_file(dir.path().join("bad.wasm")).unwrap();
    within(async {
        while !matches!(events.recv().await.unwrap(), switchyard::HostEvent::PluginRemoved { .. }) {}
    })
    .await;
    // The route's series go with its last instance: wait for those the previous main removed too.
    let settled = [("route", "risky"), ("outcome", "dead_lettered")];
    let metrics =
        metrics_once(addr, |m| sample(m, "switchyard_route_messages_total", &settled).is_none()).await;
    let of = |label: &str, value: &str| {
        let samples = crate::exposition::parse(&metrics).into_iter();
        let left = samples.filter(|s| s.labels.get(label).is_some_and(|v| v == value));
        left.map(|s| format!("{}{:?}", s.name, s.labels)).collect::<Vec<_>>()
    };
    assert_eq!(of("route", "risky"), Vec::<String>::new(), "the removed route's series");
    assert_eq!(of("plugin", "bad"), Vec::<String>::new(), "the removed plugin's series");
    assert!(!of("route", "kept").is_empty(), "the route kept has its series");
    // /v1/plugins still tells what the removed plugin did.
    let removed = first_plugin(&get(addr, "/v1/plugins", &[AUTH]).await.1);
    assert_eq!(
        (removed["state"].as_str(), removed["faults"].as_u64()),
        (Some("removed"), Some(1)),
        "{removed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_admin_token_takes_effect_at_once_closes_streams_let_in_with_the_old_and_cannot_be_removed()
 {
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    let config = |admin: &str| {
        let plugins = format!("[host]\nplugin_dir = {:?}", dir.path());
        format!("{}[admin]\nlisten = \"127.0.0.1:0\"\n{admin}", MEMORY_OUT.replacen("[host]", &plugins, 1))
    };
    std::fs::write(&config_path, config("token = \"first\"\n")).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let status = |token: &'static str| async move {
        get(addr, "/v1/routes", &[("authorization", &format!("Bearer {token}"))]).await.0
    };
    assert_eq!((status("first").await, status("second").await), (200, 401));
    crate::support::replace_file(&config_path, config("token = \"second\"\n").as_bytes());
    within(host.reload()).await.unwrap();
    assert_eq!((status("first").await, status("second").await), (401, 200), "the new token applies");
    // An event stream let in with the old token is closed, not sent the reload's event.
    let mut request = format!("ws://{addr}/v1/events").into_client_request().unwrap();
    request.headers_mut().insert("authorization", "Bearer second".parse().unwrap());
    let (mut socket, _) = within(tokio_tungstenite::connect_async(request)).await.unwrap();
    crate::support::replace_file(&config_path, config("token = \"third\"\n").as_bytes());
    within(host.reload()).await.unwrap();
    let frame = within(socket.next()).await.expect("a frame").unwrap();
    let tokio_tungstenite::tungstenite::Message::Close(Some(close)) = frame else { panic!("{frame:?}") };
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("admin token was replaced"), "{close:?}");
    crate::support::replace_file(&config_path, config("").as_bytes());
    let refused = within(host.reload()).await.unwrap_err().to_string();
    assert!(refused.contains("admin.token (removed) take effect only at start"), "{refused}");
    assert_eq!((status("second").await, status("third").await), (401, 200), "still protected");
}

/// Header pairs of a test request.
type Headers = Vec<(&'static str, String)>;

/// One request with exactly these headers (no `Host` added); the status code.
fn raw_status(addr: SocketAddr, request_line: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = format!("{request_line}\r\nconnection: close\r\ncontent-length: 0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    stream.write_all(format!("{request}\r\n").as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response[9..12].parse().unwrap_or_else(|err| panic!("{err}: {response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_rebinding_host_and_a_foreign_origin_are_refused() {
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), "").await;
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), None).await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let port = addr.port().to_string();
    let cases: Vec<(&str, Headers, u16)> = vec![
        ("GET /v1/routes HTTP/1.1", vec![("host", format!("attacker.example:{port}"))], 403),
        ("GET /health HTTP/1.1", vec![("host", "attacker.example".into())], 403),
        ("GET /v1/routes HTTP/1.1", vec![("host", format!("localhost:{port}"))], 200),
        ("GET /v1/routes HTTP/1.1", vec![("host", format!("127.0.0.1:{port}"))], 200),
        (
            "POST /v1/reload HTTP/1.1",
            vec![
                ("host", format!("127.0.0.1:{port}")),
                ("origin", "https://attacker.example".into()),
                ("content-type", "text/plain".into()),
            ],
            403,
        ),
        (
            "POST /v1/reload HTTP/1.1",
            vec![("host", format!("127.0.0.1:{port}")), ("origin", format!("http://localhost:{port}"))],
            200,
        ),
        // A rebinding page is its own origin: same Host and Origin, still refused for its Host.
        (
            "POST /v1/reload HTTP/1.1",
            vec![
                ("host", format!("attacker.example:{port}")),
                ("origin", format!("http://attacker.example:{port}")),
            ],
            403,
        ),
        (
            "GET /v1/events HTTP/1.1",
            vec![
                ("host", format!("127.0.0.1:{port}")),
                ("origin", "https://attacker.example".into()),
                ("upgrade", "websocket".into()),
                ("connection", "upgrade".into()),
                ("sec-websocket-version", "13".into()),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".into()),
            ],
            403,
        ),
    ];
    for (line, headers, expected) in cases {
        let described = format!("{line} {headers:?}");
        let status = tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            raw_status(addr, line, &headers)
        })
        .await
        .unwrap();
        assert_eq!(status, expected, "{described}");
    }
}

/// `METHOD path` with `body` and the token, from a plain thread.
async fn call(addr: SocketAddr, method: &'static str, path: &str, body: &str) -> (u16, String) {
    let (path, body) = (path.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || http(addr, method, &path, &[AUTH], body.as_bytes())).await.unwrap()
}

/// Where a config file goes in `dir`, and its text without routes: memory
/// destinations, plugins from `dir` (not watched), the admin API with the token.
fn config_file_in(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let plugins = format!("[host]\nplugin_dir = {dir:?}\nwatch = false");
    let base = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        MEMORY_OUT.replacen("[host]", &plugins, 1)
    );
    (dir.join("switchyard.toml"), base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_api_shows_validates_and_replaces_the_config_and_the_file_keeps_it() {
    let dir = plugin_dir(&[]);
    let (config_path, base) = config_file_in(dir.path());
    let first = format!("{base}[[route]]\nname = \"a\"\nmatch = {{ topic = \"a.*\" }}\nto = \"out\"\n");
    std::fs::write(&config_path, &first).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let addr = start_admin(&host).await;
    let out = host.memory("out").unwrap();

    // GET: the effective config, the token redacted, as JSON or TOML.
    let (status, body) = call(addr, "GET", "/v1/config", "").await;
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["admin"]["token"], "[redacted]");
    assert_eq!(shown["route"][0]["name"], "a");
    assert!(!body.contains(TOKEN), "{body}");
    let (status, toml_text) = call(addr, "GET", "/v1/config?format=toml", "").await;
    assert_eq!(status, 200, "{toml_text}");
    let table: toml::Table = toml::from_str(&toml_text).unwrap();
    assert_eq!(table["route"][0]["name"].as_str(), Some("a"), "{toml_text}");

    // Refused: a route to a destination that does not exist. 422, the file's kind of message, nothing changed.
    let bad = format!("{base}[[route]]\nname = \"b\"\nmatch = {{ topic = \"b.*\" }}\nto = \"nowhere\"\n");
    for (method, path) in [("POST", "/v1/config/validate"), ("PUT", "/v1/config")] {
        let (status, body) = call(addr, method, path, &bad).await;
        assert_eq!(status, 422, "{method} {path}: {body}");
        assert!(body.contains(r#"route \"b\".to = \"nowhere\""#), "{method} {path}: {body}");
    }
    // Refused as a reload of the file is: a config with no route at all, which would drop the serving one.
    for (method, path) in [("POST", "/v1/config/validate"), ("PUT", "/v1/config")] {
        let (status, body) = call(addr, method, path, &base).await;
        assert_eq!(status, 422, "{method} {path}: {body}");
        assert!(
            body.contains("no [[route]]: refused, it would replace the 1 serving"),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = call(addr, "PUT", "/v1/config", "[[route]\nbroken").await;
    assert!(status == 422 && body.contains("switchyard.toml"), "{status} {body}");
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), first, "the file is untouched");
    assert_eq!(host.config().routes.len(), 1);

    // A dry run of a good one says what it would do and does nothing.
    let good = format!("{first}[[route]]\nname = \"b\"\nmatch = {{ topic = \"b.*\" }}\nto = \"out\"\n");
    let (status, body) = call(addr, "POST", "/v1/config/validate", &good).await;
    assert_eq!((status, body.as_str()), (200, r#"{"change":"applied","valid":true}"#));
    assert_eq!(host.config().routes.len(), 1, "validate applies nothing");
    // Taken as large as a config file may be (4 MiB), not only to axum's default of 2 MB.
    let padded = |mib: usize| format!("{good}# {}\n", "x".repeat(mib << 20));
    let (status, body) = call(addr, "POST", "/v1/config/validate", &padded(3)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"change":"applied","valid":true}"#));
    assert_eq!(call(addr, "POST", "/v1/config/validate", &padded(5)).await.0, 413);

    // PUT applies it at once and writes the file.
    let (status, body) = call(addr, "PUT", "/v1/config", &good).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["change"], "applied");
    assert_eq!(answer["written"], config_path.display().to_string());
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), good, "the file is what serves");
    let id = host.send(Message::new("b.new", "routed by the new route")).await.unwrap();
    let delivered = next(&out).await;
    assert_eq!((delivered.id, delivered.topic.as_str()), (id, "b.new"));
    // The file now matches what serves: reloading it changes nothing.
    assert_eq!(within(host.reload()).await.unwrap(), switchyard::ConfigChange::Unchanged);
    // A start-only key cannot change over the API either.
    let restart = good.replacen("watch = false", "watch = false\nworkers = 7", 1);
    let (status, body) = call(addr, "PUT", "/v1/config", &restart).await;
    assert!(status == 422 && body.contains("host.workers"), "{status} {body}");
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_config_writes_where_a_linked_file_points_keeps_its_mode_and_refuses_redacted_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = plugin_dir(&[]);
    let (real, base) = config_file_in(dir.path());
    let first = format!("{base}[[route]]\nname = \"a\"\nto = \"out\"\n");
    std::fs::write(&real, &first).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
    let links = tempfile::tempdir().unwrap();
    let link = links.path().join("switchyard.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let host = Host::builder().config_file(&link).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let addr = start_admin(&host).await;

    // What GET shows, sent back: its token would become the text "[redacted]".
    let (_, shown) = call(addr, "GET", "/v1/config?format=toml", "").await;
    for (method, path) in [("POST", "/v1/config/validate"), ("PUT", "/v1/config")] {
        let (status, body) = call(addr, method, path, &shown).await;
        assert_eq!(status, 422, "{method} {path}: {body}");
        assert!(body.contains("a token or secret plugin setting reads [redacted]"), "{body}");
    }
    assert_eq!(host.config().admin.as_ref().unwrap().token.as_deref(), Some(TOKEN), "the token stays");

    let good = format!("{first}[[route]]\nname = \"b\"\nto = \"out\"\n");
    let (status, body) = call(addr, "PUT", "/v1/config", &good).await;
    assert_eq!(status, 200, "{body}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink(), "the link stays a link");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), good, "what it points to holds what runs");
    assert_eq!(std::fs::metadata(&real).unwrap().permissions().mode() & 0o777, 0o640, "its mode is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_matching_a_secret_header_shows_it_redacted_and_a_put_sending_it_back_is_refused() {
    let dir = plugin_dir(&[]);
    let (config_path, base) = config_file_in(dir.path());
    // `*` asks only that the header be there: no secret to hide.
    let route = |authorization: &str| {
        let headers = format!(
            "authorization = \"{authorization}\", x-api-key = \"ZZKEY\", x-tenant = \"acme\", x-auth-token = \"*\""
        );
        format!(
            "{base}[[route]]\nname = \"a\"\nmatch = {{ topic = \"a.*\", headers = {{ {headers} }} }}\nto = \"out\"\n"
        )
    };
    let first = route("Bearer s3cr3t");
    std::fs::write(&config_path, &first).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let addr = start_admin(&host).await;

    let shown_headers = serde_json::json!({
        "authorization": "[redacted]", "x-api-key": "[redacted]", "x-tenant": "acme", "x-auth-token": "*"
    });
    for (path, routes) in [("/v1/config", "route"), ("/v1/routes", "routes")] {
        let (status, body) = call(addr, "GET", path, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains("s3cr3t") && !body.contains("ZZKEY"), "{path}: {body}");
        let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(shown[routes][0]["match"]["headers"], shown_headers, "{path}: {body}");
        assert_eq!(shown[routes][0]["match"]["topic"], "a.*", "{path}: {body}");
    }
    let (_, toml_text) = call(addr, "GET", "/v1/config?format=toml", "").await;
    assert!(!toml_text.contains("s3cr3t") && !toml_text.contains("ZZKEY"), "{toml_text}");

    // Sent back with the placeholder, the header would have to read "[redacted]".
    for (method, path) in [("POST", "/v1/config/validate"), ("PUT", "/v1/config")] {
        let (status, body) = call(addr, method, path, &route("[redacted]")).await;
        assert_eq!(status, 422, "{method} {path}: {body}");
        assert!(body.contains("a route's match on a secret header reads [redacted]"), "{body}");
    }
    assert_eq!(host.config().routes[0].matches.headers["authorization"], "Bearer s3cr3t");
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), first, "the file is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_config_says_which_plugins_it_left_with_refused_settings() {
    // The sidecar gives what the entry gives; the new entry gives less, so the sidecar widens it.
    let dir = plugin_dir(&[("t", artifacts::STAMP_TRANSFORM)]);
    std::fs::write(dir.path().join("t.toml"), "limits = { timeout_ms = 2000 }\n").unwrap();
    let (config_path, base) = config_file_in(dir.path());
    let entry = |ms: u32| format!("{base}[[plugin]]\nname = \"t\"\nlimits = {{ timeout_ms = {ms} }}\n");
    std::fs::write(&config_path, entry(2000)).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    assert_eq!(host.plugins().len(), 1);
    let addr = start_admin(&host).await;
    let (status, body) = call(addr, "PUT", "/v1/config", &entry(500)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = answer["plugins_refused"]["t"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(reason.contains("limits.timeout_ms = 2000 widens what the main config grants (500)"), "{reason}");
    let (_, body) = call(addr, "PUT", "/v1/config", &format!("{}# unchanged plugins\n", entry(500))).await;
    assert!(body.contains(r#""plugins_refused":{}"#), "only what this one refused: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_config_names_every_plugin_it_refused_even_for_the_reason_refused_before() {
    // The answer named only the plugins whose refusal reason changed: `broken`, compiled again
    // under its new settings and refused as it was at start, and `x`, tried again as the
    // transform route `a` uses and still a filter, were refused by this config but not named.
    let dir = plugin_dir(&[("x", artifacts::STAMP_TRANSFORM)]);
    std::fs::write(dir.path().join("broken.wasm"), b"not a component").unwrap();
    let (config_path, base) = config_file_in(dir.path());
    let route =
        "[[route]]\nname = \"a\"\nmatch = { topic = \"a\" }\nstages = [\"transform:x\"]\nto = \"out\"\n";
    std::fs::write(&config_path, format!("{base}{route}")).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let [switchyard::LoadError::Invalid { .. }] = host.load_errors() else {
        panic!("{:?}", host.load_errors())
    };
    std::fs::copy(artifacts::HEADER_FILTER, dir.path().join("x.wasm")).unwrap();
    within(host.reload()).await.unwrap();
    let refused_before = host.last_rejections();
    assert_eq!(refused_before.keys().collect::<Vec<_>>(), ["broken", "x"], "{refused_before:?}");
    let addr = start_admin(&host).await;
    let settings = "[[plugin]]\nname = \"broken\"\nconfig = { mode = \"new\" }\n";
    let (status, body) = call(addr, "PUT", "/v1/config", &format!("{base}{settings}{route}")).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let refused: std::collections::BTreeMap<String, String> =
        serde_json::from_value(answer["plugins_refused"].clone()).unwrap();
    assert_eq!(refused, refused_before, "{body}");
    assert_eq!(host.plugins()[0].kind, switchyard::PluginKind::Transform, "the transform still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_says_which_plugin_files_it_refused() {
    // POST /v1/reload answered `{"reloaded":true}` alone, whatever plugin files it refused.
    let dir = plugin_dir(&[("x", artifacts::HEADER_FILTER)]);
    let (config_path, base) = config_file_in(dir.path());
    std::fs::write(&config_path, format!("{base}[[route]]\nname = \"a\"\nto = \"out\"\n")).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    assert_eq!(host.plugins().len(), 1);
    let addr = start_admin(&host).await;
    std::fs::write(dir.path().join("x.wasm"), b"not a component").unwrap();
    let (status, body) = call(addr, "POST", "/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reloaded"], true, "{body}");
    let reason = answer["plugins_refused"]["x"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(reason, host.last_rejections()["x"], "{body}");
    std::fs::copy(artifacts::HEADER_FILTER, dir.path().join("x.wasm")).unwrap();
    let (status, body) = call(addr, "POST", "/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""plugins_refused":{}"#), "x loads again: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_config_applied_but_not_written_says_so_and_is_no_refusal() {
    let dir = plugin_dir(&[]);
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let (_, base) = config_file_in(dir.path());
    let config_path = conf.join("switchyard.toml");
    let first = format!("{base}[[route]]\nname = \"a\"\nto = \"out\"\n");
    std::fs::write(&config_path, &first).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let addr = start_admin(&host).await;
    std::fs::remove_dir_all(&conf).unwrap();
    let good = format!("{first}[[route]]\nname = \"b\"\nto = \"out\"\n");
    let (status, body) = call(addr, "PUT", "/v1/config", &good).await;
    assert_eq!(status, 500, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((&answer["applied"], &answer["written"]), (&true.into(), &serde_json::Value::Null), "{body}");
    assert!(answer["error"].as_str().unwrap().contains("a restart would not keep it"), "{body}");
    assert_eq!(host.config().routes.len(), 2, "it runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_config_replacements_and_reloads_leave_the_file_holding_what_runs() {
    // A reload that read the file before a replacement wrote it, and applied it after, left the
    // old config running while the file and the replacement's 200 said the new one.
    let dir = plugin_dir(&[]);
    let (config_path, base) = config_file_in(dir.path());
    let with_priority =
        |priority: u8| format!("{base}[[route]]\nname = \"a\"\npriority = {priority}\nto = \"out\"\n");
    std::fs::write(&config_path, with_priority(0)).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(dir.path().join(".switchyard")).build().await.unwrap();
    let addr = start_admin(&host).await;
    for round in 0..5u8 {
        let calls: Vec<_> = (1..=8u8)
            .flat_map(|n| {
                let text = with_priority(round * 10 + n);
                let put = tokio::spawn(async move { call(addr, "PUT", "/v1/config", &text).await });
                let reload = tokio::spawn(async move { call(addr, "POST", "/v1/reload", "").await });
                [put, reload]
            })
            .collect();
        for call in calls {
            let (status, body) = call.await.unwrap();
            assert_eq!(status, 200, "{body}");
        }
        let running = host.config().routes[0].priority;
        let on_disk = Config::from_toml("f", &std::fs::read_to_string(&config_path).unwrap()).unwrap();
        assert_eq!(on_disk.routes[0].priority, running, "round {round}: the file holds what runs");
    }
}

/// The names of the routes of a config's TOML `text`, in order.
fn route_names(text: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|err| panic!("{err}: {text}"));
    let routes = table.get("route").and_then(toml::Value::as_array).cloned().unwrap_or_default();
    routes.iter().map(|route| route["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_read_and_put_back_by_an_embedder_keeps_its_routes_added_in_code_once_and_out_of_the_file() {
    // GET /v1/config shows the routes an embedder adds in code; sent back as read, they were
    // added to the code's again: refused (422), two routes sharing a name.
    let dir = plugin_dir(&[]);
    let config_path = dir.path().join("switchyard.toml");
    let own = format!("{MEMORY_OUT}[[route]]\nname = \"a\"\nmatch = {{ topic = \"a.*\" }}\nto = \"out\"\n");
    std::fs::write(&config_path, &own).unwrap();
    let in_code = switchyard::RouteConfig::new("in-code", "c.*", "out");
    let from_file = crate::support::builder(dir.path()).config_file(&config_path).unwrap();
    let from_file = from_file.route(in_code.clone()).build().await.unwrap();
    let elsewhere = plugin_dir(&[]);
    let without_file = Config::from_toml("<builder>", &own).unwrap();
    let without_file = crate::support::builder(elsewhere.path()).config("<builder>", without_file);
    let without_file = without_file.route(in_code).build().await.unwrap();

    for (host, written) in [(&from_file, Some(&config_path)), (&without_file, None)] {
        let addr = start_admin(host).await;
        let (status, shown) = call(addr, "GET", "/v1/config?format=toml", "").await;
        assert_eq!(status, 200, "{shown}");
        assert_eq!(route_names(&shown), ["a", "in-code"], "GET shows the routes that run");
        for (method, path) in [("POST", "/v1/config/validate"), ("PUT", "/v1/config")] {
            let (status, body) = call(addr, method, path, &shown).await;
            assert_eq!(status, 200, "{method} {path}: {body}");
            assert!(body.contains(r#""change":"unchanged""#), "{method} {path}: {body}");
        }
        // Sent back with an edit, the edit applies and the code's route stays once, last.
        let mut edited: toml::Table = toml::from_str(&shown).unwrap();
        let route = toml::toml! { name = "b"  to = "out"  match = { topic = "b.*" } };
        edited["route"].as_array_mut().unwrap().insert(1, toml::Value::Table(route));
        let (status, body) = call(addr, "PUT", "/v1/config", &toml::to_string(&edited).unwrap()).await;
        assert_eq!(status, 200, "{body}");
        let names: Vec<_> = host.config().routes.iter().map(|route| route.name.clone()).collect();
        assert_eq!(names, ["a", "b", "in-code"]);
        if let Some(path) = written {
            let file = std::fs::read_to_string(path).unwrap();
            assert_eq!(route_names(&file), ["a", "b"], "the file holds its own routes only: {file}");
            assert_eq!(within(host.reload()).await.unwrap(), switchyard::ConfigChange::Unchanged);
        }
        // A route named as the code's that is not the code's is no copy of it: still refused.
        let other = shown.replace("c.*", "d.*");
        let (status, body) = call(addr, "PUT", "/v1/config", &other).await;
        assert!(status == 422 && body.contains("two routes share this name"), "{status} {body}");
    }
}
