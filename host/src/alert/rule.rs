//! One alert rule and its state machine.

use super::saved::SavedAlert;
use super::{AlertState, AlertStatus};
use crate::config::{AlertConfig, Condition, Reading, Selector, Severity};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// A rule compiled from its `[[alert]]`, with where it stands.
#[derive(Debug)]
pub(super) struct Rule {
    /// What it was compiled from: a reload that leaves it equal keeps this rule and its state.
    pub(super) config: AlertConfig,
    condition: Condition,
    state: AlertState,
    /// When the state was entered: for `for_s` (monotonic) and for operators (wall clock).
    entered: Option<(Instant, SystemTime)>,
    value: Option<f64>,
    acknowledged: bool,
    /// Samples of the counter a `rate(..)` reads, oldest first: the newest at least its window old
    /// (the growth is read from it), and every later one.
    samples: VecDeque<(Instant, f64)>,
    /// Taken up firing after a restart: until when it fires on whatever is read.
    settles_at: Option<Instant>,
}

/// A rule that changed state, as events and messages tell it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Transition {
    /// The rule's name (its id).
    pub rule: String,
    /// The state entered.
    pub state: AlertState,
    /// The state left.
    pub previous: AlertState,
    /// The value that made it change (`None` when nothing could be read).
    pub value: Option<f64>,
    /// The rule's severity.
    pub severity: Severity,
    /// Its condition, as written.
    pub when: String,
    /// Its summary, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Its number among the host's transitions, numbered on across restarts on one state
    /// directory (the transitions' messages are delivered in parallel: this orders them).
    pub seq: u64,
}

impl Rule {
    /// `config`, inactive; `None` when its condition does not parse (config validation refuses
    /// such a rule before it gets here).
    pub(super) fn new(config: AlertConfig) -> Option<Rule> {
        let condition = config.condition().ok()?;
        Some(Rule {
            config,
            condition,
            state: AlertState::Inactive,
            entered: None,
            value: None,
            acknowledged: false,
            samples: VecDeque::new(),
            settles_at: None,
        })
    }

    /// The rule of `saved`, firing since it fired before a restart, and firing on until
    /// `settles_at` whatever is read; `None` as [`Rule::new`].
    pub(super) fn firing_since(saved: SavedAlert, settles_at: Instant) -> Option<Rule> {
        let mut rule = Rule::new(saved.config)?;
        rule.state = AlertState::Firing;
        rule.entered = Some((Instant::now(), UNIX_EPOCH + Duration::from_millis(saved.since_ms)));
        rule.acknowledged = saved.acknowledged;
        rule.settles_at = Some(settles_at);
        Some(rule)
    }

    /// What to keep of it across a restart: something only while it fires.
    pub(super) fn saved(&self) -> Option<SavedAlert> {
        (self.state == AlertState::Firing).then(|| SavedAlert {
            config: self.config.clone(),
            since_ms: self.since_ms().unwrap_or_default(),
            acknowledged: self.acknowledged,
        })
    }

    /// Whether `config` is this rule, reworded at most: the same name and condition (its severity,
    /// summary or `for_s` may differ).
    pub(super) fn is_same_rule(&self, config: &AlertConfig) -> bool {
        self.config.name == config.name
            && config.condition().is_ok_and(|condition| condition == self.condition)
    }

    /// It leaves the book (removed, or given another condition): the transition that tells its
    /// receivers it no longer holds, if they were told it did (firing resolves, pending goes back
    /// to inactive), with no value (nothing was read).
    pub(super) fn leave(&mut self, now: Instant, wall: SystemTime) -> Option<Transition> {
        let cleared = match self.state {
            AlertState::Firing => AlertState::Resolved,
            AlertState::Pending => AlertState::Inactive,
            AlertState::Inactive | AlertState::Resolved => return None,
        };
        self.value = None;
        Some(self.enter(cleared, now, wall))
    }

    /// Whether it reads a rate that has no two samples yet to compare (after a start or restart).
    fn warming_up(&self) -> bool {
        matches!(self.condition.reading, Reading::Rate { .. }) && self.samples.len() < 2
    }

    /// The selector the rule reads.
    pub(super) fn selector(&self) -> &Selector {
        self.condition.reading.selector()
    }

    /// Step the machine with `read`, the selected value at `now`; the transition, if any.
    pub(super) fn observe(
        &mut self,
        now: Instant,
        wall: SystemTime,
        read: Option<f64>,
    ) -> Option<Transition> {
        self.value = match &self.condition.reading {
            Reading::Value(_) => read,
            Reading::Rate { window, .. } => {
                let window = *window;
                read.and_then(|value| self.rate(now, value, window))
            }
        };
        let holds =
            self.value.is_some_and(|value| self.condition.comparison.holds(value, self.condition.threshold));
        let held_for =
            |entered: Option<(Instant, SystemTime)>| entered.map_or(Duration::ZERO, |(at, _)| now - at);
        let next = match (self.state, holds) {
            (AlertState::Inactive | AlertState::Resolved, true) if self.config.for_s == 0 => {
                AlertState::Firing
            }
            (AlertState::Inactive | AlertState::Resolved, true) => AlertState::Pending,
            (AlertState::Pending, true)
                if held_for(self.entered) >= Duration::from_secs(self.config.for_s) =>
            {
                AlertState::Firing
            }
            (AlertState::Pending, false) => AlertState::Inactive,
            // Taken up firing after a restart, it is not seen to clear before the host can know
            // (an endpoint not health-checked yet reads up), nor a rate before it can be read.
            (AlertState::Firing, false)
                if self.settles_at.is_some_and(|at| now < at)
                    || (self.value.is_none() && self.warming_up()) =>
            {
                AlertState::Firing
            }
            (AlertState::Firing, false) => AlertState::Resolved,
            (state, _) => state,
        };
        (next != self.state).then(|| self.enter(next, now, wall))
    }

    /// Acknowledge it; `false` (and nothing changed) unless it is firing.
    pub(super) fn acknowledge(&mut self) -> bool {
        self.acknowledged |= self.state == AlertState::Firing;
        self.state == AlertState::Firing
    }

    /// When it entered its state: milliseconds since the Unix epoch (`None` while inactive since
    /// it was loaded).
    fn since_ms(&self) -> Option<u64> {
        self.entered
            .map(|(_, wall)| wall.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64))
    }

    pub(super) fn status(&self) -> AlertStatus {
        let since = self.since_ms();
        AlertStatus {
            id: self.config.name.clone(),
            name: self.config.name.clone(),
            when: self.config.when.clone(),
            for_s: self.config.for_s,
            severity: self.config.severity,
            state: self.state,
            since,
            value: self.value,
            acknowledged: self.acknowledged,
        }
    }

    fn enter(&mut self, state: AlertState, now: Instant, wall: SystemTime) -> Transition {
        let previous = std::mem::replace(&mut self.state, state);
        self.entered = Some((now, wall));
        if state != AlertState::Firing {
            self.acknowledged = false;
        }
        Transition {
            rule: self.config.name.clone(),
            state,
            previous,
            value: self.value,
            severity: self.config.severity,
            when: self.config.when.clone(),
            summary: self.config.summary.clone(),
            seq: 0,
        }
    }

    /// Keep the sample `value` at `now`; the growth per second since the newest sample at least
    /// `window` old, once there is an older sample to compare with (a counter that went down, e.g.
    /// a restart, counts from zero). Evaluations are a second apart give or take a little, so that
    /// sample is `window` old or up to a second more: the growth is divided by the time it took.
    /// While no sample is `window` old yet (after a start), it is divided by `window`: what came
    /// before the first sample is not known, and counts as no growth.
    fn rate(&mut self, now: Instant, value: f64, window: Duration) -> Option<f64> {
        self.samples.push_back((now, value));
        while self.samples.get(1).is_some_and(|(at, _)| now - *at >= window) {
            self.samples.pop_front();
        }
        let (since, oldest) = *self.samples.front()?;
        let growth = if value >= oldest { value - oldest } else { value };
        let took = (now - since).max(window);
        (self.samples.len() > 1).then(|| growth / took.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(when: &str, for_s: u64) -> Rule {
        let config = AlertConfig {
            name: "r".into(),
            when: when.into(),
            for_s,
            severity: Severity::Critical,
            summary: None,
        };
        Rule::new(config).unwrap()
    }

    /// Observe `values`, one a second from `start`; the states entered, with the second each was.
    fn run(rule: &mut Rule, start: Instant, values: &[f64]) -> Vec<(usize, AlertState)> {
        let steps = values.iter().enumerate().filter_map(|(second, value)| {
            let now = start + Duration::from_secs(second as u64);
            rule.observe(now, SystemTime::now(), Some(*value)).map(|transition| (second, transition.state))
        });
        steps.collect()
    }

    #[test]
    fn a_condition_that_holds_for_its_window_fires_and_resolves_when_it_clears() {
        let mut rule = rule("destination_queued > 10", 3);
        let states = run(
            &mut rule,
            Instant::now(),
            &[0.0, 20.0, 20.0, 20.0, 20.0, 20.0, 5.0, 5.0, 30.0, 30.0, 30.0, 30.0],
        );
        let expected = [
            (1, AlertState::Pending),
            (4, AlertState::Firing),
            (6, AlertState::Resolved),
            (8, AlertState::Pending),
            (11, AlertState::Firing),
        ];
        assert_eq!(states, expected);
    }

    #[test]
    fn a_condition_that_clears_before_its_window_never_fires() {
        let mut rule = rule("destination_queued > 10", 3);
        let states = run(&mut rule, Instant::now(), &[20.0, 20.0, 20.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(states, [(0, AlertState::Pending), (3, AlertState::Inactive)]);
    }

    #[test]
    fn a_rule_without_a_window_fires_at_once_and_nothing_read_is_not_a_condition_held() {
        let mut rule = rule("endpoint_down > 0", 0);
        let now = Instant::now();
        assert_eq!(rule.observe(now, SystemTime::now(), None), None);
        let fired = rule.observe(now, SystemTime::now(), Some(1.0)).unwrap();
        assert_eq!(
            (fired.previous, fired.state, fired.value),
            (AlertState::Inactive, AlertState::Firing, Some(1.0))
        );
        assert_eq!(rule.observe(now, SystemTime::now(), None).unwrap().state, AlertState::Resolved);
    }

    #[test]
    fn a_rate_is_the_growth_over_its_window_per_second_and_clears_once_the_growth_is_older() {
        let mut rule = rule("rate(dead_letters[4s]) > 0", 0);
        let start = Instant::now();
        let states = run(&mut rule, start, &[0.0, 0.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]);
        assert_eq!(states, [(2, AlertState::Firing), (6, AlertState::Resolved)]);
        let mut rule = self::rule("rate(dead_letters[4s]) > 0", 0);
        run(&mut rule, start, &[0.0, 0.0, 8.0]);
        assert_eq!(rule.status().value, Some(2.0));
    }

    #[test]
    fn a_rate_evaluated_every_second_with_jitter_reads_the_counter_s_growth_at_every_evaluation() {
        // Evaluations a second apart, each a little late by a different amount (as the host's are):
        // the sample a window old is sometimes a little more than a window old.
        for window in [1, 2] {
            let mut rule = rule(&format!("rate(messages_accepted[{window}s]) > 0.9"), 0);
            let start = Instant::now();
            let mut transitions = Vec::new();
            for second in 0..12 {
                let now = start + Duration::from_secs(second) + Duration::from_millis(second % 3);
                let counted = second as f64;
                transitions.extend(rule.observe(now, SystemTime::now(), Some(counted)).map(|t| t.state));
                if second >= window {
                    let rate =
                        rule.status().value.unwrap_or_else(|| panic!("[{window}s] at {second}: no rate"));
                    assert!((rate - 1.0).abs() < 0.01, "[{window}s] at {second}: {rate}");
                }
            }
            assert_eq!(transitions, [AlertState::Firing], "[{window}s]: fired once, and never flapped");
        }
    }

    #[test]
    fn only_a_firing_alert_is_acknowledged_and_resolving_clears_it() {
        let mut rule = rule("destination_queued > 10", 0);
        assert!(!rule.acknowledge());
        run(&mut rule, Instant::now(), &[20.0]);
        assert!(rule.acknowledge());
        assert!(rule.status().acknowledged);
        run(&mut rule, Instant::now(), &[0.0]);
        let status = rule.status();
        assert_eq!((status.state, status.acknowledged), (AlertState::Resolved, false));
        assert!(!rule.acknowledge());
    }
}
