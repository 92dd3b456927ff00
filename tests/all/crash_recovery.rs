//! The durable spool of the `switchyard` binary. The done-when test: SIGKILLed under load while its
//! HTTP sink is slow, restarted on the same state directory, the host delivers every message it
//! answered 202 (or dead-letters it); duplicates are counted and bounded by what was in flight at
//! the kill. And the operator's view: `/v1/spool`, the spool metrics, `switchyard spool inspect`
//! and `drain`.

use crate::cli::Running;
use crate::exposition::sample;
use crate::support::{eventually, http, plugin_dir, post, try_post};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the sink takes to answer each message.
const SINK_DELAY: Duration = Duration::from_millis(20);
/// Deliveries in flight to the sink at once.
const IN_FLIGHT: usize = 8;
/// Settled messages whose remove the spool had not yet written are delivered again too; the spool
/// writes removes with every batch (one fsync, a few milliseconds), so only deliveries answered this
/// close to the kill may return (generous for a loaded machine).
const REMOVE_LAG: Duration = Duration::from_millis(250);

/// One message as the sink saw it: its `x-sy-id` and when it was answered.
#[derive(Debug, Clone)]
struct Arrival {
    id: String,
    answered: Option<Instant>,
}

/// A slow HTTP endpoint recording every arrival, on a runtime of its own.
struct Sink {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Sink {
    fn start() -> Sink {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let recorded = arrivals.clone();
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let recorded = recorded.clone();
            async move {
                let id = headers.get("x-sy-id").map(|id| id.to_str().unwrap().to_owned()).unwrap_or_default();
                let index = {
                    let mut arrivals = recorded.lock().unwrap();
                    arrivals.push(Arrival { id, answered: None });
                    arrivals.len() - 1
                };
                // The sink's slowness, not a synchronisation.
                tokio::time::sleep(SINK_DELAY).await;
                recorded.lock().unwrap()[index].answered = Some(Instant::now());
                "taken"
            }
        });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Sink { addr, arrivals, _runtime: runtime }
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }
}

fn config(sink: SocketAddr) -> String {
    format!(
        r#"
[host]
plugin_dir = "."
state_dir = "state"
durability = "spool"
watch = false
[ingress.http]
listen = "127.0.0.1:0"
[[destination]]
name = "sink"
transport = "http"
endpoints = ["{sink}"]
queue = {{ capacity = 100000, timeout_ms = 600000, max_in_flight = {IN_FLIGHT} }}
[[route]]
name = "all"
to = "sink"
"#
    )
}

/// Clients posting to `ingress` until it stops answering; the ids it answered 202.
fn load(ingress: SocketAddr, clients: usize) -> (Arc<Mutex<Vec<String>>>, Vec<std::thread::JoinHandle<()>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let threads = (0..clients)
        .map(|client| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for n in 0.. {
                    let body = format!(r#"{{"client":{client},"n":{n}}}"#);
                    match try_post(ingress, "/v1/messages/orders", body.as_bytes()) {
                        Some((202, body)) => {
                            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
                            acked.lock().unwrap().push(answer["id"].as_str().unwrap().to_owned());
                        }
                        Some((status, body)) => panic!("a healthy host refused with {status}: {body}"),
                        None => return,
                    }
                }
            })
        })
        .collect();
    (acked, threads)
}

/// The `x-sy-id`s of the dead letters among `lines` (the `log` destination prints them).
fn dead_lettered(lines: &[String]) -> HashSet<String> {
    let letters = lines.iter().filter(|line| line.starts_with('{') && line.contains("x-sy-dead-letter"));
    letters
        .map(|line| {
            let letter: serde_json::Value = serde_json::from_str(line).unwrap();
            let headers = letter["headers"].as_array().unwrap();
            let id = headers.iter().find(|header| header[0] == "x-sy-id").unwrap();
            id[1].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn a_sigkilled_spooling_host_delivers_every_acknowledged_message_once_restarted() {
    let sink = Sink::start();
    let dir = plugin_dir(&[]);
    std::fs::write(dir.path().join("switchyard.toml"), config(sink.addr)).unwrap();
    let first = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = first.address("HTTP ingress listening on http://");

    let (acked, clients) = load(ingress, 4);
    // Under load, with a backlog behind the slow sink: the kill finds messages at every stage.
    eventually(|| {
        let (acked, delivered) = (acked.lock().unwrap().len(), sink.arrivals().len());
        match acked >= 600 && delivered >= 50 && acked > delivered + 200 {
            true => Ok(()),
            false => Err((acked, delivered)),
        }
    });
    let killed_at = Instant::now();
    let mut lines = first.kill();
    clients.into_iter().for_each(|client| client.join().unwrap());
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let before_kill = sink.arrivals();
    let settled: HashSet<&str> = before_kill
        .iter()
        .filter(|arrival| arrival.answered.is_some())
        .map(|arrival| arrival.id.as_str())
        .collect();
    let unsettled = acked.iter().filter(|id| !settled.contains(id.as_str())).count();
    let report = spool_command("inspect", &dir.path().join("state")).1;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let depth = report["depth"].as_u64().unwrap() as usize;
    assert!(depth >= unsettled, "{unsettled} acknowledged messages were unsettled, the spool holds {depth}");

    let second = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let mut seen = Vec::new();
    let missing = |seen: &[String]| {
        let dead = dead_lettered(seen);
        let taken: HashSet<String> = sink.arrivals().into_iter().map(|arrival| arrival.id).collect();
        acked.iter().filter(|id| !taken.contains(*id) && !dead.contains(*id)).count()
    };
    eventually(|| {
        seen.extend(second.lines_so_far());
        match missing(&seen) {
            0 => Ok(()),
            missing => Err(format!("{missing} of {} acknowledged messages not yet delivered", acked.len())),
        }
    });
    seen.extend(second.stop_and_collect());
    lines.extend(seen);
    assert_eq!(missing(&lines), 0);

    let arrivals = sink.arrivals();
    let mut times: HashMap<&str, usize> = HashMap::new();
    arrivals.iter().for_each(|arrival| *times.entry(&arrival.id).or_default() += 1);
    let duplicates: usize = times.values().map(|count| count - 1).sum();
    let in_flight_at_kill = before_kill
        .iter()
        .filter(|arrival| arrival.answered.is_none_or(|answered| answered + REMOVE_LAG > killed_at))
        .count();
    let unacked = arrivals.iter().filter(|arrival| !acked.contains(&arrival.id)).count();
    eprintln!(
        "crash recovery: {} acknowledged, {} delivered before the kill, {} arrivals in all, {} duplicates \
         (bound: {in_flight_at_kill} in flight at the kill), {} dead letters, {unacked} arrivals never acknowledged \
         (spooled when the kill came)",
        acked.len(),
        before_kill.len(),
        arrivals.len(),
        duplicates,
        dead_lettered(&lines).len(),
    );
    assert!(duplicates <= in_flight_at_kill, "{duplicates} duplicates; {in_flight_at_kill} were in flight");
    for (id, count) in &times {
        if *count > 1 {
            let first = before_kill.iter().find(|arrival| arrival.id == *id);
            let first = first.unwrap_or_else(|| panic!("{id} came twice, never before the kill"));
            assert!(
                first.answered.is_none_or(|answered| answered + REMOVE_LAG > killed_at),
                "{id} was settled long before the kill yet delivered again"
            );
        }
    }
}

/// Run `switchyard spool COMMAND --state-dir STATE`: whether it succeeded, stdout, stderr.
pub(crate) fn spool_command(command: &str, state: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["spool", command, "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn the_spool_is_shown_while_the_host_runs_and_inspected_and_drained_once_it_is_killed() {
    let dir = plugin_dir(&[]);
    // Nothing listens at the sink's address: the messages wait in its queue, held in the spool.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(dir.path().join("switchyard.toml"), config(nowhere)).unwrap();
    let host = Running::start(&["run", "--config", "switchyard.toml", "--admin", "127.0.0.1:0"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let admin = host.address("admin API listening on http://");
    let mut ids = HashSet::new();
    for n in 0..3 {
        let (status, body) =
            post(ingress, "/v1/messages/orders.eu", &[("x-tenant", "acme")], format!("{n}").as_bytes());
        assert_eq!(status, 202, "{body}");
        ids.insert(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned(),
        );
    }

    let (status, body) = http(admin, "GET", "/v1/spool", &[], b"");
    let spool: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &spool["durability"], &spool["depth"]), (200, &"spool".into(), &3.into()), "{body}");
    assert!(spool["oldest_age_ms"].is_u64() && spool["bytes"].as_u64() > Some(0), "{body}");
    let metrics = http(admin, "GET", "/metrics", &[], b"").1;
    assert_eq!(sample(&metrics, "switchyard_spool_writes_total", &[]), Some(3.0));
    assert!(sample(&metrics, "switchyard_spool_commit_seconds_count", &[]) >= Some(1.0), "{metrics}");
    let state = dir.path().join("state");
    let (drained, _, refusal) = spool_command("drain", &state);
    assert!(!drained && refusal.contains("in use by another process"), "{refusal}");
    let (inspected, report, _) = spool_command("inspect", &state);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(inspected && report["in_use"] == true && report["depth"] == 3, "{report}");

    drop(host.kill());
    let (inspected, report, problem) = spool_command("inspect", &state);
    assert!(inspected, "{problem}");
    // Into a reader that stopped reading (`| head`): it panicked on the broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let into_closed = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["spool", "inspect", "--state-dir", state.to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&into_closed.stderr);
    assert!(into_closed.status.success() && said.is_empty(), "{:?}: {said}", into_closed.status);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!((&report["depth"], &report["in_use"]), (&3.into(), &false.into()), "{report}");
    assert_eq!(report["topics"], serde_json::json!({ "orders.eu": 3 }), "{report}");
    // A host without a spool started on it says that it leaves them there.
    let memory = config(nowhere).replace("durability = \"spool\"", "durability = \"memory\"");
    std::fs::write(dir.path().join("memory.toml"), memory).unwrap();
    let mut host = Running::start(&["run", "--config", "memory.toml"], dir.path());
    let told = host.line_where(|line| line.contains("the spool holds messages an earlier run accepted"));
    assert!(told.contains("messages=3") && told.contains("switchyard spool drain"), "{told}");
    // Started (its signal handler set) once it listens; a TERM before would kill it unannounced.
    host.address("HTTP ingress listening on http://");
    host.stop();

    let (drained, lines, summary) = spool_command("drain", &state);
    assert!(drained && summary.contains("drained 3 messages"), "{summary}");
    let lines: Vec<serde_json::Value> =
        lines.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let drained_ids: HashSet<String> =
        lines.iter().map(|line| line["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(drained_ids, ids, "each message with its x-sy-id");
    let payloads: HashSet<&str> = lines.iter().map(|line| line["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, HashSet::from(["0", "1", "2"]));
    assert!(
        lines.iter().all(|line| line["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["x-tenant", "acme"])))
    );
    let report: serde_json::Value = serde_json::from_str(&spool_command("inspect", &state).1).unwrap();
    assert_eq!(report["depth"], 0, "drained messages are removed: {report}");
    let (drained, lines, summary) = spool_command("drain", &state);
    assert!(drained && lines.is_empty() && summary.contains("drained 0 messages"), "{summary}");
    let (inspected, _, problem) = spool_command("inspect", &dir.path().join("nowhere"));
    assert!(!inspected && problem.contains("no spool here"), "{problem}");
}
