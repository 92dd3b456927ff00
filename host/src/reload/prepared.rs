//! Plugins made ready off the message path, to swap in: one at a time as its files change, or all
//! of them under a config before it is current, so that its routes run with their plugins.

use super::refusal::{FileRead, Opened};
use crate::plugin::{CompiledPlugin, LoadError, PluginSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A plugin made ready off the message path, or why not.
pub(super) enum Prepared {
    Ready(Arc<CompiledPlugin>),
    Gone(String),
    /// Refused; `file` is its digest and settings, when it could be read.
    Failed {
        name: String,
        error: LoadError,
        file: Option<FileRead>,
        opened: Opened,
    },
    /// The file is the serving version's.
    Serving,
    /// The file is one refused before, unchanged.
    Refused,
    Unsettled,
}

/// Every plugin prepared under a config before it is current, to serve as it becomes current.
pub(super) struct PreparedPlugins {
    /// The versions serving when they were prepared.
    pub(super) serving: Arc<PluginSet>,
    /// What each plugin's file made, by name.
    pub(super) outcomes: BTreeMap<String, Prepared>,
}

impl PreparedPlugins {
    /// The outcomes that still hold with `serving` (the versions serving now), and the names of
    /// the others: plugins another sync changed since they were prepared.
    pub(super) fn against(self, serving: &PluginSet) -> (Vec<(String, Prepared)>, Vec<String>) {
        let PreparedPlugins { serving: then, outcomes } = self;
        let unchanged = |name: &String| match (then.get(name), serving.get(name)) {
            (Some(then), Some(now)) => Arc::ptr_eq(then, now),
            (then, now) => then.is_none() && now.is_none(),
        };
        let (fresh, stale): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(name, _)| unchanged(name));
        (fresh, stale.into_iter().map(|(name, _)| name).collect())
    }
}
