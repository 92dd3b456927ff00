//! Plugins written in Python or JavaScript: found by their manifest, built to
//! components by componentize-py and componentize-js, in parallel with the
//! Rust build. A missing tool does not fail the build: the plugin is listed
//! as unbuilt with the command that installs the tool, and the tests that
//! need it fail saying so.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The language of a plugin, told by its manifest.
#[derive(Debug, Clone, Copy)]
pub enum Language {
    /// `pyproject.toml` with `[tool.switchyard] world = ".."`, module `app.py`.
    Python,
    /// `package.json` with `"switchyard": { "world": ".." }`, module `app.js`.
    JavaScript,
}

/// A Python or JavaScript plugin directory under `plugins/`.
#[derive(Debug)]
pub struct LanguagePlugin {
    /// The directory name, e.g. `python-filter`.
    pub name: String,
    /// The plugin's directory.
    pub dir: PathBuf,
    /// What it is written in.
    pub language: Language,
    /// The WIT world it targets, e.g. `filter-plugin`.
    pub world: String,
}

/// The Python and JavaScript plugins under `plugins_dir`, sorted by name.
pub fn discover(plugins_dir: &Path) -> Vec<LanguagePlugin> {
    let mut found = Vec::new();
    for entry in fs::read_dir(plugins_dir).expect("read plugins/") {
        let dir = entry.expect("read plugins/ entry").path();
        let name = dir.file_name().expect("entry name").to_string_lossy().into_owned();
        let manifests = [("pyproject.toml", Language::Python), ("package.json", Language::JavaScript)];
        for (manifest, language) in manifests {
            let Ok(text) = fs::read_to_string(dir.join(manifest)) else { continue };
            let world = world(&text)
                .unwrap_or_else(|| panic!("{}: no switchyard `world` key", dir.join(manifest).display()));
            found.push(LanguagePlugin { name: name.clone(), dir: dir.clone(), language, world });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The value of the first `world` key (`world = "x"` in TOML, `"world": "x"` in JSON).
fn world(manifest: &str) -> Option<String> {
    manifest.match_indices("world").find_map(|(at, key)| {
        let rest = manifest[at + key.len()..].trim_start_matches('"').trim_start();
        let rest = rest.strip_prefix(['=', ':'])?.trim_start().strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_owned())
    })
}

/// A started build of one plugin, or why it could not start.
pub enum Started {
    /// The build runs.
    Running(Child),
    /// The tool is missing: the hint says how to install it.
    Unbuilt(String),
}

impl LanguagePlugin {
    /// Start building this plugin to `output` against the WIT in `root/wit`.
    pub fn start(&self, root: &Path, output: &Path) -> Started {
        let wit = root.join("wit");
        let mut command = match self.language {
            Language::Python => {
                if !runs("componentize-py", &["--version"]) {
                    return Started::Unbuilt(
                        "componentize-py is not installed: run `python3 -m pip install componentize-py`"
                            .into(),
                    );
                }
                // componentize-py writes `__pycache__` beside the sources it
                // imports; building copies keeps the watched tree unchanged.
                let stage = output.with_extension("py");
                copy_python(&self.dir, &stage);
                copy_python(
                    &root.join("plugin-sdk/python/switchyard_plugin"),
                    &stage.join("switchyard_plugin"),
                );
                let mut command = Command::new("componentize-py");
                command
                    .arg("-d")
                    .arg(&wit)
                    .args(["-w", &self.world, "componentize", "app", "-p"])
                    .arg(&stage);
                command
            }
            Language::JavaScript => {
                let sdk = root.join("plugin-sdk/js");
                if !runs("node", &["--version"])
                    || !sdk.join("node_modules/@bytecodealliance/componentize-js").is_dir()
                {
                    return Started::Unbuilt(format!(
                        "componentize-js is not installed: install Node.js and run `npm ci --prefix {}`",
                        sdk.display()
                    ));
                }
                let mut command = Command::new("node");
                command.arg(sdk.join("componentize.mjs")).arg("--wit").arg(&wit);
                command.args(["--world", &self.world]).arg(self.dir.join("app.js"));
                command
            }
        };
        command.arg("-o").arg(output);
        eprintln!("running: {command:?}");
        Started::Running(command.stdout(Stdio::inherit()).spawn().expect("start a plugin build"))
    }
}

/// Copy the `*.py` files of `from` to a fresh directory `to`.
fn copy_python(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).expect("create a Python staging dir");
    for entry in fs::read_dir(from).expect("read a Python plugin dir") {
        let path = entry.expect("read a Python plugin dir entry").path();
        if path.extension().is_some_and(|ext| ext == "py") {
            fs::copy(&path, to.join(path.file_name().expect("a file name"))).expect("stage a Python file");
        }
    }
}

fn runs(program: &str, args: &[&str]) -> bool {
    let status = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    status.is_ok_and(|status| status.success())
}
