//! `[[alert]]`: an alert rule, and its condition (`when`) parsed into a typed expression.
//!
//! ```text
//! when      = reading OP number            OP: >  >=  <  <=  ==  !=
//! reading   = selector | rate(selector[WINDOW])     WINDOW: 30s, 5m, 1h
//! selector  = metric | metric{label="value", ...}     "value": any text, \" and \\ for " and \
//! ```

use crate::metrics::{READABLE, Readable};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[[alert]]`: a rule the host evaluates every second.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Its name and id: letters, digits, `-` and `_` (it names the topic `switchyard.alert.NAME`).
    pub name: String,
    /// The condition, e.g. `rate(dead_letters{route="orders"}[60s]) > 0.5`.
    pub when: String,
    /// Seconds the condition must hold before the alert fires (0: at once).
    #[serde(default)]
    pub for_s: u64,
    /// How bad it is.
    #[serde(default)]
    pub severity: Severity,
    /// Free text carried in the alert's events and messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// `severity` of an alert rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Worth a look soon.
    #[default]
    Warning,
    /// Worth waking someone.
    Critical,
}

/// A parsed `when`: a reading compared with a threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// What is read.
    pub reading: Reading,
    /// How it is compared.
    pub comparison: Comparison,
    /// With what.
    pub threshold: f64,
}

/// The value a condition reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The sum of the selected series now.
    Value(Selector),
    /// How much the selected counter grew per second over the last `window`.
    Rate {
        /// The counter.
        selector: Selector,
        /// How far back.
        window: Duration,
    },
}

/// A metric and the label values that select its series (all of them when none).
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// One of [`READABLE`].
    pub metric: &'static str,
    /// (label, value) pairs, each required to be equal.
    pub labels: Vec<(String, String)>,
}

/// The comparison of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Above,
    /// `>=`
    AtLeast,
    /// `<`
    Below,
    /// `<=`
    AtMost,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
}

/// The longest rate window and `for_s`: a day.
pub const MAX_ALERT_SECONDS: u64 = 86_400;

impl Comparison {
    /// Whether `value` compared with `threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Above => value > threshold,
            Comparison::AtLeast => value >= threshold,
            Comparison::Below => value < threshold,
            Comparison::AtMost => value <= threshold,
            Comparison::Equal => value == threshold,
            Comparison::NotEqual => value != threshold,
        }
    }
}

impl Condition {
    /// Parse a `when`; the problem, worded for an operator, when it is not one.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let text = text.trim();
        let at = text.find(['>', '<', '=', '!']).ok_or("expected METRIC OP NUMBER, e.g. dead_letters > 0")?;
        // Skip operators inside a selector's braces (`{route="a"}` holds an `=`).
        let at = match text[..at].contains('{') {
            true => {
                let end = text.rfind('}').ok_or_else(|| format!("{text}: {{ without its closing }}"))?;
                text[end..].find(['>', '<', '=', '!']).map(|i| end + i)
            }
            false => Some(at),
        }
        .ok_or("expected METRIC OP NUMBER, e.g. dead_letters > 0")?;
        let (reading, rest) = (text[..at].trim(), &text[at..]);
        let operators = [
            (">=", Comparison::AtLeast),
            ("<=", Comparison::AtMost),
            ("==", Comparison::Equal),
            ("!=", Comparison::NotEqual),
            (">", Comparison::Above),
            ("<", Comparison::Below),
        ];
        let (op, comparison) = operators
            .into_iter()
            .find(|(op, _)| rest.starts_with(op))
            .ok_or_else(|| format!("unknown operator in {rest:?} (use >, >=, <, <=, ==, !=)"))?;
        let number = rest[op.len()..].trim();
        let threshold = number
            .parse::<f64>()
            .ok()
            .filter(|threshold| threshold.is_finite())
            .ok_or_else(|| format!("{number:?} is not a number"))?;
        Ok(Condition { reading: Reading::parse(reading)?, comparison, threshold })
    }
}

impl Reading {
    /// The selector it reads.
    pub fn selector(&self) -> &Selector {
        match self {
            Reading::Value(selector) | Reading::Rate { selector, .. } => selector,
        }
    }

    fn parse(text: &str) -> Result<Reading, String> {
        let Some(inner) = text.strip_prefix("rate(") else {
            return Ok(Reading::Value(Selector::parse(text)?));
        };
        let inner = inner.strip_suffix(')').ok_or("rate( without its closing )")?;
        let (selector, window) = inner
            .strip_suffix(']')
            .and_then(|inner| inner.rsplit_once('['))
            .ok_or("rate(METRIC[WINDOW]) needs a window, e.g. rate(dead_letters[60s])")?;
        let selector = Selector::parse(selector.trim())?;
        if !readable(selector.metric).counter {
            return Err(format!("rate() applies to counters, and {} is a gauge", selector.metric));
        }
        Ok(Reading::Rate { selector, window: window_of(window.trim())? })
    }
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let (name, labels) = match text.split_once('{') {
            Some((name, labels)) => (name.trim(), Some(labels)),
            None => (text, None),
        };
        let known = || READABLE.iter().map(|readable| readable.name).collect::<Vec<_>>().join(", ");
        let metric = READABLE
            .iter()
            .find(|readable| readable.name == name)
            .ok_or_else(|| format!("unknown metric {name:?} (known: {})", known()))?;
        let mut pairs: Vec<(String, String)> = Vec::new();
        let labels = labels.map(label_values).transpose().map_err(|problem| format!("{text}: {problem}"))?;
        for (label, value) in labels.unwrap_or_default() {
            if !metric.labels.contains(&label) {
                let labels = metric.labels.join(", ");
                return Err(format!("{} has no label {label:?} (labels: {labels})", metric.name));
            }
            if pairs.iter().any(|(selected, _)| selected == label) {
                return Err(format!("label {label:?} is selected twice: a series has one value of it"));
            }
            pairs.push((label.to_owned(), value));
        }
        Ok(Selector { metric: metric.name, labels: pairs })
    }
}

/// The `label="value"` pairs of a selector, read from `text`, what follows its `{`, to the `}`
/// that closes it and ends the selector. A value is any text in double quotes, `\"` and `\\`
/// writing `"` and `\`; pairs are separated by commas (one may follow the last).
fn label_values(text: &str) -> Result<Vec<(&str, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return match after.trim() {
                "" => Ok(pairs),
                after => Err(format!("text after its closing }}: {after}")),
            };
        }
        if rest.is_empty() {
            return Err("{ without its closing }".into());
        }
        let pair = rest;
        let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        let (label, after) = rest.split_at(name_end.unwrap_or(rest.len()));
        let after = after.trim_start().strip_prefix('=').filter(|_| !label.is_empty());
        let after = after.ok_or_else(|| format!("expected label=\"value\" or }}, not {rest}"))?.trim_start();
        let Some(quoted) = after.strip_prefix('"') else {
            let value = after.split([',', '}']).next().unwrap_or_default().trim();
            return Err(format!("the value of {label} must be quoted, not {value}"));
        };
        let (value, after) =
            quoted_value(quoted).map_err(|problem| format!("the value of {label} {problem}"))?;
        pairs.push((label, value));
        let written = &pair[..pair.len() - after.len()];
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start(),
            None if rest.is_empty() || rest.starts_with('}') => {}
            None => return Err(format!("expected , or }} after {written}, not {rest}")),
        }
    }
}

/// A quoted value, read from `text`, what follows its opening `"`, and the text after its closing one.
fn quoted_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                Some((_, other)) => return Err(format!("holds \\{other}: a \\ escapes only \" or \\")),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("has no closing \"".into())
}

fn readable(name: &str) -> &'static Readable {
    READABLE.iter().find(|readable| readable.name == name).expect("a parsed selector names a readable metric")
}

/// `30s`, `5m` or `1h`: from 1 s to a day.
fn window_of(text: &str) -> Result<Duration, String> {
    let units = [("s", 1), ("m", 60), ("h", 3600)];
    let seconds = units.iter().find_map(|(unit, scale)| {
        text.strip_suffix(unit)
            .and_then(|number| number.parse::<u64>().ok())
            .map(|n| n.saturating_mul(*scale))
    });
    match seconds {
        Some(seconds @ 1..=MAX_ALERT_SECONDS) => Ok(Duration::from_secs(seconds)),
        Some(_) => Err(format!("window {text:?} must be from 1s to 24h")),
        None => Err(format!("window {text:?}: expected a number of s, m or h, e.g. 60s")),
    }
}

impl AlertConfig {
    /// Its condition, parsed.
    pub fn condition(&self) -> Result<Condition, String> {
        Condition::parse(&self.when)
    }

    /// Check the rule: (field, value, problem) when wrong.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.name.is_empty() || self.name.len() > 64 || !self.name.chars().all(plain) {
            let problem = "1 to 64 letters, digits, - or _ (it names the topic switchyard.alert.NAME)";
            return Err(("name", self.name.clone(), problem.into()));
        }
        self.condition().map_err(|problem| ("when", self.when.clone(), problem))?;
        if self.for_s > MAX_ALERT_SECONDS {
            let problem = format!("must be at most {MAX_ALERT_SECONDS} (a day)");
            return Err(("for_s", self.for_s.to_string(), problem));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_rate_of_a_selected_counter_parses_into_its_parts() {
        let condition =
            Condition::parse(r#"rate(dead_letters{route="orders", reason="no-route"}[5m]) >= 0.5"#);
        let selector = Selector {
            metric: "dead_letters",
            labels: labels(&[("route", "orders"), ("reason", "no-route")]),
        };
        let reading = Reading::Rate { selector, window: Duration::from_secs(300) };
        assert_eq!(condition, Ok(Condition { reading, comparison: Comparison::AtLeast, threshold: 0.5 }));
    }

    #[test]
    fn a_plain_gauge_and_every_operator_parse() {
        for (op, comparison) in [
            (">", Comparison::Above),
            (">=", Comparison::AtLeast),
            ("<", Comparison::Below),
            ("<=", Comparison::AtMost),
            ("==", Comparison::Equal),
            ("!=", Comparison::NotEqual),
        ] {
            let condition =
                Condition::parse(&format!("endpoint_down{{destination=\"api\"}} {op} 0")).unwrap();
            assert_eq!(condition.comparison, comparison, "{op}");
            let selector = Selector { metric: "endpoint_down", labels: labels(&[("destination", "api")]) };
            assert_eq!(condition.reading, Reading::Value(selector));
        }
        assert_eq!(Condition::parse("spool_oldest_age_seconds>30").unwrap().threshold, 30.0);
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        let cases = [
            ("dead_leters > 0", "unknown metric \"dead_leters\""),
            ("dead_letters => 0", "unknown operator in \"=> 0\""),
            ("dead_letters > lots", "\"lots\" is not a number"),
            ("dead_letters > inf", "\"inf\" is not a number"),
            ("dead_letters", "expected METRIC OP NUMBER"),
            (
                "rate(destination_queued[60s]) > 1",
                "rate() applies to counters, and destination_queued is a gauge",
            ),
            ("rate(dead_letters) > 1", "needs a window"),
            ("rate(dead_letters[0s]) > 1", "window \"0s\" must be from 1s to 24h"),
            ("rate(dead_letters[60x]) > 1", "expected a number of s, m or h"),
            (
                "dead_letters{destination=\"a\"} > 0",
                "dead_letters has no label \"destination\" (labels: route, reason)",
            ),
            ("dead_letters{route=a} > 0", "the value of route must be quoted"),
        ];
        for (when, expected) in cases {
            let problem = Condition::parse(when).unwrap_err();
            assert!(problem.contains(expected), "{when}: {problem}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_selector_and_what_is_wrong() {
        let cases = [
            (
                r#"dead_letters{route="a"}{reason="b"} > 0"#,
                r#"dead_letters{route="a"}{reason="b"}: text after its closing }: {reason="b"}"#,
            ),
            (
                r#"dead_letters{route="a"} junk > 0"#,
                r#"dead_letters{route="a"} junk: text after its closing }: junk"#,
            ),
            (
                r#"rate(dead_letters{route="a"}junk[60s]) > 0"#,
                r#"dead_letters{route="a"}junk: text after its closing }: junk"#,
            ),
            (
                r#"dead_letters{route="a" reason="b"} > 0"#,
                r#"dead_letters{route="a" reason="b"}: expected , or } after route="a", not reason="b"}"#,
            ),
            (
                r#"dead_letters{route="a"",} > 0"#,
                r#"dead_letters{route="a"",}: expected , or } after route="a", not ",}"#,
            ),
            (
                r#"dead_letters{route="a",,reason="b"} > 0"#,
                r#"dead_letters{route="a",,reason="b"}: expected label="value" or }, not ,reason="b"}"#,
            ),
            (r#"dead_letters{="a"} > 0"#, r#"dead_letters{="a"}: expected label="value" or }, not ="a"}"#),
            (
                r#"dead_letters{route="a} > 0"#,
                r#"dead_letters{route="a}: the value of route has no closing ""#,
            ),
            (
                r#"dead_letters{route="a\"} > 0"#,
                r#"dead_letters{route="a\"}: the value of route has no closing ""#,
            ),
            (
                r#"dead_letters{route="a\b"} > 0"#,
                r#"dead_letters{route="a\b"}: the value of route holds \b: a \ escapes only " or \"#,
            ),
            (r#"dead_letters{route="a" > 0"#, r#"dead_letters{route="a" > 0: { without its closing }"#),
            (r#"dead_letters{route="a", > 0"#, r#"dead_letters{route="a", > 0: { without its closing }"#),
        ];
        for (when, expected) in cases {
            assert_eq!(Condition::parse(when), Err(expected.to_owned()), "{when}");
        }
    }

    #[test]
    fn a_label_value_holds_any_text_quoted() {
        let condition = Condition::parse(r#"dead_letters{route="a,b}{c", reason="say \"hi\" \\",} > 0"#);
        let selector = Selector {
            metric: "dead_letters",
            labels: labels(&[("route", "a,b}{c"), ("reason", r#"say "hi" \"#)]),
        };
        assert_eq!(condition.map(|condition| condition.reading), Ok(Reading::Value(selector)));
        let all = Condition::parse("dead_letters{ } > 0").map(|condition| condition.reading);
        assert_eq!(all, Ok(Reading::Value(Selector { metric: "dead_letters", labels: vec![] })));
    }

    #[test]
    fn comparisons_hold_as_written() {
        assert!(Comparison::Above.holds(1.0, 0.0) && !Comparison::Above.holds(0.0, 0.0));
        assert!(Comparison::AtMost.holds(0.0, 0.0) && !Comparison::Below.holds(0.0, 0.0));
        assert!(Comparison::NotEqual.holds(1.0, 0.0) && Comparison::Equal.holds(2.0, 2.0));
    }
}
