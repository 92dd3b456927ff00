//! Routing: which route a message takes, decided by its topic and headers.

use crate::config::{FailurePolicy, RouteConfig, StageRef};
use crate::message::Message;

/// A topic pattern: `.`-separated segments, `*` matches exactly one segment and
/// a final `>` matches one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl TopicPattern {
    /// Parse `pattern`, e.g. `orders.*` or `audit.>`.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "" => return Err("empty segment in topic pattern".into()),
                "*" => Segment::One,
                ">" if i + 1 == parts.len() => Segment::Rest,
                ">" => return Err("`>` may only end a topic pattern".into()),
                literal => Segment::Literal(literal.to_owned()),
            });
        }
        Ok(TopicPattern { segments })
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, Some(_)) => return true,
                (Segment::One, Some(_)) => {}
                (Segment::Literal(literal), Some(part)) if literal == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// A route ready to match messages.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name.
    pub name: String,
    topic: Option<TopicPattern>,
    headers: Vec<(String, String)>,
    /// Stages in order.
    pub stages: Vec<StageRef>,
    /// Destinations; more than one means fan-out.
    pub destinations: Vec<String>,
    /// Priority class assigned to the route's messages, if any.
    pub priority: Option<u8>,
    /// Failure policy overriding the plugins' own.
    pub on_error: Option<FailurePolicy>,
}

impl Route {
    /// Build from validated configuration.
    pub fn from_config(config: &RouteConfig) -> Result<Route, String> {
        let topic = config.matches.topic.as_deref().map(TopicPattern::parse).transpose()?;
        Ok(Route {
            name: config.name.clone(),
            topic,
            headers: config.matches.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            stages: config.stages.clone(),
            destinations: config.to.iter().chain(&config.fan_out).cloned().collect(),
            priority: config.priority,
            on_error: config.on_error,
        })
    }

    fn matches(&self, message: &Message) -> bool {
        self.topic.as_ref().is_none_or(|pattern| pattern.matches(&message.topic))
            && self
                .headers
                .iter()
                .all(|(name, want)| message.header(name).is_some_and(|value| want == "*" || value == want))
    }
}

/// The ordered routes of a host; the first that matches wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// Index of a route in its [`RouteTable`].
pub type RouteKey = usize;

impl RouteTable {
    /// A table over `routes`, in order.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        RouteTable { routes }
    }

    /// The first route that takes `message`.
    pub fn route(&self, message: &Message) -> Option<RouteKey> {
        self.routes.iter().position(|route| route.matches(message))
    }

    /// The route behind `key`.
    pub fn get(&self, key: RouteKey) -> &Route {
        &self.routes[key]
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_by_segment() {
        let star = TopicPattern::parse("orders.*").unwrap();
        assert!(star.matches("orders.eu"));
        assert!(!star.matches("orders"));
        assert!(!star.matches("orders.eu.paid"));
        assert!(!star.matches("ordersx.eu"));
        let rest = TopicPattern::parse("audit.>").unwrap();
        assert!(rest.matches("audit.a.b"));
        assert!(!rest.matches("audit"));
        assert!(TopicPattern::parse("a.b").unwrap().matches("a.b"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert_eq!(TopicPattern::parse("a..b").unwrap_err(), "empty segment in topic pattern");
        assert_eq!(TopicPattern::parse("a.>.b").unwrap_err(), "`>` may only end a topic pattern");
    }

    #[test]
    fn first_matching_route_wins_and_headers_must_match() {
        let route = |name: &str, topic: &str, header: Option<(&str, &str)>| {
            let mut config: RouteConfig =
                toml::from_str(&format!("name = \"{name}\"\nto = \"log\"")).unwrap();
            config.matches.topic = Some(topic.into());
            config.matches.headers.extend(header.map(|(k, v)| (k.to_owned(), v.to_owned())));
            Route::from_config(&config).unwrap()
        };
        let table = RouteTable::new(vec![
            route("vip", "orders.*", Some(("tier", "gold"))),
            route("any-tenant", "orders.*", Some(("tenant", "*"))),
            route("orders", "orders.>", None),
        ]);
        let msg = Message::new("orders.eu", "");
        assert_eq!(table.route(&msg), Some(2));
        assert_eq!(table.route(&msg.clone().with_header("Tier", "gold")), Some(0));
        assert_eq!(table.route(&msg.clone().with_header("tenant", "x")), Some(1));
        assert_eq!(table.route(&Message::new("billing", "")), None);
    }
}
