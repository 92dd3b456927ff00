//! `affinity = {..}` of a destination whose balancer is `affinity:header:NAME`: the bound, the pace of
//! migrations and the lifetime of a stream.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::balance::AffinityPolicy;

/// Largest `balance_factor`: past it the bound binds nothing worth a table.
const MAX_BALANCE_FACTOR: f64 = 100.0;

/// Most streams a table may be told to track, and most moves a second.
const MAX_COUNT: u64 = 1_000_000;

/// The longest `idle_timeout_ms` or `verify_interval_ms`: a day.
const MAX_MS: u64 = 86_400_000;

/// `affinity = {..}` of a destination: see [`AffinityPolicy`], whose defaults it shares.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffinitySettings {
    /// An endpoint takes at most `ceil(balance_factor × average)` streams; greater than 1.
    pub balance_factor: f64,
    /// Most streams of any one endpoint, whatever the average (no cap when unset).
    pub max_streams: Option<u64>,
    /// Most streams moved in any second to even out the load.
    pub migrate_per_s: u32,
    /// A stream without a message for this long ends, milliseconds.
    pub idle_timeout_ms: u64,
    /// Most streams recorded; further streams go by hash alone, untracked.
    pub max_tracked: u64,
    /// How often the consistency check runs, milliseconds.
    pub verify_interval_ms: u64,
}

impl Default for AffinitySettings {
    fn default() -> Self {
        let policy = AffinityPolicy::default();
        AffinitySettings {
            balance_factor: policy.balance_factor,
            max_streams: None,
            migrate_per_s: policy.migrate_per_s,
            idle_timeout_ms: policy.idle_timeout.as_millis() as u64,
            max_tracked: policy.max_streams_tracked as u64,
            verify_interval_ms: 10_000,
        }
    }
}

impl AffinitySettings {
    /// The stream table's policy these settings describe.
    pub fn policy(&self) -> AffinityPolicy {
        AffinityPolicy {
            balance_factor: self.balance_factor,
            max_streams: self.max_streams.map(|max| max as usize),
            migrate_per_s: self.migrate_per_s,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_streams_tracked: self.max_tracked as usize,
        }
    }

    /// The settings that differ from the defaults, as an inline TOML table, for error messages.
    pub(super) fn as_written(&self) -> String {
        let table = |settings: &AffinitySettings| toml::Table::try_from(settings).unwrap_or_default();
        let defaults = table(&AffinitySettings::default());
        let mut set = table(self);
        set.retain(|key, value| defaults.get(key) != Some(value));
        super::inline_table(&set)
    }

    /// Check every setting is in range: (field, value, problem) when one is not.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let factor = self.balance_factor;
        if !(factor > 1.0 && factor <= MAX_BALANCE_FACTOR) {
            let problem = format!("must be greater than 1 and at most {MAX_BALANCE_FACTOR}");
            return Err(("affinity.balance_factor", factor.to_string(), problem));
        }
        let counts = [
            ("affinity.max_streams", self.max_streams),
            ("affinity.migrate_per_s", Some(self.migrate_per_s.into())),
            ("affinity.max_tracked", Some(self.max_tracked)),
        ];
        let times = [
            ("affinity.idle_timeout_ms", self.idle_timeout_ms),
            ("affinity.verify_interval_ms", self.verify_interval_ms),
        ];
        let wrong = |(field, value, max): (&'static str, u64, u64)| {
            let problem = match value {
                0 => "must be at least 1".to_owned(),
                _ if value > max => format!("must be at most {max}"),
                _ => return None,
            };
            Some((field, value.to_string(), problem))
        };
        let counts =
            counts.into_iter().filter_map(|(field, value)| value.map(|value| (field, value, MAX_COUNT)));
        let times = times.into_iter().map(|(field, value)| (field, value, MAX_MS));
        match counts.chain(times).find_map(wrong) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_policy_defaults_and_valid() {
        let settings = AffinitySettings::default();
        assert_eq!(settings.policy(), AffinityPolicy::default());
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn out_of_range_settings_name_the_field_and_value() {
        let bad = |settings: AffinitySettings| settings.validate().unwrap_err();
        let base = AffinitySettings::default();
        assert_eq!(bad(AffinitySettings { balance_factor: 1.0, ..base }).0, "affinity.balance_factor");
        assert_eq!(bad(AffinitySettings { balance_factor: f64::NAN, ..base }).1, "NaN");
        assert_eq!(
            bad(AffinitySettings { max_streams: Some(0), ..base }),
            ("affinity.max_streams", "0".into(), "must be at least 1".into())
        );
        assert_eq!(bad(AffinitySettings { migrate_per_s: 0, ..base }).0, "affinity.migrate_per_s");
        assert_eq!(
            bad(AffinitySettings { idle_timeout_ms: MAX_MS + 1, ..base }),
            ("affinity.idle_timeout_ms", "86400001".into(), "must be at most 86400000".into())
        );
    }
}
