//! A directory a plugin's `dirs` grants: what its value means, read the same way by the sandbox
//! that opens it, the check that a sidecar only narrows it, and config validation.

/// One value of a plugin's `dirs`: `"PATH"` or `"PATH:rw"` (read-write), `"PATH:ro"` (read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirGrant<'a> {
    /// The host directory.
    pub(crate) path: &'a str,
    /// Whether the plugin may write in it.
    pub(crate) writable: bool,
}

impl<'a> DirGrant<'a> {
    /// The grant `value` writes. One suffix is read; a second is left in the path, where
    /// [`problem`](Self::problem) finds it.
    pub(crate) fn parse(value: &'a str) -> DirGrant<'a> {
        match value.strip_suffix(":ro") {
            Some(path) => DirGrant { path, writable: false },
            None => DirGrant { path: value.strip_suffix(":rw").unwrap_or(value), writable: true },
        }
    }

    /// What is wrong with the grant as written, if anything.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.path.is_empty() {
            return Some("must name a host directory");
        }
        let suffixed = self.path.ends_with(":ro") || self.path.ends_with(":rw");
        suffixed.then_some("at most one suffix, :ro or :rw (a directory named so cannot be granted)")
    }

    /// Whether `self` (a sidecar's) grants no more than `entry` does: the same directory, writable
    /// only if `entry`'s is.
    pub(crate) fn within(&self, entry: &DirGrant) -> bool {
        self.path == entry.path && (entry.writable || !self.writable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_suffix_is_read_and_a_second_is_left_in_the_path_and_refused() {
        assert_eq!(DirGrant::parse("/srv/d"), DirGrant { path: "/srv/d", writable: true });
        assert_eq!(DirGrant::parse("/srv/d:rw"), DirGrant { path: "/srv/d", writable: true });
        assert_eq!(DirGrant::parse("/srv/d:ro"), DirGrant { path: "/srv/d", writable: false });
        assert_eq!(DirGrant::parse("/srv/d:ro:ro"), DirGrant { path: "/srv/d:ro", writable: false });
        assert_eq!(DirGrant::parse("/srv/d").problem(), None);
        assert!(DirGrant::parse("/srv/d:ro:ro").problem().is_some());
        assert!(DirGrant::parse("/srv/d:rw:ro").problem().is_some());
    }
}
