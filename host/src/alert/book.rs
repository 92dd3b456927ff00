//! The alert rules of a host and where each stands.

use super::rule::{Rule, Transition};
use super::saved::{SavedAlert, SavedAlerts};
use super::{AlertState, AlertStatus};
use crate::config::AlertConfig;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::time::Instant;

/// The alert rules of a host, in config order, with their states.
#[derive(Debug, Default)]
pub struct AlertBook {
    rules: Mutex<Vec<Rule>>,
    /// Where the firing alerts are kept, if anywhere.
    saved: Option<SavedAlerts>,
    /// Alerts kept by the last host on the same state, taken up by the first [`sync`](Self::sync).
    to_take_up: Mutex<Vec<SavedAlert>>,
}

/// Why an alert could not be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No rule has this id.
    #[error("no alert {0:?}")]
    Unknown(String),
    /// The rule is not firing (only a firing alert is acknowledged).
    #[error("alert {id:?} is {state}, not firing: only a firing alert is acknowledged")]
    NotFiring {
        /// The rule.
        id: String,
        /// Its state.
        state: &'static str,
    },
}

impl AlertBook {
    /// A book keeping its firing alerts in `state_dir`, taking up those a host on the same
    /// state directory kept there.
    pub fn kept_in(state_dir: &Path) -> AlertBook {
        let saved = SavedAlerts::in_dir(state_dir);
        let to_take_up = Mutex::new(saved.load());
        AlertBook { rules: Mutex::default(), saved: Some(saved), to_take_up }
    }

    /// Make `configs` the rules: a rule whose `[[alert]]` is unchanged keeps its state (and its
    /// rate samples); a new or changed one starts inactive, unless it is the first sync and the
    /// last host kept it firing under the same `[[alert]]`; a removed one goes, without an event.
    pub fn sync(&self, configs: &[AlertConfig]) {
        let mut rules = self.lock();
        let mut to_take_up =
            std::mem::take(&mut *self.to_take_up.lock().unwrap_or_else(|poison| poison.into_inner()));
        let unchanged = rules.len() == configs.len()
            && rules.iter().zip(configs).all(|(rule, config)| &rule.config == config);
        if unchanged {
            return;
        }
        let mut old = std::mem::take(&mut *rules);
        for config in configs {
            let kept = old.iter().position(|rule| &rule.config == config).map(|at| old.swap_remove(at));
            let mut saved = || {
                let at = to_take_up.iter().position(|saved| &saved.config == config)?;
                Some(to_take_up.swap_remove(at))
            };
            rules.extend(kept.or_else(|| match saved() {
                Some(saved) => Rule::firing_since(saved),
                None => Rule::new(config.clone()),
            }));
        }
    }

    /// Evaluate every rule at `now` (`wall` on the wall clock) with `read`, which reads a metric
    /// selected by labels; the transitions, in rule order.
    pub fn evaluate(
        &self,
        now: Instant,
        wall: SystemTime,
        read: impl Fn(&str, &[(String, String)]) -> Option<f64>,
    ) -> Vec<Transition> {
        let mut rules = self.lock();
        let transitions = rules.iter_mut().filter_map(|rule| {
            let selector = rule.selector();
            let value = read(selector.metric, &selector.labels);
            rule.observe(now, wall, value)
        });
        let transitions: Vec<Transition> = transitions.collect();
        let firing = |state| state == AlertState::Firing;
        if transitions.iter().any(|transition| firing(transition.state) || firing(transition.previous)) {
            self.save(&rules);
        }
        transitions
    }

    /// Every rule and where it stands, in config order.
    pub fn statuses(&self) -> Vec<AlertStatus> {
        self.lock().iter().map(Rule::status).collect()
    }

    /// Acknowledge the firing alert `id`; its status.
    pub fn acknowledge(&self, id: &str) -> Result<AlertStatus, AckError> {
        let mut rules = self.lock();
        let rule = rules
            .iter_mut()
            .find(|rule| rule.config.name == id)
            .ok_or_else(|| AckError::Unknown(id.to_owned()))?;
        if !rule.acknowledge() {
            return Err(AckError::NotFiring { id: id.to_owned(), state: rule.status().state.name() });
        }
        let status = rule.status();
        self.save(&rules);
        Ok(status)
    }

    /// Keep the firing alerts among `rules`, if the book keeps them anywhere; a failure is
    /// logged, and the alerts work on (a restart would then not know what fired).
    fn save(&self, rules: &[Rule]) {
        let Some(saved) = &self.saved else { return };
        let firing: Vec<SavedAlert> = rules.iter().filter_map(Rule::saved).collect();
        if let Err(err) = saved.save(&firing) {
            tracing::warn!(%err, "firing alerts could not be kept in the state directory");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Rule>> {
        self.rules.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertState;
    use crate::config::Severity;

    fn config(name: &str, when: &str) -> AlertConfig {
        AlertConfig {
            name: name.into(),
            when: when.into(),
            for_s: 0,
            severity: Severity::Warning,
            summary: None,
        }
    }

    #[test]
    fn a_reload_keeps_the_state_of_unchanged_rules_and_restarts_changed_ones() {
        let book = AlertBook::default();
        let (queued, down) =
            (config("queued", "destination_queued > 1"), config("down", "endpoint_down > 0"));
        book.sync(&[queued.clone(), down.clone()]);
        let fired = book.evaluate(Instant::now(), SystemTime::now(), |_, _| Some(5.0));
        assert_eq!(fired.len(), 2);
        book.acknowledge("queued").unwrap();
        let changed = config("down", "endpoint_down > 1");
        book.sync(&[config("new", "spool_depth > 0"), changed, queued]);
        let states: Vec<_> = book.statuses().into_iter().map(|s| (s.id, s.state, s.acknowledged)).collect();
        assert_eq!(
            states,
            [
                ("new".to_owned(), AlertState::Inactive, false),
                ("down".to_owned(), AlertState::Inactive, false),
                ("queued".to_owned(), AlertState::Firing, true),
            ]
        );
    }

    #[test]
    fn acknowledging_an_unknown_or_not_firing_alert_is_refused_with_why() {
        let book = AlertBook::default();
        book.sync(&[config("queued", "destination_queued > 1")]);
        assert_eq!(book.acknowledge("nope"), Err(AckError::Unknown("nope".into())));
        let refused = book.acknowledge("queued").unwrap_err();
        assert_eq!(
            refused.to_string(),
            "alert \"queued\" is inactive, not firing: only a firing alert is acknowledged"
        );
    }
}
