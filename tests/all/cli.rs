//! The `switchyard` binary driven as a child process on free 127.0.0.1 ports.

use crate::exposition::sample;
use crate::support::{HungFile, PATIENCE, RedisServer, eventually, plugin_dir, until_ended};
use crate::support::{http, http_raw, post};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use switchyard_plugin_artifacts as artifacts;
use tokio_tungstenite::tungstenite;
use tungstenite::client::IntoClientRequest;

pub const BINARY: &str = env!("CARGO_BIN_EXE_switchyard");

/// A running `switchyard` child whose stdout and stderr lines arrive on a
/// channel, each tagged with its stream.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<(Stream, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Send each line of `from` on `to`, tagged `stream`, until either ends.
fn read_lines(from: impl std::io::Read + Send + 'static, stream: Stream, to: mpsc::Sender<(Stream, String)>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send((stream, line)).is_err() {
                return;
            }
        }
    });
}

impl Running {
    pub(crate) fn start(args: &[&str], cwd: &std::path::Path) -> Running {
        Running::start_with_env(args, cwd, &[])
    }

    fn start_with_env(args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]) -> Running {
        let mut command = Command::new(BINARY);
        command.args(args).envs(env.iter().copied()).current_dir(cwd);
        Running::spawn(command)
    }

    /// Start `command` (switchyard, or a shell that execs it), reading its output.
    pub(crate) fn spawn(mut command: Command) -> Running {
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start switchyard");
        let (send, lines) = mpsc::channel();
        read_lines(child.stdout.take().unwrap(), Stream::Stdout, send.clone());
        read_lines(child.stderr.take().unwrap(), Stream::Stderr, send);
        Running { child, lines }
    }

    /// The first line satisfying `want`, on either stream. Status lines
    /// (`switchyard: ...`) must come on stderr, delivered messages on stdout.
    pub(crate) fn line_where(&self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let (stream, line) =
                self.lines.recv_timeout(PATIENCE).expect("switchyard went quiet (safety net)");
            match stream {
                Stream::Stdout => assert!(line.starts_with('{'), "not data on stdout: {line}"),
                Stream::Stderr => assert!(!line.starts_with('{'), "data on stderr: {line}"),
            }
            if want(&line) {
                return line;
            }
        }
    }

    /// The address of the first stdout line containing `what` (`... http://ADDR`).
    pub(crate) fn address(&self, what: &str) -> SocketAddr {
        let line = self.line_where(|line| line.contains(what));
        line.rsplit("http://").next().unwrap().parse().unwrap_or_else(|err| panic!("{err}: {line}"))
    }

    /// The host's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM and wait for the host to stop; its last status line.
    pub(crate) fn stop(&mut self) -> String {
        self.terminate();
        self.stopped()
    }

    /// Send SIGTERM.
    pub(crate) fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Wait for the host to say it stopped and exit successfully; that last status line.
    pub(crate) fn stopped(&mut self) -> String {
        let stopped = self.line_where(|line| line.starts_with("switchyard: stopped"));
        assert!(self.child.wait().unwrap().success());
        stopped
    }
}

impl Running {
    /// The lines written since the last look, without waiting.
    pub(crate) fn lines_so_far(&self) -> Vec<String> {
        self.lines.try_iter().map(|(_, line)| line).collect()
    }

    /// SIGKILL the host, wait for it, and return the lines it wrote that were not read yet.
    pub(crate) fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines.iter().map(|(_, line)| line).collect()
    }

    /// SIGTERM the host, check that it stopped cleanly, and return the lines not read yet.
    pub(crate) fn stop_and_collect(mut self) -> Vec<String> {
        self.terminate();
        assert!(self.child.wait().unwrap().success());
        self.lines.iter().map(|(_, line)| line).collect()
    }
}

impl Drop for Running {
    /// A failed test must not leave its host running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `x-sy-id` header of a message the `log` destination printed.
fn unique_id_of(line: &serde_json::Value) -> String {
    let headers = line["headers"].as_array().unwrap_or_else(|| panic!("no headers: {line}"));
    let id =
        headers.iter().find(|header| header[0] == "x-sy-id").unwrap_or_else(|| panic!("no x-sy-id: {line}"));
    id[1].as_str().unwrap().to_owned()
}

#[test]
fn default_host_runs_dropped_in_plugins_and_answers_with_the_right_status() {
    let dir =
        plugin_dir(&[("a-filter", artifacts::HEADER_FILTER), ("b-redact", artifacts::REDACT_TRANSFORM)]);
    let mut host = Running::start(&["run", "--plugins", ".", "--listen", "127.0.0.1:0"], dir.path());
    host.line_where(|line| line.contains("plugin a-filter loaded: filter"));
    let listening = host.line_where(|line| line.contains("HTTP ingress listening on http://"));
    let addr: SocketAddr = listening.rsplit("http://").next().unwrap().parse().unwrap();

    let (status, body) = post(addr, "/v1/messages/orders.eu", &[("x-tenant", "acme")], br#"{"total":5}"#);
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let delivered = host.line_where(|line| line.starts_with('{') && line.contains(&id));
    let delivered: serde_json::Value = serde_json::from_str(&delivered).unwrap();
    assert_eq!(unique_id_of(&delivered), id, "the id the ingress answered is the message's x-sy-id");
    assert_eq!(delivered["destination"], "log");
    assert_eq!(delivered["topic"], "orders.eu");
    let headers = delivered["headers"].as_array().unwrap();
    assert!(headers.contains(&serde_json::json!(["x-tenant", "acme"])), "{headers:?}");
    assert!(headers.contains(&serde_json::json!(["x-transformed-by", "redact-transform"])), "{headers:?}");

    assert_eq!(post(addr, "/v1/messages/orders..eu", &[], b"{}").0, 400);
    let (status, body) = post(addr, "/v1/messages/big", &[], &vec![b'x'; (1 << 20) + 1]);
    assert_eq!(status, 413);
    let answer: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(answer["error"].as_str().is_some_and(|error| error.contains("length limit")), "{answer}");
    let (status, body) = post(addr, "/v1/messages/not.json", &[], b"plain text");
    assert_eq!(status, 202, "accepted, then dead-lettered by the transform: {body}");
    let letter = host.line_where(|line| line.contains("x-sy-dead-letter-reason"));
    assert!(letter.contains("payload is not JSON"), "{letter}");

    let stopped = host.stop();
    assert!(stopped.contains("\"accepted\":2") && stopped.contains("\"delivered\":1"), "{stopped}");
    assert!(stopped.contains("\"dead_lettered\":1"), "{stopped}");
}

/// Run the binary with `args`: whether it succeeded, and its stdout (or, failed, its stderr).
pub fn switchyard(args: &[&str]) -> (bool, String) {
    let output = Command::new(BINARY).args(args).output().expect("run switchyard");
    let text = String::from_utf8_lossy(if output.status.success() { &output.stdout } else { &output.stderr });
    (output.status.success(), text.into_owned())
}

#[test]
fn check_names_the_kind_or_the_specific_problem() {
    let (ok, out) = switchyard(&["check", artifacts::HEADER_FILTER]);
    assert!(ok && out.contains("is a filter plugin, version "), "{out}");
    let (ok, out) = switchyard(&["check", artifacts::ECHO_TRANSPORT]);
    assert!(ok && out.contains("is a transport plugin"), "{out}");
    let (ok, out) = switchyard(&["check", artifacts::FAULTY_WRONG_WORLD]);
    assert!(!ok && out.contains("does not match world switchyard:plugin/filter@0.1.0"), "{out}");
    assert!(out.contains("rebuild it with this host's"), "says what to do about it: {out}");
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm garbage").unwrap();
    let (ok, out) = switchyard(&["check", corrupt.to_str().unwrap()]);
    assert!(!ok && out.contains("plugin \"corrupt\": not a valid WebAssembly component"), "{out}");
    // Bytes of no kind at all: said so, with no claim that it compiled first.
    std::fs::write(&corrupt, [0xff, 0xfe, 0x00, 0x80].repeat(300)).unwrap();
    let (ok, out) = switchyard(&["check", corrupt.to_str().unwrap()]);
    assert!(
        !ok && out.contains("not a WebAssembly binary (it does not begin with \\0asm) nor WAT text"),
        "{out}"
    );
    assert!(!out.contains("compiled corrupt"), "{out}");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[[route]]\nname = \"r\"\nto = \"nowhere\"\n").unwrap();
    let (ok, out) = switchyard(&["check", config.to_str().unwrap()]);
    assert!(
        !ok && out.contains("bad.toml: route \"r\".to = \"nowhere\": unknown destination (known: log)"),
        "{out}"
    );
}

#[test]
fn check_reads_a_config_of_any_name_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[[destination]]\nname = \"d\"\ntransport = \"memory\"\n[[route]]\nname = \"r\"\nto = \"d\"\n";
    for name in ["switchyard.conf", "switchyard"] {
        let file = dir.path().join(name);
        std::fs::write(&file, config).unwrap();
        let (ok, out) = switchyard(&["check", file.to_str().unwrap()]);
        assert!(ok && out.starts_with("ok: 1 routes, 1 destinations, 0 plugin settings\n"), "{name}: {out}");
    }
    // A file that is no plugin is read as a config, and its errors say where.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "[[route]]\nname = \"r\"\nto = \"nowhere\"\n").unwrap();
    let (ok, out) = switchyard(&["check", file.to_str().unwrap()]);
    assert!(!ok && out.contains("notes.txt: route \"r\".to = \"nowhere\": unknown destination"), "{out}");
}

#[test]
fn check_refuses_two_file_destinations_writing_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("files.toml");
    let file = |name: &str, path: &str| {
        format!("[[destination]]\nname = \"{name}\"\ntransport = \"file\"\noptions = {{ path = {path:?} }}\n")
    };
    std::fs::write(&config, file("a", "out.jsonl") + &file("b", "./out.jsonl")).unwrap();
    let (ok, out) = switchyard(&["check", config.to_str().unwrap()]);
    let expected = "files.toml: destination \"b\".options = { path = \"./out.jsonl\" }: \
                    destination \"a\" uses the same file (path = \"out.jsonl\")";
    assert!(!ok && out.contains(expected), "{out}");
}

#[test]
fn bench_instructions_names_the_cases_it_ran_the_stamp_ones_only_with_the_stamp_plugin() {
    // scripts/instructions reads callgrind's Nth dump as the Nth case named here.
    let (filter, transform) = (artifacts::HEADER_FILTER, artifacts::REDACT_TRANSFORM);
    let args = ["bench", "--filter", filter, "--transform", transform, "--instructions", "1"];
    let without_stamp =
        "filter_call, filter_batch_64, transform_call, routed_message, routed_native, http_message";
    let (ok, out) = switchyard(&args);
    assert!(ok && out.lines().last() == Some(&format!("{without_stamp} x 1")), "{out}");
    let (ok, out) = switchyard(&[&args[..], &["--stamp", artifacts::STAMP_TRANSFORM]].concat());
    let with_stamp = format!("{without_stamp}, routed_stamp, routed_one_at_a_time x 1");
    assert!(ok && out.lines().last() == Some(&with_stamp), "{out}");
}

#[test]
fn switchyard_profile_perfmap_maps_plugin_code_for_perf_and_a_bad_value_is_refused() {
    let child = Command::new(BINARY)
        .args(["check", artifacts::HEADER_FILTER])
        .env("SWITCHYARD_PROFILE", "perfmap")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run switchyard");
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
    let output = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    let _ = std::fs::remove_file(&map);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    // perf's format: start address, size (both hex), name; the stripped plugin's functions by index.
    let hex = |field: &str| u64::from_str_radix(field.trim_start_matches("0x"), 16);
    let plugin_functions = text.lines().filter(|line| {
        let fields: Vec<&str> = line.splitn(3, ' ').collect();
        fields.len() == 3
            && hex(fields[0]).is_ok()
            && hex(fields[1]).is_ok_and(|size| size > 0)
            && fields[2].starts_with("wasm[0]::function[")
    });
    assert!(plugin_functions.count() > 10, "{map:?} names too few plugin functions:\n{text}");

    let output = Command::new(BINARY)
        .args(["check", artifacts::HEADER_FILTER])
        .env("SWITCHYARD_PROFILE", "vtune-please")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains(r#"SWITCHYARD_PROFILE="vtune-please": expected "perfmap" or "jitdump""#),
        "{stderr}"
    );
}

/// What `check` says of a config with no ingress, and with no admin API.
const NO_INGRESS: &str = "warning: no [ingress.http], [ingress.grpc] or [[ingress.nats]]: nothing can send to this host, and adding one takes a restart";
const NO_ADMIN: &str = "warning: no [admin]: nothing can read this host's health, metrics or plugins, nor reload it over HTTP, and adding it takes a restart";

/// The warnings `switchyard check switchyard.toml` prints in `dir`, which it must pass.
fn check_warnings(dir: &std::path::Path) -> Vec<String> {
    let output = Command::new(BINARY).args(["check", "switchyard.toml"]).current_dir(dir).output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    out.lines().filter(|line| line.starts_with("warning: ")).map(str::to_owned).collect()
}

#[test]
fn check_and_run_warn_about_route_stages_and_plugin_transports_that_cannot_run() {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER), ("echo", artifacts::ECHO_TRANSPORT)]);
    let config = dir.path().join("switchyard.toml");
    // An empty token is none: `run` refuses it as it refuses none.
    let route = "[host]\nplugin_dir = \".\"\n[admin]\nlisten = \"0.0.0.0:7071\"\ntoken = \"\"\n\
                 [[destination]]\nname = \"d\"\ntransport = \"plugin:f\"\nendpoints = [\"127.0.0.1:1\"]\n\
                 [[destination]]\nname = \"e\"\ntransport = \"plugin:echo\"\nendpoints = [\"127.0.0.1:1\"]\n\
                 [[destination]]\nname = \"m\"\ntransport = \"memory\"\nqueue = { capacity = 8 }\n\
                 [[route]]\nname = \"r\"\nstages = [\"transform:f\", \"filter:vip\"]\nto = \"log\"\n";
    std::fs::write(&config, route).unwrap();
    // A sidecar `run` refuses: `check` reads it as `run` does.
    std::fs::write(dir.path().join("echo.toml"), "limits = { memory_mb = 1024 }\n").unwrap();
    let warnings = check_warnings(dir.path());
    assert_eq!(
        warnings,
        [
            NO_INGRESS,
            "warning: admin.listen = 0.0.0.0:7071: not loopback and no [admin] token: `run` refuses to start unless SWITCHYARD_ADMIN_TOKEN is set",
            "warning: destination \"m\": transport \"memory\" has no reader under `switchyard run`: once it holds its queue.capacity (8) messages, deliveries to it wait, and with them the pipeline workers",
            "warning: route \"r\": stage \"transform:f\": ./f.wasm is a filter plugin",
            "warning: route \"r\": stage \"filter:vip\": no plugin file ./vip.wasm",
            "warning: destination \"d\": transport \"plugin:f\": ./f.wasm is a filter plugin",
            "warning: destination \"e\": transport \"plugin:echo\": plugin \"echo\": invalid settings: ./echo.toml: limits.memory_mb = 1024 widens what the main config grants (64); a sidecar may only narrow it (or set host.sidecar_grants = true)",
        ]
    );
    let mut host = Running::start(
        &["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        dir.path(),
    );
    // Other warnings may come first on a busy machine (an endpoint probe failing, say): find this one.
    let warning = host.line_where(|line| line.starts_with("switchyard: warning: stage transform:f"));
    assert_eq!(
        warning,
        "switchyard: warning: stage transform:f is unavailable: plugin \"f\" is a filter, not a transform"
    );
    let memory = host.line_where(|line| line.starts_with("switchyard: warning: destination \"m\""));
    assert!(memory.contains("has no reader under `switchyard run`"), "{memory}");
    // Started (its signal handler set) once it listens; a TERM before would kill it unannounced.
    host.address("admin API listening");
    host.stop();
}

#[test]
fn check_tries_a_configs_plugins_without_their_grants_and_warns_of_a_granted_directory_that_is_missing() {
    // Checking a config is vetting it: its plugins' start-up code and trial run, but with nothing
    // the config grants (no directory, environment or network), and no compile cache.
    let dir = plugin_dir(&[("probe", artifacts::FS_PROBE), ("lost", artifacts::FS_PROBE)]);
    let granted = tempfile::tempdir().unwrap();
    let missing = granted.path().join("missing");
    let plugin = |name: &str, out: &std::path::Path| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nconfig = {{ create = \"/out/made\" }}\n\
             dirs = {{ \"/out\" = \"{}:rw\" }}\nenv = [\"HOME\"]\n",
            out.display()
        )
    };
    let config = [
        "[host]\nplugin_dir = \".\"\ncache_dir = \"\"\n[ingress.http]\nlisten = \"127.0.0.1:7070\"\n\
         [admin]\nlisten = \"127.0.0.1:7071\"\n"
            .to_owned(),
        plugin("probe", granted.path()),
        plugin("lost", &missing),
        "[[route]]\nname = \"r\"\nstages = [\"filter:probe\", \"filter:lost\"]\nto = \"log\"\n".to_owned(),
    ];
    std::fs::write(dir.path().join("switchyard.toml"), config.concat()).unwrap();
    let warnings = check_warnings(dir.path());
    assert!(!granted.path().join("made").exists(), "the trial wrote in the directory granted");
    assert_eq!(
        warnings,
        [format!(
            "warning: route \"r\": stage \"filter:lost\": plugin \"lost\": dirs.\"/out\" = \"{}\": No such file or directory (os error 2)",
            missing.display()
        )]
    );
}

#[test]
fn check_and_run_warn_of_a_config_with_no_ingress_or_admin_api() {
    let dir = plugin_dir(&[]);
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, "[host]\nplugin_dir = \".\"\n").unwrap();
    assert_eq!(check_warnings(dir.path()), [NO_INGRESS, NO_ADMIN]);
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    for warning in [NO_INGRESS, NO_ADMIN] {
        let line = host.line_where(|line| line.starts_with("switchyard: warning: no ["));
        assert_eq!(line, format!("switchyard: {warning}"));
    }
    host.stop();
    // A NATS subscription is an ingress too.
    let nats = "[[ingress.nats]]\nurl = \"127.0.0.1:4222\"\nsubjects = [\"orders\"]\n";
    std::fs::write(
        &config,
        format!("[host]\nplugin_dir = \".\"\n{nats}[admin]\nlisten = \"127.0.0.1:7071\"\n"),
    )
    .unwrap();
    assert_eq!(check_warnings(dir.path()), Vec::<String>::new());
}

#[test]
fn check_warns_about_balancer_plugins_that_cannot_run() {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER), ("lb", artifacts::LEAST_LOADED_BALANCER)]);
    let destination = |name: &str, balancer: &str| {
        format!(
            "[[destination]]\nname = \"{name}\"\ntransport = \"tcp\"\nendpoints = [\"127.0.0.1:1\"]\nbalancer = \"plugin:{balancer}\"\n"
        )
    };
    let config = [
        "[host]\nplugin_dir = \".\"\n".to_owned(),
        destination("a", "lb"),
        destination("b", "f"),
        destination("c", "gone"),
    ];
    std::fs::write(dir.path().join("switchyard.toml"), config.concat()).unwrap();
    let warnings = check_warnings(dir.path());
    // `run` would pick with p2c in their stead: said here, before it runs.
    assert_eq!(
        warnings,
        [
            NO_INGRESS,
            NO_ADMIN,
            "warning: destination \"b\": balancer \"plugin:f\": ./f.wasm is a filter plugin",
            "warning: destination \"c\": balancer \"plugin:gone\": no plugin file ./gone.wasm",
        ]
    );
}

#[test]
fn check_warns_about_alert_rules_selecting_a_route_destination_or_endpoint_the_config_lacks() {
    let dir = plugin_dir(&[]);
    let alert = |name: &str, when: &str| format!("[[alert]]\nname = \"{name}\"\nwhen = '{when}'\n");
    let config = [
        "[host]\nplugin_dir = \".\"\n".to_owned(),
        "[[destination]]\nname = \"api\"\ntransport = \"tcp\"\nendpoints = [\"127.0.0.1:1\"]\n".to_owned(),
        "[[route]]\nname = \"orders\"\nmatch = { topic = \"orders.>\" }\nto = \"api\"\n".to_owned(),
        // Known, or the series of messages no route took: nothing to say.
        alert("known", r#"endpoint_down{destination="api", endpoint="127.0.0.1:1"} > 0"#),
        alert("no-route", r#"rate(dead_letters{route="", reason="no-route"}[60s]) > 0"#),
        alert("built-in", r#"destination_queued{destination="log"} > 0"#),
        alert("route", r#"rate(dead_letters{route="ordres"}[60s]) > 0"#),
        alert("destination", r#"destination_queued{destination="api2"} > 100"#),
        alert("endpoint", r#"endpoint_down{destination="api", endpoint="127.0.0.1:2"} > 0"#),
    ];
    std::fs::write(dir.path().join("switchyard.toml"), config.concat()).unwrap();
    let warnings = check_warnings(dir.path());
    // A reload may add them: said, not refused.
    assert_eq!(
        warnings,
        [
            NO_INGRESS,
            NO_ADMIN,
            "warning: alert \"route\": route \"ordres\" is no route of this config (routes: orders): the rule reads nothing of it until a reload adds it",
            "warning: alert \"destination\": destination \"api2\" is no destination of this config (destinations: log, api): the rule reads nothing of it until a reload adds it",
            "warning: alert \"endpoint\": endpoint \"127.0.0.1:2\" is no endpoint of this config (endpoints: 127.0.0.1:1): the rule reads nothing of it until a reload adds it",
        ]
    );
}

#[test]
fn plugin_call_runs_one_plugin_on_one_message() {
    let message = r#"{"topic":"orders.eu","headers":{"x-tenant":"acme"},"payload":"{\"card\":\"4111\"}"}"#;
    let (ok, out) = switchyard(&[
        "plugin",
        "call",
        artifacts::REDACT_TRANSFORM,
        "--message",
        message,
        "--config",
        "fields=card",
    ]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["kind"], "transform");
    assert_eq!(answer["answer"]["messages"][0]["payload"], r#"{"card":"[redacted]"}"#);
    let (ok, out) = switchyard(&[
        "plugin",
        "call",
        artifacts::HEADER_FILTER,
        "--message",
        message,
        "--config",
        "require_value=acme",
        "--config",
        "require_header=x-tenant",
    ]);
    assert!(ok && out.contains(r#""verdict":"keep""#), "{out}");
    let (ok, out) = switchyard(&["plugin", "call", artifacts::FAULTY_TRAP, "--message", message]);
    assert!(!ok && out.contains("trapped"), "{out}");
    let (ok, out) = switchyard(&["plugin", "call", "switchyard.toml", "--message", message]);
    assert!(!ok && out.contains("switchyard.toml: expected a .wasm plugin or a native .so plugin"), "{out}");
    let (ok, out) = switchyard(&["plugin", "call", artifacts::LEAST_LOADED_BALANCER, "--message", message]);
    assert!(!ok && out.contains("balancer plugins cannot be called on a message"), "{out}");
    // What the host would dead-letter is not printed as an answer: the output limits apply.
    let flood =
        ["--config", "trigger=boom", "--message", r#"{"topic":"t","headers":{"boom":"1"},"priority":7}"#];
    let (ok, out) = switchyard(
        &[&["plugin", "call", artifacts::FAULTY_FLOOD, "--config", "copies=1025"][..], &flood].concat(),
    );
    assert!(
        !ok && out.contains("plugin-output-limit") && out.contains("more than 1024 messages out of one"),
        "{out}"
    );
    let (ok, out) = switchyard(
        &[&["plugin", "call", artifacts::FAULTY_FLOOD, "--config", "copies=2"][..], &flood].concat(),
    );
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    let messages = answer["answer"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{answer}");
    assert!(messages.iter().all(|message| message["priority"] == 7), "{answer}");
}

#[test]
fn plugin_call_compiles_through_the_compile_cache_and_tells_of_the_compile() {
    let cache = tempfile::tempdir().unwrap();
    let call = || {
        let message = r#"{"topic":"t","headers":{"x-tenant":"acme"}}"#;
        let args = ["plugin", "call", artifacts::HEADER_FILTER, "--message", message];
        let config = ["--config", "require_header=x-tenant", "--config", "require_value=acme"];
        let output = Command::new(BINARY)
            .args(args)
            .args(config)
            .env("XDG_CACHE_HOME", cache.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success() && stdout.contains(r#""verdict":"keep""#), "{stdout}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let told = call();
    assert!(told.contains("compiling ") && told.contains("compiled "), "{told}");
    let entries = std::fs::read_dir(cache.path().join("switchyard")).unwrap().map(|entry| entry.unwrap());
    assert_eq!(entries.filter(|entry| entry.path().extension().is_some_and(|ext| ext == "cwasm")).count(), 1);
    let again = call();
    assert!(!again.contains("compiling"), "the second call finds it compiled: {again}");
}

#[test]
fn plugin_call_with_a_reply_passes_it_back_through_a_middleware_and_checks_what_comes_back() {
    // It called a middleware's on_request only: its on_reply could not be tried from the command line.
    let request = r#"{"topic":"orders","payload":"order"}"#;
    let reply = r#"{"topic":"orders","headers":{"x-from":"peer"},"payload":"done"}"#;
    let call = |plugin: &str, config: &str| {
        switchyard(&["plugin", "call", plugin, "--message", request, "--reply", reply, "--config", config])
    };
    let (ok, out) = call(artifacts::ANNOTATE_MIDDLEWARE, "reply_headers=0");
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    let forwarded = &answer["answer"]["forward"][0];
    assert_eq!(forwarded["headers"], serde_json::json!([["x-annotated-by", "annotate-middleware"]]));
    let passed_back = &answer["answer"]["reply"][0];
    assert_eq!(passed_back["payload"], "done", "{answer}");
    assert_eq!(
        passed_back["headers"],
        serde_json::json!([["x-from", "peer"], ["x-reply-annotated", "true"]])
    );
    let (ok, out) = call(artifacts::ANNOTATE_MIDDLEWARE, "reply_headers=1100");
    assert!(
        !ok && out.contains("the host would fail the request with this reply (plugin-output-limit): ")
            && out.contains("more than 1024 headers besides x-sy-id"),
        "{out}"
    );
    let (ok, out) = call(artifacts::HEADER_FILTER, "require_header=x-tenant");
    assert!(!ok && out.contains("--reply is for middleware plugins; this is a filter"), "{out}");
}

#[test]
fn plugin_call_fails_on_an_answer_the_host_would_dead_letter_naming_the_fault() {
    // It checked less than the pipeline: a filter's last decision of any number was taken, and a
    // middleware's forward of no message or of two, or its reply without a payload, was printed.
    let call = |plugin: &str, poison: &str| {
        let message = format!(r#"{{"topic":"t","headers":{{"x-poison":"{poison}"}},"payload":"p"}}"#);
        switchyard(&["plugin", "call", plugin, "--config", "trigger=x-poison", "--message", &message])
    };
    for (plugin, poison, problem) in [
        (artifacts::FAULTY_DECISIONS, "extra", "2 decisions for 1 messages"),
        (artifacts::FAULTY_DECISIONS, "missing", "0 decisions for 1 messages"),
        (artifacts::FAULTY_ERRORS, "one-based", "an error names input 1 of 1"),
        (artifacts::FAULTY_MIDDLEWARE, "forward-none", "expected exactly one message"),
        (artifacts::FAULTY_MIDDLEWARE, "forward-two", "expected exactly one message"),
        (artifacts::FAULTY_MIDDLEWARE, "respond-heads", "a message without its payload"),
    ] {
        let (ok, out) = call(plugin, poison);
        let fault = format!("returned a malformed answer: {problem}");
        assert!(
            !ok && out.contains("the host would dead-letter this message (plugin-malformed): plugin \""),
            "{out}"
        );
        assert!(out.contains(&fault), "{poison}: {out}");
    }
    let (ok, out) =
        switchyard(&["plugin", "call", artifacts::FAULTY_MIDDLEWARE, "--message", r#"{"topic":"t"}"#]);
    assert!(ok && out.contains(r#""forward":[{"#), "{out}");
}

#[test]
fn plugin_call_fails_on_a_transport_reply_the_host_would_refuse_as_the_host_does() {
    // It printed every message of a reply (the host took the first), failed on bytes past the
    // first with a decoding error (the host ignored them), and printed a reply past the size the
    // host takes.
    let call = |shape: &str| {
        let message = format!(r#"{{"topic":"jobs","headers":{{"x-reply":"{shape}"}},"payload":"x"}}"#);
        let args = ["plugin", "call", artifacts::FAULTY_TRANSPORT_REPLY, "--address", "127.0.0.1:9"];
        switchyard(&[&args[..], &["--message", &message]].concat())
    };
    let refused = "the host would refuse this reply, its message delivered: ";
    for shape in ["two", "trailing"] {
        let (ok, out) = call(shape);
        let problem = "the plugin's reply is malformed: expected exactly one message";
        assert!(!ok && out.contains(&format!("{refused}{problem}")), "{shape}: {out}");
    }
    let (ok, out) = call("big");
    assert!(!ok && out.contains(refused) && out.contains(" bytes: more than 1048576 bytes"), "{out}");
    let (ok, out) = call("once");
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["answer"]["reply"][0]["payload"], "x", "{answer}");
}

#[test]
fn plugin_call_sends_through_a_transport_plugin_to_the_address_given_and_prints_the_reply() {
    let redis = RedisServer::start();
    let address = redis.addr.to_string();
    let message = r#"{"topic": "jobs", "payload": "job 1"}"#;
    let call = |address: &str| {
        let args =
            ["plugin", "call", artifacts::REDIS_TRANSPORT, "--message", message, "--config", "key=jobs"];
        switchyard(&[&args[..], &["--address", address]].concat())
    };
    let (ok, out) = call(&address);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["kind"], "transport");
    assert_eq!(answer["answer"]["reply"][0]["payload"], "1", "RPUSH's answer: the list's length");
    assert_eq!(redis.command(&["LINDEX", "jobs", "0"]), "job 1");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (ok, out) = call(&closed);
    assert!(ok && out.contains(&format!("open {closed}: asked for a retry: connect:")), "{out}");
    let args = ["plugin", "call", artifacts::REDIS_TRANSPORT, "--message", message];
    let (ok, out) = switchyard(&args);
    assert!(!ok && out.contains("a transport plugin needs --address HOST:PORT"), "{out}");
}

#[test]
fn plugin_call_loads_the_plugin_as_the_host_does_its_sidecar_read_and_a_transport_given_the_destinations_deadline()
 {
    // It read only the --config keys, not the sidecar the host reads beside the file, and cut a
    // transport's open and send at the plugin's limits.timeout_ms (100 ms), where the host gives
    // them the destination's timeout_ms (5 s): an endpoint the host delivered to failed here.
    let dir = plugin_dir(&[("stamp", artifacts::STAMP_TRANSFORM)]);
    std::fs::write(dir.path().join("stamp.toml"), "config = { stamp = \"v2\" }\n").unwrap();
    let plugin = dir.path().join("stamp.wasm");
    let stamp = |config: &[&str]| {
        let args = ["plugin", "call", plugin.to_str().unwrap(), "--message", r#"{"topic":"t"}"#];
        let (ok, out) = switchyard(&[&args[..], config].concat());
        assert!(ok, "{out}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        answer["answer"]["messages"][0]["headers"][0].clone()
    };
    assert_eq!(stamp(&[]), serde_json::json!(["x-stamp", "v2"]), "the sidecar's config");
    assert_eq!(stamp(&["--config", "stamp=v3"]), serde_json::json!(["x-stamp", "v3"]), "--config wins");
    let endpoint = slow_echo_server(std::time::Duration::from_millis(300), 2);
    let send = |timeout: &[&str]| {
        let message = r#"{"topic":"t","payload":"ping"}"#;
        let args =
            ["plugin", "call", artifacts::ECHO_TRANSPORT, "--address", &endpoint, "--message", message];
        switchyard(&[&args[..], timeout].concat())
    };
    let (ok, out) = send(&[]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["answer"]["reply"][0]["payload"], "ping", "{answer}");
    let (ok, out) = send(&["--timeout-ms", "50"]);
    assert!(!ok && out.contains("timed out after"), "{out}");
    let args = ["plugin", "call", plugin.to_str().unwrap(), "--message", r#"{"topic":"t"}"#];
    let (ok, out) = switchyard(&[&args[..], &["--timeout-ms", "50"]].concat());
    assert!(!ok && out.contains("--timeout-ms is for transport plugins; this is a transform"), "{out}");
}

/// An echo server on 127.0.0.1 (its address) that answers each of its first `connections`
/// connections `delay` after a message's bytes came: an endpoint slower than a plugin's own
/// deadline, within a destination's. (The delay is the endpoint's behaviour, not a wait of the
/// test.)
fn slow_echo_server(delay: std::time::Duration, connections: usize) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            let mut bytes = [0; 4096];
            while let Ok(read @ 1..) = stream.read(&mut bytes) {
                std::thread::sleep(delay);
                if stream.write_all(&bytes[..read]).is_err() {
                    break;
                }
            }
        }
    });
    address
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_is_refused() {
    let dir = plugin_dir(&[]);
    let config = dir.path().join("switchyard.toml");
    let write = |to: &str| {
        let text =
            format!("[host]\nwatch = false\nplugin_dir = \".\"\n[[route]]\nname = \"all\"\nto = \"{to}\"\n");
        std::fs::write(&config, text).unwrap();
    };
    write("log");
    let mut host =
        Running::start(&["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0"], dir.path());
    host.line_where(|line| line.contains("HTTP ingress listening on"));
    let hangup = |host: &Running| signal(host, "-HUP");
    write("nowhere");
    hangup(&host);
    let refused = host.line_where(|line| line.starts_with("switchyard: reload"));
    assert!(refused.contains("refused") && refused.contains("route \"all\".to = \"nowhere\""), "{refused}");
    write("log");
    hangup(&host);
    let unchanged = host.line_where(|line| line.starts_with("switchyard: reload"));
    assert_eq!(unchanged, "switchyard: reloaded (config unchanged)", "the refused file never applied");
    std::fs::write(
        &config,
        "route = []
[host]
watch = false
plugin_dir = \".\"\n",
    )
    .unwrap();
    hangup(&host);
    assert_eq!(host.line_where(|line| line.starts_with("switchyard: reload")), "switchyard: reloaded");
    host.stop();
}

/// Send `signal` (`-HUP`, `-TERM`) to `host`.
pub(crate) fn signal(host: &Running, signal: &str) {
    let pid = host.child.id().to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
}

#[test]
fn a_sighup_while_the_host_starts_is_applied_once_it_runs() {
    // A start compiling a large plugin (a JavaScript component, compiled afresh: an empty compile
    // cache) takes seconds; SIGHUP then killed the host, its handlers not yet installed.
    let dir = plugin_dir(&[]);
    std::fs::copy(artifacts::JS_FILTER, dir.path().join("big.wasm")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let config = format!(
        "[host]\nwatch = false\nplugin_dir = \".\"\ncache_dir = {:?}\n[[route]]\nname = \"all\"\nto = \"log\"\n",
        cache.path()
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host =
        Running::start(&["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0"], dir.path());
    host.line_where(|line| line.starts_with("compiling big ("));
    signal(&host, "-HUP");
    host.line_where(|line| line.contains("HTTP ingress listening on"));
    let reloaded = host.line_where(|line| line.starts_with("switchyard: reload"));
    assert_eq!(reloaded, "switchyard: reloaded (config unchanged)");
    host.stop();
}

/// A host of `dir` with an empty compile cache, serving (its ingress listening), whose plugin
/// `big` is then dropped in: a JavaScript component, whose compile takes seconds. Started with
/// `watch`, it compiles `big` as the file appears, else at the next reload.
fn a_host_about_to_compile_a_big_plugin(
    dir: &std::path::Path,
    cache: &std::path::Path,
    watch: bool,
) -> Running {
    let config = format!(
        "[host]\nwatch = {watch}\nplugin_dir = \".\"\ncache_dir = {cache:?}\n[[route]]\nname = \"all\"\nto = \"log\"\n"
    );
    std::fs::write(dir.join("switchyard.toml"), config).unwrap();
    let host = Running::start(&["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0"], dir);
    host.line_where(|line| line.contains("HTTP ingress listening on"));
    std::fs::copy(artifacts::JS_FILTER, dir.join("big.wasm")).unwrap();
    host
}

#[test]
fn a_stop_signal_during_a_reload_stops_at_once() {
    // The signal loop ran each SIGHUP's reload itself: a SIGTERM during one compiling a big plugin
    // began the stop only once the compile and the reload had ended.
    let (dir, cache) = (plugin_dir(&[]), tempfile::tempdir().unwrap());
    let mut host = a_host_about_to_compile_a_big_plugin(dir.path(), cache.path(), false);
    signal(&host, "-HUP");
    host.line_where(|line| line.starts_with("compiling big ("));
    host.terminate();
    let next = host.line_where(|line| {
        ["compiled big", "switchyard: reload", "switchyard: stopping"]
            .iter()
            .any(|start| line.starts_with(start))
    });
    assert!(next.starts_with("switchyard: stopping"), "before the stop: {next}");
    host.stopped();
}

#[test]
fn the_process_exits_once_its_host_stopped_without_waiting_for_a_compile_under_way() {
    // The host's stop does not wait for a plugin compile under way, but the process did: the
    // runtime's drop waited for its blocking threads, the compile's included.
    let (dir, cache) = (plugin_dir(&[]), tempfile::tempdir().unwrap());
    let host = a_host_about_to_compile_a_big_plugin(dir.path(), cache.path(), true);
    host.line_where(|line| line.starts_with("compiling big ("));
    let after = host.stop_and_collect();
    assert!(after.iter().any(|line| line.starts_with("switchyard: stopped")), "{after:?}");
    let compiled: Vec<_> = after.iter().filter(|line| line.starts_with("compiled big")).collect();
    assert!(compiled.is_empty(), "the process waited for the compile: {compiled:?}");
}

#[test]
fn a_second_stop_signal_ends_a_stop_that_waits_for_its_grace_period() {
    // A message waits in its queue (its endpoint refuses; queue timeout ten minutes) and the grace
    // period is ten minutes: the first SIGTERM's stop waits. A second SIGTERM did nothing.
    let dir = plugin_dir(&[]);
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[host]\nwatch = false\nplugin_dir = \".\"\nshutdown_grace_ms = 600000\n\
         [ingress.http]\nlisten = \"127.0.0.1:0\"\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n\
         queue = {{ timeout_ms = 600000 }}\n[[route]]\nname = \"all\"\nto = \"api\"\n"
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let (status, _) = post(ingress, "/v1/messages/t", &[], b"{}");
    assert_eq!(status, 202);
    host.terminate();
    host.line_where(|line| line.starts_with("switchyard: stopping"));
    host.terminate();
    host.line_where(|line| line.starts_with("switchyard: a second stop signal"));
    assert_eq!(host.child.wait().unwrap().code(), Some(130));
}

#[test]
fn a_second_stop_signal_kills_the_subprocess_workers_with_the_host() {
    // A worker (a process its shell started, in the group the host made) holds a message it never
    // answers, and the grace period is ten minutes: the first SIGINT's stop waits. The second
    // SIGINT's exit left the worker's process group running, the terminal's Ctrl-C never
    // reaching it.
    let dir = plugin_dir(&[]);
    let pid_file = dir.path().join("worker.pid");
    let worker = r#""sh", "-c", 'sleep 100000 & echo $! > "$0"; wait'"#;
    let config = format!(
        "[host]\nwatch = false\nplugin_dir = \".\"\nshutdown_grace_ms = 600000\n\
         [ingress.http]\nlisten = \"127.0.0.1:0\"\n\
         [[destination]]\nname = \"workers\"\ntransport = \"subprocess\"\ntimeout_ms = 600000\n\
         options = {{ command = [{worker}, {:?}] }}\n[[route]]\nname = \"all\"\nto = \"workers\"\n",
        pid_file.display().to_string()
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let (status, _) = post(ingress, "/v1/messages/t", &[], b"{}");
    assert_eq!(status, 202);
    let worker = eventually(|| match std::fs::read_to_string(&pid_file) {
        Ok(pid) if pid.ends_with('\n') => Ok(pid.trim_end().to_owned()),
        read => Err(read),
    });
    let _orphan = KillOnFailure(worker.clone());
    signal(&host, "-INT");
    host.line_where(|line| line.starts_with("switchyard: stopping"));
    signal(&host, "-INT");
    host.line_where(|line| line.starts_with("switchyard: a second stop signal"));
    assert_eq!(host.child.wait().unwrap().code(), Some(130));
    until_ended(&worker, "the worker");
}

/// Kills the process of this id if the test fails: one found still running must not outlive it.
struct KillOnFailure(String);

impl Drop for KillOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-KILL", &self.0]).status();
        }
    }
}

/// Threads of process `pid` named `name` (`/proc/PID/task/*/comm`).
fn threads_named(pid: u32, name: &str) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let names = tasks.map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap());
    names.filter(|comm| comm.trim_end() == name).count()
}

#[test]
fn run_serves_on_the_runtime_threads_io_threads_or_its_default_says_and_refuses_bad_counts() {
    let dir = plugin_dir(&[]);
    let config = dir.path().join("switchyard.toml");
    let write = |io_threads: usize| {
        let text = format!(
            "[host]\nwatch = false\nplugin_dir = \".\"\nio_threads = {io_threads}\n[[route]]\nname = \"all\"\nto = \"log\"\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    let args = ["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0"];
    // One thread, three (more than the default of one a core gives on the project's 2 cores), and
    // the default when `TOKIO_WORKER_THREADS` sets it.
    for (io_threads, env, expected) in [(1, None, 1), (3, None, 3), (0, Some("3"), 3)] {
        write(io_threads);
        let env: Vec<_> = env.map(|threads| ("TOKIO_WORKER_THREADS", threads)).into_iter().collect();
        let mut host = Running::start_with_env(&args, dir.path(), &env);
        let ingress = host.address("HTTP ingress listening on");
        assert_eq!(
            threads_named(host.child.id(), "switchyard-io"),
            expected,
            "io_threads = {io_threads}, {env:?}"
        );
        let (status, _) = post(ingress, "/v1/messages/greet", &[], b"served");
        assert_eq!(status, 202);
        let delivered =
            host.line_where(|line| line.starts_with('{') && line.contains("\"payload\":\"served\""));
        assert!(delivered.contains("\"topic\":\"greet\""), "{delivered}");
        // A reload runs on a thread of the runtime's blocking pool, which tokio keeps 10 s after its
        // work: named apart (`comm` keeps 15 bytes of a name), it is not counted as a runtime thread.
        let pid = host.child.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
        host.line_where(|line| line == "switchyard: reloaded (config unchanged)");
        assert_eq!(threads_named(host.child.id(), "switchyard-io"), expected, "after a reload");
        assert!(threads_named(host.child.id(), "switchyard-bloc") >= 1, "the reload's thread");
        host.stop();
    }
    write(5000);
    let (ok, out) = switchyard(&["check", config.to_str().unwrap()]);
    assert!(!ok && out.contains("host.io_threads") && out.contains("must be at most 1024"), "{out}");
    // Read with the safety net: a host that wrongly started would not end this test by itself.
    let mut refused = Running::start(&args, dir.path());
    refused.line_where(|line| line.contains("host.io_threads"));
    assert!(!refused.child.wait().unwrap().success());
    // tokio would panic on a count that is not one; the host says what is wrong instead.
    write(0);
    for bad in ["many", "0", "1025"] {
        let mut refused = Running::start_with_env(&args, dir.path(), &[("TOKIO_WORKER_THREADS", bad)]);
        let line = refused.line_where(|line| line.contains("TOKIO_WORKER_THREADS"));
        assert_eq!(
            line,
            format!(
                "error: TOKIO_WORKER_THREADS={bad:?}: expected a number of runtime threads, 1 to 1024 (as host.io_threads)"
            )
        );
        assert!(!refused.child.wait().unwrap().success());
    }
}

#[test]
fn run_reads_its_config_file_once() {
    // `run --config` read the file twice, once to size its runtime and once to build the host: an
    // edit in between ran a host on one config in a runtime sized by another.
    use notify::Watcher;
    use notify::event::{AccessKind, EventKind};
    let dir = plugin_dir(&[]);
    let (config, marker) = (dir.path().join("switchyard.toml"), dir.path().join("marker"));
    let text = "[host]\nwatch = false\nplugin_dir = \".\"\n[[route]]\nname = \"all\"\nto = \"log\"\n";
    std::fs::write(&config, text).unwrap();
    std::fs::write(&marker, "").unwrap();
    let (opened, opens) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = event.expect("inotify works");
        if let EventKind::Access(AccessKind::Open(_)) = event.kind {
            let _ = opened.send(event.paths);
        }
    })
    .unwrap();
    watcher.watch(dir.path(), notify::RecursiveMode::NonRecursive).unwrap();
    let mut host =
        Running::start(&["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0"], dir.path());
    host.address("HTTP ingress listening on");
    host.stop();
    // The directory's events come in order: once the marker's open is seen, so are the host's.
    std::fs::File::open(&marker).unwrap();
    let mut reads = 0;
    loop {
        let paths = opens.recv_timeout(PATIENCE).expect("the marker's open (safety net)");
        if paths.contains(&marker) {
            break;
        }
        reads += usize::from(paths.contains(&config));
    }
    assert_eq!(reads, 1, "times the config file was opened");
}

#[test]
fn admin_api_of_the_binary_takes_its_token_from_the_environment() {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER)]);
    let args = ["run", "--plugins", ".", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut host = Running::start_with_env(&args, dir.path(), &[("SWITCHYARD_ADMIN_TOKEN", "env-token")]);
    let line = host.line_where(|line| line.contains("admin API listening on http://"));
    let addr: SocketAddr = line.rsplit("http://").next().unwrap().parse().unwrap();
    assert_eq!(http(addr, "GET", "/health", &[], b"").0, 200);
    assert_eq!(http(addr, "GET", "/v1/plugins", &[], b"").0, 401);
    let (status, body) = http(addr, "GET", "/v1/plugins", &[("authorization", "Bearer env-token")], b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""name":"f""#) && body.contains(r#""kind":"filter""#), "{body}");
    let (status, metrics) = http(addr, "GET", "/metrics", &[("authorization", "Bearer env-token")], b"");
    assert!(
        status == 200 && metrics.contains("switchyard_host_events_total{event=\"plugin-loaded\"} 1"),
        "{metrics}"
    );
    host.stop();
    // A token no client could present is refused, as in the config, its value not shown.
    for bad in ["two words", "t\u{f6}ken"] {
        let mut refused = Running::start_with_env(&args, dir.path(), &[("SWITCHYARD_ADMIN_TOKEN", bad)]);
        let line = refused.line_where(|line| line.contains("SWITCHYARD_ADMIN_TOKEN"));
        assert!(line.contains("must be visible ASCII characters") && !line.contains(bad), "{line}");
        assert!(!refused.child.wait().unwrap().success());
    }
}

#[test]
fn a_subprocess_worker_inherits_the_hosts_environment_but_the_admin_token_unless_given_it() {
    // The token guards the admin API; a worker process needs it no more than the plugins do. Its
    // destination's `env` may still give it one, as it gives any variable.
    let dir = plugin_dir(&[]);
    let worker = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/subprocess/worker.py");
    let destination = |name: &str, env: &str| {
        format!(
            "[[destination]]\nname = \"{name}\"\ntransport = \"subprocess\"\n\
             options = {{ command = [\"python3\", {:?}]{env} }}\n\
             [[route]]\nname = \"{name}\"\nmatch = {{ topic = \"{name}\" }}\nto = \"{name}\"\n",
            worker.display().to_string()
        )
    };
    let config = format!(
        "[host]\nwatch = false\nplugin_dir = \".\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
        destination("plain", ""),
        destination("given", ", env = { SWITCHYARD_ADMIN_TOKEN = \"given\" }")
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let env = [("SWITCHYARD_ADMIN_TOKEN", "secret"), ("SWITCHYARD_TEST_INHERITED", "kept")];
    let mut host = Running::start_with_env(&["run", "--config", "switchyard.toml"], dir.path(), &env);
    let ingress = host.address("HTTP ingress listening on http://");
    let ask = |topic: &str, variable: &str| {
        let path = format!("/v1/messages/{topic}?wait=true");
        post(ingress, &path, &[], format!("env:{variable}").as_bytes())
    };
    assert_eq!(ask("plain", "SWITCHYARD_TEST_INHERITED"), (200, "kept".to_owned()));
    assert_eq!(ask("plain", "SWITCHYARD_ADMIN_TOKEN"), (200, "(unset)".to_owned()));
    assert_eq!(ask("given", "SWITCHYARD_ADMIN_TOKEN"), (200, "given".to_owned()));
    host.stop();
}

#[test]
fn the_admin_api_shows_the_listen_addresses_the_command_line_set_and_an_edit_of_the_file_s_is_told() {
    // `--listen` and `--admin` override the file's: the host serves on theirs, and
    // `GET /v1/config` showed the file's; an edit of the file's was refused as needing a restart.
    let dir = plugin_dir(&[]);
    let config = |port: u16| {
        format!(
            "[host]\nwatch = false\nplugin_dir = \".\"\n[ingress.http]\nlisten = \"127.0.0.1:{port}\"\n\
             [admin]\nlisten = \"127.0.0.1:{}\"\n[[route]]\nname = \"all\"\nto = \"log\"\n",
            port + 1
        )
    };
    std::fs::write(dir.path().join("switchyard.toml"), config(9)).unwrap();
    let args = ["run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut host = Running::start(&args, dir.path());
    let admin = host.address("admin API listening on http://");
    let (status, body) = http(admin, "GET", "/v1/config", &[], b"");
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["ingress"]["http"]["listen"], "127.0.0.1:0", "{body}");
    assert_eq!(shown["admin"]["listen"], "127.0.0.1:0", "{body}");
    // An edit of the file's addresses is not used, and said so (as for `--plugins`), not refused
    // for a restart that would not use it either.
    std::fs::write(dir.path().join("switchyard.toml"), config(11)).unwrap();
    signal(&host, "-HUP");
    let overridden = |key: &'static str| {
        move |line: &str| line.contains(r#""event":"config-overridden""#) && line.contains(key)
    };
    let told = host.line_where(overridden(r#""key":"ingress.http.listen""#));
    assert!(told.contains(r#""value":"127.0.0.1:11","used":"127.0.0.1:0""#), "{told}");
    let told = host.line_where(overridden(r#""key":"admin.listen""#));
    assert!(told.contains(r#""value":"127.0.0.1:12","used":"127.0.0.1:0""#), "{told}");
    let reloaded = host.line_where(|line| line.starts_with("switchyard: reload"));
    assert_eq!(reloaded, "switchyard: reloaded (config unchanged)");
    host.stop();
}

#[test]
fn a_config_read_from_the_admin_api_and_put_back_leaves_the_file_its_own_addresses_and_directory() {
    // `GET /v1/config` shows what `--listen`, `--admin` and `--plugins` set; put back as it was
    // read, it wrote them over the file's own settings, so a start without them used them.
    let dir = plugin_dir(&[]);
    let config = dir.path().join("switchyard.toml");
    let own = "[host]\nwatch = false\nplugin_dir = \".\"\n[ingress.http]\nlisten = \"127.0.0.1:9\"\n\
               [[route]]\nname = \"all\"\nto = \"log\"\n";
    std::fs::write(&config, own).unwrap();
    let plugins = dir.path().to_str().unwrap();
    let args = ["run", "--config", "switchyard.toml", "--plugins", plugins];
    let args = [&args[..], &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]].concat();
    let mut host = Running::start(&args, dir.path());
    let admin = host.address("admin API listening on http://");
    let (status, shown) = http(admin, "GET", "/v1/config?format=toml", &[], b"");
    assert_eq!(status, 200, "{shown}");
    let (status, body) = http(admin, "PUT", "/v1/config", &[], shown.as_bytes());
    assert_eq!(status, 200, "{body}");
    let written: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(written["ingress"]["http"]["listen"].as_str(), Some("127.0.0.1:9"), "{written}");
    assert_eq!(written["host"]["plugin_dir"].as_str(), Some("."), "{written}");
    assert!(!written.contains_key("admin"), "the file had no [admin]: {written}");
    // What was written is what runs: read again, it changes nothing.
    signal(&host, "-HUP");
    let reloaded = host.line_where(|line| line.starts_with("switchyard: reload"));
    assert_eq!(reloaded, "switchyard: reloaded (config unchanged)");
    host.stop();
}

/// The first line `switchyard --log-format FORMAT run` writes to its piped stderr.
fn first_log_line(format: &str) -> String {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER)]);
    let args = [
        "--log-format",
        format,
        "run",
        "--plugins",
        ".",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    let mut child = Command::new(BINARY)
        .args(args)
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    first
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    let first = first_log_line("text");
    assert!(first.contains("INFO") && !first.contains('\x1b'), "{first:?}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let first = first_log_line("json");
    let line = json_log_line(first.trim_end());
    assert_eq!(line["level"], "INFO", "{first}");
    assert!(line["fields"]["event"].as_str().unwrap().contains("plugin-loaded"), "{first}");
    // Only that first line was looked at: `run`'s status lines (config, listening on, reloaded,
    // reload refused, stopped), the compile notices and the error a command ends with came as
    // plain text among the objects, and a log shipper reading JSON failed on them.
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER)]);
    let write = |to: &str| {
        let text =
            format!("[host]\nwatch = false\nplugin_dir = \".\"\n[[route]]\nname = \"all\"\nto = \"{to}\"\n");
        std::fs::write(dir.path().join("switchyard.toml"), text).unwrap();
    };
    write("log");
    let mut command = Command::new(BINARY);
    let args = ["--log-format", "json", "run", "--config", "switchyard.toml", "--listen", "127.0.0.1:0"];
    // Status lines are log events now, which a RUST_LOG of the test's could filter out.
    command.args(args).current_dir(dir.path()).env_remove("RUST_LOG");
    let mut host = Running::spawn(command);
    let mut messages = Vec::new();
    let mut until = |host: &Running, what: &str| loop {
        let (stream, line) = host.lines.recv_timeout(PATIENCE).expect("switchyard went quiet (safety net)");
        if stream == Stream::Stderr {
            let message = json_log_line(&line)["fields"]["message"].as_str().unwrap_or_default().to_owned();
            messages.push(message.clone());
            if message.starts_with(what) {
                return message;
            }
        }
    };
    until(&host, "switchyard: HTTP ingress listening on http://127.0.0.1:");
    write("nowhere");
    signal(&host, "-HUP");
    let refused = until(&host, "switchyard: reload refused: ");
    assert!(refused.contains("route \"all\".to = \"nowhere\""), "{refused}");
    write("log");
    signal(&host, "-HUP");
    assert_eq!(until(&host, "switchyard: reloaded"), "switchyard: reloaded (config unchanged)");
    signal(&host, "-TERM");
    until(&host, "switchyard: stopped; {");
    assert!(host.child.wait().unwrap().success());
    for (_, line) in host.lines.iter().filter(|(stream, _)| *stream == Stream::Stderr) {
        json_log_line(&line);
    }
    let config = "switchyard: config switchyard.toml, plugins from ";
    assert!(messages.iter().any(|message| message.starts_with(config)), "{messages:?}");
    // A compile told as it goes, and the error a command ends with, are objects too.
    let cache = tempfile::tempdir().unwrap();
    let call = |file: &str| {
        let args = ["--log-format", "json", "plugin", "call", file, "--message", r#"{"topic":"t"}"#];
        let mut command = Command::new(BINARY);
        command.args(args).env("XDG_CACHE_HOME", cache.path()).env_remove("RUST_LOG");
        command.output().unwrap()
    };
    let called = call(artifacts::STAMP_TRANSFORM);
    assert!(called.status.success());
    let told: Vec<serde_json::Value> =
        String::from_utf8(called.stderr).unwrap().lines().map(json_log_line).collect();
    let told: Vec<&str> =
        told.iter().map(|line| line["fields"]["message"].as_str().unwrap_or_default()).collect();
    assert!(told.iter().any(|message| message.starts_with("compiling stamp_transform (")), "{told:?}");
    assert!(told.iter().any(|message| message.starts_with("compiled stamp_transform in ")), "{told:?}");
    let failed = call("switchyard.toml");
    assert!(!failed.status.success());
    let error = json_log_line(String::from_utf8(failed.stderr).unwrap().trim_end());
    assert_eq!(error["level"], "ERROR", "{error}");
    let message = error["fields"]["message"].as_str().unwrap();
    assert!(message.starts_with("error: switchyard.toml: expected a .wasm plugin"), "{error}");
}

/// `line` of standard error under `--log-format json`: one JSON object, with a level.
fn json_log_line(line: &str) -> serde_json::Value {
    let object: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|err| panic!("not one JSON object ({err}): {line}"));
    assert!(object["level"].is_string(), "no level: {line}");
    object
}

const GUARDED_CONFIG: &str = r#"
[host]
watch = false
plugin_dir = "."
[ingress.http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token = "config-token"
[[plugin]]
name = "f"
config = { require_header = "x-tenant" }
[[route]]
name = "orders"
match = { topic = "orders.*" }
stages = ["filter:f"]
to = "log"
"#;

const AUTH: (&str, &str) = ("authorization", "Bearer config-token");

/// Every guarded endpoint refuses a request without the token, with a wrong
/// one, and with the right one not sent as a bearer token, saying nothing more.
fn assert_guarded(admin: SocketAddr) {
    let guarded = [
        ("GET", "/metrics"),
        ("GET", "/v1/plugins"),
        ("GET", "/v1/routes"),
        ("GET", "/v1/destinations"),
        ("POST", "/v1/reload"),
        ("GET", "/v1/events"),
    ];
    let wrong: [&[(&str, &str)]; 3] =
        [&[], &[("authorization", "Bearer env-token")], &[("authorization", "config-token")]];
    for ((method, path), headers) in guarded.into_iter().flat_map(|at| wrong.map(|headers| (at, headers))) {
        let response = http_raw(admin, method, path, headers, b"");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        assert!(response.starts_with("HTTP/1.1 401 "), "{method} {path} {headers:?}: {response}");
        assert_eq!(body, r#"{"error":"unauthorized"}"#, "{method} {path} {headers:?}");
        assert!(response.to_lowercase().contains("www-authenticate: bearer"), "{response}");
    }
    for token in [None, Some("wrong")] {
        let mut request = format!("ws://{admin}/v1/events").into_client_request().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tungstenite::connect(request) {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401, "{token:?}"),
            other => panic!("the handshake was not refused: {:?}", other.map(|(_, response)| response)),
        }
    }
}

/// What `/metrics` counts of route `orders`: accepted on the host and on the
/// route, delivered, filtered, latencies, deliveries to `log`, plugin calls.
fn orders_counts(admin: SocketAddr) -> [f64; 7] {
    let (status, text) = http(admin, "GET", "/metrics", &[AUTH], b"");
    assert_eq!(status, 200, "{text}");
    let orders = ("route", "orders");
    [
        sample(&text, "switchyard_messages_accepted_total", &[]),
        sample(&text, "switchyard_route_accepted_total", &[orders]),
        sample(&text, "switchyard_route_messages_total", &[orders, ("outcome", "delivered")]),
        sample(&text, "switchyard_route_messages_total", &[orders, ("outcome", "filtered")]),
        sample(&text, "switchyard_route_latency_seconds_count", &[orders]),
        sample(&text, "switchyard_destination_deliveries_total", &[("destination", "log"), ("result", "ok")]),
        sample(&text, "switchyard_plugin_call_seconds_count", &[("plugin", "f")]),
    ]
    .map(|value| value.unwrap_or(0.0))
}

#[test]
fn admin_api_of_the_binary_guards_every_endpoint_and_counts_the_messages_that_flow() {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER)]);
    std::fs::write(dir.path().join("switchyard.toml"), GUARDED_CONFIG).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let admin = host.address("admin API listening on http://");

    assert_eq!(http(admin, "GET", "/health", &[], b""), (200, r#"{"status":"ok"}"#.into()));
    assert_eq!(http(admin, "GET", "/ready", &[], b""), (200, r#"{"ready":true}"#.into()));
    assert_guarded(admin);
    let (status, plugins) = http(admin, "GET", "/v1/plugins", &[AUTH], b"");
    assert!(status == 200 && plugins.contains(r#""name":"f""#), "{plugins}");
    assert!(plugins.contains(r#""state":"serving""#), "{plugins}");
    let (status, routes) = http(admin, "GET", "/v1/routes", &[AUTH], b"");
    assert!(status == 200 && routes.contains(r#""name":"orders""#), "{routes}");
    let (status, destinations) = http(admin, "GET", "/v1/destinations", &[AUTH], b"");
    assert!(status == 200 && destinations.contains(r#""name":"log""#), "{destinations}");

    let mut request = format!("ws://{admin}/v1/events").into_client_request().unwrap();
    request.headers_mut().insert("authorization", AUTH.1.parse().unwrap());
    let (mut events, _) = tungstenite::connect(request).expect("the event stream opens with the token");
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = events.get_ref() {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    let reload = || http(admin, "POST", "/v1/reload", &[AUTH], b"");
    assert_eq!(reload(), (200, r#"{"config":"unchanged","plugins_refused":{},"reloaded":true}"#.into()));
    let more = "[[route]]\nname = \"more\"\nmatch = { topic = \"more\" }\nto = \"log\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), format!("{GUARDED_CONFIG}{more}")).unwrap();
    assert_eq!(reload(), (200, r#"{"config":"applied","plugins_refused":{},"reloaded":true}"#.into()));
    let applied = loop {
        let frame = events.read().expect("an event (safety net: PATIENCE)");
        let event: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        if event["event"] == "config-applied" {
            break event;
        }
    };
    assert!(applied["file"].as_str().unwrap().ends_with("switchyard.toml"), "{applied}");
    drop(events);

    let before = orders_counts(admin);
    let mut ids = Vec::new();
    for n in 0..8 {
        let tenant: &[(&str, &str)] = if n < 5 { &[("x-tenant", "acme")] } else { &[] };
        let (status, body) = post(ingress, "/v1/messages/orders.eu", tenant, b"{}");
        assert_eq!(status, 202, "{body}");
        ids.push(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned(),
        );
    }
    // Two workers: the five kept messages may print in any order.
    let mut kept: Vec<String> = (0..5)
        .map(|_| {
            let line = host.line_where(|line| line.starts_with('{'));
            unique_id_of(&serde_json::from_str(&line).unwrap())
        })
        .collect();
    kept.sort();
    let mut sent_kept = ids[..5].to_vec();
    sent_kept.sort();
    assert_eq!(kept, sent_kept, "the kept messages are delivered, the others filtered");
    // Delivered is counted once `log` has printed: poll until every count moved.
    let moved = [8.0, 8.0, 5.0, 3.0, 8.0, 5.0];
    let after = eventually(|| {
        let now = orders_counts(admin);
        let grew: Vec<f64> = now.iter().zip(before).map(|(now, before)| now - before).collect();
        match grew[..6] == moved && grew[6] >= 1.0 {
            true => Ok(now),
            false => Err(grew),
        }
    });
    assert!(after[6] >= 1.0, "the filter's calls are timed: {after:?}");
    let stopped = host.stop();
    assert!(stopped.contains("\"accepted\":8") && stopped.contains("\"filtered\":3"), "{stopped}");
}

#[test]
fn run_prints_the_digest_of_each_plugin_and_the_reason_a_file_is_refused() {
    let dir = plugin_dir(&[("f", artifacts::HEADER_FILTER)]);
    std::fs::write(dir.path().join("corrupt.wasm"), b"\0asm garbage").unwrap();
    // A name that would print a line of its own and clear the terminal, had it been printed raw.
    let forging = "x\nswitchyard: FORGED\u{1b}[2J";
    std::fs::copy(artifacts::HEADER_FILTER, dir.path().join(format!("{forging}.wasm"))).unwrap();
    let args = ["run", "--plugins", ".", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut host = Running::start_with_env(&args, dir.path(), &[("SWITCHYARD_ADMIN_TOKEN", "config-token")]);
    let digest = hex::encode(Sha256::digest(std::fs::read(artifacts::HEADER_FILTER).unwrap()));
    let loaded = host.line_where(|line| line.contains("plugin f loaded"));
    assert!(
        loaded.starts_with(&format!("switchyard: plugin f loaded: filter {} in ", &digest[..12])),
        "{loaded}"
    );
    let escaped = host.line_where(|line| line.contains("FORGED"));
    assert!(escaped.starts_with("switchyard: plugin x\\nswitchyard: FORGED\\u{1b}[2J loaded: "), "{escaped}");
    let refused = host.line_where(|line| line.contains("corrupt"));
    assert!(
        refused.starts_with("switchyard: plugin \"corrupt\": not a valid WebAssembly component: "),
        "{refused}"
    );
    let admin = host.address("admin API listening on http://");
    let (_, plugins) = http(admin, "GET", "/v1/plugins", &[AUTH], b"");
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap();
    let [corrupt, f, _forging] = &plugins["plugins"].as_array().unwrap()[..] else { panic!("{plugins}") };
    assert_eq!((corrupt["name"].as_str(), corrupt["state"].as_str()), (Some("corrupt"), Some("rejected")));
    let reason = corrupt["last_rejection"].as_str().unwrap();
    assert!(reason.contains("not a valid WebAssembly component"), "{reason}");
    assert_eq!((f["state"].as_str(), f["version"].as_str()), (Some("serving"), Some(digest.as_str())));
    host.stop();
}

#[test]
fn a_request_waiting_for_its_delivery_does_not_hold_a_stop_past_the_grace_period() {
    // The message waits in its queue (its endpoint refuses; queue timeout ten minutes) and its
    // request waits for it (`?wait=true`): SIGTERM stops the host at the grace period, the
    // message dead-lettered `shutdown` and the request answered, not ten minutes later. The answer
    // is sent before the process ends (it once raced the exit and the client saw the socket close).
    let dir = plugin_dir(&[]);
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[host]\nwatch = false\nplugin_dir = \".\"\nshutdown_grace_ms = 500\n\
         [ingress.http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[destination]]\nname = \"api\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n\
         queue = {{ timeout_ms = 600000 }}\n[[route]]\nname = \"all\"\nto = \"api\"\n"
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    let admin = host.address("admin API listening on http://");
    let waiting = std::thread::spawn(move || post(ingress, "/v1/messages/t?wait=true", &[], b"{}"));
    eventually(|| {
        let (_, text) = http(admin, "GET", "/metrics", &[], b"");
        match sample(&text, "switchyard_messages_accepted_total", &[]) {
            Some(1.0) => Ok(()),
            seen => Err(seen),
        }
    });
    host.terminate();
    let stopped = host.stopped();
    assert!(stopped.contains(r#""dead_lettered":1"#), "{stopped}");
    let (status, answer) = waiting.join().unwrap();
    assert!(status == 422 && answer.contains(r#""code":"shutdown""#), "{status} {answer}");
}

#[test]
fn a_write_past_the_file_size_limit_fails_that_attempt_and_the_host_lives_on() {
    // `ulimit -f 2`: files of at most 1 KiB. The 2 KiB message's line cannot be written; by default
    // SIGXFSZ would kill the host with everything it holds. The write fails with EFBIG instead, the
    // part written is cut back off, the message is dead-lettered at once (it can never fit) and the
    // next small message still fits.
    let dir = plugin_dir(&[]);
    // Not the plugin directory: a file destination may not write in it.
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let config = "[host]\nwatch = false\nplugin_dir = \"plugins\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n\
                  [[destination]]\nname = \"files\"\ntransport = \"file\"\noptions = { path = \"out.jsonl\" }\n\
                  queue = { timeout_ms = 500 }\n[[route]]\nname = \"all\"\nto = \"files\"\n";
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -f 2 && exec \"$@\"", "sh", BINARY, "run", "--config", "switchyard.toml"]);
    command.current_dir(dir.path());
    let mut host = Running::spawn(command);
    let ingress = host.address("HTTP ingress listening on http://");
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"first").0, 204);
    let (status, answer) = post(ingress, "/v1/messages/t?wait=true", &[], &[b'x'; 2048]);
    assert!(
        status == 422 && answer.contains("the line alone is larger than the file size limit"),
        "{answer}"
    );
    assert_eq!(post(ingress, "/v1/messages/t?wait=true", &[], b"second").0, 204);
    // A line within the limit that the file has no room left for: the file is full, not the
    // message too large; the endpoint is down and the message waits in its queue (an operator may
    // move the file) until its queue timeout.
    let (status, answer) = post(ingress, "/v1/messages/t?wait=true", &[], &[b'y'; 700]);
    let waited = answer.contains(r#""code":"queue-timeout""#) && answer.contains("File too large");
    assert!(status == 422 && waited && !answer.contains("the line alone"), "{answer}");
    let stopped = host.stop();
    assert!(stopped.contains(r#""delivered":2"#) && stopped.contains(r#""dead_lettered":2"#), "{stopped}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let payloads: Vec<String> = written
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["payload"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(payloads, ["first", "second"], "{written}");
}

/// `switchyard run` stopped while a hung disk holds a dead letter on its way into the dead-letter
/// file stops without it, says so, and exits: the append it gave up on goes on on its thread, and
/// the process does not wait for it.
#[test]
fn run_stopped_while_a_hung_disk_holds_a_dead_letter_exits_and_says_what_it_gave_up_on() {
    let dir = plugin_dir(&[]);
    // Nothing listens there: the dead letter goes to the file.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        "[host]\nwatch = false\nplugin_dir = \".\"\nstate_dir = \"state\"\nshutdown_grace_ms = 200\n\
         dead_letter = \"dlq\"\n[ingress.http]\nlisten = \"127.0.0.1:0\"\n\
         [[destination]]\nname = \"dlq\"\ntransport = \"http\"\nendpoints = [\"{refusing}\"]\n"
    );
    std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
    let mut host = Running::start(&["run", "--config", "switchyard.toml"], dir.path());
    let ingress = host.address("HTTP ingress listening on http://");
    // Made once the host counted the file at its start: the letter's append opens it, and waits.
    let hung = HungFile::at(dir.path().join("state").join(switchyard::dead_letter::FILE_NAME));
    let (status, body) = post(ingress, "/v1/messages/nowhere", &[], b"a letter");
    assert_eq!(status, 202, "{body}");

    host.terminate();
    let gave_up = host.line_where(|line| line.contains("the stop gave up on"));
    assert!(gave_up.contains("the dead letters still being appended to the dead-letter file"), "{gave_up}");
    let stopped = host.line_where(|line| line.starts_with("switchyard: stopped"));
    assert!(stopped.contains(r#""dead_lettered":0"#), "the letter never reached the file: {stopped}");
    let exited = eventually(|| host.child.try_wait().unwrap().ok_or("still running"));
    assert!(exited.success(), "{exited}");
    drop(hung);
}
