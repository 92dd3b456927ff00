//! Configuration: the TOML file an operator writes, or the built-in default.

mod affinity;
mod alert;
mod endpoint;
mod grant;
mod load;
mod model;
mod nats;
mod overrides;
#[cfg(test)]
mod properties;
mod restart;
mod secret;
mod url_path;

pub use affinity::AffinitySettings;
pub use alert::{AlertConfig, Comparison, Condition, MAX_ALERT_SECONDS, Reading, Selector, Severity};
pub use endpoint::{EndpointConfig, MAX_WEIGHT};
pub(crate) use grant::DirGrant;
pub use load::{ConfigError, MAX_THREADS};
pub(crate) use load::{parse_message, resolved};
pub use model::default_timeout_ms;
pub(crate) use model::plugin_name_problem;
pub use model::{
    ADMIN_TOKEN_ENV, AdminConfig, BreakerSettings, Config, DestinationConfig, Durability, FailurePolicy,
    GrpcIngressConfig, HealthSettings, HostSection, HttpIngressConfig, IngressSection, PluginConfig,
    PluginLimits, PoolSettings, QueueSettings, RetrySettings, RouteConfig, RouteMatch, StageKind, StageRef,
};
pub(crate) use nats::subject_problem;
pub use nats::{JetStreamConsumer, NatsIngressConfig};
pub(crate) use overrides::{CodeOverrides, Overridden};
pub(crate) use restart::restart_only_changes;
pub use secret::inline_table;
pub(crate) use secret::{inline_value, names_a_secret, secret_pairs, shown, url_password, without_secrets};
pub use url_path::UrlPath;
