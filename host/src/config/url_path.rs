//! A URL path as a setting: it starts with `/`, holds no whitespace or control characters (which
//! would split an HTTP request line), and is a valid path and query as HTTP parses one.

use hyper::http::uri::PathAndQuery;
use serde::{Deserialize, Serialize};

/// A checked URL path, e.g. `/in`, parsed once: a request built from it parses nothing again.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UrlPath(PathAndQuery);

impl UrlPath {
    /// `path`, or what is wrong with it.
    pub fn new(path: &str) -> Result<UrlPath, String> {
        if !path.starts_with('/') {
            return Err("must start with /".into());
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not hold whitespace or control characters".into());
        }
        match PathAndQuery::try_from(path) {
            // A fragment (`#…`) is parsed away: never sent, so refused rather than silently dropped.
            Ok(parsed) if parsed == path => Ok(UrlPath(parsed)),
            Ok(_) => Err("must not hold a fragment (#)".into()),
            Err(err) => Err(format!("is not a valid URL path: {err}")),
        }
    }

    /// The path as a request's URI (a cheap copy of the parsed path).
    pub fn uri(&self) -> hyper::Uri {
        hyper::Uri::from(self.0.clone())
    }
}

impl std::fmt::Debug for UrlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UrlPath").field(&self.0.as_str()).finish()
    }
}

impl Default for UrlPath {
    /// `/`.
    fn default() -> UrlPath {
        UrlPath(PathAndQuery::from_static("/"))
    }
}

impl std::ops::Deref for UrlPath {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for UrlPath {
    type Error = String;

    fn try_from(path: String) -> Result<UrlPath, String> {
        UrlPath::new(&path)
    }
}

impl From<UrlPath> for String {
    fn from(path: UrlPath) -> String {
        path.0.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::UrlPath;

    #[test]
    fn a_path_is_refused_with_what_is_wrong_with_it() {
        assert_eq!(UrlPath::new("in").unwrap_err(), "must start with /");
        assert_eq!(UrlPath::new("/a b").unwrap_err(), "must not hold whitespace or control characters");
        assert_eq!(UrlPath::new("/a#top").unwrap_err(), "must not hold a fragment (#)");
        let err = UrlPath::new("/a<b>").unwrap_err();
        assert!(err.starts_with("is not a valid URL path: "), "{err}");
    }

    #[test]
    fn a_path_and_its_query_are_kept_as_written() {
        let path = UrlPath::new("/in/orders?tenant=eu&x=%20").unwrap();
        assert_eq!(&*path, "/in/orders?tenant=eu&x=%20");
        assert_eq!(path.uri().to_string(), "/in/orders?tenant=eu&x=%20");
        assert_eq!(format!("{path:?}"), r#"UrlPath("/in/orders?tenant=eu&x=%20")"#);
    }
}
