//! The `balancer = "…"` setting of a destination, parsed, and the balancer it builds.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::{Balancer, ConsistentHash, LeastInFlight, P2cPeakEwma, RoundRobin, Weighted};

/// The forms the setting takes, for error messages.
const VALID: &str =
    "round-robin, weighted, least-inflight, p2c-ewma, hash:header:NAME, affinity:header:NAME, plugin:NAME";

/// Which balancer a destination uses: the parsed value of its `balancer` setting.
///
/// Parses from, and displays as, the strings of the config file. (De)serialises as that string too.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum BalancerConfig {
    /// `round-robin`: [`RoundRobin`].
    RoundRobin,
    /// `weighted`: [`Weighted`].
    Weighted,
    /// `least-inflight`: [`LeastInFlight`].
    LeastInFlight,
    /// `p2c-ewma`: [`P2cPeakEwma`], this type's default (as linkerd and tower balance); a
    /// destination's `balancer` is `round-robin` unless its config says otherwise.
    #[default]
    P2cEwma,
    /// `hash:header:NAME`: [`ConsistentHash`] on the value of header `NAME` (matched ignoring ASCII case,
    /// as `Message::header` does); messages without it fall back to p2c.
    ConsistentHash {
        /// The header whose value is the hash key.
        header: String,
    },
    /// `affinity:header:NAME`: each stream (the messages with one value of header `NAME`) sticks to
    /// an endpoint under a bound on its load ([`StreamTable`](super::StreamTable)), which the destination
    /// core builds, as it keeps the time and tells of migrations; messages without it fall back to p2c.
    Affinity {
        /// The header whose value is the stream's key.
        header: String,
    },
    /// `plugin:NAME`: the WASM `balancer` plugin `NAME`, which the destination core builds.
    Plugin {
        /// The plugin's name, as in its `[[plugin]]` section.
        name: String,
    },
}

/// A `balancer` setting that is none of the valid forms. Its message quotes the value and lists them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem} (expected one of: {VALID})")]
pub struct ParseBalancerError {
    /// What is wrong, quoting the value.
    problem: String,
}

impl BalancerConfig {
    /// A new balancer of this kind, ready to share across worker threads; `None` for
    /// [`Plugin`](Self::Plugin) and [`Affinity`](Self::Affinity), which only the destination core can
    /// build (it holds the plugins, keeps the time and tells of migrations).
    /// Randomised balancers are seeded from the operating system's entropy.
    pub fn build(&self) -> Option<Arc<dyn Balancer>> {
        Some(match self {
            BalancerConfig::RoundRobin => Arc::new(RoundRobin::new()),
            BalancerConfig::Weighted => Arc::new(Weighted::new()),
            BalancerConfig::LeastInFlight => Arc::new(LeastInFlight::new()),
            BalancerConfig::P2cEwma => Arc::new(P2cPeakEwma::new()),
            BalancerConfig::ConsistentHash { .. } => Arc::new(ConsistentHash::new()),
            BalancerConfig::Plugin { .. } | BalancerConfig::Affinity { .. } => return None,
        })
    }

    /// The header whose value the destination passes to [`Balancer::pick`] as its key, if any.
    pub fn hash_header(&self) -> Option<&str> {
        match self {
            BalancerConfig::ConsistentHash { header } | BalancerConfig::Affinity { header } => Some(header),
            _ => None,
        }
    }
}

impl FromStr for BalancerConfig {
    type Err = ParseBalancerError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let problem = |what: &str| ParseBalancerError { problem: format!("balancer {value:?}: {what}") };
        let named = |name: &str, what: &str| match name {
            "" => Err(problem(&format!("{what} is missing"))),
            _ if name.trim() != name || name.chars().any(char::is_control) => {
                Err(problem(&format!("{what} has spaces or control characters")))
            }
            _ => Ok(name.to_owned()),
        };
        // A header name is an HTTP token (RFC 9110): no message could carry one with a space in it.
        let header = |name: &str| match named(name, "the header name")? {
            name if name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)) =>
            {
                Ok(name)
            }
            _ => Err(problem("the header name may hold only letters, digits and !#$%&'*+-.^_`|~")),
        };
        Ok(match value {
            "round-robin" => BalancerConfig::RoundRobin,
            "weighted" => BalancerConfig::Weighted,
            "least-inflight" => BalancerConfig::LeastInFlight,
            "p2c-ewma" => BalancerConfig::P2cEwma,
            _ => {
                if let Some(name) = value.strip_prefix("hash:header:") {
                    BalancerConfig::ConsistentHash { header: header(name)? }
                } else if let Some(name) = value.strip_prefix("affinity:header:") {
                    BalancerConfig::Affinity { header: header(name)? }
                } else if let Some(name) = value.strip_prefix("plugin:") {
                    let name = named(name, "the plugin name")?;
                    if let Some(plugin_problem) = crate::config::plugin_name_problem(&name) {
                        return Err(problem(&format!("the plugin name {plugin_problem}")));
                    }
                    BalancerConfig::Plugin { name }
                } else if value.starts_with("hash:") || value.starts_with("affinity:") {
                    return Err(problem("only a header can be hashed on or keep streams"));
                } else {
                    return Err(problem("unknown balancer"));
                }
            }
        })
    }
}

impl fmt::Display for BalancerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BalancerConfig::RoundRobin => f.write_str("round-robin"),
            BalancerConfig::Weighted => f.write_str("weighted"),
            BalancerConfig::LeastInFlight => f.write_str("least-inflight"),
            BalancerConfig::P2cEwma => f.write_str("p2c-ewma"),
            BalancerConfig::ConsistentHash { header } => write!(f, "hash:header:{header}"),
            BalancerConfig::Affinity { header } => write!(f, "affinity:header:{header}"),
            BalancerConfig::Plugin { name } => write!(f, "plugin:{name}"),
        }
    }
}

impl TryFrom<String> for BalancerConfig {
    type Error = ParseBalancerError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<BalancerConfig> for String {
    fn from(config: BalancerConfig) -> Self {
        config.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::sim::endpoints;

    fn error(value: &str) -> String {
        value.parse::<BalancerConfig>().unwrap_err().to_string()
    }

    #[test]
    fn every_valid_form_parses_and_displays_as_written() {
        for value in [
            "round-robin",
            "weighted",
            "least-inflight",
            "p2c-ewma",
            "hash:header:user-id",
            "affinity:header:x-stream",
            "plugin:geo",
        ] {
            assert_eq!(value.parse::<BalancerConfig>().unwrap().to_string(), value);
        }
        assert_eq!(
            "hash:header:x-tenant".parse(),
            Ok(BalancerConfig::ConsistentHash { header: "x-tenant".into() })
        );
        assert_eq!("plugin:geo".parse(), Ok(BalancerConfig::Plugin { name: "geo".into() }));
    }

    #[test]
    fn unknown_balancer_is_quoted_with_the_valid_forms() {
        assert_eq!(
            error("rond-robin"),
            "balancer \"rond-robin\": unknown balancer (expected one of: round-robin, weighted, \
             least-inflight, p2c-ewma, hash:header:NAME, affinity:header:NAME, plugin:NAME)"
        );
    }

    #[test]
    fn hash_on_anything_but_a_header_is_refused() {
        assert!(error("hash:cookie:session").starts_with("balancer \"hash:cookie:session\": only a header"));
        assert!(error("affinity:topic").starts_with("balancer \"affinity:topic\": only a header"));
        assert!(
            error("affinity:header:")
                .starts_with("balancer \"affinity:header:\": the header name is missing")
        );
    }

    #[test]
    fn missing_or_padded_names_are_refused() {
        assert!(error("hash:header:").starts_with("balancer \"hash:header:\": the header name is missing"));
        assert!(error("plugin:").starts_with("balancer \"plugin:\": the plugin name is missing"));
        assert!(error("plugin: geo").contains("the plugin name has spaces"));
    }

    #[test]
    fn deserialises_from_the_config_string_and_reports_bad_values() {
        let config: BalancerConfig = serde_json::from_str("\"hash:header:tenant\"").unwrap();
        assert_eq!(config.hash_header(), Some("tenant"));
        let bad = serde_json::from_str::<BalancerConfig>("\"fastest\"").unwrap_err().to_string();
        assert!(bad.contains("balancer \"fastest\": unknown balancer"), "{bad}");
        assert_eq!(serde_json::to_string(&BalancerConfig::Weighted).unwrap(), "\"weighted\"");
    }

    #[test]
    fn every_builtin_form_builds_a_balancer_and_plugins_are_left_to_the_core() {
        let endpoints = endpoints(3);
        for value in ["round-robin", "weighted", "least-inflight", "p2c-ewma", "hash:header:user"] {
            let balancer = value.parse::<BalancerConfig>().unwrap().build().unwrap();
            assert!(balancer.pick(&endpoints, Some("alice")).is_some(), "{value}");
        }
        assert!(BalancerConfig::Plugin { name: "geo".into() }.build().is_none());
        let affinity = BalancerConfig::Affinity { header: "x-stream".into() };
        assert_eq!((affinity.build().is_none(), affinity.hash_header()), (true, Some("x-stream")));
    }

    #[test]
    fn default_is_p2c_ewma() {
        assert_eq!(BalancerConfig::default(), BalancerConfig::P2cEwma);
    }
}
