//! Where the plugin directory's symbolic links lead. A plugin file or sidecar
//! that is a link changes when the file it leads to does, and the watch of
//! the plugin directory alone sees that only when the file is another entry
//! of the directory, and even then as that entry's change: a file in a
//! subdirectory (a mounted ConfigMap's, behind `..data`), rewritten or
//! replaced, made no event at all. So the directories links lead into are
//! watched too, and a change at a place a link leads to is its plugin's.
//! Which entries of the directory were links or directories is kept too: one
//! of them gone may have changed anything, a file gone nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Links followed at most, as the kernel's own limit (`ELOOP`): a loop of links ends there.
const MAX_HOPS: usize = 40;

/// The places the plugin directory's links lead to, each with the plugins whose links lead there.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LinkTargets {
    /// Each place a link leads to (a link on the way, or the file at the end), named by its
    /// directory resolved and its own name unresolved, with the plugins whose links pass there.
    plugins_at: BTreeMap<PathBuf, BTreeSet<String>>,
    /// The entries of the directory that were symbolic links or directories, by place: once gone,
    /// only these tell that something a plugin was read through may have gone with them.
    links_and_directories: BTreeSet<PathBuf>,
}

impl LinkTargets {
    /// Follow the links among the plugin files and sidecars of `dir`, hop by hop, as far as they
    /// stay inside `dir` (one that leads out is refused when read, so what it leads to is not
    /// followed), and note every entry that is a link or a directory.
    pub(super) fn of(dir: &Path) -> LinkTargets {
        let mut targets = LinkTargets::default();
        let (Ok(root), Ok(entries)) = (dir.canonicalize(), std::fs::read_dir(dir)) else { return targets };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() || kind.is_dir() {
                targets.links_and_directories.insert(root.join(entry.file_name()));
            }
            if names_a_plugin(&path) && kind.is_symlink() {
                targets.follow(&root, path);
            }
        }
        targets
    }

    fn follow(&mut self, root: &Path, link: PathBuf) {
        let name = crate::plugin::plugin_name(&link);
        let mut at = link;
        for _ in 0..MAX_HOPS {
            let Ok(to) = std::fs::read_link(&at) else { return };
            let Some(next) = at.parent().map(|dir| dir.join(to)).as_deref().and_then(place) else { return };
            if !next.starts_with(root) {
                return;
            }
            self.plugins_at.entry(next.clone()).or_default().insert(name.clone());
            at = next;
        }
    }

    /// The plugins whose links lead to `path`, a place an event names.
    pub(super) fn plugins_at(&self, path: &Path) -> impl Iterator<Item = &String> {
        let plugins = match self.plugins_at.is_empty() {
            true => None,
            false => place(path).and_then(|place| self.plugins_at.get(&place)),
        };
        plugins.into_iter().flatten()
    }

    /// Whether `path`, a place an event names, was a link or a directory of the plugin directory.
    pub(super) fn was_link_or_directory(&self, path: &Path) -> bool {
        place(path).is_some_and(|place| self.links_and_directories.contains(&place))
    }

    /// The directories the links lead into (resolved), but for those in `watched`.
    pub(super) fn directories(&self, watched: &[PathBuf]) -> BTreeSet<PathBuf> {
        let parents = self.plugins_at.keys().filter_map(|place| place.parent());
        parents.filter(|dir| !watched.iter().any(|watched| watched == dir)).map(Path::to_path_buf).collect()
    }
}

/// Whether `path` names a plugin's file or sidecar by its extension.
pub(super) fn names_a_plugin(path: &Path) -> bool {
    crate::plugin::PluginFormat::of(path).is_some() || path.extension().is_some_and(|ext| ext == "toml")
}

/// `path` with its directory resolved (links on the way followed) and its own name kept: where
/// an event of a watched directory names it. `None` when the directory is not there.
pub(super) fn place(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent()? {
        dir if dir.as_os_str().is_empty() => Path::new("."),
        dir => dir,
    };
    Some(dir.canonicalize().ok()?.join(path.file_name()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_hop_by_hop_inside_the_directory_and_no_further() {
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(dir.path().join("..v1")).unwrap();
        std::fs::write(dir.path().join("..v1/t.wasm"), b"").unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"").unwrap();
        symlink("..v1", dir.path().join("..data")).unwrap();
        symlink("..data/t.wasm", dir.path().join("t.wasm")).unwrap();
        symlink("t.wasm", dir.path().join("t2.wasm")).unwrap();
        symlink("a.wasm", dir.path().join("b.wasm")).unwrap();
        symlink("..data/t.toml", dir.path().join("t.toml")).unwrap();
        symlink(elsewhere.path().join("x.wasm"), dir.path().join("out.wasm")).unwrap();
        symlink("loop.wasm", dir.path().join("loop.wasm")).unwrap();
        symlink("..v1", dir.path().join("not-a-plugin")).unwrap();
        let targets = LinkTargets::of(dir.path());
        let at = |path: &str| targets.plugins_at(&dir.path().join(path)).cloned().collect::<Vec<_>>();
        assert_eq!(at("..v1/t.wasm"), ["t", "t2"]);
        assert_eq!(at("..data/t.wasm"), ["t", "t2"], "named through the link to its directory");
        assert_eq!(at("t.wasm"), ["t2"]);
        assert_eq!(at("a.wasm"), ["b"]);
        assert_eq!(at("..v1/t.toml"), ["t"], "a sidecar's link, its file missing yet");
        assert_eq!(at("loop.wasm"), ["loop"]);
        assert!(at("..v1/other.wasm").is_empty());
        assert!(targets.plugins_at(&elsewhere.path().join("x.wasm")).next().is_none());
        for (entry, was) in [("..v1", true), ("..data", true), ("not-a-plugin", true), ("t.wasm", true)] {
            assert_eq!(targets.was_link_or_directory(&dir.path().join(entry)), was, "{entry}");
        }
        assert!(!targets.was_link_or_directory(&dir.path().join("a.wasm")), "a file");
        assert!(!targets.was_link_or_directory(&dir.path().join("..v1/t.wasm")), "not in the directory");
        assert_eq!(targets.directories(&[]), BTreeSet::from([root.clone(), root.join("..v1")]));
        assert_eq!(targets.directories(std::slice::from_ref(&root)), BTreeSet::from([root.join("..v1")]));
    }
}
