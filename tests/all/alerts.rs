//! Alerts: `[[alert]]` rules evaluated by the host every second on tokio's clock, paused here so
//! the `for` windows pass in virtual time. Dead letters (messages no route takes) drive the
//! conditions; each transition is a host event, and a message `switchyard.alert.NAME` that a
//! route delivers to a memory destination (or to one refusing it: its letter sets off no rule).

use crate::exposition::sample;
use crate::support::{MEMORY_OUT, PATIENCE, eventually, http, mkfifo, plugin_dir, within};
use serde_json::{Value, json};
use std::net::SocketAddr;
use switchyard::admin::AdminServer;
use switchyard::alert::AlertState;
use switchyard::{Config, DeliveryError, Host, HostEvent, Message};
use tokio::sync::broadcast::Receiver;
use tokio::time::{Duration, Instant};

const TOKEN: &str = "alert-admin-token";

/// [`MEMORY_OUT`] (memory destinations `out` and `dead`, for dead letters), unwatched, a memory
/// destination `alerts`, a route sending every alert
/// message to `alerts`, and `rules`.
fn config(rules: &str) -> String {
    let memory = MEMORY_OUT.replacen("[host]\n", "[host]\nwatch = false\n", 1);
    format!(
        r#"{memory}
[[destination]]
name = "alerts"
transport = "memory"
[[route]]
name = "alerts"
match = {{ topic = "switchyard.alert.>" }}
to = "alerts"
[[route]]
name = "orders"
match = {{ topic = "orders.>" }}
to = "out"
{rules}"#
    )
}

async fn start(config_text: &str) -> (Host, tempfile::TempDir) {
    let dir = plugin_dir(&[]);
    (start_in(dir.path(), config_text).await, dir)
}

/// A host of `config_text` on `dir` (plugins) and `dir/state`.
async fn start_in(dir: &std::path::Path, config_text: &str) -> Host {
    let config = Config::from_toml("alerts.toml", config_text).unwrap_or_else(|err| panic!("{err}"));
    let state = dir.join("state");
    let host = Host::builder().config("alerts.toml", config).plugin_dir(dir).state_dir(state).build();
    host.await.unwrap_or_else(|err| panic!("{err}"))
}

/// Let the evaluator take its first samples (the clock is paused: this only moves it), so a
/// rate has an earlier value to compare with.
async fn first_samples() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

/// Send a message no route takes, and wait until the host has counted `count` dead letters.
async fn dead_letter(host: &Host, count: f64) {
    host.send(Message::new("nowhere.at.all", "{}")).await.unwrap();
    dead_letters_counted(host, count).await;
}

/// Wait (on a blocking thread, so the paused clock stands still meanwhile) until `host` has
/// counted `count` dead letters.
async fn dead_letters_counted(host: &Host, count: f64) {
    let host = host.clone();
    tokio::task::spawn_blocking(move || {
        eventually(|| match host.metrics().read("dead_letters", &[]) {
            Some(counted) if counted >= count => Ok(()),
            other => Err(other),
        })
    })
    .await
    .unwrap();
}

/// The next alert transition of `rule`, and the (virtual) instant it arrived. The safety net is
/// in virtual time: an hour of it passes only when nothing else is left to happen.
async fn next_transition(events: &mut Receiver<HostEvent>, rule: &str) -> (AlertState, Option<f64>, Instant) {
    let wait = async {
        loop {
            if let HostEvent::Alert(transition) = events.recv().await.expect("the event feed is open")
                && transition.rule == rule
            {
                return (transition.state, transition.value, Instant::now());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3600), wait).await.expect("no alert transition within an hour")
}

/// The next message of the `alerts` memory destination, waited for on a blocking thread.
async fn next_alert_message(host: &Host) -> (Message, Value) {
    let alerts = host.memory("alerts").unwrap();
    let message = tokio::task::spawn_blocking(move || alerts.recv_timeout(PATIENCE)).await.unwrap();
    let message = message.expect("an alert message (safety net)");
    let payload = serde_json::from_slice(&message.payload).unwrap();
    (message, payload)
}

#[tokio::test(start_paused = true)]
async fn a_rule_fires_after_its_window_resolves_when_it_clears_and_fires_again() {
    let rule = "[[alert]]\nname = \"dead-letters\"\nwhen = \"rate(dead_letters[30s]) > 0\"\nfor_s = 10\nseverity = \"critical\"\n";
    let (host, _dir) = start(&config(rule)).await;
    let mut events = host.subscribe();
    first_samples().await;
    dead_letter(&host, 1.0).await;

    let (state, value, pending_at) = next_transition(&mut events, "dead-letters").await;
    assert_eq!((state, value), (AlertState::Pending, Some(1.0 / 30.0)));
    assert_eq!(host.alerts()[0].state, AlertState::Pending);
    let (state, _, firing_at) = next_transition(&mut events, "dead-letters").await;
    assert_eq!(state, AlertState::Firing);
    assert_eq!(firing_at - pending_at, Duration::from_secs(10), "fires once the condition held for_s");
    let (state, value, resolved_at) = next_transition(&mut events, "dead-letters").await;
    assert_eq!((state, value), (AlertState::Resolved, Some(0.0)));
    assert_eq!(resolved_at - pending_at, Duration::from_secs(30), "resolves once the letter left the window");

    dead_letter(&host, 2.0).await;
    assert_eq!(next_transition(&mut events, "dead-letters").await.0, AlertState::Pending);
    assert_eq!(next_transition(&mut events, "dead-letters").await.0, AlertState::Firing);

    // Each transition went through the router to the `alerts` destination (workers deliver in
    // parallel: in `seq` order once sorted).
    let mut messages = Vec::new();
    for _ in 0..5 {
        messages.push(next_alert_message(&host).await);
    }
    messages.sort_by_key(|(_, payload)| payload["seq"].as_u64());
    let expected = [
        ("pending", "inactive"),
        ("firing", "pending"),
        ("resolved", "firing"),
        ("pending", "resolved"),
        ("firing", "pending"),
    ];
    for ((seq, (state, previous)), (message, payload)) in (1..).zip(expected).zip(messages) {
        assert_eq!(payload["seq"], seq);
        assert_eq!(message.topic, "switchyard.alert.dead-letters");
        assert_eq!(message.header("x-sy-alert"), Some("dead-letters"));
        assert_eq!(message.header("x-sy-alert-state"), Some(state));
        assert_eq!(message.header("x-sy-alert-severity"), Some("critical"));
        assert_eq!((payload["state"].as_str(), payload["previous"].as_str()), (Some(state), Some(previous)));
        assert_eq!(payload["rule"], "dead-letters");
        assert_eq!(payload["severity"], "critical");
        assert_eq!(payload["when"], "rate(dead_letters[30s]) > 0");
        assert!(payload["at"].as_u64().is_some_and(|at| at > 0), "{payload}");
    }
    assert_eq!(host.event_counts().alerts, 5);
    // The alert messages were delivered, not dead-lettered: only the two letters we sent are.
    assert_eq!(host.stats().dead_lettered, 2);
    assert_eq!(host.metrics().alert_messages_refused(), 0);
    host.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_condition_that_clears_before_its_window_never_fires() {
    let rule = "[[alert]]\nname = \"blip\"\nwhen = \"rate(dead_letters[5s]) > 0\"\nfor_s = 10\n";
    let (host, _dir) = start(&config(rule)).await;
    let mut events = host.subscribe();
    first_samples().await;
    dead_letter(&host, 1.0).await;

    let (state, _, pending_at) = next_transition(&mut events, "blip").await;
    assert_eq!(state, AlertState::Pending);
    let (state, _, inactive_at) = next_transition(&mut events, "blip").await;
    assert_eq!(state, AlertState::Inactive);
    assert_eq!(inactive_at - pending_at, Duration::from_secs(5));
    // A minute more of evaluations: nothing fires.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(events.try_recv().is_err(), "no transition after the condition cleared");
    assert_eq!(host.alerts()[0].state, AlertState::Inactive);
    // Once shut down, every accepted message is delivered: the alert messages are all there.
    host.shutdown().await;
    let alerts = host.memory("alerts").unwrap();
    let mut states: Vec<(u64, String)> = alerts
        .try_iter()
        .map(|message| {
            let payload: Value = serde_json::from_slice(&message.payload).unwrap();
            (payload["seq"].as_u64().unwrap(), message.header("x-sy-alert-state").unwrap().to_owned())
        })
        .collect();
    states.sort();
    let states: Vec<String> = states.into_iter().map(|(_, state)| state).collect();
    assert_eq!(states, ["pending", "inactive"], "no firing message");
}

/// The next letter of the `dead` memory destination, waited for on a blocking thread.
async fn next_dead_letter(host: &Host) -> Message {
    let dead = host.memory("dead").unwrap();
    let letter = tokio::task::spawn_blocking(move || dead.recv_timeout(PATIENCE)).await.unwrap();
    letter.expect("a dead letter (safety net)")
}

#[tokio::test(start_paused = true)]
async fn an_alert_on_dead_letters_whose_own_messages_are_dead_lettered_resolves_and_stays_resolved() {
    // Its own messages' letters raised the dead letters it watches: each `resolved` (or `firing`)
    // message became a dead letter that fired it again, a window later, for ever.
    let rule = "[[alert]]\nname = \"dead-letters\"\nwhen = \"rate(dead_letters[10s]) > 0\"\n";
    let mut config = Config::from_toml("alerts.toml", &config(rule)).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.routes[0].name, "alerts");
    config.routes[0].to = Some("pager".into());
    let dir = plugin_dir(&[]);
    let pager = |_: Message| async { Err(DeliveryError::Fatal("the pager refuses".into())) };
    let host = Host::builder().config("alerts.toml", config).plugin_dir(dir.path());
    let host = host.state_dir(dir.path().join("state")).destination("pager", pager).build().await.unwrap();
    let mut events = host.subscribe();
    first_samples().await;
    dead_letter(&host, 1.0).await;
    assert_eq!(next_dead_letter(&host).await.topic, "nowhere.at.all");

    assert_eq!(next_transition(&mut events, "dead-letters").await.0, AlertState::Firing);
    let letter = next_dead_letter(&host).await;
    assert_eq!(letter.header("x-sy-alert-state"), Some("firing"), "{letter:?}");
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"), "{letter:?}");
    assert_eq!(next_transition(&mut events, "dead-letters").await.0, AlertState::Resolved);
    let letter = next_dead_letter(&host).await;
    assert_eq!(letter.header("x-sy-alert-state"), Some("resolved"), "{letter:?}");
    // Six windows more of evaluations: the alert messages' letters fire nothing.
    tokio::time::sleep(Duration::from_secs(60)).await;
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, HostEvent::Alert(_)), "fired again by its own letters: {event:?}");
    }
    assert_eq!(host.alerts()[0].state, AlertState::Resolved);
    // They are dead letters all the same, counted as such everywhere but where rules read. Read
    // once the host stopped: a letter reaches the dead-letter destination, where the test took
    // it, before the worker that made it counts it.
    host.shutdown().await;
    assert_eq!(host.metrics().read("dead_letters", &[]), Some(1.0));
    let exposition = host.metrics().encode();
    let alerts = [("route", "alerts"), ("reason", "delivery-failed")];
    assert_eq!(sample(&exposition, "switchyard_dead_letters_total", &alerts), Some(2.0), "{exposition}");
    assert_eq!(host.stats().dead_lettered, 3);
}

#[tokio::test(start_paused = true)]
async fn without_a_route_for_its_topic_an_alert_is_an_event_only_and_never_a_dead_letter() {
    let text = config("[[alert]]\nname = \"any\"\nwhen = \"dead_letters > 0\"\n")
        .replace("switchyard.alert.>", "audit.>");
    let (host, _dir) = start(&text).await;
    let mut events = host.subscribe();
    dead_letter(&host, 1.0).await;
    assert_eq!(next_transition(&mut events, "any").await.0, AlertState::Firing);
    // Let the worker threads settle whatever there is, then count: one dead letter, ours.
    host.shutdown().await;
    assert_eq!(host.stats().dead_lettered, 1);
    assert!(host.memory("alerts").unwrap().try_recv().is_err());
}

/// `method path` with the admin token, from a blocking thread: (status, JSON body).
async fn call(addr: SocketAddr, method: &'static str, path: &str, token: bool) -> (u16, Value) {
    let path = path.to_owned();
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = tokio::task::spawn_blocking(move || {
        let headers: &[(&str, &str)] = if token { &[("authorization", &auth)] } else { &[] };
        http(addr, method, &path, headers, b"")
    })
    .await
    .unwrap();
    (status, serde_json::from_str(&body).unwrap_or_else(|_| json!(body)))
}

#[tokio::test(start_paused = true)]
async fn a_firing_alert_is_acknowledged_through_the_api_and_a_reload_keeps_it() {
    let rules = "[[alert]]\nname = \"dl\"\nwhen = \"dead_letters > 0\"\nseverity = \"info\"\n\n[[alert]]\nname = \"queued\"\nwhen = \"destination_queued > 100\"\n";
    let (host, _dir) = start(&config(rules)).await;
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), Some(TOKEN.into()));
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let mut events = host.subscribe();
    dead_letter(&host, 1.0).await;
    assert_eq!(next_transition(&mut events, "dl").await.0, AlertState::Firing);

    assert_eq!(call(addr, "GET", "/v1/alerts", false).await.0, 401);
    assert_eq!(call(addr, "POST", "/v1/alerts/dl/ack", false).await.0, 401);
    let (status, listed) = call(addr, "GET", "/v1/alerts", true).await;
    assert_eq!(status, 200);
    let dl = &listed["alerts"][0];
    assert_eq!(
        (dl["id"].as_str(), dl["state"].as_str(), dl["severity"].as_str()),
        (Some("dl"), Some("firing"), Some("info"))
    );
    assert_eq!((dl["value"].as_f64(), dl["acknowledged"].as_bool()), (Some(1.0), Some(false)));
    assert!(dl["since"].as_u64().is_some(), "{dl}");
    assert_eq!(listed["alerts"][1]["state"], "inactive");
    assert_eq!(listed["messages_refused"], 0);

    let (status, acked) = call(addr, "POST", "/v1/alerts/dl/ack", true).await;
    assert_eq!((status, acked["acknowledged"].as_bool()), (200, Some(true)), "{acked}");
    let (status, refused) = call(addr, "POST", "/v1/alerts/queued/ack", true).await;
    assert_eq!(status, 409);
    assert_eq!(
        refused["error"],
        "alert \"queued\" is inactive, not firing: only a firing alert is acknowledged"
    );
    let (status, unknown) = call(addr, "POST", "/v1/alerts/nope/ack", true).await;
    assert_eq!((status, unknown["error"].as_str()), (404, Some("no alert \"nope\"")));

    // A reload that gives `dl` a summary, changes `queued` and adds a rule keeps `dl` firing and
    // acknowledged.
    let changed = rules.replace("> 100", "> 200").replace("\"info\"", "\"info\"\nsummary = \"letters\"")
        + "\n[[alert]]\nname = \"spool\"\nwhen = \"spool_depth > 0\"\n";
    let config = Config::from_toml("alerts.toml", &config(&changed)).unwrap();
    host.apply_config("alerts.toml", config).await.unwrap();
    let (_, listed) = call(addr, "GET", "/v1/alerts", true).await;
    let states: Vec<_> = listed["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].clone(), a["state"].clone(), a["acknowledged"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (json!("dl"), json!("firing"), json!(true)),
            (json!("queued"), json!("inactive"), json!(false)),
            (json!("spool"), json!("inactive"), json!(false)),
        ]
    );
    assert_eq!(listed["alerts"][1]["when"], "destination_queued > 200");
    host.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_host_takes_up_its_firing_alerts_and_resolves_those_that_cleared_without_firing_again() {
    let rules = "[[alert]]\nname = \"dl\"\nwhen = \"dead_letters > 0\"\n\n\
                 [[alert]]\nname = \"steady\"\nwhen = \"rate(messages_accepted[10s]) >= 0\"\n\n\
                 [[alert]]\nname = \"changed\"\nwhen = \"messages_accepted >= 0\"\n";
    let (first, dir) = start(&config(rules)).await;
    let mut events = first.subscribe();
    first_samples().await;
    dead_letter(&first, 1.0).await;
    let mut fired = std::collections::BTreeSet::new();
    while fired.len() < 3 {
        let (rule, state) = match events.recv().await.expect("the event feed is open") {
            HostEvent::Alert(transition) => (transition.rule, transition.state),
            _ => continue,
        };
        assert_eq!(state, AlertState::Firing, "{rule}");
        fired.insert(rule);
    }
    first.acknowledge_alert("steady").unwrap();
    let steady_since = first.alerts()[1].since;
    first.shutdown().await;

    // Started again on the same state, `changed` changed: `dl` is taken up firing and resolves,
    // its counter being back at zero; `steady`, a rate that cannot be read in its first second,
    // stays firing and acknowledged; `changed` resolves at once, as it was, and starts afresh.
    let changed = rules.replace("messages_accepted >= 0", "messages_accepted >= 1000");
    let second = start_in(dir.path(), &config(&changed)).await;
    let mut events = second.subscribe();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut transitions = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let HostEvent::Alert(transition) = event {
            transitions.push((transition.rule, transition.previous, transition.state));
        }
    }
    let resolved = |rule: &str| (rule.to_owned(), AlertState::Firing, AlertState::Resolved);
    assert_eq!(transitions, [resolved("changed"), resolved("dl")]);
    let states: Vec<_> =
        second.alerts().into_iter().map(|alert| (alert.id, alert.state, alert.acknowledged)).collect();
    assert_eq!(
        states,
        [
            ("dl".to_owned(), AlertState::Resolved, false),
            ("steady".to_owned(), AlertState::Firing, true),
            ("changed".to_owned(), AlertState::Inactive, false),
        ]
    );
    assert_eq!(second.alerts()[1].since, steady_since, "firing since it fired before the restart");
    let mut messages = [next_alert_message(&second).await, next_alert_message(&second).await];
    messages.sort_by_key(|(_, payload)| payload["seq"].as_u64());
    let told: Vec<_> = messages
        .iter()
        .map(|(message, payload)| {
            let (rule, when) = (message.header("x-sy-alert").unwrap(), payload["when"].as_str().unwrap());
            (rule, payload["previous"].as_str(), payload["state"].as_str(), when, payload["seq"].as_u64())
        })
        .collect();
    let (firing, resolved) = (Some("firing"), Some("resolved"));
    assert_eq!(
        told,
        [
            ("changed", firing, resolved, "messages_accepted >= 0", Some(4)),
            ("dl", firing, resolved, "dead_letters > 0", Some(5)),
        ],
        "numbered on from the three transitions before the restart"
    );
    second.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_rebuilds_a_destination_leaves_its_endpoint_down_alert_firing_and_acknowledged() {
    // An endpoint on a closed port, found down after three failed checks a second apart.
    let api = "[[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"127.0.0.1:1\"]\n\
               timeout_ms = 1000\nhealth = { interval_ms = 1000, timeout_ms = 500, fall = 3 }\n";
    let rule = "[[alert]]\nname = \"down\"\nwhen = 'endpoint_down{destination=\"api\"} > 0'\n";
    let text = config(&format!("{api}{rule}"));
    let (host, _dir) = start(&text).await;
    let mut events = host.subscribe();
    assert_eq!(next_transition(&mut events, "down").await.0, AlertState::Firing);
    host.acknowledge_alert("down").unwrap();

    // Any change rebuilds the destination. Taken for up again, its endpoint read up at the next
    // evaluation (resolved, acknowledgement cleared) until three checks found it down again (firing).
    let changed = Config::from_toml("alerts.toml", &text.replace("timeout_ms = 1000", "timeout_ms = 2000"));
    host.apply_config("alerts.toml", changed.unwrap()).await.unwrap();
    // Ten evaluations (the clock is paused: this only moves it).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut transitions = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let HostEvent::Alert(transition) = event {
            transitions.push(transition.state);
        }
    }
    assert_eq!(transitions, [], "the endpoint stayed down across the reload");
    let alerts: Vec<_> = host.alerts().into_iter().map(|alert| (alert.state, alert.acknowledged)).collect();
    assert_eq!(alerts, [(AlertState::Firing, true)]);
    host.shutdown().await;
}

/// Lets the writes waiting on a FIFO go once dropped (a test that failed too): reads the FIFO
/// to its end from a thread of its own.
struct Unblocks(std::path::PathBuf);

impl Drop for Unblocks {
    fn drop(&mut self) {
        let fifo = self.0.clone();
        std::thread::spawn(move || std::fs::read(fifo));
    }
}

/// Send a message no route takes with a receipt (so not through the spool), and wait until the
/// host has counted `count` dead letters.
async fn dead_letter_unspooled(host: &Host, count: f64) {
    host.send_with_receipt(Message::new("nowhere.at.all", "{}")).await.unwrap();
    dead_letters_counted(host, count).await;
}

#[tokio::test(start_paused = true)]
async fn alerting_goes_on_while_an_alert_message_waits_for_a_hung_spool() {
    let rules = "[[alert]]\nname = \"first\"\nwhen = \"dead_letters > 0\"\n\n\
                 [[alert]]\nname = \"second\"\nwhen = \"dead_letters > 1\"\n";
    let text = config(rules).replacen("[host]\n", "[host]\ndurability = \"spool\"\n", 1);
    let (host, dir) = start(&text).await;
    let mut events = host.subscribe();
    // The spool's next segment hangs when it is opened: once the first is full, the spool's next
    // commit never ends, as on a hung disk.
    let next_segment = dir.path().join("state/spool/0000000000000002.seg");
    mkfifo(&next_segment);
    let unblocks = Unblocks(next_segment);
    // Sixteen puts leave the first segment far from full (removes are a few bytes), the
    // seventeenth fills it: the commit after it hangs.
    let payload = "x".repeat(1_000_000);
    for _ in 0..17 {
        host.send(Message::new("orders.filler", payload.clone())).await.unwrap();
    }
    assert!(host.spool().unwrap().disk_bytes >= 16 << 20, "the first segment is full");

    dead_letter_unspooled(&host, 1.0).await;
    assert_eq!(next_transition(&mut events, "first").await.0, AlertState::Firing);
    // `first`'s message waits for the spool, and evaluation goes on without it.
    dead_letter_unspooled(&host, 2.0).await;
    assert_eq!(next_transition(&mut events, "second").await.0, AlertState::Firing);
    let states: Vec<_> = host.alerts().into_iter().map(|alert| alert.state).collect();
    assert_eq!(states, [AlertState::Firing, AlertState::Firing]);
    assert!(host.memory("alerts").unwrap().is_empty(), "no alert message got past the spool");
    drop(unblocks);
    host.shutdown().await;
}

/// A FIFO the host writes to: a thread of the test opens it too, so [`began`](Self::began) tells
/// when the host's write did, but reads nothing until [`release`](Self::release), so a write of
/// more than a pipe holds stalls there, as on a hung disk. Dropped (a test that failed), or after
/// twice [`PATIENCE`] as a safety net, the thread reads the rest and the write goes on.
struct StalledWrite {
    began: tokio::sync::oneshot::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
    /// What was written, and whether [`release`](Self::release) let it go (not the safety net).
    reader: std::thread::JoinHandle<(String, bool)>,
}

impl StalledWrite {
    fn at(path: std::path::PathBuf) -> StalledWrite {
        mkfifo(&path);
        let (opened, began) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            // Opening for reading waits for a writer.
            let mut fifo = std::fs::File::open(&path).expect("the FIFO opens for reading");
            let _ = opened.send(());
            let released = released.recv_timeout(PATIENCE * 2).is_ok();
            let mut written = String::new();
            std::io::Read::read_to_string(&mut fifo, &mut written).expect("what was written reads");
            (written, released)
        });
        StalledWrite { began, release, reader }
    }

    /// Wait until the host opened the FIFO to write.
    async fn began(&mut self) {
        within(&mut self.began).await.expect("the reader thread tells");
    }

    /// Let the write go on; what it wrote, once it closed the FIFO, and whether it was this that
    /// let it go.
    async fn release(self) -> (String, bool) {
        let _ = self.release.send(());
        let reader = self.reader;
        tokio::task::spawn_blocking(move || reader.join().expect("the reader thread reads")).await.unwrap()
    }
}

/// A slow or hung disk holds the writes of `alerts.json`, never the alerts: here the file written
/// before it is renamed into place is a FIFO no one reads yet, and while the write of `dl`'s firing
/// stalls there, `dl` is acknowledged and the alerts listed through the admin API and `second`
/// fires; once the write goes on, shutdown ends with the newest state in the file. On the real
/// clock: tokio's paused clock stands still while a blocking task runs (the stalled write, once
/// off the runtime's threads), and the evaluations with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerting_and_acknowledgements_go_on_while_alerts_json_waits_for_a_hung_disk() {
    // A summary more than a pipe holds (16 pages: 64 KiB, 1 MiB with 64 KiB pages), so that the
    // write stalls however far it got.
    let summary = "x".repeat(2 << 20);
    let rules = format!(
        "[[alert]]\nname = \"dl\"\nwhen = \"dead_letters > 0\"\nsummary = \"{summary}\"\n\n\
         [[alert]]\nname = \"second\"\nwhen = \"dead_letters > 1\"\n"
    );
    // No route for the alert messages: they would be larger than `max_message_bytes` (1 MiB).
    let (host, dir) = start(&config(&rules).replace("switchyard.alert.>", "audit.>")).await;
    let admin = AdminServer::bind(host.clone(), "127.0.0.1:0".parse().unwrap(), Some(TOKEN.into()));
    let admin = admin.await.unwrap();
    let addr = admin.local_addr();
    tokio::spawn(admin.serve(std::future::pending()));
    let mut events = host.subscribe();
    let state = dir.path().join("state");
    let mut stalled = StalledWrite::at(state.join("alerts.json.tmp"));

    dead_letter(&host, 1.0).await;
    let fired = tokio::time::timeout(PATIENCE, next_transition(&mut events, "dl")).await;
    assert_eq!(fired.expect("dl's firing is told while its write stalls").0, AlertState::Firing);
    stalled.began().await;
    let (status, acked) = call(addr, "POST", "/v1/alerts/dl/ack", true).await;
    assert_eq!((status, acked["acknowledged"].as_bool()), (200, Some(true)), "{acked}");
    dead_letter(&host, 2.0).await;
    assert_eq!(within(next_transition(&mut events, "second")).await.0, AlertState::Firing);
    let (status, listed) = call(addr, "GET", "/v1/alerts", true).await;
    let listed: Vec<_> = listed["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["state"].clone(), a["acknowledged"].clone()))
        .collect();
    assert_eq!(
        (status, listed),
        (200, vec![(json!("firing"), json!(true)), (json!("firing"), json!(false))])
    );

    let (written, released) = stalled.release().await;
    assert!(released, "the write stalled until released, the alerts going on meanwhile");
    let written: Value = serde_json::from_str(&written).unwrap();
    assert_eq!((&written["seq"], &written["firing"][0]["acknowledged"]), (&json!(1), &json!(false)));
    within(host.shutdown()).await;
    let kept = state.join("alerts.json");
    // A FIFO still (renamed into place by the stalled write) when the newest state was not written.
    assert!(kept.metadata().unwrap().is_file(), "the newest state was written after the stalled one");
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(kept).unwrap()).unwrap();
    let firing: Vec<_> = kept["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| (alert["config"]["name"].clone(), alert["acknowledged"].clone()))
        .collect();
    assert_eq!(
        (&kept["seq"], firing),
        (&json!(2), vec![(json!("dl"), json!(true)), (json!("second"), json!(false))])
    );
}

/// A shutdown does not wait for good on a write of `alerts.json` that a hung disk holds: past its
/// grace period it stops without it (the write here a FIFO no one reads until the host stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_stops_without_the_alerts_json_write_a_hung_disk_holds_past_its_grace_period() {
    // More than a pipe holds, so that the write stalls however far it got.
    let summary = "x".repeat(2 << 20);
    let rules = format!("[[alert]]\nname = \"dl\"\nwhen = \"dead_letters > 0\"\nsummary = \"{summary}\"\n");
    let config = config(&rules).replace("switchyard.alert.>", "audit.>").replacen(
        "[host]\n",
        "[host]\nshutdown_grace_ms = 200\n",
        1,
    );
    let (host, dir) = start(&config).await;
    let mut events = host.subscribe();
    let stalled_at = dir.path().join("state").join("alerts.json.tmp");
    let mut stalled = StalledWrite::at(stalled_at);
    dead_letter(&host, 1.0).await;
    assert_eq!(within(next_transition(&mut events, "dl")).await.0, AlertState::Firing);
    stalled.began().await;
    within(host.shutdown()).await;
    let (_, released) = stalled.release().await;
    assert!(released, "the write was still stalled when the host had stopped");
}

/// A state directory removed while the host runs is made again by the next write of alerts.json
/// only with its lock, held by the host: before, it was made again without it, and a second host
/// could then take it (each rewriting the other's files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_json_written_after_the_state_directory_was_removed_keeps_it_locked_for_the_host() {
    let (host, dir) = start(&config("[[alert]]\nname = \"dl\"\nwhen = \"dead_letters > 0\"\n")).await;
    let mut events = host.subscribe();
    let state = dir.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    // Its letter goes to the `dead` memory destination: nothing but alerts.json writes there.
    dead_letter(&host, 1.0).await;
    assert_eq!(within(next_transition(&mut events, "dl")).await.0, AlertState::Firing);
    let kept = state.join("alerts.json");
    tokio::task::spawn_blocking(move || eventually(|| kept.metadata().map(drop))).await.unwrap();
    let second = Host::builder().plugin_dir(dir.path()).state_dir(&state).build().await;
    let refused = second.map(drop).expect_err("the state directory made again is the first host's");
    assert!(refused.to_string().contains("in use by another host"), "{refused}");
    within(host.shutdown()).await;
}
