//! The `switchyard run` child process: started on free ports, its output
//! kept in a log file, its memory and CPU time read from `/proc`, stopped
//! with SIGTERM.

use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long the host may take to start listening, or to stop.
const PATIENCE: Duration = Duration::from_secs(120);

/// Resident memory and CPU time of the process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// `VmRSS` of `/proc/PID/status`, in KiB.
    pub rss_kib: u64,
    /// User plus system CPU time so far.
    pub cpu: Duration,
}

/// A running host.
pub struct HostProcess {
    child: Child,
    pid: u32,
    /// Its status lines (`switchyard: …`), from stdout or stderr.
    status_lines: mpsc::UnboundedReceiver<String>,
    /// Its log lines by level (`WARN`, `ERROR`, …).
    levels: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Where its HTTP ingress listens.
    pub ingress: SocketAddr,
    /// Where its admin API listens.
    pub admin: SocketAddr,
}

impl HostProcess {
    /// Starts `binary run --config CONFIG --log-format json`, writing all its
    /// output to `log`, and waits until its ingress and admin API listen.
    pub async fn start(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<HostProcess> {
        let mut child = Command::new(binary)
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the host exited at once")?;
        let log =
            Arc::new(Mutex::new(std::fs::File::create(log).with_context(|| format!("{}", log.display()))?));
        let levels = Arc::default();
        let (lines, status_lines) = mpsc::unbounded_channel();
        read_lines(child.stdout.take().context("stdout")?, log.clone(), lines.clone(), Arc::clone(&levels));
        read_lines(child.stderr.take().context("stderr")?, log, lines, Arc::clone(&levels));
        let mut host = HostProcess { child, pid, status_lines, levels, ingress: unbound(), admin: unbound() };
        host.ingress = host.address("HTTP ingress listening on http://").await?;
        host.admin = host.address("admin API listening on http://").await?;
        Ok(host)
    }

    /// The address at the end of the first status line containing `what`.
    async fn address(&mut self, what: &str) -> anyhow::Result<SocketAddr> {
        let line = self.status_line(|line| line.contains(what)).await?;
        let addr = line.rsplit("http://").next().unwrap_or_default();
        addr.trim().parse().with_context(|| format!("no address in {line:?}"))
    }

    /// The first status line from now on satisfying `want`.
    async fn status_line(&mut self, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.status_lines.recv().await {
                if want(&line) {
                    return Ok(line);
                }
            }
            Err(anyhow!("the host exited: {:?}", self.child.try_wait()))
        });
        found.await.map_err(|_| anyhow!("the host said nothing wanted within {PATIENCE:?}"))?
    }

    /// Its memory and CPU time now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let gone = || format!("reading /proc/{}: has the host exited?", self.pid);
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).with_context(gone)?;
        let rss = status.lines().find_map(|line| line.strip_prefix("VmRSS:")).context("no VmRSS")?;
        let rss_kib = rss.trim().trim_end_matches("kB").trim().parse()?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).with_context(gone)?;
        // Fields after the command name, which is in parentheses: state is
        // field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12.
        let fields: Vec<&str> = stat.rsplit_once(')').context("odd stat")?.1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(Usage { rss_kib, cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second()) })
    }

    /// Log lines by level so far.
    pub fn levels(&self) -> BTreeMap<String, u64> {
        self.levels.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for it to drain and exit; returns its
    /// `switchyard: stopped; {stats}` line.
    pub async fn stop(mut self) -> anyhow::Result<String> {
        let signalled = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await?;
        if !signalled.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let stopped = self.status_line(|line| line.starts_with("switchyard: stopped")).await;
        let status =
            tokio::time::timeout(PATIENCE, self.child.wait()).await.context("the host did not exit")??;
        if !status.success() {
            bail!("the host exited with {status}");
        }
        stopped
    }
}

fn unbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Copies each line of `output` (one JSON object a line) to `log`, counts its level, and passes
/// on the status lines.
fn read_lines(
    output: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<std::fs::File>>,
    status_lines: mpsc::UnboundedSender<String>,
    levels: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log.lock().unwrap(), "{line}");
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if let Some(level) = entry["level"].as_str() {
                *levels.lock().unwrap().entry(level.to_owned()).or_default() += 1;
            }
            // Under `--log-format json` a status line is an event whose message is the line.
            if let Some(status) = entry["fields"]["message"].as_str().filter(|m| m.starts_with("switchyard:"))
            {
                let _ = status_lines.send(status.to_owned());
            }
        }
    });
}

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc/PID/stat`.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let output = std::process::Command::new("getconf").arg("CLK_TCK").output();
        output
            .ok()
            .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
