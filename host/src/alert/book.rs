//! The alert rules of a host and where each stands.

use super::AlertStatus;
use super::rule::{Rule, Transition};
use crate::config::AlertConfig;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::time::Instant;

/// The alert rules of a host, in config order, with their states.
#[derive(Debug, Default)]
pub struct AlertBook {
    rules: Mutex<Vec<Rule>>,
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
    /// Make `configs` the rules: a rule whose `[[alert]]` is unchanged keeps its state (and its
    /// rate samples); a new or changed one starts inactive; a removed one goes, without an event.
    pub fn sync(&self, configs: &[AlertConfig]) {
        let mut rules = self.lock();
        let unchanged = rules.len() == configs.len()
            && rules.iter().zip(configs).all(|(rule, config)| &rule.config == config);
        if unchanged {
            return;
        }
        let mut old = std::mem::take(&mut *rules);
        for config in configs {
            let kept = old.iter().position(|rule| &rule.config == config).map(|at| old.swap_remove(at));
            rules.extend(kept.or_else(|| Rule::new(config.clone())));
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
        transitions.collect()
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
        match rule.acknowledge() {
            true => Ok(rule.status()),
            false => Err(AckError::NotFiring { id: id.to_owned(), state: rule.status().state.name() }),
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
