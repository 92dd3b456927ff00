//! `[[ingress.nats]]`: NATS subscriptions whose messages the host admits, and the subject syntax
//! NATS takes.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One `[[ingress.nats]]` entry: a connection to a NATS server subscribing to `subjects`, or, with
/// a `stream`, pulling from a JetStream stream through a durable consumer.
///
/// ```
/// let config = switchyard::Config::from_toml("t.toml", r#"
///     [[ingress.nats]]
///     url = "127.0.0.1:4222"
///     subjects = ["orders.>"]
///     queue_group = "switchyard"
///
///     [[ingress.nats]]
///     url = "127.0.0.1:4222"
///     stream = "ORDERS"
///     durable = "switchyard"
///     max_ack_pending = 500
/// "#).unwrap();
/// assert_eq!(config.ingress.nats[0].queue_group.as_deref(), Some("switchyard"));
/// let consumer = config.ingress.nats[1].jetstream().unwrap();
/// assert_eq!((consumer.durable, consumer.max_ack_pending, consumer.ack_wait_ms), ("switchyard", 500, 30_000));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsIngressConfig {
    /// The NATS server, `host:port`.
    pub url: String,
    /// Subjects subscribed to; NATS wildcards (`*`, a trailing `>`) allowed. A message's subject is
    /// its topic. With a `stream`: at most one, the consumer's filter subject (none: the whole stream).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// A queue group to join: the server gives each message to one member of the group, so hosts in
    /// one group share the work. Without one, every host gets every message. Not with a `stream`.
    pub queue_group: Option<String>,
    /// A JetStream stream to consume (it must exist): messages are acknowledged once settled.
    pub stream: Option<String>,
    /// The durable pull consumer's name (default `switchyard`); hosts naming the same one share
    /// the stream's messages. Only with a `stream`.
    pub durable: Option<String>,
    /// How long the server waits for a message's acknowledgement before it delivers it again
    /// (default 30 000). Only with a `stream`.
    pub ack_wait_ms: Option<u64>,
    /// Messages delivered and not yet acknowledged, at most, over all hosts of the consumer (default
    /// 1000): the flow limit. Only with a `stream`.
    pub max_ack_pending: Option<u32>,
    /// How long the connection may stay silent before the ingress pings the server (default
    /// 60 000, as async-nats): when two pings in a row go unanswered — nothing heard for three
    /// intervals — the connection is counted lost and made again, as it is (without a `stream`)
    /// when a write is not taken whole within an interval. Without it, a server whose machine
    /// died, or a network that dropped the path without a reset, would leave the ingress waiting
    /// for ever.
    pub ping_interval_ms: Option<u64>,
}

/// A `[[ingress.nats]]` entry's JetStream consumer, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConsumer<'c> {
    /// The stream.
    pub stream: &'c str,
    /// The durable consumer's name.
    pub durable: &'c str,
    /// Only the stream's messages on this subject (wildcards allowed), if set.
    pub filter_subject: Option<&'c str>,
    /// Milliseconds the server waits for an acknowledgement before delivering again.
    pub ack_wait_ms: u64,
    /// Unacknowledged messages, at most, over all hosts of the consumer.
    pub max_ack_pending: u32,
}

const ACK_WAIT_MS: std::ops::RangeInclusive<u64> = 100..=86_400_000;
const MAX_ACK_PENDING: std::ops::RangeInclusive<u32> = 1..=1_000_000;
const PING_INTERVAL_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;

impl NatsIngressConfig {
    /// The JetStream consumer this entry pulls from, when it names a `stream`.
    pub fn jetstream(&self) -> Option<JetStreamConsumer<'_>> {
        Some(JetStreamConsumer {
            stream: self.stream.as_deref()?,
            durable: self.durable.as_deref().unwrap_or("switchyard"),
            filter_subject: self.subjects.first().map(String::as_str),
            ack_wait_ms: self.ack_wait_ms.unwrap_or(30_000),
            max_ack_pending: self.max_ack_pending.unwrap_or(1000),
        })
    }

    /// How long the connection may stay silent before the ingress pings the server.
    pub fn ping_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ping_interval_ms.unwrap_or(60_000))
    }

    /// What is wrong with this entry, if anything: the key under `ingress.nats[N]`, the value and
    /// the problem.
    pub(crate) fn problem(&self) -> Option<(&'static str, String, String)> {
        if !super::endpoint::is_host_and_port(&self.url) {
            let problem = format!("must be a NATS server: {}", super::endpoint::HOST_AND_PORT);
            return Some(("url", format!("{:?}", super::shown(&self.url)), problem));
        }
        if let Some(ms) = self.ping_interval_ms.filter(|ms| !PING_INTERVAL_MS.contains(ms)) {
            let problem = format!("must be from {} to {}", PING_INTERVAL_MS.start(), PING_INTERVAL_MS.end());
            return Some(("ping_interval_ms", ms.to_string(), problem));
        }
        if self.stream.is_some() {
            return self.jetstream_problem();
        }
        let only_with_stream = [
            ("durable", self.durable.as_ref().map(|durable| format!("{durable:?}"))),
            ("ack_wait_ms", self.ack_wait_ms.map(|ms| ms.to_string())),
            ("max_ack_pending", self.max_ack_pending.map(|max| max.to_string())),
        ];
        if let Some((key, Some(value))) = only_with_stream.into_iter().find(|(_, value)| value.is_some()) {
            return Some((key, value, "is a JetStream consumer's setting: set `stream` too".into()));
        }
        if self.subjects.is_empty() {
            return Some(("subjects", "[]".into(), "must name at least one subject".into()));
        }
        if let Some(problem) = self.subjects_problem() {
            return Some(problem);
        }
        let bad_group = self.queue_group.as_ref().filter(|group| name_problem(group));
        if let Some(group) = bad_group {
            let problem = "must be a non-empty name without spaces".to_owned();
            return Some(("queue_group", format!("{group:?}"), problem));
        }
        None
    }

    /// What is wrong with the JetStream settings of an entry with a `stream`, if anything.
    fn jetstream_problem(&self) -> Option<(&'static str, String, String)> {
        let consumer = self.jetstream()?;
        let is_name = |name: &str| !name_problem(name) && !name.contains(['.', '*', '>']);
        if !is_name(consumer.stream) || !is_name(consumer.durable) {
            let (key, value) = match is_name(consumer.stream) {
                false => ("stream", consumer.stream),
                true => ("durable", consumer.durable),
            };
            let problem = "must be a non-empty name without spaces, '.', '*' or '>'".to_owned();
            return Some((key, format!("{value:?}"), problem));
        }
        if let Some(group) = &self.queue_group {
            let problem = "is not for a stream: hosts naming the same `durable` share its messages".into();
            return Some(("queue_group", format!("{group:?}"), problem));
        }
        if self.subjects.len() > 1 {
            let problem = "with a stream, at most one subject: the consumer's filter".into();
            return Some(("subjects", format!("{:?}", self.subjects), problem));
        }
        if let Some(problem) = self.subjects_problem() {
            return Some(problem);
        }
        if !ACK_WAIT_MS.contains(&consumer.ack_wait_ms) {
            let problem = format!("must be from {} to {}", ACK_WAIT_MS.start(), ACK_WAIT_MS.end());
            return Some(("ack_wait_ms", consumer.ack_wait_ms.to_string(), problem));
        }
        if !MAX_ACK_PENDING.contains(&consumer.max_ack_pending) {
            let problem = format!("must be from {} to {}", MAX_ACK_PENDING.start(), MAX_ACK_PENDING.end());
            return Some(("max_ack_pending", consumer.max_ack_pending.to_string(), problem));
        }
        None
    }

    /// A subject of this entry and one of `earlier`'s that overlap, when a message on a subject
    /// both match would reach this host through each: two subscriptions (not to a stream) at the
    /// same server (however each `url` writes it: see [`server`]), unless both join the same queue
    /// group (the server gives a message to one member of a group, whichever of its subscriptions
    /// matched).
    pub(crate) fn shared_subject<'c>(&'c self, earlier: &'c NatsIngressConfig) -> Option<(&'c str, &'c str)> {
        let one_group = self.queue_group.is_some() && self.queue_group == earlier.queue_group;
        let subscribed = self.stream.is_none() && earlier.stream.is_none();
        if !subscribed || server(&self.url) != server(&earlier.url) || one_group {
            return None;
        }
        let pairs =
            self.subjects.iter().flat_map(|mine| earlier.subjects.iter().map(move |theirs| (mine, theirs)));
        pairs
            .into_iter()
            .find(|(mine, theirs)| overlap(mine, theirs))
            .map(|(mine, theirs)| (&**mine, &**theirs))
    }

    fn subjects_problem(&self) -> Option<(&'static str, String, String)> {
        let bad_subject =
            self.subjects.iter().find_map(|subject| Some((subject, subject_problem(subject, true)?)));
        if let Some((subject, problem)) = bad_subject {
            return Some(("subjects", format!("{subject:?}"), problem));
        }
        // Each subscription gets its own copy of a message: one both match would be admitted twice.
        let subjects = &self.subjects;
        let pairs =
            subjects.iter().enumerate().flat_map(|(at, a)| subjects[at + 1..].iter().map(move |b| (a, b)));
        let (a, b) = pairs.into_iter().find(|(a, b)| overlap(a, b))?;
        let problem =
            "overlap: a message on a subject both match would be admitted twice, with two ids".into();
        Some(("subjects", format!("{a:?} and {b:?}"), problem))
    }
}

/// The server a `host:port` url reaches, written one way however the url writes it, as far as its
/// text tells without a DNS lookup: a name lower-cased and without a trailing dot, an IP address
/// in its shortest form, the port as a number, and `localhost`, `127.0.0.1` and `[::1]` (or
/// `[::ffff:127.0.0.1]`) as the one loopback server, `localhost`. A url that is no `host:port`
/// stays as written.
fn server(url: &str) -> String {
    let Some((host, port)) =
        url.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
    else {
        return url.to_owned();
    };
    let ip = match host.strip_prefix('[').and_then(|host| host.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    let host = match ip.map(|ip| ip.to_canonical()) {
        Some(ip) if ip == Ipv4Addr::LOCALHOST || ip == Ipv6Addr::LOCALHOST => "localhost".to_owned(),
        Some(IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase(),
    };
    format!("{host}:{port}")
}

/// Whether some subject matches both `a` and `b` (valid subjects, wildcards allowed).
fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) | (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => continue,
            _ => return false,
        }
    }
}

/// `name` is empty or holds a space or control character.
fn name_problem(name: &str) -> bool {
    name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control())
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

    #[test]
    fn two_entries_share_a_subject_only_as_subscriptions_at_one_server_outside_one_queue_group() {
        let at = |url: &str, subject: &str, group: Option<&str>| NatsIngressConfig {
            url: url.into(),
            subjects: vec![subject.into()],
            queue_group: group.map(Into::into),
            ..NatsIngressConfig::default()
        };
        let server = "127.0.0.1:4222";
        let orders = at(server, "orders.>", None);
        let shared = Some(("orders.eu", "orders.>"));
        assert_eq!(at(server, "orders.eu", None).shared_subject(&orders), shared);
        assert_eq!(
            at(server, "orders.eu", Some("g")).shared_subject(&orders),
            shared,
            "the group gets one too"
        );
        assert_eq!(at(server, "payments.>", None).shared_subject(&orders), None);
        assert_eq!(at("127.0.0.1:4223", "orders.eu", None).shared_subject(&orders), None, "another server");
        let grouped = at(server, "orders.>", Some("g"));
        assert_eq!(at(server, "orders.eu", Some("g")).shared_subject(&grouped), None, "one group, one copy");
        assert_eq!(
            at(server, "orders.eu", Some("h")).shared_subject(&grouped),
            shared,
            "each group gets one"
        );
        let stream = NatsIngressConfig { stream: Some("ORDERS".into()), ..at(server, "orders.eu", None) };
        assert_eq!(stream.shared_subject(&orders), None, "a stream's consumer is no subscription");
    }

    #[test]
    fn one_server_is_one_server_however_its_url_is_written() {
        let at = |url: &str| NatsIngressConfig {
            url: url.into(),
            subjects: vec!["orders.>".into()],
            ..NatsIngressConfig::default()
        };
        let shared = Some(("orders.>", "orders.>"));
        let same = [
            ("127.0.0.1:4222", "localhost:4222"),
            ("localhost:4222", "[::1]:4222"),
            ("127.0.0.1:4222", "[0:0:0:0:0:0:0:1]:4222"),
            ("127.0.0.1:4222", "[::ffff:127.0.0.1]:4222"),
            ("LocalHost:4222", "localhost.:4222"),
            ("127.0.0.1:4222", "127.0.0.1:04222"),
            ("nats.example.com:4222", "NATS.Example.COM.:4222"),
            ("[2001:db8::7]:4222", "[2001:DB8:0:0:0:0:0:7]:4222"),
        ];
        for (a, b) in same {
            assert_eq!(at(b).shared_subject(&at(a)), shared, "{a} and {b}");
        }
        // No name is looked up: a name and an address (other than loopback's) may be one server or two.
        let different = [
            ("127.0.0.1:4222", "localhost:4223"),
            ("127.0.0.1:4222", "127.0.0.2:4222"),
            ("nats.example.com:4222", "10.0.0.7:4222"),
            ("nats.example.com:4222", "nats.example.org:4222"),
        ];
        for (a, b) in different {
            assert_eq!(at(b).shared_subject(&at(a)), None, "{a} and {b}");
        }
    }

    #[test]
    fn subjects_overlap_when_some_subject_matches_both() {
        for (a, b) in
            [("dup.>", "dup.a"), ("dup.*", "dup.a"), ("a.*.c", "a.b.*"), ("a.b", "a.b"), ("*.>", "x.y.z")]
        {
            assert!(overlap(a, b) && overlap(b, a), "{a} {b}");
        }
        for (a, b) in [("a.>", "a"), ("a.*", "a.b.c"), ("a.b", "a.c"), ("orders.eu", "orders.us.>")] {
            assert!(!overlap(a, b) && !overlap(b, a), "{a} {b}");
        }
    }
}
