//! Builds every plugin crate under `plugins/` for `wasm32-wasip2` with one
//! nested `cargo build`, and the [`NATIVE`] ones as native libraries for the
//! host target with a second, and the Python and JavaScript plugins beside
//! them ([`languages`]), then writes their paths to `$OUT_DIR/plugins.rs`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/languages.rs"]
mod languages;

use languages::{LanguagePlugin, Started};

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

/// Plugins also built as native libraries (`cdylib`s for the host target).
const NATIVE: &[&str] = &[
    "annotate-middleware",
    "faulty-trap",
    "faulty-wrong-world",
    "header-filter",
    "least-loaded-balancer",
    "native-abi-mismatch",
    "native-constructor",
    "redact-transform",
    "stamp-transform",
];
/// The profile native libraries are built with: as `plugin`, but unwinding.
const NATIVE_PROFILE: &str = "plugin-native";

/// Outer-build settings that must not reach the nested build: flags meant for
/// the host target, the outer target dir (its lock would deadlock), a
/// `cargo clippy` wrapper, and the build-script variables describing the
/// outer crate. `CARGO_MAKEFLAGS` is kept on purpose: sharing the outer
/// jobserver keeps both builds within `-j` together.
const LEAKED: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
];
const LEAKED_PREFIXES: &[&str] = &["CARGO_PROFILE_", "CARGO_CFG_", "CARGO_FEATURE_"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // Not all of plugin-sdk/: its js/node_modules is large and never edited,
    // and Python writes `__pycache__` beside the SDK's modules.
    let watched = ["plugins", "plugin-sdk/Cargo.toml", "plugin-sdk/src", "plugin-sdk/wire"];
    for module in fs::read_dir(root.join("plugin-sdk/python/switchyard_plugin")).expect("read the Python SDK")
    {
        let module = module.expect("read the Python SDK").path();
        if module.extension().is_some_and(|ext| ext == "py") {
            println!("cargo:rerun-if-changed={}", module.display());
        }
    }
    let js = [
        "plugin-sdk/js/wire.js",
        "plugin-sdk/js/switchyard_plugin.js",
        "plugin-sdk/js/componentize.mjs",
        "plugin-sdk/js/stage.mjs",
    ];
    let js_tools = ["plugin-sdk/js/package-lock.json", "plugin-sdk/js/node_modules/.package-lock.json"];
    for watched in watched.into_iter().chain(js).chain(js_tools).chain(["wit", "Cargo.toml", "Cargo.lock"]) {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    if !target_installed() {
        println!("cargo::error=target {TARGET} is not installed: run `rustup target add {TARGET}`");
        return;
    }
    let plugins = discover(&root.join("plugins"), &manifest_dir);
    let language_plugins = languages::discover(&root.join("plugins"));
    let language_dir = out_dir.join("languages");
    fs::create_dir_all(&language_dir).expect("create the language plugins' output dir");
    let started: Vec<_> = language_plugins
        .iter()
        .map(|plugin| plugin.start(&root, &language_output(&language_dir, plugin)))
        .collect();
    let target_dir = nested_target_dir(&out_dir);
    let manifest = root.join("Cargo.toml");
    let host = env::var("TARGET").expect("set by cargo");
    let rust_built = build(&manifest, &target_dir, (PROFILE, TARGET), &plugins)
        && build(&manifest, &target_dir, (NATIVE_PROFILE, &host), NATIVE);
    let mut unbuilt = Vec::new();
    let mut failed: Vec<&str> = Vec::new();
    if !rust_built {
        failed.push("the Rust plugins");
    }
    for (plugin, started) in language_plugins.iter().zip(started) {
        match started {
            Started::Running(mut child) => {
                if !child.wait().expect("wait for a plugin build").success() {
                    failed.push(&plugin.name);
                }
            }
            Started::Unbuilt(hint) => unbuilt.push((language_output(&language_dir, plugin), hint)),
        }
    }
    if !failed.is_empty() {
        // A failing exit status (not `cargo::error`, which cargo shows
        // without the script's output) makes cargo print the nested builds'
        // output under `--- stderr`.
        eprintln!("building {} failed; the nested build output is above", failed.join(", "));
        std::process::exit(1);
    }
    for (_, hint) in &unbuilt {
        println!("cargo::warning={hint}");
    }
    let wasm_dir = target_dir.join(TARGET).join(PROFILE);
    let native_dir = target_dir.join(host).join(NATIVE_PROFILE);
    let mut components: Vec<_> =
        plugins.iter().map(|name| (name.clone(), wasm_dir.join(wasm_file(name)))).collect();
    components.extend(
        language_plugins.iter().map(|plugin| (plugin.name.clone(), language_output(&language_dir, plugin))),
    );
    components.sort();
    fs::write(out_dir.join("plugins.rs"), generate(&components, &native_dir, &unbuilt))
        .expect("write plugins.rs");
}

/// Where the nested builds put what they build: one directory beside the
/// outer build's `build/`, shared by every outer build of that profile (the
/// tests', `cargo clippy`'s, `cargo doc`'s), so that each does not build the
/// plugins and their dependencies again into its own `OUT_DIR` (340 MB, and
/// minutes of a 2-core machine).
/// Two at once take turns: cargo locks a target directory.
fn nested_target_dir(out_dir: &Path) -> PathBuf {
    // `OUT_DIR` is `<target dir>/<profile>/build/<crate>-<hash>/out`.
    match out_dir.ancestors().nth(3) {
        Some(profile_dir) => profile_dir.join("plugin-artifacts"),
        None => out_dir.join("target"),
    }
}

fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc).args(["--print", "target-libdir", "--target", TARGET]).output();
    output.is_ok_and(|output| {
        output.status.success() && Path::new(String::from_utf8_lossy(&output.stdout).trim()).is_dir()
    })
}

/// Package names of the crates `plugins/*/Cargo.toml`, except this one, sorted.
fn discover(plugins_dir: &Path, this_crate: &Path) -> Vec<String> {
    let this_crate = this_crate.canonicalize().expect("canonical manifest dir");
    let mut names = Vec::new();
    for entry in fs::read_dir(plugins_dir).expect("read plugins/") {
        let dir = entry.expect("read plugins/ entry").path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() || dir.canonicalize().ok().as_deref() == Some(this_crate.as_path()) {
            continue;
        }
        let text = fs::read_to_string(&manifest).expect("read plugin manifest");
        let name = package_name(&text).unwrap_or_else(|| panic!("no package name in {}", manifest.display()));
        names.push(name);
    }
    names.sort();
    names
}

/// The `name` key of the `[package]` table (enough TOML for our manifests).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_owned());
        }
    }
    None
}

/// Build `plugins` with `(profile, target)` into `target_dir`.
fn build(
    manifest: &Path,
    target_dir: &Path,
    (profile, target): (&str, &str),
    plugins: &[impl AsRef<str>],
) -> bool {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--profile", profile, "--target", target, "--manifest-path"]);
    command.arg(manifest);
    for plugin in plugins {
        command.args(["--package", plugin.as_ref()]);
    }
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if LEAKED.contains(&&*key) || LEAKED_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
            command.env_remove(&*key);
        }
    }
    command.env("CARGO_TARGET_DIR", target_dir);
    eprintln!("running: {command:?}");
    command.status().is_ok_and(|status| status.success())
}

/// The component file a plugin named `name` is built to.
fn wasm_file(name: &str) -> String {
    format!("{}.wasm", name.replace('-', "_"))
}

fn language_output(dir: &Path, plugin: &LanguagePlugin) -> PathBuf {
    dir.join(wasm_file(&plugin.name))
}

/// The generated code for `components` (`(name, path)`, sorted by name), the
/// native libraries in `native_dir`, and the `unbuilt` components
/// (`(path, install hint)`).
fn generate(components: &[(String, PathBuf)], native_dir: &Path, unbuilt: &[(PathBuf, String)]) -> String {
    let mut code = String::new();
    let mut native = String::new();
    let mut all = String::new();
    let mut foreach = String::new();
    for (plugin, path) in components {
        let snake = plugin.replace('-', "_");
        let constant = snake.to_uppercase();
        code += &format!("/// The `{plugin}` component (`plugins/{plugin}`).\n");
        code += &format!("pub const {constant}: &str = {:?};\n", path.display().to_string());
        all += &format!("    ({plugin:?}, {constant}),\n");
        foreach += &format!("        $mac!({snake});\n");
        if NATIVE.contains(&plugin.as_str()) {
            let file = format!("{}{snake}.{}", env::consts::DLL_PREFIX, env::consts::DLL_EXTENSION);
            native += &format!("    /// The `{plugin}` native library (`plugins/{plugin}`).\n");
            native += &format!(
                "    pub const {constant}: &str = {:?};\n",
                native_dir.join(file).display().to_string()
            );
        }
    }
    code += "\n/// The plugins also built as native libraries for the host target, by name.\n";
    code += &format!("pub mod native {{\n{native}}}\n\n");
    code += "\n/// Every plugin as `(name, path)`, sorted by name.\n";
    code += &format!("pub const ALL: &[(&str, &str)] = &[\n{all}];\n");
    let unbuilt: String = unbuilt
        .iter()
        .map(|(path, hint)| format!("    ({:?}, {hint:?}),\n", path.display().to_string()))
        .collect();
    code += "\n/// Components not built because a tool is missing, as `(path, how to install it)`.\n";
    code += &format!("pub const UNBUILT: &[(&str, &str)] = &[\n{unbuilt}];\n");
    code += "\n/// Calls `$mac!(snake_case_name)` once per plugin, e.g. to require a test for each.\n";
    code += &format!(
        "#[macro_export]\nmacro_rules! foreach_plugin {{\n    ($mac:ident) => {{\n{foreach}    }};\n}}\n"
    );
    code
}
