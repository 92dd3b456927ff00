//! How far an attempt got before its deadline cut it: whether its message
//! can have left. The destination core cuts every attempt at the
//! destination's `timeout_ms`; a cut attempt whose message went out and got
//! no answer may have been delivered (`delivery-uncertain` unless the
//! destination is idempotent), but one cut while it still waited for a free
//! pooled connection (or a transport plugin's lane), or while it connected,
//! sent nothing and is no attempt at all. One cut while it read an answer
//! that says the message was taken (an HTTP 2xx whose body is still on its
//! way, a reply frame's header) delivered it: only its reply is lost. One cut
//! while it read an answer that says the attempt failed (an HTTP 429, 503 or
//! 404 whose body is still on its way) failed as that answer says: it was
//! answered, so it is no attempt that went out and heard nothing.
//!
//! The destination core runs each attempt [within](AttemptProgress::scope) an
//! [`AttemptProgress`]; the pool marks the steps before sending as it goes
//! through them ([`AttemptProgress::mark_current`]), and a transport marks
//! [`Step::Answered`] as the answer that the message was taken arrives, or the
//! failure an answer says ([`AttemptProgress::fail_current`]). A transport
//! that marks nothing is taken to be sending from the start, the safe assumption. Work that
//! sends on another thread (a plugin's lane) claims the attempt
//! ([`AttemptProgress::start_sending`]) against the deadline
//! ([`AttemptProgress::abandon`]): whichever comes first decides, so a message
//! is never both sent and called unsent.

use crate::resilience::Outcome;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

tokio::task_local! {
    static CURRENT: AttemptProgress;
    static DELIVERY: DeliveryProgress;
}

/// Where an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Its message may be on its way: what an attempt is unless its transport says otherwise.
    MaySend,
    /// Waiting for what it needs before it can send: nothing sent.
    Waiting(Wait),
    /// Making a connection (connect, TLS or protocol handshake): nothing sent.
    Connecting,
    /// Cut at its deadline before its message could leave: it never will.
    Abandoned,
    /// The endpoint answered that it took the message (an HTTP 2xx, a reply frame's header): delivered,
    /// its reply still being read.
    Answered,
}

/// What an attempt waits for before it can send: whoever makes it wait says which, so that an
/// attempt cut there is told by what it waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Room among its endpoint's attempts in flight (`pool.max_size`, whatever the transport).
    Room,
    /// A free pooled connection.
    Connection,
    /// The connection another attempt is opening (a `websocket` handshake).
    Handshake,
    /// Its process: started, its turn at the process's input, room in the pipe (`subprocess`).
    Process,
    /// A transport plugin's lane, to take the call.
    Lane,
    /// Its turn among the writes a `file` destination makes at once.
    Write,
}

impl Wait {
    const ALL: [Wait; 6] =
        [Wait::Room, Wait::Connection, Wait::Handshake, Wait::Process, Wait::Lane, Wait::Write];

    /// What did not come for an attempt that waited for this, as its error says it.
    pub(crate) fn not_come(self) -> &'static str {
        match self {
            Wait::Room => "no room among the endpoint's attempts in flight",
            Wait::Connection => "no connection free",
            Wait::Handshake => "the connection another attempt was opening not open",
            Wait::Process => "its process took none of it",
            Wait::Lane => "the plugin's lane took no call",
            Wait::Write => "no turn to write came (the destination's file system did not answer)",
        }
    }
}

impl Step {
    /// The step's code in an [`AttemptProgress`]'s atomic: one for each [`Wait`] past the others.
    fn code(self) -> u8 {
        match self {
            Step::MaySend => 0,
            Step::Connecting => 1,
            Step::Abandoned => 2,
            Step::Answered => 3,
            Step::Waiting(wait) => 4 + wait as u8,
        }
    }

    fn from_code(code: u8) -> Step {
        match code {
            0 => Step::MaySend,
            1 => Step::Connecting,
            2 => Step::Abandoned,
            3 => Step::Answered,
            wait => Step::Waiting(Wait::ALL[usize::from(wait - 4)]),
        }
    }
}

/// The step one attempt is at, and the failure its endpoint answered, shared
/// by the destination core, the transport and whatever sends for it.
#[derive(Clone, Debug, Default)]
pub(crate) struct AttemptProgress(Arc<Progress>);

/// What an [`AttemptProgress`] shares.
#[derive(Debug, Default)]
struct Progress {
    /// The [`Step`] it is at.
    step: AtomicU8,
    /// How the endpoint answered that the attempt failed, and why, before the rest of its answer
    /// came: set once, as the answer arrives.
    failure: OnceLock<(Outcome, String)>,
}

impl AttemptProgress {
    /// Run `attempt` with this as the progress its transport marks.
    pub(crate) fn scope<F: Future>(&self, attempt: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self.clone(), attempt)
    }

    /// The progress of the attempt the calling task runs, if it runs one.
    pub(crate) fn current() -> Option<AttemptProgress> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The attempt the calling task runs, if it runs one, is now at `step`.
    pub(crate) fn mark_current(step: Step) {
        let _outside_an_attempt = CURRENT.try_with(|progress| progress.mark(step));
    }

    /// The endpoint answered the attempt the calling task runs, if it runs one, that it failed as
    /// `outcome` says (`problem`: why), the rest of its answer still to come. Cut at its deadline,
    /// the attempt ends so.
    pub(crate) fn fail_current(outcome: Outcome, problem: &str) {
        let _outside_an_attempt =
            CURRENT.try_with(|progress| progress.0.failure.set((outcome, problem.into())));
    }

    /// How the endpoint answered that the attempt failed, and why, if it did.
    pub(crate) fn failure(&self) -> Option<(Outcome, String)> {
        self.0.failure.get().cloned()
    }

    /// The attempt is now at `step`, unless it was abandoned.
    pub(crate) fn mark(&self, step: Step) {
        let _abandoned = self.0.step.fetch_update(SeqCst, SeqCst, |now| {
            (Step::from_code(now) != Step::Abandoned).then_some(step.code())
        });
    }

    /// Claim the attempt for sending: `false` when its deadline abandoned it
    /// first, and then it must not send.
    pub(crate) fn start_sending(&self) -> bool {
        self.0
            .step
            .fetch_update(SeqCst, SeqCst, |now| {
                (Step::from_code(now) != Step::Abandoned).then_some(Step::MaySend.code())
            })
            .is_ok()
    }

    /// The step the attempt is at (or ended at).
    fn step(&self) -> Step {
        Step::from_code(self.0.step.load(SeqCst))
    }

    /// At the deadline: the step the attempt was at. One before sending is
    /// abandoned for good, so that nothing sends its message afterwards.
    pub(crate) fn abandon(&self) -> Step {
        let before = self.0.step.fetch_update(SeqCst, SeqCst, |now| match Step::from_code(now) {
            Step::MaySend | Step::Answered => None,
            _ => Some(Step::Abandoned.code()),
        });
        Step::from_code(before.unwrap_or_else(|now| now))
    }
}

/// The attempts of one queued delivery: a shutdown that cuts it at its grace period tells by them
/// whether its message can have left (one attempt that may have sent, finished or not) or never did
/// (every attempt ended before sending: a refused connection, no free connection).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeliveryProgress(Arc<std::sync::Mutex<Vec<AttemptProgress>>>);

impl DeliveryProgress {
    /// Run `delivery` with this as the progress its attempts are noted in.
    pub(crate) fn scope<F: Future>(&self, delivery: F) -> impl Future<Output = F::Output> {
        DELIVERY.scope(self.clone(), delivery)
    }

    /// Note `attempt` as one of the delivery the calling task runs, if it runs one.
    pub(crate) fn note_current(attempt: &AttemptProgress) {
        let _outside_a_delivery = DELIVERY.try_with(|delivery| delivery.lock().push(attempt.clone()));
    }

    /// Whether an attempt may have sent the message.
    pub(crate) fn may_have_sent(&self) -> bool {
        self.lock().iter().any(|attempt| matches!(attempt.step(), Step::MaySend | Step::Answered))
    }

    /// Whether an attempt's endpoint answered that it took the message.
    pub(crate) fn answered(&self) -> bool {
        self.lock().iter().any(|attempt| attempt.step() == Step::Answered)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AttemptProgress>> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_that_marks_nothing_may_have_sent() {
        assert_eq!(AttemptProgress::default().abandon(), Step::MaySend);
    }

    #[test]
    fn the_deadline_abandons_a_step_before_sending_and_then_nothing_sends() {
        let waits = Wait::ALL.map(Step::Waiting);
        for step in waits.into_iter().chain([Step::Connecting]) {
            let progress = AttemptProgress::default();
            progress.mark(step);
            assert_eq!(progress.abandon(), step);
            assert!(!progress.start_sending(), "abandoned at {step:?}: never sent afterwards");
            progress.mark(Step::Waiting(Wait::Connection));
            assert_eq!(progress.abandon(), Step::Abandoned, "stays abandoned");
        }
    }

    #[test]
    fn an_attempt_claimed_for_sending_is_not_abandoned() {
        let progress = AttemptProgress::default();
        progress.mark(Step::Waiting(Wait::Lane));
        assert!(progress.start_sending());
        assert_eq!(progress.abandon(), Step::MaySend, "it went out: the deadline finds it sending");
    }

    #[test]
    fn an_answered_attempt_stays_answered_at_its_deadline() {
        let progress = AttemptProgress::default();
        progress.mark(Step::Answered);
        assert_eq!(progress.abandon(), Step::Answered, "delivered: the deadline cut only its reply");
        let delivery = DeliveryProgress::default();
        delivery.lock().push(progress);
        assert!(delivery.may_have_sent() && delivery.answered());
    }

    #[tokio::test]
    async fn a_failure_answered_before_the_deadline_is_kept_for_it() {
        let progress = AttemptProgress::default();
        let refused = Outcome::Retryable(crate::resilience::RetryReason::Status(503));
        progress.scope(async { AttemptProgress::fail_current(refused.clone(), "HTTP 503") }).await;
        assert_eq!(progress.failure(), Some((refused, "HTTP 503".to_owned())));
        assert_eq!(AttemptProgress::default().failure(), None, "no answer, no failure");
    }

    #[tokio::test]
    async fn a_scope_makes_the_progress_current_to_its_task_only() {
        assert!(AttemptProgress::current().is_none());
        AttemptProgress::mark_current(Step::Waiting(Wait::Room));
        let progress = AttemptProgress::default();
        progress
            .scope(async {
                AttemptProgress::mark_current(Step::Connecting);
            })
            .await;
        assert_eq!(progress.abandon(), Step::Connecting);
    }
}
