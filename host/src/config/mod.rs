//! Configuration: the TOML file an operator writes, or the built-in default.

mod load;
mod model;

pub use load::ConfigError;
pub use model::{
    AdminConfig, Config, DestinationConfig, FailurePolicy, HostSection, HttpIngressConfig, IngressSection,
    PluginConfig, PluginLimits, RouteConfig, RouteMatch, StageKind, StageRef, Transport,
};
