//! `[[ingress.nats]]`: NATS subscriptions whose messages the host admits, and the subject syntax
//! NATS takes.

use serde::{Deserialize, Serialize};

/// One `[[ingress.nats]]` entry: a connection to a NATS server subscribing to `subjects`.
///
/// ```
/// let config = switchyard::Config::from_toml("t.toml", r#"
///     [[ingress.nats]]
///     url = "127.0.0.1:4222"
///     subjects = ["orders.>"]
///     queue_group = "switchyard"
/// "#).unwrap();
/// assert_eq!(config.ingress.nats[0].queue_group.as_deref(), Some("switchyard"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsIngressConfig {
    /// The NATS server, `host:port`.
    pub url: String,
    /// Subjects subscribed to; NATS wildcards (`*`, a trailing `>`) allowed. A message's subject is
    /// its topic.
    pub subjects: Vec<String>,
    /// A queue group to join: the server gives each message to one member of the group, so hosts in
    /// one group share the work. Without one, every host gets every message.
    pub queue_group: Option<String>,
}

impl NatsIngressConfig {
    /// What is wrong with this entry, if anything: the key under `ingress.nats[N]`, the value and
    /// the problem.
    pub(crate) fn problem(&self) -> Option<(&'static str, String, String)> {
        if self.url.trim().is_empty() || self.url.contains(char::is_whitespace) {
            let problem = "must be a NATS server, \"host:port\"".to_owned();
            return Some(("url", format!("{:?}", self.url), problem));
        }
        if self.subjects.is_empty() {
            return Some(("subjects", "[]".into(), "must name at least one subject".into()));
        }
        let bad_subject =
            self.subjects.iter().find_map(|subject| Some((subject, subject_problem(subject, true)?)));
        if let Some((subject, problem)) = bad_subject {
            return Some(("subjects", format!("{subject:?}"), problem));
        }
        let bad_group = self
            .queue_group
            .as_ref()
            .filter(|group| group.is_empty() || group.chars().any(|c| c.is_whitespace() || c.is_control()));
        if let Some(group) = bad_group {
            let problem = "must be a non-empty name without spaces".to_owned();
            return Some(("queue_group", format!("{group:?}"), problem));
        }
        None
    }
}

/// What makes `subject` something NATS does not take, if anything: an empty token, a space or
/// control character, or a wildcard (`*` as a token, `>` as the last token) unless `wildcards`.
pub(crate) fn subject_problem(subject: &str, wildcards: bool) -> Option<String> {
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("a subject holds no spaces or control characters".into());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (at, token) in tokens.iter().enumerate() {
        let problem = match *token {
            "" => "a subject has no empty tokens",
            "*" | ">" if !wildcards => "a subject messages are sent to has no wildcards",
            ">" if at + 1 < tokens.len() => "\">\" is a subject's last token only",
            _ => continue,
        };
        return Some(problem.into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_as_nats_reads_them() {
        assert_eq!(subject_problem("orders.eu", false), None);
        assert_eq!(subject_problem("orders.*.>", true), None);
        assert!(subject_problem("orders.>", false).unwrap().contains("wildcards"));
        assert!(subject_problem("orders..eu", true).unwrap().contains("empty"));
        assert!(subject_problem("orders.>.eu", true).unwrap().contains("last"));
        assert!(subject_problem("orders eu", true).unwrap().contains("spaces"));
    }
}
