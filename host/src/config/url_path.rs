//! A URL path as a setting: it starts with `/` and holds no whitespace or control characters (which
//! would split an HTTP request line).

use serde::{Deserialize, Serialize};

/// A checked URL path, e.g. `/in`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UrlPath(String);

impl UrlPath {
    /// `path`, or what is wrong with it.
    pub fn new(path: &str) -> Result<UrlPath, String> {
        if !path.starts_with('/') {
            return Err("must start with /".into());
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not hold whitespace or control characters".into());
        }
        Ok(UrlPath(path.to_owned()))
    }
}

impl Default for UrlPath {
    /// `/`.
    fn default() -> UrlPath {
        UrlPath("/".into())
    }
}

impl std::ops::Deref for UrlPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
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
        path.0
    }
}
