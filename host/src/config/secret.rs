//! Secrets in a configuration: the keys whose values are secret, and the secrets any string may
//! carry (a URL's password, `--password=…`). `GET /v1/config` and config errors both hide them
//! through here: an error reaches the log, the `config-rejected` event and the admin API's answers.

use std::borrow::Cow;
use std::ops::Range;

/// What a config error shows in place of a secret.
const NOT_SHOWN: &str = "(not shown)";

/// Whether a settings key names a secret (`password`, `secret`, `token`, `api_key`,
/// `authorization`, …, or ending in `pass` or `auth` as a word: `DB_PASS`, `x-auth`; any case, `-`
/// or `_`): its value is not shown in an error or by `GET /v1/config`.
pub(crate) fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    let words = [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "credential",
        "authorization",
        "private_key",
    ];
    // Short, these count only as the last word: `bypass` and `author` name no secret.
    let last_words = ["pass", "auth"];
    words.iter().any(|word| key.contains(word))
        || key.rsplit('_').next().is_some_and(|last| last_words.contains(&last))
}

/// Where the password of a URL with credentials (`scheme://user:password@rest`) is in `text`, if it
/// has one. The userinfo ends at the last `@`: a password may hold `@` and `/` (unescaped, as people
/// write them).
fn url_password_at(text: &str) -> Option<Range<usize>> {
    let (scheme, rest) = text.split_once("://")?;
    let (userinfo, _host) = rest.rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    let start = scheme.len() + "://".len() + user.len() + 1;
    Some(start..start + userinfo.len() - user.len() - 1)
}

/// The password of a URL with credentials (`scheme://user:password@rest`) in `text`, if it has one.
pub(crate) fn url_password(text: &str) -> Option<&str> {
    url_password_at(text).map(|at| &text[at])
}

/// The `name=value` pairs of `text` whose name names a secret (`--password=…`, `?access_token=…`),
/// each value up to the next `&`, `;`, space or the end.
pub(crate) fn secret_pairs(text: &str) -> impl Iterator<Item = (Range<usize>, &str)> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices('=').filter_map(move |(at, _)| {
        let name_start = text[..at].rfind(|c: char| !name_char(c)).map_or(0, |before| before + 1);
        if !names_a_secret(&text[name_start..at]) {
            return None;
        }
        let start = at + 1;
        let end = text[start..].find(['&', ';', ' ']).map_or(text.len(), |len| start + len);
        Some((start..end, &text[start..end]))
    })
}

/// `text` with the password of a URL in it ([`url_password`]), then the value of each secret
/// `name=value` pair ([`secret_pairs`]), replaced by `hidden`.
pub(crate) fn without_secrets<'a>(text: &'a str, hidden: &str) -> Cow<'a, str> {
    let mut shown = Cow::Borrowed(text);
    if let Some(password) = url_password_at(text) {
        shown = Cow::Owned(format!("{}{hidden}{}", &text[..password.start], &text[password.end..]));
    }
    let values: Vec<Range<usize>> = secret_pairs(&shown).map(|(range, _)| range).collect();
    if values.is_empty() {
        return shown;
    }
    let (mut hiding, mut from) = (String::with_capacity(shown.len()), 0);
    for range in values {
        hiding.push_str(&shown[from..range.start]);
        hiding.push_str(hidden);
        from = range.end;
    }
    hiding.push_str(&shown[from..]);
    Cow::Owned(hiding)
}

/// `text` as a config error shows a string written in the file: what it carries of a secret (see
/// [`without_secrets`]) not shown.
pub(crate) fn shown(text: &str) -> Cow<'_, str> {
    without_secrets(text, NOT_SHOWN)
}

/// `table` on one line as written in TOML, e.g. `{ path = "/in", redirects_ok = true }`, its strings
/// escaped so that no control character reaches a terminal or a log line, and no secret shown: not
/// the value of a key that names one (a subprocess's `env = { DB_PASSWORD = … }`), nor what any other
/// string carries of one (a URL's password, a `--password=…` pair), an array's included.
pub fn inline_table(table: &toml::Table) -> String {
    let pairs: Vec<String> =
        table.iter().map(|(key, item)| format!("{key} = {}", inline_value(key, item))).collect();
    match pairs.is_empty() {
        true => "{}".to_owned(),
        false => format!("{{ {} }}", pairs.join(", ")),
    }
}

/// The `value` of `key` as [`inline_table`] shows it.
pub(crate) fn inline_value(key: &str, value: &toml::Value) -> String {
    match value {
        toml::Value::String(_) if names_a_secret(key) => NOT_SHOWN.to_owned(),
        toml::Value::String(text) => format!("{:?}", shown(text)),
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|item| inline_value(key, item)).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(table) => inline_table(table),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ending_in_pass_or_auth_name_a_secret_and_words_holding_them_do_not() {
        for key in ["DB_PASS", "smtp-pass", "pass", "--pass", "auth", "basic_auth", "X-Auth", "DB_PASSWORD"] {
            assert!(names_a_secret(key), "{key}");
        }
        for key in ["bypass", "passes", "pass_through", "author", "oauth", "auth_mode", "HOME", "path"] {
            assert!(!names_a_secret(key), "{key}");
        }
    }

    #[test]
    fn a_string_shows_neither_a_url_password_nor_a_secret_pair_and_keeps_the_rest() {
        let cases = [
            ("redis://app:s3cret@db:6379", "redis://app:(not shown)@db:6379"),
            ("postgres://app:p@ss/1@db:5432/x", "postgres://app:(not shown)@db:5432/x"),
            ("--password=hunter2", "--password=(not shown)"),
            ("/hook?access_token=abc&mode=fast", "/hook?access_token=(not shown)&mode=fast"),
            ("SMTP_PASS=x;DB_AUTH=y", "SMTP_PASS=(not shown);DB_AUTH=(not shown)"),
            ("redis://db:6379", "redis://db:6379"),
            ("--level=3 --bypass=1", "--level=3 --bypass=1"),
        ];
        for (text, expected) in cases {
            assert_eq!(shown(text), expected, "{text}");
        }
    }

    #[test]
    fn an_inline_table_hides_the_secrets_of_its_strings_arrays_and_tables() {
        let table: toml::Table = toml::from_str(
            "command = [\"loader\", \"--password=hunter2\", \"--dsn=postgres://app:s3cret@db:5432/x\"]\n\
             env = { DB_PASS = \"EnvSecret\", HOME = \"/srv\" }\nworkers = 2\n",
        )
        .unwrap();
        assert_eq!(
            inline_table(&table),
            "{ command = [\"loader\", \"--password=(not shown)\", \"--dsn=postgres://app:(not shown)@db:5432/x\"], \
             env = { DB_PASS = (not shown), HOME = \"/srv\" }, workers = 2 }"
        );
    }
}
