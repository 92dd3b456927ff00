//! The dashboard at `GET /` of the admin listener: its page and the admin API
//! it reads (history, the event stream with the token as a subprotocol, the
//! Origin rule for its own page), then the page itself in headless Chromium.

use crate::chromium::Chromium;
use crate::endpoint::{Mode, TestEndpoint};
use crate::support::{PATIENCE, event_where, http, http_raw, plugin_dir, replace_file, within};
use fantoccini::Locator;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::admin::AdminServer;
use switchyard::{Host, HostEvent, Message};
use switchyard_plugin_artifacts as artifacts;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TOKEN: &str = "dashboard-token";
const AUTH: (&str, &str) = ("authorization", "Bearer dashboard-token");

/// A host whose route `all` runs plugin `t` (redact-transform) and delivers
/// to `api`, an HTTP destination on `endpoint` with health checks every 100 ms;
/// its admin API needs [`TOKEN`].
async fn host_to(endpoint: SocketAddr) -> (tempfile::TempDir, Host, SocketAddr) {
    let dir = plugin_dir(&[("t", artifacts::REDACT_TRANSFORM)]);
    let config = format!(
        "[host]\ndead_letter = \"dead\"\n[[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{endpoint}\"]\n\
         health = {{ interval_ms = 100, rise = 1, fall = 1 }}\n\
         [[route]]\nname = \"all\"\nstages = [\"transform:t\"]\nto = \"api\"\n\
         [[alert]]\nname = \"api-down\"\nwhen = 'endpoint_down{{destination=\"api\"}} > 0'\nseverity = \"critical\"\n"
    );
    let host = crate::support::host(dir.path(), &config).await;
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), Some(TOKEN.into()));
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    (dir, host, addr)
}

/// A request from a plain thread (the test's runtime keeps serving).
async fn request(addr: SocketAddr, method: &'static str, path: &str, headers: &[(&str, &str)]) -> String {
    let (path, headers) =
        (path.to_owned(), headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http_raw(addr, method, &path, &headers, b"")
    })
    .await
    .unwrap()
}

fn status(response: &str) -> u16 {
    response[9..12].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_to_anyone_and_its_data_only_with_the_token() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let (_dir, _host, addr) = host_to(endpoint.addr).await;
    let page = request(addr, "GET", "/", &[]).await;
    assert_eq!(status(&page), 200, "{page}");
    assert!(page.contains("content-type: text/html"), "{page}");
    assert!(page.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{page}");
    assert!(page.contains("<script src=\"dashboard.js\" defer></script>"), "{page}");
    for asset in ["/dashboard.js", "/dashboard.css"] {
        assert_eq!(status(&request(addr, "GET", asset, &[]).await), 200, "{asset}");
    }
    assert_eq!(status(&request(addr, "GET", "/v1/history", &[]).await), 401);
    let history = request(addr, "GET", "/v1/history", &[AUTH]).await;
    assert_eq!(status(&history), 200, "{history}");
    assert!(history.contains("\"interval_ms\":1000"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_samples_what_flowed_each_second_by_route() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let (_dir, host, addr) = host_to(endpoint.addr).await;
    for n in 0..50 {
        host.send(Message::new("flow", format!("{{\"n\":{n}}}"))).await.unwrap();
    }
    within(endpoint.arrivals(50)).await;
    // The samples of the seconds the messages flowed in, once taken: the route's rate shows in the
    // second its messages were matched, their latency in the second they were settled, which is a
    // later one when a sample was taken in between.
    let (routed, settled) = within(async {
        loop {
            let (_, body) =
                tokio::task::spawn_blocking(move || http(addr, "GET", "/v1/history", &[AUTH], b""))
                    .await
                    .unwrap();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            let samples = body["samples"].as_array().unwrap().clone();
            let routed = samples.iter().find(|s| s["routes"]["all"].as_f64().unwrap_or(0.0) > 0.0);
            let settled = samples.iter().find(|s| !s["latency_mean_ms"].is_null());
            if let (Some(routed), Some(settled)) = (routed, settled) {
                return (routed.clone(), settled.clone());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(settled["latency_mean_ms"].as_f64().unwrap() > 0.0, "{settled}");
    assert!(settled["latency_p99_ms"].as_f64().unwrap() > 0.0, "{settled}");
    for sample in [&routed, &settled] {
        assert_eq!(sample["dead_lettered_per_s"], 0.0, "{sample}");
    }
}

/// `Sec-WebSocket-Protocol` as the dashboard offers it, with `token`.
fn protocols(token: &str) -> String {
    use base64::Engine;
    format!("switchyard.events, bearer.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_takes_the_token_as_a_subprotocol_and_refuses_a_wrong_one() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let (_dir, _host, addr) = host_to(endpoint.addr).await;
    let with = |token: &str| {
        let mut request = format!("ws://{addr}/v1/events").into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", protocols(token).parse().unwrap());
        request
    };
    let Err(refused) = within(tokio_tungstenite::connect_async(with("not-the-token"))).await else {
        panic!("a wrong token is refused")
    };
    assert!(format!("{refused:?}").contains("401"), "{refused:?}");
    let (mut socket, response) = within(tokio_tungstenite::connect_async(with(TOKEN))).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "switchyard.events");
    endpoint.stop().await;
    within(async {
        loop {
            let frame = socket.next().await.expect("the stream stays open").unwrap();
            if frame.to_text().unwrap().contains("\"event\":\"endpoint-down\"") {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_may_post_to_the_host_it_came_from_but_not_from_a_foreign_origin() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let (_dir, _host, addr) = host_to(endpoint.addr).await;
    // Reached by a name that is not loopback (with a token that is allowed): its own page may reload.
    let named = format!("dash.example:{}", addr.port());
    let own = format!("http://{named}");
    let from =
        |origin: &str| [AUTH, ("host", named.as_str()), ("origin", origin)].map(|(k, v)| (k, v.to_owned()));
    let post = |headers: [(&'static str, String); 3]| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        status(&request(addr, "POST", "/v1/reload", &headers).await)
    };
    // (Built from a config in memory, the host reloads only its plugin directory.)
    assert_eq!(post(from(&own)).await, 200);
    assert_eq!(post(from("http://evil.example")).await, 403);
    assert_eq!(post(from(&format!("http://evil.example:{}", addr.port()))).await, 403);
}

/// Wait until the page has an element matching `css`.
async fn shown(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    let wait = client.wait().at_most(PATIENCE).every(Duration::from_millis(50));
    wait.for_element(Locator::Css(css)).await.unwrap_or_else(|err| panic!("waiting for {css}: {err}"))
}

/// Run `script` in the page until it returns something truthy (a polled
/// condition; the pause only keeps it from spinning), and return that.
async fn until(client: &fantoccini::Client, script: &str) -> serde_json::Value {
    within(async {
        loop {
            let value = client.execute(script, vec![]).await.unwrap_or_else(|err| panic!("{script}: {err}"));
            if !matches!(value, serde_json::Value::Null | serde_json::Value::Bool(false)) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

async fn log_in(client: &fantoccini::Client, token: &str) {
    let input = shown(client, "#login:not([hidden]) #token").await;
    input.send_keys(token).await.unwrap();
    client.find(Locator::Css("#login button[type=submit]")).await.unwrap().click().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_follows_a_swap_an_endpoint_going_down_and_the_traffic() {
    let endpoint = TestEndpoint::start(Mode::Answer).await;
    let (dir, host, addr) = host_to(endpoint.addr).await;
    let browser = Chromium::start(1280, 1200).await;
    let client = &browser.client;
    client.goto(&format!("http://{addr}/")).await.unwrap();

    // A wrong token is refused and the form stays; the right one opens the board.
    log_in(client, "not-the-token").await;
    until(client, "return document.getElementById('login-error').textContent === 'That token was refused.'")
        .await;
    log_in(client, TOKEN).await;
    let old = host.plugins().iter().find(|plugin| plugin.name == "t").unwrap().digest.clone();
    shown(
        client,
        &format!("tr[data-plugin='t'][data-version='{old}'][data-state='serving'][data-renewals='0']"),
    )
    .await;
    shown(client, "#stream[data-state='open']").await;
    until(client, "return sessionStorage.getItem('switchyard.admin-token') === 'dashboard-token'").await;

    // A swap shows without a reload: the new digest in the same document, and the event in the list.
    client.execute("window.sameDocument = true; return true", vec![]).await.unwrap();
    let mut events = host.subscribe();
    replace_file(&dir.path().join("t.wasm"), &std::fs::read(artifacts::STAMP_TRANSFORM).unwrap());
    let replaced = |event: &HostEvent| matches!(event, HostEvent::PluginReplaced { name, .. } if name == "t");
    let HostEvent::PluginReplaced { version, .. } = event_where(&mut events, replaced).await else {
        unreachable!()
    };
    assert_ne!(version, old);
    shown(client, &format!("tr[data-plugin='t'][data-version='{version}']")).await;
    shown(client, "#events li[data-event='plugin-replaced']").await;
    let same = client.execute("return window.sameDocument === true", vec![]).await.unwrap();
    assert_eq!(same, true, "the page was reloaded");

    // The plot grows as messages flow: more samples, a peak above zero, the route's rate shown.
    let before = until(client, "return Number(document.getElementById('plot').dataset.samples) + 1").await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = tokio::spawn({
        let (host, sent, flowing) = (host.clone(), sent.clone(), flowing.clone());
        async move {
            // About 100 messages a second: traffic to plot, not a load test.
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            while flowing.load(std::sync::atomic::Ordering::SeqCst) {
                pace.tick().await;
                host.send(Message::new("flow", "{\"card\":\"4111111111111111\"}")).await.unwrap();
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let grown = format!(
        "const plot = document.getElementById('plot').dataset; \
         const rate = document.querySelector(\"tr[data-route='all'] td:last-child\").textContent; \
         return Number(plot.samples) >= {} + 3 && Number(plot.peak) > 0 && Number(rate) > 0 && [plot.samples, plot.peak, rate];",
        before.as_f64().unwrap() - 1.0
    );
    let seen = until(client, &grown).await;
    flowing.store(false, std::sync::atomic::Ordering::SeqCst);
    within(sender).await.unwrap();
    within(endpoint.arrivals(sent.load(std::sync::atomic::Ordering::SeqCst))).await;
    let points =
        client.execute("return document.getElementById('line-accepted').points.length", vec![]).await;
    assert!(points.unwrap().as_u64().unwrap() >= 3, "the plot's line has its samples: {seen}");
    // The alert rule is listed, not firing while the endpoint serves.
    shown(client, "#alerts li[data-alert='api-down'][data-state='inactive']").await;

    // The reload button reloads (a host without a config file re-reads its plugin directory).
    client.find(Locator::Css("#reload")).await.unwrap().click().await.unwrap();
    shown(client, "#reload-result[data-state='reloaded']").await;

    // The endpoint, up, goes down when its listener is closed.
    let row = format!("tr[data-destination='api'][data-endpoint='{}']", endpoint.addr);
    shown(client, &format!("{row}[data-health='up']")).await;
    endpoint.stop().await;
    shown(client, &format!("{row}[data-health='down']")).await;
    shown(client, "#events li[data-event='endpoint-down']").await;
    // Its alert fires, and is acknowledged from the page.
    shown(client, "#alerts li[data-alert='api-down'][data-state='firing'][data-acknowledged='false']").await;
    shown(client, "#alerts button[data-ack='api-down']").await.click().await.unwrap();
    shown(client, "#alerts li[data-alert='api-down'][data-state='firing'][data-acknowledged='true']").await;
    let acknowledged = host.alerts().into_iter().find(|alert| alert.id == "api-down").unwrap();
    assert!(acknowledged.acknowledged, "the host has it acknowledged: {acknowledged:?}");

    let screenshot = client.screenshot().await.unwrap();
    let artifacts_dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&artifacts_dir).unwrap();
    std::fs::write(artifacts_dir.join("dashboard.png"), &screenshot).unwrap();
    // The README's picture: `SWITCHYARD_DOCS_SCREENSHOT=1` writes docs/dashboard.png.
    if std::env::var_os("SWITCHYARD_DOCS_SCREENSHOT").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png"), &screenshot).unwrap();
    }

    // Logging out and straight back in leaves one polling loop, not the old one beside a new one:
    // a loop asks for the history, waits for the answer, then a second, so of the requests it
    // starts in 3 s of the page's clock at most 3 (fewer on a slow machine, never more). Counted
    // once one starting after those 3 s was answered: the loop is alive.
    client.find(Locator::Css("#logout")).await.unwrap().click().await.unwrap();
    log_in(client, TOKEN).await;
    shown(client, "#board:not([hidden])").await;
    let clear = "performance.setResourceTimingBufferSize(100000); performance.clearResourceTimings(); \
                 return performance.now()";
    let start = client.execute(clear, vec![]).await.unwrap().as_f64().unwrap();
    let asked = until(
        client,
        &format!(
            "const asked = performance.getEntriesByType('resource') \
               .filter((entry) => entry.name.includes('/v1/history')).map((entry) => entry.startTime); \
             return asked.some((at) => at >= {start} + 3000) \
               && asked.filter((at) => at >= {start} && at < {start} + 3000).length + 1"
        ),
    )
    .await;
    let asked = asked.as_u64().unwrap() - 1;
    assert!(asked <= 3, "{asked} history requests started in 3 s after logging out and in");

    browser.quit().await;
}
