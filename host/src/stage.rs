//! Stages: the steps of a route, either plugins or native Rust code, resolved
//! against the plugin versions a batch pinned.

use crate::config::{StageKind, StageRef};
use crate::message::{Message, Verdict};
use crate::plugin::{CompiledPlugin, PluginError, PluginKind, PluginSet};
use std::collections::HashMap;
use std::sync::Arc;

/// A filter written in Rust, registered with [`HostBuilder::filter`](crate::HostBuilder::filter).
pub trait NativeFilter: Send + Sync + 'static {
    /// Called once per message reaching the stage; decides keep or drop.
    fn filter(&self, message: &Message) -> Result<Verdict, PluginError>;
}

impl<F> NativeFilter for F
where
    F: Fn(&Message) -> Result<Verdict, PluginError> + Send + Sync + 'static,
{
    fn filter(&self, message: &Message) -> Result<Verdict, PluginError> {
        self(message)
    }
}

/// A transform written in Rust, registered with [`HostBuilder::transform`](crate::HostBuilder::transform).
pub trait NativeTransform: Send + Sync + 'static {
    /// Called once per message reaching the stage; returns its 0..n outputs.
    fn transform(&self, message: &Message) -> Result<Vec<Message>, PluginError>;
}

impl<F> NativeTransform for F
where
    F: Fn(&Message) -> Result<Vec<Message>, PluginError> + Send + Sync + 'static,
{
    fn transform(&self, message: &Message) -> Result<Vec<Message>, PluginError> {
        self(message)
    }
}

/// Native stages by name.
#[derive(Default, Clone)]
pub(crate) struct NativeStages {
    pub(crate) filters: HashMap<String, Arc<dyn NativeFilter>>,
    pub(crate) transforms: HashMap<String, Arc<dyn NativeTransform>>,
}

/// A stage ready to run.
#[derive(Clone)]
pub(crate) enum Stage {
    Plugin(Arc<CompiledPlugin>),
    NativeFilter(String, Arc<dyn NativeFilter>),
    NativeTransform(String, Arc<dyn NativeTransform>),
    Unavailable { stage: String, problem: String },
}

impl NativeStages {
    /// Resolve a route's stage list against `plugins`.
    pub(crate) fn resolve(&self, refs: &[StageRef], plugins: &PluginSet) -> Vec<Stage> {
        let mut stages = Vec::with_capacity(refs.len());
        for stage_ref in refs {
            match stage_ref {
                StageRef::AllPlugins => stages.extend(
                    plugins.values().filter(|plugin| runs_in_routes(plugin.kind)).cloned().map(Stage::Plugin),
                ),
                StageRef::Named { kind, name } => stages.push(self.resolve_named(*kind, name, plugins)),
            }
        }
        stages
    }

    fn resolve_named(&self, kind: StageKind, name: &str, plugins: &PluginSet) -> Stage {
        let native = match kind {
            StageKind::Filter => self.filters.get(name).map(|f| Stage::NativeFilter(name.into(), f.clone())),
            StageKind::Transform => {
                self.transforms.get(name).map(|t| Stage::NativeTransform(name.into(), t.clone()))
            }
            StageKind::Middleware => None,
        };
        if let Some(native) = native {
            return native;
        }
        let unavailable =
            |problem: String| Stage::Unavailable { stage: format!("{}:{name}", kind.as_str()), problem };
        match plugins.get(name) {
            Some(plugin) if plugin.kind.as_str() == kind.as_str() => Stage::Plugin(plugin.clone()),
            Some(plugin) => unavailable(format!(
                "plugin \"{name}\" is a {}, not a {}",
                plugin.kind.as_str(),
                kind.as_str()
            )),
            None => {
                let loaded: Vec<&str> = plugins.keys().map(String::as_str).collect();
                unavailable(format!("no plugin \"{name}\" is loaded (loaded: {})", loaded.join(", ")))
            }
        }
    }
}

fn runs_in_routes(kind: PluginKind) -> bool {
    matches!(kind, PluginKind::Filter | PluginKind::Transform | PluginKind::Middleware)
}
