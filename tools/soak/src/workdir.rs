//! The host's files: a config and a plugin directory in a temporary
//! directory, changed the way an operator would change them — written aside,
//! then renamed over the live file.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The plugin the route runs; its file alternates between two transforms.
pub const PLUGIN: &str = "xform";
/// The route whose priority each reload toggles.
pub const ROUTE: &str = "soak";

/// The most deliveries in flight to one endpoint at once (its `pool.max_size`): what a kill of it
/// cuts, at most.
pub const ENDPOINT_IN_FLIGHT: u64 = 64;

/// The temporary directory and what is live in it.
pub struct Workdir {
    dir: tempfile::TempDir,
    /// The config file the host runs with.
    pub config: PathBuf,
    /// The two versions of the plugin, as bytes.
    versions: [Vec<u8>; 2],
    /// Which of them the plugin file holds.
    live: usize,
    /// The route's priority in the config file.
    pub priority: u8,
    endpoints: Vec<SocketAddr>,
    dead_letters: SocketAddr,
}

impl Workdir {
    /// A config sending the route's messages to `endpoints` and dead letters
    /// to `dead_letters`, and a plugin directory holding the first of
    /// `plugins`.
    pub fn create(
        plugins: [&Path; 2],
        endpoints: &[SocketAddr],
        dead_letters: SocketAddr,
    ) -> anyhow::Result<Workdir> {
        let read =
            |path: &Path| std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()));
        let dir = tempfile::Builder::new().prefix("switchyard-soak-").tempdir()?;
        std::fs::create_dir(dir.path().join("plugins"))?;
        std::fs::create_dir(dir.path().join("state"))?;
        let workdir = Workdir {
            config: dir.path().join("soak.toml"),
            dir,
            versions: [read(plugins[0])?, read(plugins[1])?],
            live: 0,
            priority: 0,
            endpoints: endpoints.to_vec(),
            dead_letters,
        };
        workdir.replace(&workdir.plugin_file(), &workdir.versions[0])?;
        workdir.replace(&workdir.config, workdir.config_text().as_bytes())?;
        Ok(workdir)
    }

    /// Where the host's output goes.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("host.log")
    }

    /// Replaces the plugin file with the other version.
    pub fn swap_plugin(&mut self) -> anyhow::Result<()> {
        self.live = 1 - self.live;
        self.replace(&self.plugin_file(), &self.versions[self.live])
    }

    /// Rewrites the config with the route's priority toggled between 0 and 1.
    pub fn toggle_priority(&mut self) -> anyhow::Result<()> {
        self.priority = 1 - self.priority;
        self.replace(&self.config, self.config_text().as_bytes())
    }

    fn plugin_file(&self) -> PathBuf {
        self.dir.path().join("plugins").join(format!("{PLUGIN}.wasm"))
    }

    /// Writes `bytes` beside `path` under a name the host ignores, then
    /// renames it over `path`, so the host never reads a half-written file.
    fn replace(&self, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let name = path.file_name().context("a file path")?.to_string_lossy();
        let aside = path.with_file_name(format!(".{name}.incoming"));
        std::fs::write(&aside, bytes)?;
        std::fs::rename(&aside, path).with_context(|| format!("renaming over {}", path.display()))
    }

    fn config_text(&self) -> String {
        let quoted = |addrs: &[SocketAddr]| {
            addrs.iter().map(|addr| format!("\"{addr}\"")).collect::<Vec<_>>().join(", ")
        };
        format!(
            r#"# Written by the soak driver.
[host]
plugin_dir = "{plugins}"
state_dir = "{state}"
dead_letter = "dead-letters"

[ingress.http]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[destination]]
name = "sinks"
transport = "http"
endpoints = [{endpoints}]
options = {{ path = "/ingest" }}
queue = {{ timeout_ms = 30000 }}
pool = {{ max_size = {ENDPOINT_IN_FLIGHT} }}
health = {{ path = "/health", interval_ms = 100, rise = 2, fall = 2 }}   # a kill is seen as endpoint-down

[[destination]]
name = "dead-letters"
transport = "http"
endpoints = [{dead_letters}]
options = {{ path = "/dead-letters" }}
queue = {{ timeout_ms = 30000 }}

[[route]]
name = "{ROUTE}"
match = {{ topic = "soak.*" }}
stages = ["transform:{PLUGIN}"]
to = "sinks"
priority = {priority}
"#,
            plugins = self.dir.path().join("plugins").display(),
            state = self.dir.path().join("state").display(),
            endpoints = quoted(&self.endpoints),
            dead_letters = quoted(&[self.dead_letters]),
            priority = self.priority,
        )
    }
}
