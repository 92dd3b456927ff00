//! The JetStream scale-out figure, as a report (ignored; `scripts/jetstream-scale` runs it against a
//! release binary): messages a second with 1, 2 and 3 `switchyard run` processes pulling one stream
//! through one durable consumer, each delivering through the `nats` transport to a core subject
//! nobody subscribes to (the server takes and discards it), each message acknowledged once
//! delivered. Beside the rate: CPU time per message of the hosts together and of `nats-server`,
//! and the load average (a shared machine moves wall-clock figures).
//!
//! For each host count a fresh stream is filled with `JETSTREAM_MESSAGES` (60 000) 256-byte
//! messages, the hosts start, and the rate is taken from 20 % to 90 % of the stream acknowledged,
//! so start-up and the tail are left out. The binary is `SWITCHYARD_BIN`, else this build's.

use crate::nats_server::NatsServer;
use async_nats::jetstream;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: scripts/jetstream-scale"]
async fn jetstream_scale_out_report() {
    let messages: u64 =
        std::env::var("JETSTREAM_MESSAGES").ok().and_then(|n| n.parse().ok()).unwrap_or(60_000);
    let server = NatsServer::start_jetstream();
    let context = jetstream::new(server.client().await);
    println!(
        "jetstream ingress, {messages} messages of 256 B a run, `switchyard run` processes ({}) on one durable \
         consumer -> nats transport:",
        binary()
    );
    for hosts in 1..=3 {
        let stream = format!("BENCH{hosts}");
        fill(&context, &stream, messages).await;
        let address = server.address();
        let running: Vec<Host> = (0..hosts).map(|_| Host::start(&address, &stream)).collect();
        let mut marks = Vec::new();
        for threshold in [messages * 8 / 10, messages / 10] {
            loop {
                let left = remaining(&context, &stream).await;
                if left <= threshold {
                    let cpu: f64 = running.iter().map(|host| cpu_seconds(host.child.id())).sum();
                    marks.push((Instant::now(), left, cpu, cpu_seconds(server.pid())));
                    break;
                }
                // The poll's pace, not a synchronisation: the condition is what is waited on.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let ((t0, left0, cpu0, server0), (t1, left1, cpu1, server1)) = (marks[0], marks[1]);
        let done = (left0 - left1) as f64;
        let rate = done / (t1 - t0).as_secs_f64();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "  {hosts} host(s): {rate:>7.0} msgs/s  hosts {:>5.1} us CPU/msg  nats-server {:>5.1} us CPU/msg  \
             (load {})",
            (cpu1 - cpu0) * 1e6 / done,
            (server1 - server0) * 1e6 / done,
            load.join(" ")
        );
        drop(running);
    }
}

/// Messages of `stream` not yet acknowledged (pending or in flight).
async fn remaining(context: &jetstream::Context, stream: &str) -> u64 {
    let stream = context.get_stream(stream).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer("switchyard").await.unwrap();
    let info = consumer.info().await.unwrap();
    info.num_pending + info.num_ack_pending as u64
}

/// The `switchyard` binary measured: `SWITCHYARD_BIN`, else this build's.
fn binary() -> String {
    std::env::var("SWITCHYARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_owned())
}

/// Create `stream` on `bench.<stream>.>` and publish `messages` to it, all stored once this returns.
async fn fill(context: &jetstream::Context, stream: &str, messages: u64) {
    let config = jetstream::stream::Config {
        name: stream.to_owned(),
        subjects: vec![format!("{}.>", stream.to_lowercase())],
        ..Default::default()
    };
    context.create_stream(config).await.unwrap();
    let payload = bytes::Bytes::from(vec![b'x'; 256]);
    let subject = format!("{}.orders", stream.to_lowercase());
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..messages {
        acks.push(context.publish(subject.clone(), payload.clone()).await.unwrap());
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A `switchyard run` process (of [`binary`]) consuming `stream`, killed on drop.
struct Host {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Host {
    /// Start it; returns once it consumes.
    fn start(server: &str, stream: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[host]\nplugin_dir = \".\"\nstate_dir = \"state\"\nwatch = false\n\
             [[ingress.nats]]\nurl = \"{server}\"\nstream = \"{stream}\"\n\
             [[destination]]\nname = \"bus\"\ntransport = \"nats\"\nendpoints = [\"{server}\"]\n\
             options = {{ subject = \"discarded.{{topic}}\" }}\n[[route]]\nname = \"all\"\nto = \"bus\"\n"
        );
        std::fs::write(dir.path().join("switchyard.toml"), config).unwrap();
        let mut child = Command::new(binary())
            .args(["run", "--config", "switchyard.toml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchyard");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("switchyard exited before consuming").unwrap();
            if line.contains("consuming JetStream stream") {
                break;
            }
        }
        // Keep reading, so the host never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Host { child, _dir: dir }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User and system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces): state is the 3rd field, utime the 14th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

/// Clock ticks a second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(output.stdout).unwrap().trim().parse().unwrap()
}
