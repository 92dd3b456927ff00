//! `switchyard plugin new`: a project for every kind × language the SDKs
//! offer, generated, then its README's commands run verbatim (test, build,
//! check) with this build's `switchyard` first on the `PATH`.

use std::path::Path;
use std::process::Command;

use crate::cli::{BINARY, switchyard};
use switchyard_plugin_artifacts::{self as artifacts, require};

/// Generated Rust projects share one target directory (symlinked as their
/// `target`), so the SDK is compiled once, and kept between runs.
const SHARED_TARGET: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-new");

/// Generate `name` of `kind` in `lang` under `parent`, then run its README's
/// commands and return their output.
fn generate_and_run_readme(parent: &Path, name: &str, kind: &str, lang: &str) -> String {
    let dir = parent.join(name);
    let (ok, out) =
        switchyard(&["plugin", "new", name, "--kind", kind, "--lang", lang, "--dir", dir.to_str().unwrap()]);
    assert!(ok, "plugin new {name} --kind {kind} --lang {lang}: {out}");
    if lang == "rust" {
        std::fs::create_dir_all(SHARED_TARGET).unwrap();
        std::os::unix::fs::symlink(SHARED_TARGET, dir.join("target")).unwrap();
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let script = readme.split("```bash\n").nth(1).and_then(|rest| rest.split("```").next());
    let script = script.unwrap_or_else(|| panic!("{name}: no bash block in its README:\n{readme}"));
    assert_eq!(script.lines().count(), 3, "three commands:\n{script}");
    let bin = Path::new(BINARY).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(&dir)
        .env("PATH", &path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{name}: its README's commands failed:\n{script}\n{text}");
    assert!(text.contains(&format!("is a {kind} plugin")), "{name}: check did not pass:\n{text}");
    // The README's other commands, as written: trying it on a message, building it natively.
    for command in readme.split('`').filter(|part| {
        part.starts_with("switchyard plugin call ") || part.starts_with("cargo build --profile native")
    }) {
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", command])
            .current_dir(&dir)
            .env("PATH", &path)
            .output()
            .unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{name}: `{command}` failed:\n{said}");
    }
    text
}

#[test]
fn plugin_new_rust_projects_of_every_kind_test_build_and_pass_check() {
    let parent = tempfile::tempdir().unwrap();
    for kind in ["filter", "transform", "middleware", "balancer", "transport"] {
        let out = generate_and_run_readme(parent.path(), &format!("my-{kind}"), kind, "rust");
        assert!(out.contains("test result: ok. 1 passed"), "{kind}: its test did not run:\n{out}");
    }
}

#[test]
fn plugin_new_python_projects_test_build_and_pass_check() {
    require(artifacts::PYTHON_FILTER);
    let parent = tempfile::tempdir().unwrap();
    for kind in ["filter", "transform"] {
        let out = generate_and_run_readme(parent.path(), &format!("py-{kind}"), kind, "python");
        assert!(out.contains("Ran 1 test"), "{kind}: its test did not run:\n{out}");
    }
}

#[test]
fn plugin_new_js_projects_test_build_and_pass_check() {
    require(artifacts::JS_TRANSFORM);
    let parent = tempfile::tempdir().unwrap();
    for kind in ["filter", "transform"] {
        let out = generate_and_run_readme(parent.path(), &format!("js-{kind}"), kind, "js");
        assert!(out.contains("# pass 1"), "{kind}: its test did not run:\n{out}");
    }
}

#[test]
fn plugin_new_refuses_a_kind_the_sdk_lacks_a_bad_name_and_an_existing_directory() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().to_str().unwrap();
    let (ok, out) =
        switchyard(&["plugin", "new", "b", "--kind", "balancer", "--lang", "python", "--dir", dir]);
    assert!(!ok && out.contains("the Python SDK offers filter and transform plugins, not balancer"), "{out}");
    let (ok, out) = switchyard(&["plugin", "new", "Bad_Name", "--kind", "filter", "--lang", "rust"]);
    assert!(!ok && out.contains("use lowercase letters, digits and dashes"), "{out}");
    let (ok, out) = switchyard(&["plugin", "new", "f", "--kind", "filter", "--lang", "rust", "--dir", dir]);
    assert!(!ok && out.contains("already exists"), "{out}");
}

/// `bytes` with every `from` replaced by `to` (of the same length), and how many there were.
fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(from.len()).position(|window| window == from) {
        bytes[at + offset..at + offset + to.len()].copy_from_slice(to);
        count += 1;
        at += offset + to.len();
    }
    count
}

#[test]
fn plugin_new_from_a_binary_away_from_its_checkout_says_to_name_the_sdk() {
    // A copy of this build's binary whose checkout is gone: the checkout path built into it (where it
    // looks for the SDK by default) made one that does not exist, of the same length.
    let checkout = env!("CARGO_MANIFEST_DIR");
    let gone = format!("{}_", &checkout[..checkout.len() - 1]);
    let mut bytes = std::fs::read(BINARY).unwrap();
    assert!(replace_all(&mut bytes, checkout.as_bytes(), gone.as_bytes()) > 0, "no {checkout} in {BINARY}");
    let parent = tempfile::tempdir().unwrap();
    let (written, moved) = (parent.path().join("switchyard.bytes"), parent.path().join("switchyard"));
    std::fs::write(&written, bytes).unwrap();
    // Made by a child process: a file this process opened for writing may still be open in a child
    // another test forked meanwhile (until that child's exec), and running it then fails with
    // "Text file busy".
    let installed = Command::new("install").args(["-m", "755"]).arg(&written).arg(&moved).status().unwrap();
    assert!(installed.success(), "install {} {}", written.display(), moved.display());
    let new = |sdk: &[&str]| {
        let dir = parent.path().join("f");
        let args =
            ["plugin", "new", "f", "--kind", "filter", "--lang", "rust", "--dir", dir.to_str().unwrap()];
        Command::new(&moved).args(args).args(sdk).output().unwrap()
    };
    let output = new(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let sdk = format!("{gone}/../plugin-sdk");
    assert!(stderr.contains(&format!("SDK directory {sdk} (")), "{stderr}");
    assert!(stderr.contains("--sdk DIR"), "says how to name the SDK: {stderr}");
    // As it says: named, the SDK serves.
    let output = new(&["--sdk", concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
