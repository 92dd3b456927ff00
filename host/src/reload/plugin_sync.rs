//! Plugin files brought in line with the registry, one plugin at a time: a plugin's file added,
//! replaced or removed makes its new version serve, or stop serving, or is refused (the previous
//! version keeps serving) and reported once.

use super::events::HostEvent;
use super::prepared::{Prepared, compiles_at_once};
use super::refusal::{FileRead, Opened, Refusal};
use super::reloader::{Reloader, Retry};
use super::source::beyond_grants;
use crate::plugin::{CompiledPlugin, LoadError, NativeRefusal, plugin_files, plugin_name};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

impl Reloader {
    /// Compile every plugin of the directory in parallel and make them serve.
    pub(crate) async fn load_all(self: &Arc<Self>) -> Result<Vec<LoadError>, std::io::Error> {
        let dir = self.plugin_dir();
        let names: BTreeSet<String> = plugin_files(&dir)?.iter().map(|path| plugin_name(path)).collect();
        let compiles = futures_util::stream::iter(names).map(|name| {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.prepare(&this.config.load(), &name, Retry::Refused))
        });
        let mut compiles = compiles.buffered(compiles_at_once());
        let mut errors = Vec::new();
        while let Some(compile) = compiles.next().await {
            match compile.expect("compiling a plugin does not panic") {
                Prepared::Ready(plugin) => self.events.emit(self.serve(plugin)),
                Prepared::Failed { name, error, file, opened } => {
                    self.refuse(name, &error, file, opened);
                    errors.push(error);
                }
                Prepared::Gone(_) | Prepared::Serving | Prepared::Refused | Prepared::Unsettled => {}
            }
        }
        Ok(errors)
    }

    /// Bring plugin `name` in line with its files: load, replace, remove, or
    /// reject (the previous version keeps serving); a file refused before is
    /// read again only if `retry` says so. Blocks while compiling; what it
    /// made is dropped if the host stopped meanwhile, and made again under a
    /// config applied meanwhile, as `retry` says still (that config's own
    /// reading of every plugin, before it applied, tried no file refused before). Why it refused
    /// the file it read, if it did.
    pub(crate) fn sync_plugin(&self, name: &str, retry: Retry) -> Option<String> {
        let _syncing = self.syncing.lock().unwrap_or_else(|poison| poison.into_inner());
        if self.is_closed() {
            return None;
        }
        let (prepared, _changing) = loop {
            let config = self.config.load_full();
            let prepared = self.prepare(&config, name, retry);
            let closed = self.changing.lock().unwrap_or_else(|poison| poison.into_inner());
            if *closed {
                return None;
            }
            if Arc::ptr_eq(&config, &self.config.load()) {
                break (prepared, closed);
            }
            // A config was applied while this compiled: prepare the plugin again under it.
        };
        self.settle(name, prepared)
    }

    /// Make plugin `name` what `prepared` (under the current config) says: serve its new version,
    /// stop serving it, or report its refusal. Called holding `changing`. Why the file was
    /// refused, if `prepared` refuses it: told even when reported before, for the same file or
    /// the same reason.
    pub(super) fn settle(&self, name: &str, prepared: Prepared) -> Option<String> {
        match prepared {
            Prepared::Ready(plugin) => self.events.emit(self.serve(plugin)),
            Prepared::Gone(name) => {
                self.forget_refusal(&name);
                self.remove(&name);
            }
            Prepared::Failed { name, error, file, opened } => {
                // A library refused unopened stands where no WebAssembly file is: the serving
                // version's file is gone, and so is it.
                let gone =
                    matches!(error, LoadError::NativeRefused { refusal: NativeRefusal::Disabled { .. }, .. });
                if gone || self.serves_beyond_grants(&name) {
                    self.remove(&name);
                }
                let reason = error.to_string();
                self.refuse(name, &error, file, opened);
                return Some(reason);
            }
            // The file is the serving version's again: a refusal in between is over.
            Prepared::Serving => self.forget_refusal(name),
            Prepared::Refused => {}
            Prepared::Unsettled => {
                tracing::debug!(plugin = name, "file still changing; waiting for it to settle")
            }
        }
        None
    }

    /// Whether plugin `name` serves with a grant or limit the config no longer gives it: its new
    /// settings (or file) refused, it must not keep what was taken away, so it stops serving.
    fn serves_beyond_grants(&self, name: &str) -> bool {
        let Some(serving) = self.pipeline.registry.snapshot().get(name).cloned() else { return false };
        let Some((held, granted)) = beyond_grants(&serving.settings.config, &self.config.load()) else {
            return false;
        };
        tracing::warn!(
            plugin = name,
            held,
            granted,
            "the plugin's new settings were refused, and the config no longer grants what its serving version holds: it stops serving"
        );
        true
    }

    /// Report that plugin `name`'s file (`file`: its digest and settings,
    /// when it could be read) was refused for `error`, unless this same file
    /// was refused for the same reason already; keep what it left `opened`.
    fn refuse(&self, name: String, error: &LoadError, file: Option<FileRead>, opened: Opened) {
        let may_pass = matches!(
            error,
            LoadError::KindChanged { .. } | LoadError::Grant { .. } | LoadError::GrantTimedOut { .. }
        );
        let refusal = Refusal { file, reason: error.to_string(), may_pass, opened };
        let mut refused = self.refused.lock().unwrap_or_else(|poison| poison.into_inner());
        // Kept even when told before: what it left open is what a retry starts from.
        let told = refused.insert(name.clone(), refusal);
        let refusal = &refused[&name];
        if told.is_none_or(|told| !told.tells_as(refusal)) {
            let reason = refusal.reason.clone();
            self.events.emit(HostEvent::PluginRejected { name, reason });
        }
    }

    /// Plugin `name` has no refused file any more: it serves its file, or has none.
    fn forget_refusal(&self, name: &str) {
        let mut refused = self.refused.lock().unwrap_or_else(|poison| poison.into_inner());
        if refused.remove(name).is_some() {
            self.events.forget_rejection(name);
        }
    }

    /// Re-read every plugin of the directory, and drop those whose file is
    /// gone; `retry` says whether files refused before are read again. Each plugin whose file it
    /// read and refused, with why (as [`sync_plugin`](Self::sync_plugin) tells).
    pub(crate) fn sync_all(&self, retry: Retry) -> BTreeMap<String, String> {
        let names = self.plugin_names().into_iter();
        names.filter_map(|name| self.sync_plugin(&name, retry).map(|reason| (name, reason))).collect()
    }

    /// The plugins a sync of every plugin reads: those serving, those refused, and those of the
    /// plugin directory's files.
    pub(super) fn plugin_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.pipeline.registry.snapshot().keys().cloned().collect();
        names.extend(self.refused.lock().unwrap_or_else(|poison| poison.into_inner()).keys().cloned());
        let dir = self.plugin_dir();
        // A directory gone holds no plugin; it is not made again here (it
        // is made at the start only), and is watched for.
        match dir.is_dir().then(|| plugin_files(&dir)) {
            Some(Ok(files)) => names.extend(files.iter().map(|path| plugin_name(path))),
            Some(Err(err)) => tracing::error!(%err, "cannot list the plugin directory"),
            None => {
                tracing::warn!(dir = %dir.display(), "the plugin directory is gone: no plugin serves from it")
            }
        }
        names
    }

    /// Make `plugin` serve; the event that tells it (`plugin-loaded` or `plugin-replaced`), for the
    /// caller to emit. A refusal of its name in between is over (else the same bad file, put back
    /// later, would be taken for the one refused before, and neither reported nor shown).
    pub(super) fn serve(&self, plugin: Arc<CompiledPlugin>) -> HostEvent {
        self.forget_refusal(&plugin.name);
        let mut old = None;
        // Counted as serving before it serves: a call of it may count a name or a problem at once.
        self.pipeline.metrics.plugin_serving(&plugin.name);
        self.pipeline.registry.update(|set| old = set.insert(plugin.name.clone(), plugin.clone()));
        let (name, kind, version) = (plugin.name.clone(), plugin.kind.as_str(), plugin.digest.clone());
        let compile_ms = plugin.compile_time.as_secs_f64() * 1e3;
        match old {
            None => HostEvent::PluginLoaded { name, kind, version, compile_ms },
            Some(old) => {
                HostEvent::PluginReplaced { name, kind, old_version: old.digest.clone(), version, compile_ms }
            }
        }
    }

    fn remove(&self, name: &str) {
        let mut old = None;
        self.pipeline.registry.update(|set| old = set.remove(name));
        if let Some(old) = old {
            self.pipeline.metrics.plugin_removed(name);
            self.events.emit(HostEvent::PluginRemoved { name: name.to_owned(), version: old.digest.clone() });
        }
    }
}
