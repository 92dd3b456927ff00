//! `switchyard plugin new NAME --kind KIND --lang LANG`: a ready plugin project.
//!
//! Every project has a manifest, a source implementing the kind, a test of
//! its logic, and a README of three commands (test, build, check). The
//! templates live beside this file; `{{name}}`, `{{snake}}`, `{{kind}}`,
//! `{{world}}`, `{{try}}` (how to try the plugin), `{{sdk}}` and `{{wit}}`
//! (quoted for a shell) and `{{sdk_toml}}` (a TOML string) are filled in.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// The kinds of plugin a project can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Keeps or drops messages.
    Filter,
    /// Rewrites messages: each input yields zero, one or many outputs.
    Transform,
    /// Sees a request before delivery and its reply after.
    Middleware,
    /// Chooses the endpoint a message goes to.
    Balancer,
    /// Delivers messages to an endpoint.
    Transport,
}

/// The languages a project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the `switchyard-plugin` crate.
    Rust,
    /// Python, with `plugin-sdk/python` and componentize-py.
    Python,
    /// JavaScript, with `plugin-sdk/js` and componentize-js.
    Js,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Transform => "transform",
            Kind::Middleware => "middleware",
            Kind::Balancer => "balancer",
            Kind::Transport => "transport",
        }
    }
}

/// `(path in the project, template)` for one kind in one language, or
/// `None` when that language's SDK does not offer the kind.
fn files(kind: Kind, lang: Lang) -> Option<Vec<(&'static str, &'static str)>> {
    let files = match (lang, kind) {
        (Lang::Rust, kind) => {
            let source = match kind {
                Kind::Filter => include_str!("rust/filter.rs"),
                Kind::Transform => include_str!("rust/transform.rs"),
                Kind::Middleware => include_str!("rust/middleware.rs"),
                Kind::Balancer => include_str!("rust/balancer.rs"),
                Kind::Transport => include_str!("rust/transport.rs"),
            };
            vec![
                ("Cargo.toml", include_str!("rust/Cargo.toml.in")),
                ("rust-toolchain.toml", include_str!("../../../../rust-toolchain.toml")),
                (".cargo/config.toml", include_str!("../../../../.cargo/config.toml")),
                ("README.md", include_str!("rust/README.md.in")),
                ("src/lib.rs", source),
            ]
        }
        (Lang::Python, Kind::Filter) => vec![
            ("app.py", include_str!("python/filter.py")),
            ("test_app.py", include_str!("python/filter_test.py")),
        ],
        (Lang::Python, Kind::Transform) => vec![
            ("app.py", include_str!("python/transform.py")),
            ("test_app.py", include_str!("python/transform_test.py")),
        ],
        (Lang::Js, Kind::Filter) => vec![
            ("app.js", include_str!("js/filter.js")),
            ("rules.js", include_str!("js/filter.rules.js")),
            ("rules.test.js", include_str!("js/filter.test.js")),
        ],
        (Lang::Js, Kind::Transform) => vec![
            ("app.js", include_str!("js/transform.js")),
            ("rules.js", include_str!("js/transform.rules.js")),
            ("rules.test.js", include_str!("js/transform.test.js")),
        ],
        (Lang::Python | Lang::Js, _) => return None,
    };
    let common = match lang {
        Lang::Rust => vec![],
        Lang::Python => {
            vec![
                ("pyproject.toml", include_str!("python/pyproject.toml.in")),
                ("README.md", include_str!("python/README.md.in")),
            ]
        }
        Lang::Js => {
            vec![
                ("package.json", include_str!("js/package.json.in")),
                ("README.md", include_str!("js/README.md.in")),
            ]
        }
    };
    Some(files.into_iter().chain(common).collect())
}

/// The `plugin-sdk` directory of the Switchyard checkout this binary was
/// built from: Rust projects depend on it by path, Python and JavaScript ones
/// build with it.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk")
}

/// Write the project `name` of `kind` in `lang` to the new directory `dir`
/// (default: `./NAME`), using the SDK at `sdk` (default: this checkout's).
pub fn new(
    name: &str,
    kind: Kind,
    lang: Lang,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("plugin name {name:?}: use lowercase letters, digits and dashes, starting with a letter");
    }
    if SDK_CRATES.contains(&name) {
        bail!(
            "plugin name {name:?}: the name of a crate of the SDK, which the project depends on; choose another"
        );
    }
    let Some(files) = files(kind, lang) else {
        bail!("the {} SDK offers filter and transform plugins, not {}", lang_name(lang), kind.as_str());
    };
    // Unnamed, the SDK is looked for in the checkout this binary was built from, which a binary
    // moved elsewhere may no longer have: then say how to name one.
    let hint = match sdk {
        Some(_) => "",
        None => {
            " (the checkout this binary was built from; name another with --sdk DIR, the plugin-sdk directory of a Switchyard checkout)"
        }
    };
    let sdk = sdk.unwrap_or_else(default_sdk);
    let sdk = sdk.canonicalize().with_context(|| format!("SDK directory {}{hint}", sdk.display()))?;
    let wit = sdk.parent().context("the SDK directory has a parent")?.join("wit");
    let part = sdk_part(lang);
    if !sdk.join(part).exists() || !wit.is_dir() {
        bail!(
            "SDK directory {}{hint}: not Switchyard's plugin-sdk (no {part} in it, or no wit beside it)",
            sdk.display()
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        bail!("{}: already exists; choose another directory", dir.display());
    }
    let snake = name.replace('-', "_");
    let values = [
        ("{{try}}", try_it(kind, lang, &snake)),
        ("{{name}}", name.to_owned()),
        ("{{snake}}", snake),
        ("{{kind}}", kind.as_str().to_owned()),
        ("{{world}}", format!("{}-plugin", kind.as_str())),
        ("{{sdk_toml}}", toml::Value::String(sdk.display().to_string()).to_string()),
        ("{{sdk}}", shell_quoted(&sdk.display().to_string())),
        ("{{wit}}", shell_quoted(&wit.display().to_string())),
    ];
    for (path, template) in files {
        let text = values.iter().fold(template.to_owned(), |text, (key, value)| text.replace(key, value));
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the project"))
            .with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    println!(
        "created {} ({} {}): see {}",
        name,
        lang_name(lang),
        kind.as_str(),
        dir.join("README.md").display()
    );
    Ok(())
}

/// The crates of the SDK: a project of one of these names would collide with its dependency.
const SDK_CRATES: [&str; 2] = ["switchyard-plugin", "switchyard-wire"];

/// What a project in `lang` uses of the SDK directory.
fn sdk_part(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Cargo.toml",
        Lang::Python => "python/switchyard_plugin",
        Lang::Js => "js/componentize.mjs",
    }
}

/// The README's closing advice: how to try a plugin of `kind` built as `snake`.
fn try_it(kind: Kind, lang: Lang, snake: &str) -> String {
    let file = match lang {
        Lang::Rust => format!("target/wasm32-wasip2/release/{snake}.wasm"),
        Lang::Python | Lang::Js => format!("{snake}.wasm"),
    };
    let message = r#"--message '{"topic": "orders.eu", "headers": {"x-tenant": "acme"}, "payload": "hi"}'"#;
    let native = format!(
        "\n\nThe same source builds as a native plugin (trusted code, no sandbox: read the host README's \
         \"Security model\" first): `cargo build --profile native` makes `target/native/lib{snake}.so`."
    );
    match (kind, lang) {
        (Kind::Balancer, _) => format!(
            "Then use it as a destination's balancer: `balancer = \"plugin:NAME\"`, with `{file}` in the plugin \
             directory as `NAME.wasm`.{native}"
        ),
        (Kind::Transport, _) => format!(
            "Then try it on one message with `switchyard plugin call {file} --address 127.0.0.1:9 {message}` \
             (this one answers without connecting: make `open` connect to the address)."
        ),
        (_, Lang::Rust) => {
            format!("Then try it on one message with `switchyard plugin call {file} {message}`.{native}")
        }
        _ => format!("Then try it on one message with `switchyard plugin call {file} {message}`."),
    }
}

/// `text` as one word for a POSIX shell: as it is when it holds nothing a shell reads specially,
/// else in single quotes.
fn shell_quoted(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+@%:,=".contains(c);
    match !text.is_empty() && text.chars().all(plain) {
        true => text.to_owned(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    }
}
