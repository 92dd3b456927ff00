//! Debian's headless Chromium for a test, driven over WebDriver: a
//! `chromedriver` child on a port it picks itself, killed when dropped, and a
//! fantoccini session of a fresh browser profile.

use crate::support::PATIENCE;
use fantoccini::{Client, ClientBuilder};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// What a machine without the browser is told.
const INSTALL: &str = "apt-get install chromium chromium-driver";

/// A `chromedriver` child process and a browser session through it.
pub struct Chromium {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
}

impl Chromium {
    /// A headless browser with a `width`×`height` window; fails the test,
    /// saying how to install them, when chromium or chromedriver is missing.
    pub async fn start(width: u32, height: u32) -> Chromium {
        let (browser, driver) = (executable("chromium"), executable("chromedriver"));
        // In a process group of its own, with the browsers it starts: all killed together.
        let mut driver = Command::new(driver)
            .process_group(0)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start chromedriver ({err}): {INSTALL}"));
        let stdout = driver.stdout.take().expect("piped");
        let port = tokio::task::spawn_blocking(move || started_on_port(stdout));
        let port =
            tokio::time::timeout(PATIENCE, port).await.expect("chromedriver started (safety net)").unwrap();
        let mut capabilities = serde_json::Map::new();
        let options = serde_json::json!({
            "binary": browser,
            // Root in a container: no sandbox; a small /dev/shm: use /tmp.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
        });
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|err| panic!("a chromium session ({err}); is chromium installed? {INSTALL}"));
        Chromium { client, driver }
    }
}

impl Chromium {
    /// End the session (the browser quits), then chromedriver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // chromedriver's process group holds the browsers it started (a failed test never quit them).
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// The port of "ChromeDriver was started successfully on port N." on `stdout`.
fn started_on_port(stdout: std::process::ChildStdout) -> u16 {
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("chromedriver's output");
        if let Some(port) = line.strip_prefix("ChromeDriver was started successfully on port ") {
            return port.trim_end_matches('.').parse().expect("a port number");
        }
    }
    panic!("chromedriver exited without saying its port")
}

/// `name` on `PATH`, or a failure saying how to install it.
fn executable(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| panic!("{name} is needed to test the dashboard in a browser: {INSTALL}"))
}
