//! The alert rules of a host and where each stands.

use super::AlertStatus;
use super::rule::{Rule, Transition};
use super::saved::{Kept, SavedAlert, SavedAlerts, SavedAlertsWriter};
use crate::config::AlertConfig;
use crate::state_lock::StateLock;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The alert rules of a host, in config order, with their states.
#[derive(Debug, Default)]
pub struct AlertBook {
    /// The rules, and the number of the last transition.
    rules: Mutex<(Vec<Rule>, u64)>,
    /// Writes the firing alerts where they are kept, if anywhere.
    saved: Option<SavedAlertsWriter>,
    /// Alerts kept by the last host on the same state, taken up by the first [`sync`](Self::sync).
    to_take_up: Mutex<Vec<SavedAlert>>,
    /// What a sync made of rules that left firing or pending (resolved, back to inactive): told,
    /// numbered, at the next evaluation.
    left: Mutex<Vec<Transition>>,
    /// How long an alert taken up firing stays firing whatever is read (see
    /// [`settling_time`](super::settling_time)).
    settling: Duration,
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
    /// state directory kept there (each firing on for `settling` at least, and resolved only
    /// once its condition is then seen not to hold), and numbering transitions on from its. Called
    /// within a tokio runtime: a task of it writes them, until [`close`](Self::close).
    pub fn kept_in(state_dir: &Path, settling: Duration) -> AlertBook {
        AlertBook::keeping(SavedAlerts::in_dir(state_dir), settling)
    }

    /// [`kept_in`](Self::kept_in) `state_dir`, which the host holds with `state_lock`: the firing
    /// alerts are written only while it holds it, so a directory removed while the host runs is
    /// made again with its lock (or not written to), never left for another host to take.
    pub(crate) fn kept_in_locked(
        state_dir: &Path,
        state_lock: Arc<StateLock>,
        settling: Duration,
    ) -> AlertBook {
        AlertBook::keeping(SavedAlerts::in_dir(state_dir).locked_by(state_lock), settling)
    }

    fn keeping(saved: SavedAlerts, settling: Duration) -> AlertBook {
        let Kept { seq, firing } = saved.load();
        let rules = Mutex::new((Vec::new(), seq));
        let to_take_up = Mutex::new(firing);
        let saved = Some(SavedAlertsWriter::start(saved));
        AlertBook { rules, saved, to_take_up, left: Mutex::default(), settling }
    }

    /// Make `configs` the rules: a rule whose name and condition are unchanged keeps its state
    /// (and its rate samples) under its new `[[alert]]` (another severity, summary or `for_s`); a
    /// new one, or one whose condition changed, starts inactive, unless it is the first sync and
    /// the last host kept it firing under the same name and condition. A rule that leaves (removed,
    /// or its condition changed; at the first sync, one the last host kept firing that `configs`
    /// no longer has) while firing resolves, and one pending goes back to inactive: those
    /// transitions are told at the next [`evaluate`](Self::evaluate).
    pub fn sync(&self, configs: &[AlertConfig]) {
        let mut book = self.lock();
        let rules = &mut book.0;
        let to_take_up =
            std::mem::take(&mut *self.to_take_up.lock().unwrap_or_else(|poison| poison.into_inner()));
        let unchanged = to_take_up.is_empty()
            && rules.len() == configs.len()
            && rules.iter().zip(configs).all(|(rule, config)| &rule.config == config);
        if unchanged {
            return;
        }
        let now = Instant::now();
        let mut old = std::mem::take(&mut *rules);
        let mut saved: Vec<Rule> = to_take_up
            .into_iter()
            .filter_map(|saved| Rule::firing_since(saved, now + self.settling))
            .collect();
        for config in configs {
            let take_same = |among: &mut Vec<Rule>| {
                let at = among.iter().position(|rule| rule.is_same_rule(config))?;
                Some(among.remove(at))
            };
            let Some(mut rule) = take_same(&mut old).or_else(|| take_same(&mut saved)) else {
                rules.extend(Rule::new(config.clone()));
                continue;
            };
            rule.config = config.clone();
            rules.push(rule);
        }
        let wall = SystemTime::now();
        let left = old.iter_mut().chain(&mut saved).filter_map(|rule| rule.leave(now, wall));
        self.left.lock().unwrap_or_else(|poison| poison.into_inner()).extend(left);
    }

    /// Evaluate every rule at `now` (`wall` on the wall clock) with `read`, which reads a metric
    /// selected by labels; the transitions, numbered: those of rules that left since the last
    /// evaluation, then the rules', in rule order.
    pub fn evaluate(
        &self,
        now: Instant,
        wall: SystemTime,
        read: impl Fn(&str, &[(String, String)]) -> Option<f64>,
    ) -> Vec<Transition> {
        let mut book = self.lock();
        let (rules, seq) = &mut *book;
        let left = std::mem::take(&mut *self.left.lock().unwrap_or_else(|poison| poison.into_inner()));
        let observed = rules.iter_mut().filter_map(|rule| {
            let selector = rule.selector();
            let value = read(selector.metric, &selector.labels);
            rule.observe(now, wall, value)
        });
        let numbered = left.into_iter().chain(observed).map(|mut transition| {
            *seq += 1;
            transition.seq = *seq;
            transition
        });
        let transitions: Vec<Transition> = numbered.collect();
        if !transitions.is_empty() {
            self.save(&book);
        }
        transitions
    }

    /// Every rule and where it stands, in config order.
    pub fn statuses(&self) -> Vec<AlertStatus> {
        self.lock().0.iter().map(Rule::status).collect()
    }

    /// Acknowledge the firing alert `id`; its status.
    pub fn acknowledge(&self, id: &str) -> Result<AlertStatus, AckError> {
        let mut book = self.lock();
        let rule = book
            .0
            .iter_mut()
            .find(|rule| rule.config.name == id)
            .ok_or_else(|| AckError::Unknown(id.to_owned()))?;
        if !rule.acknowledge() {
            return Err(AckError::NotFiring { id: id.to_owned(), state: rule.status().state.name() });
        }
        let status = rule.status();
        self.save(&book);
        Ok(status)
    }

    /// Stop keeping the firing alerts: resolves once the last state is written (or failed to be,
    /// said in a warning), before another host may take the state directory. Transitions and
    /// acknowledgements after it are not kept.
    pub async fn close(&self) {
        if let Some(saved) = &self.saved {
            saved.close().await;
        }
    }

    /// Keep the firing alerts among the rules and the last transition's number, if the book
    /// keeps them anywhere: taken now, under the book's lock, and written later, off it.
    fn save(&self, (rules, seq): &(Vec<Rule>, u64)) {
        let Some(saved) = &self.saved else { return };
        saved.hand_over(Kept { seq: *seq, firing: rules.iter().filter_map(Rule::saved).collect() });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Rule>, u64)> {
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

    #[tokio::test]
    async fn a_reload_resolves_a_firing_rule_it_removes_or_gives_another_condition_and_keeps_one_reworded() {
        let dir = tempfile::tempdir().unwrap();
        let book = AlertBook::kept_in(dir.path(), Duration::from_secs(5));
        let queued = config("queued", "destination_queued > 1");
        book.sync(&[queued.clone(), config("down", "endpoint_down > 0"), config("spool", "spool_depth > 0")]);
        let start = Instant::now();
        assert_eq!(book.evaluate(start, SystemTime::now(), |_, _| Some(5.0)).len(), 3);

        // `queued` says more and matters more, `down` has another condition, `spool` is gone.
        let summary = Some("orders are backing up".to_owned());
        let reworded = AlertConfig { summary, severity: Severity::Critical, ..queued };
        let changed = config("down", "endpoint_down > 10");
        book.sync(&[reworded.clone(), changed.clone()]);
        let told = book.evaluate(start + Duration::from_secs(1), SystemTime::now(), |_, _| Some(5.0));
        let told: Vec<_> =
            told.iter().map(|t| (t.rule.as_str(), t.previous, t.state, t.when.as_str(), t.seq)).collect();
        assert_eq!(
            told,
            [
                ("down", AlertState::Firing, AlertState::Resolved, "endpoint_down > 0", 4),
                ("spool", AlertState::Firing, AlertState::Resolved, "spool_depth > 0", 5),
            ]
        );
        let states: Vec<_> = book.statuses().into_iter().map(|s| (s.id, s.state, s.severity)).collect();
        assert_eq!(
            states,
            [
                ("queued".to_owned(), AlertState::Firing, Severity::Critical),
                ("down".to_owned(), AlertState::Inactive, Severity::Warning),
            ]
        );
    }

    #[tokio::test]
    async fn an_alert_taken_up_firing_fires_on_while_it_settles_and_transitions_number_on() {
        let dir = tempfile::tempdir().unwrap();
        let down = config("down", "endpoint_down > 0");
        let first = AlertBook::kept_in(dir.path(), Duration::from_secs(5));
        first.sync(std::slice::from_ref(&down));
        let start = Instant::now();
        let fired = first.evaluate(start, SystemTime::now(), |_, _| Some(1.0));
        assert_eq!((fired[0].state, fired[0].seq), (AlertState::Firing, 1));
        first.close().await;

        // The next host reads the endpoint up at first: not evidence until it has settled.
        let second = AlertBook::kept_in(dir.path(), Duration::from_secs(5));
        second.sync(std::slice::from_ref(&down));
        let start = Instant::now();
        for second_after in 0..5 {
            let at = start + Duration::from_secs(second_after);
            assert_eq!(second.evaluate(at, SystemTime::now(), |_, _| Some(0.0)), []);
        }
        let resolved = second.evaluate(start + Duration::from_secs(5), SystemTime::now(), |_, _| Some(0.0));
        assert_eq!((resolved[0].state, resolved[0].seq), (AlertState::Resolved, 2), "numbered on");
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
