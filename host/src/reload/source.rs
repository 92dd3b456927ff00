//! A plugin as its files describe it: `NAME.wasm` (or a native library,
//! `NAME.so` on Linux), and the optional sidecar `NAME.toml` holding its
//! settings (which win over the main config's).

use super::open_writes::OpenWrites;
use crate::config::{Config, ConfigError, DirGrant, HostSection, PluginConfig};
use crate::plugin::{LoadError, NativeRefusal, PluginFormat};
use crate::regular_file::{self, Links};
use std::path::{Path, PathBuf};

/// What the plugin directory says about one plugin name.
pub(crate) enum Source {
    /// The file is there and settled.
    Present { format: PluginFormat, bytes: Vec<u8>, config: PluginConfig },
    /// There is no such file (any more).
    Absent,
    /// The file or its sidecar changed while it was read (a copy in
    /// progress), or its writer holds it open still: wait for the next
    /// change event (its close).
    Unsettled,
}

/// What [`load_as_configured`] made of one plugin name.
pub enum ConfiguredPlugin {
    /// It has no file.
    Absent,
    /// Its file is a native library, left unopened as asked: opening one runs its code.
    NativeUnopened {
        /// The library's path.
        file: std::path::PathBuf,
    },
    /// It loaded.
    Loaded(std::sync::Arc<crate::plugin::CompiledPlugin>),
}

/// Plugin `name` of `config`'s plugin directory loaded as a host with `config` loads it: within
/// `host.max_plugin_bytes`, with its sidecar, its trial's answer within `host.max_message_bytes`,
/// a native library only with `host.native_plugins`, and then opened only when `open_native`;
/// but its start-up code and trial run with its grants withheld (no environment, directory or network).
/// What `switchyard check` tries, so that it and `run` agree without the check letting a plugin act.
pub fn load_as_configured(
    engine: &crate::plugin::PluginEngine,
    name: &str,
    config: &Config,
    open_native: bool,
) -> Result<ConfiguredPlugin, LoadError> {
    let dir = &config.host.plugin_dir;
    // Nothing is watched here: no file is known to be held open.
    match read_source(dir, name, config, &OpenWrites::default())? {
        Source::Present { format: PluginFormat::Native, .. } if !open_native => {
            let file = dir.join(format!("{name}.{}", PluginFormat::Native.extension()));
            Ok(ConfiguredPlugin::NativeUnopened { file })
        }
        Source::Present { format, bytes, config: settings } => {
            let settings = withheld_grants(settings)?;
            let max_message_bytes = config.host.max_message_bytes;
            let loaded = crate::plugin::load_bytes(engine, format, &bytes, settings, max_message_bytes);
            loaded.map(ConfiguredPlugin::Loaded)
        }
        Source::Absent => Ok(ConfiguredPlugin::Absent),
        Source::Unsettled => Err(LoadError::Read {
            name: name.to_owned(),
            path: dir.join(name).display().to_string(),
            error: std::io::Error::other("it changed while it was read"),
        }),
    }
}

/// The settings plugin `name` of `config`'s plugin directory is loaded with, read as a host with
/// `config` reads them: its sidecar `NAME.toml` over its `[[plugin]]` entry (else the defaults),
/// one that widens what the entry grants refused unless `host.sidecar_grants`. What
/// `switchyard plugin call` calls a plugin with.
pub fn configured_settings(name: &str, config: &Config) -> Result<PluginConfig, LoadError> {
    let dir = &config.host.plugin_dir;
    plugin_config(dir, name, config)?.ok_or_else(|| LoadError::Read {
        name: name.to_owned(),
        path: sidecar_of(dir, name).display().to_string(),
        error: std::io::Error::other("it changed while it was read"),
    })
}

/// `settings` with no environment, directory or network granted, once the directories they grant
/// proved to open as they would for `run` (their addresses were checked as the config was read): a
/// checked config's plugins must not read its secrets, write its directories or reach its peers.
fn withheld_grants(settings: PluginConfig) -> Result<PluginConfig, LoadError> {
    let dirs = PluginConfig { allow_net: Vec::new(), env: Vec::new(), ..settings.clone() };
    crate::plugin::PluginSettings::new(dirs)?.check_dirs()?;
    Ok(PluginConfig { allow_net: Vec::new(), env: Vec::new(), dirs: Default::default(), ..settings })
}

/// Read plugin `name` from `dir`, with its effective settings under `config`;
/// [`Source::Unsettled`] while its file or sidecar is in `writes`' hold.
/// A native library is neither read nor opened unless `host.native_plugins`
/// is set: it is refused.
pub(crate) fn read_source(
    dir: &Path,
    name: &str,
    config: &Config,
    writes: &OpenWrites,
) -> Result<Source, LoadError> {
    let file = |format: PluginFormat| dir.join(format!("{name}.{}", format.extension()));
    let exists = |format| file(format).symlink_metadata().is_ok();
    let format = match (exists(PluginFormat::Wasm), exists(PluginFormat::Native)) {
        (true, true) => {
            let native = PluginFormat::Native.extension();
            return Err(LoadError::TwoFiles { name: name.to_owned(), native });
        }
        (false, true) if !config.host.native_plugins => {
            let refusal = NativeRefusal::Disabled { file: file(PluginFormat::Native).display().to_string() };
            return Err(LoadError::NativeRefused { name: name.to_owned(), refusal });
        }
        (false, true) => PluginFormat::Native,
        _ => PluginFormat::Wasm,
    };
    let path = file(format);
    let read_error = |error: std::io::Error| LoadError::Read {
        name: name.to_owned(),
        path: path.display().to_string(),
        error,
    };
    let bytes = match regular_file::read(&path, config.host.max_plugin_bytes, Links::WithinDirectory) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Source::Unsettled),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return match not_utf8_file(dir, name) {
                Some(path) => {
                    Err(LoadError::NameNotUtf8 { name: name.to_owned(), path: path.display().to_string() })
                }
                None => Ok(Source::Absent),
            };
        }
        Err(err) => return Err(read_error(err)),
    };
    let Some(config) = plugin_config(dir, name, config)? else { return Ok(Source::Unsettled) };
    // Asked once read: a write told meanwhile is known then.
    if writes.holds(&path) || writes.holds(&sidecar_of(dir, name)) {
        return Ok(Source::Unsettled);
    }
    Ok(Source::Present { format, bytes, config })
}

/// The settings of plugin `name`: its sidecar if present, else its
/// `[[plugin]]` entry, else the defaults; `None` while the sidecar changes as
/// it is read. A sidecar may narrow what the entry grants, never widen it
/// (unless `host.sidecar_grants`).
pub(crate) fn plugin_config(
    dir: &Path,
    name: &str,
    config: &Config,
) -> Result<Option<PluginConfig>, LoadError> {
    let sidecar = sidecar_of(dir, name);
    let file = sidecar.display().to_string();
    let entry = || entry_of(config, name);
    let settings_error = |reason: String| LoadError::Settings { name: name.to_owned(), reason };
    match Config::read_text(&file, &sidecar, Links::WithinDirectory) {
        Ok(Some(text)) => {
            let entry = entry();
            let settings = parse_sidecar(&file, &entry, &text, &config.host)
                .map_err(|error| settings_error(error.to_string()))?;
            match widening(&settings, &entry) {
                Some((key, granted)) if !config.host.sidecar_grants => Err(settings_error(format!(
                    "{file}: {key} widens what the main config grants ({granted}); a sidecar may only narrow it (or set host.sidecar_grants = true)"
                ))),
                _ => Ok(Some(settings)),
            }
        }
        Ok(None) => Ok(None),
        Err(ConfigError::Read { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(Some(entry()))
        }
        Err(err) => Err(settings_error(err.to_string())),
    }
}

/// The files plugin `name` of `dir` is read from: its WebAssembly file, its native library and
/// its sidecar.
pub(crate) fn files_of(dir: &Path, name: &str) -> [std::path::PathBuf; 3] {
    let file = |format: PluginFormat| dir.join(format!("{name}.{}", format.extension()));
    [file(PluginFormat::Wasm), file(PluginFormat::Native), sidecar_of(dir, name)]
}

/// The plugin file of `dir` whose stem is not UTF-8 and reads `name` with its bytes that are not
/// shown as U+FFFD, if any: the file that a plugin so named comes from, and that no path made of
/// the name opens.
fn not_utf8_file(dir: &Path, name: &str) -> Option<PathBuf> {
    if !name.contains(char::REPLACEMENT_CHARACTER) {
        return None;
    }
    let not_utf8 = |stem: &std::ffi::OsStr| stem.to_str().is_none() && stem.to_string_lossy() == name;
    let entries = std::fs::read_dir(dir).ok()?.flatten();
    entries
        .map(|entry| entry.path())
        .find(|path| PluginFormat::of(path).is_some() && path.file_stem().is_some_and(not_utf8))
}

/// Plugin `name`'s sidecar in `dir`.
fn sidecar_of(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Plugin `name`'s `[[plugin]]` entry in `config`, else the defaults.
fn entry_of(config: &Config, name: &str) -> PluginConfig {
    let entry = config.plugins.iter().find(|plugin| plugin.name == name).cloned();
    entry.unwrap_or_else(|| PluginConfig { name: name.to_owned(), ..PluginConfig::default() })
}

/// What `settings` (those a plugin serves with) hold that `config` no longer grants, if anything:
/// a limit past its entry's, or an address, variable or directory its entry does not give. (With
/// `host.sidecar_grants`, a sidecar may grant anything: nothing is beyond.)
pub(crate) fn beyond_grants(settings: &PluginConfig, config: &Config) -> Option<(String, String)> {
    match config.host.sidecar_grants {
        true => None,
        false => widening(settings, &entry_of(config, &settings.name)),
    }
}

/// The first grant of `sidecar` beyond `entry`'s, as (key and value, what
/// `entry` grants), if any.
fn widening(sidecar: &PluginConfig, entry: &PluginConfig) -> Option<(String, String)> {
    let (limits, granted) = (&sidecar.limits, &entry.limits);
    if limits.memory_mb > granted.memory_mb {
        return Some((format!("limits.memory_mb = {}", limits.memory_mb), granted.memory_mb.to_string()));
    }
    if limits.timeout_ms > granted.timeout_ms {
        return Some((format!("limits.timeout_ms = {}", limits.timeout_ms), granted.timeout_ms.to_string()));
    }
    if let Some(address) = sidecar.allow_net.iter().find(|address| !entry.allow_net.contains(address)) {
        return Some((format!("allow_net \"{address}\""), format!("{:?}", entry.allow_net)));
    }
    if let Some(variable) = sidecar.env.iter().find(|variable| !entry.env.contains(variable)) {
        return Some((format!("env \"{variable}\""), format!("{:?}", entry.env)));
    }
    // A directory the entry grants may be narrowed to read-only, nothing more.
    for (guest, value) in &sidecar.dirs {
        let within = |given: &String| DirGrant::parse(value).within(&DirGrant::parse(given));
        if !entry.dirs.get(guest).is_some_and(within) {
            return Some((format!("dirs.\"{guest}\" = \"{value}\""), format!("{:?}", entry.dirs)));
        }
    }
    None
}

/// `entry` (a `[[plugin]]` entry as a table) with the keys of `sidecar` set over its own (and
/// `limits`' keys over its `limits`').
fn with_sidecar(mut entry: toml::Table, sidecar: toml::Table) -> toml::Table {
    for (key, value) in sidecar {
        match (entry.get_mut(&key), value) {
            (Some(toml::Value::Table(limits)), toml::Value::Table(set)) if key == "limits" => {
                limits.extend(set)
            }
            (_, value) => drop(entry.insert(key, value)),
        }
    }
    entry
}

/// A sidecar holds keys of a `[[plugin]]` entry except `name`; each one it
/// sets (each of `limits`' own) wins over `entry`'s, the others are `entry`'s. Its grants are
/// checked against the directories of `host`, which none may reach.
fn parse_sidecar(
    file: &str,
    entry: &PluginConfig,
    text: &str,
    host: &HostSection,
) -> Result<PluginConfig, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse { file: file.to_owned(), message };
    let sidecar: toml::Table =
        toml::from_str(text).map_err(|err| parse_error(crate::config::parse_message(text, &err)))?;
    if sidecar.contains_key("name") {
        return Err(parse_error("`name` comes from the file name; remove it".into()));
    }
    let entry = toml::Table::try_from(entry).map_err(|err| parse_error(err.to_string()))?;
    let config: Result<PluginConfig, _> = with_sidecar(entry.clone(), sidecar.clone()).try_into();
    let config = config.map_err(|err: toml::de::Error| {
        // Said of the merged table, the error names no key: find the sidecar's that fails.
        let culprit = sidecar.iter().find_map(|(key, value)| {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            let alone: Result<PluginConfig, _> = with_sidecar(entry.clone(), alone).try_into();
            // Shown as `inline_table` shows it: no secret shown.
            let shown = crate::config::inline_value(key, value);
            alone.err().map(|err: toml::de::Error| format!("{key} = {shown}: {}", err.message()))
        });
        parse_error(culprit.unwrap_or_else(|| err.message().to_owned()))
    })?;
    let mut check = Config::default();
    check.host.plugin_dir.clone_from(&host.plugin_dir);
    check.host.cache_dir.clone_from(&host.cache_dir);
    check.host.state_dir.clone_from(&host.state_dir);
    check.plugins.push(config.clone());
    check.validate(file, &[])?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn a_sidecar_caught_while_it_is_written_is_waited_for_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.wasm"), b"read as it is: not compiled here").unwrap();
        let sidecar = dir.path().join("t.toml");
        std::fs::write(&sidecar, "#").unwrap();
        let written = AtomicBool::new(false);
        std::thread::scope(|scope| {
            // A tool writing the sidecar a byte at a time: a comment that grows, TOML throughout.
            scope.spawn(|| {
                let mut file = std::fs::OpenOptions::new().append(true).open(&sidecar).unwrap();
                while !written.load(Ordering::Relaxed) {
                    file.write_all(b"x").unwrap();
                    if file.metadata().unwrap().len() > 64 << 10 {
                        file.set_len(1).unwrap();
                    }
                }
            });
            // Read until a read overlaps a write; the deadline is a safety net only.
            let deadline = Instant::now() + Duration::from_secs(60);
            let caught = loop {
                match read_source(dir.path(), "t", &Config::default(), &OpenWrites::default()) {
                    Ok(Source::Present { .. }) if Instant::now() < deadline => continue,
                    caught => break caught,
                }
            };
            written.store(true, Ordering::Relaxed);
            match caught {
                Ok(Source::Unsettled) => {}
                Ok(_) => panic!("no read overlapped a write (safety net)"),
                Err(error) => panic!("refused: {error}"),
            }
        });
    }

    /// The settings of plugin `t` whose entry grants `entry` as `/g` and whose sidecar grants
    /// `sidecar`, or why they are refused.
    fn dir_granted_by_a_sidecar(entry: &str, sidecar: &str) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.toml"), format!("dirs = {{ \"/g\" = {sidecar:?} }}\n")).unwrap();
        let mut config = Config::default();
        let dirs = [("/g".to_owned(), entry.to_owned())].into();
        config.plugins.push(PluginConfig { name: "t".into(), dirs, ..PluginConfig::default() });
        match plugin_config(dir.path(), "t", &config) {
            Ok(settings) => Ok(settings.unwrap().dirs["/g"].clone()),
            Err(err) => Err(err.to_string()),
        }
    }

    #[test]
    fn a_sidecar_may_make_a_granted_directory_read_only_but_grant_no_other() {
        assert_eq!(dir_granted_by_a_sidecar("/srv/d", "/srv/d:ro"), Ok("/srv/d:ro".into()));
        assert_eq!(dir_granted_by_a_sidecar("/srv/d:rw", "/srv/d:ro"), Ok("/srv/d:ro".into()));
        assert_eq!(dir_granted_by_a_sidecar("/srv/d:ro", "/srv/d:ro"), Ok("/srv/d:ro".into()));
        assert_eq!(dir_granted_by_a_sidecar("/srv/d:rw", "/srv/d"), Ok("/srv/d".into()));
        // Read as the sandbox reads it, `/srv/d:ro:ro` is directory `/srv/d:ro`, which no one granted.
        for (entry, sidecar) in
            [("/srv/d:ro", "/srv/d:ro:ro"), ("/srv/d:ro", "/srv/d:rw"), ("/srv/d", "/srv/e")]
        {
            let refused = dir_granted_by_a_sidecar(entry, sidecar);
            assert!(refused.is_err(), "{entry} narrowed to {sidecar}: {refused:?}");
        }
    }

    #[test]
    fn a_directory_held_by_serving_settings_is_beyond_an_entry_that_grants_it_only_by_its_text() {
        let held = |value: &str| {
            let dirs = [("/g".to_owned(), value.to_owned())].into();
            PluginConfig { name: "t".into(), dirs, ..PluginConfig::default() }
        };
        assert!(widening(&held("/srv/d:ro:ro"), &held("/srv/d:ro")).is_some(), "directory /srv/d:ro");
        assert!(widening(&held("/srv/d:rw"), &held("/srv/d:ro")).is_some(), "writable");
        assert_eq!(widening(&held("/srv/d:ro"), &held("/srv/d:rw")), None, "read-only");
    }

    #[test]
    fn a_sidecar_let_grant_directories_is_checked_against_this_hosts_own() {
        // With `host.sidecar_grants`, a sidecar may grant any directory but those the config may not.
        let dir = tempfile::tempdir().unwrap();
        let granted = format!("{}:rw", dir.path().display());
        std::fs::write(dir.path().join("t.toml"), format!("dirs = {{ \"/g\" = {granted:?} }}\n")).unwrap();
        let mut config = Config::default();
        (config.host.sidecar_grants, config.host.plugin_dir) = (true, dir.path().to_owned());
        let refused = plugin_config(dir.path(), "t", &config).map(|settings| settings.unwrap().dirs);
        let refused = refused.expect_err("the plugin directory is granted").to_string();
        assert!(refused.contains("overlaps host.plugin_dir"), "{refused}");
    }
}
