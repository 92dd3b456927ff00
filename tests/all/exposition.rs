//! A strict reader of the OpenMetrics text `/metrics` serves: a line it
//! cannot read fails the test, where a lenient parser would skip it.
//!
//! It checks what the admin API's exposition uses: `# HELP`/`# TYPE`/`# UNIT`
//! comments, one family per `# TYPE` with the suffixes its type allows,
//! `name{label="value",...} value` samples with escaped label values, and
//! the closing `# EOF`. Histogram buckets must be cumulative and end with a
//! `+Inf` bucket equal to `_count`.

use std::collections::BTreeMap;

/// One sample line: metric name (with its suffix), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of `text`; panics naming the first line that is not strict OpenMetrics.
pub fn parse(text: &str) -> Vec<Sample> {
    let body = text.strip_suffix("# EOF\n").unwrap_or_else(|| panic!("no closing `# EOF`:\n{text}"));
    let (mut family, mut described): (Option<(String, String)>, Option<&str>) = (None, None);
    let mut samples = Vec::new();
    for (number, line) in body.lines().enumerate() {
        let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", number + 1) };
        if let Some(comment) = line.strip_prefix("# ") {
            match comment.split_once(' ') {
                Some(("TYPE", rest)) => {
                    let (name, kind) = type_line(rest).unwrap_or_else(|why| fail(why));
                    if described.take().is_some_and(|described| described != name) {
                        fail("HELP of another family than its TYPE");
                    }
                    family = Some((name, kind));
                }
                Some(("HELP", rest)) => {
                    let name = rest.split(' ').next().unwrap_or_default();
                    if !is_name(name) {
                        fail("bad family name");
                    }
                    described = Some(name);
                }
                Some(("UNIT", rest)) => {
                    let name = rest.split(' ').next().unwrap_or_default();
                    if family.as_ref().is_none_or(|(family, _)| family != name) {
                        fail("UNIT of another family than the TYPE above it");
                    }
                }
                _ => fail("unknown comment"),
            }
            continue;
        }
        let sample = sample_line(line).unwrap_or_else(|why| fail(why));
        let Some((name, kind)) = &family else { fail("sample before any # TYPE") };
        if !belongs(&sample.name, name, kind) {
            fail("sample name does not belong to its family");
        }
        samples.push(sample);
    }
    check_histograms(&samples);
    samples
}

/// The value of sample `name` carrying (at least) `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse(text).into_iter().find_map(|s| {
        let matches =
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v));
        matches.then_some(s.value)
    })
}

/// `NAME TYPE` of a `# TYPE` line.
fn type_line(rest: &str) -> Result<(String, String), &'static str> {
    let (name, kind) = rest.split_once(' ').ok_or("TYPE without a type")?;
    let known = ["counter", "gauge", "histogram", "gaugehistogram", "summary", "info", "stateset", "unknown"];
    match is_name(name) && known.contains(&kind) {
        true => Ok((name.to_owned(), kind.to_owned())),
        false => Err("bad TYPE line"),
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether sample `name` is one of family `family`'s, of type `kind`.
fn belongs(name: &str, family: &str, kind: &str) -> bool {
    let suffixes: &[&str] = match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    };
    name.strip_prefix(family).is_some_and(|suffix| suffixes.contains(&suffix))
}

/// `name{labels} value [timestamp]`, nothing more (no exemplars here).
fn sample_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    if !is_name(name) {
        return Err("bad metric name");
    }
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = label_set(after, &mut labels)?;
    }
    let rest = rest.strip_prefix(' ').ok_or("no single space before the value")?;
    let mut parts = rest.split(' ');
    let value = number(parts.next().unwrap_or_default()).ok_or("bad value")?;
    if let Some(timestamp) = parts.next() {
        timestamp.parse::<f64>().map_err(|_| "bad timestamp")?;
    }
    match parts.next() {
        Some(_) => Err("trailing text"),
        None => Ok(Sample { name: name.to_owned(), labels, value }),
    }
}

/// Read `k="v",...}` into `labels`; returns what follows the `}`.
fn label_set<'a>(mut rest: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, &'static str> {
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(key) || key.contains(':') {
            return Err("bad label name");
        }
        let (value, after) = quoted(after)?;
        if labels.insert(key.to_owned(), value).is_some() {
            return Err("label repeated");
        }
        rest = after.strip_prefix(',').unwrap_or(after);
        if !after.starts_with([',', '}']) {
            return Err("labels not separated by commas");
        }
    }
}

/// An escaped label value up to its closing quote; returns it and the rest.
fn quoted(text: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                _ => return Err("bad escape in a label value"),
            },
            '\n' => return Err("raw newline in a label value"),
            c => value.push(c),
        }
    }
    Err("unterminated label value")
}

fn number(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        text if text.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') => text.parse().ok(),
        _ => None,
    }
}

/// A series' labels but `le`, in order.
type Labels = Vec<(String, String)>;

/// Each histogram's buckets are cumulative, and its `+Inf` bucket is its `_count`.
fn check_histograms(samples: &[Sample]) {
    let mut series: BTreeMap<(String, Labels), Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        let le = number(s.labels.get("le").expect("a bucket has `le`")).expect("`le` is a number");
        let others = s.labels.iter().filter(|(k, _)| *k != "le").map(|(k, v)| (k.clone(), v.clone()));
        let key = (s.name.trim_end_matches("_bucket").to_owned(), others.collect());
        series.entry(key).or_default().push((le, s.value));
    }
    for ((name, labels), buckets) in series {
        let cumulative = buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        assert!(cumulative, "{name}{labels:?}: buckets not cumulative: {buckets:?}");
        let count = samples.iter().find(|s| {
            s.name == format!("{name}_count")
                && s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>() == labels
        });
        let last = buckets.last().copied();
        assert_eq!(last.map(|(le, _)| le), Some(f64::INFINITY), "{name}{labels:?}: no +Inf bucket");
        assert_eq!(count.map(|s| s.value), last.map(|(_, n)| n), "{name}{labels:?}: _count is not +Inf's");
    }
}

#[test]
fn strict_reader_refuses_what_a_lenient_one_would_skip() {
    let good = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{path=\"/x,y\"} 3\n\
                # TYPE a_seconds histogram\na_seconds_bucket{le=\"0.1\"} 1\na_seconds_bucket{le=\"+Inf\"} 2\n\
                a_seconds_sum 0.5\na_seconds_count 2\n# EOF\n";
    assert_eq!(sample(good, "a_requests_total", &[("path", "/x,y")]), Some(3.0));
    assert_eq!(sample(good, "a_seconds_count", &[]), Some(2.0));
    let bad = [
        "a_requests_total{path=\"/x} 3\n",
        "a_requests_total 3 4 5\n",
        "a_requests_total three\n",
        "a_requests_total  3\n",
        "a_requests_total{path=\"a\" code=\"b\"} 3\n",
        "b_other_total 3\n",
        "a_requests 3\n",
    ];
    for line in bad {
        let text = format!("# TYPE a_requests counter\n{line}# EOF\n");
        assert!(std::panic::catch_unwind(|| parse(&text)).is_err(), "accepted {line:?}");
    }
    assert!(std::panic::catch_unwind(|| parse("# TYPE a_requests counter\na_requests_total 3\n")).is_err());
    let skewed =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n";
    assert!(std::panic::catch_unwind(|| parse(skewed)).is_err(), "buckets must be cumulative");
}
