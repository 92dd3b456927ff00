//! What one stage may make of each accepted message, over all the pieces earlier stages split it
//! into. A transform call may make 1024 messages of each input, so stages one after another
//! multiplied (two made a million messages of one, all held by the worker before any was queued),
//! and inputs in calls of their own, each answered up to the plugin's memory cap, added up to GiBs
//! in one batch. So at each stage the messages made of one accepted message (a transform's
//! outputs, a middleware's forward or reply) are at most [`MAX_MESSAGES`] and hold at most
//! `host.queue_bytes / host.batch_size` bytes (`host.max_message_bytes` if that is more), each
//! counted as `host.max_message_bytes` counts it ([`made_size`](crate::plugin::made_size): all but
//! the host's id and stream sequence headers, as admission counts them, so a message admitted at the
//! limit and sent on unchanged is within it): a stage holds about `host.queue_bytes` of a batch's
//! outputs, as the intake queue holds of its inputs.
//! A call whose outputs would take an accepted message past that is an output-limit fault.

use crate::config::HostSection;
use crate::plugin::PluginFault;

/// Messages one stage may make of one accepted message, over all its pieces: as many as one
/// call may make of one input.
const MAX_MESSAGES: usize = 1024;

/// What the current stage of a worker's batch made of each accepted message so far.
#[derive(Clone)]
pub(crate) struct StageBudget {
    /// Bytes one stage may make of one accepted message.
    max_bytes: usize,
    /// Made so far at this stage, by the accepted message's place in the batch.
    made: Vec<Made>,
    /// `made` with one call's outputs added: it replaces `made` if the call is within the budget.
    trial: Vec<Made>,
}

#[derive(Clone, Copy, Default)]
struct Made {
    messages: usize,
    bytes: usize,
}

impl StageBudget {
    /// The budget a host configured with `host` gives each stage.
    pub(crate) fn new(host: &HostSection) -> StageBudget {
        let max_bytes = (host.queue_bytes / host.batch_size.max(1)).max(host.max_message_bytes);
        StageBudget { max_bytes, made: Vec::new(), trial: Vec::new() }
    }

    /// A stage starts: it made nothing yet.
    pub(crate) fn start_stage(&mut self) {
        self.made.clear();
    }

    /// Charge the outputs of one call, each given as the batch position of its accepted message
    /// and its [`made_size`](crate::plugin::made_size): all of them, or none if they take an
    /// accepted message past the budget (the call's inputs are then run again one by one, or
    /// dead-lettered, and make nothing).
    pub(crate) fn charge(
        &mut self,
        outputs: impl IntoIterator<Item = (usize, usize)>,
    ) -> Result<(), PluginFault> {
        self.trial.clone_from(&self.made);
        for (position, bytes) in outputs {
            if position >= self.trial.len() {
                self.trial.resize(position + 1, Made::default());
            }
            let made = &mut self.trial[position];
            made.messages += 1;
            made.bytes += bytes;
            if made.messages > MAX_MESSAGES {
                let problem =
                    format!("more than {MAX_MESSAGES} messages made of one accepted message at one stage");
                return Err(PluginFault::OutputLimit(problem));
            }
            if made.bytes > self.max_bytes {
                let problem =
                    format!("more than {} bytes made of one accepted message at one stage", self.max_bytes);
                return Err(PluginFault::OutputLimit(problem));
            }
        }
        std::mem::swap(&mut self.made, &mut self.trial);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(queue_bytes: usize, batch_size: usize, max_message_bytes: usize) -> StageBudget {
        let host = HostSection { queue_bytes, batch_size, max_message_bytes, ..HostSection::default() };
        StageBudget::new(&host)
    }

    #[test]
    fn a_call_past_the_budget_is_charged_nothing_and_a_new_stage_starts_afresh() {
        let mut budget = budget(1 << 20, 64, 1024);
        assert_eq!(budget.max_bytes, 16 << 10);
        assert!(budget.charge([(3, 1); 1000]).is_ok());
        let past = budget.charge([(0, 1), (3, 1), (3, 1)].into_iter().chain([(3, 1); 30]));
        assert!(matches!(past, Err(PluginFault::OutputLimit(_))), "{past:?}");
        assert!(budget.charge([(3, 1); 24]).is_ok(), "the refused call took none of the room");
        assert!(budget.charge([(3, 1)]).is_err());
        assert!(budget.charge([(2, 1); 1024]).is_ok(), "each accepted message has a budget of its own");
        budget.start_stage();
        assert!(budget.charge([(3, 1); 1024]).is_ok());
        match budget.charge([(4, 16 << 10), (4, 1)]) {
            Err(PluginFault::OutputLimit(problem)) => {
                assert_eq!(problem, "more than 16384 bytes made of one accepted message at one stage")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stage_may_make_at_least_one_message_of_the_largest_size_of_each() {
        assert_eq!(budget(256 << 20, 64, 1 << 20).max_bytes, 4 << 20);
        assert_eq!(budget(16 << 20, 64, 1 << 20).max_bytes, 1 << 20);
    }
}
