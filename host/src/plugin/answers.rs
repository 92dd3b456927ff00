//! What the host takes of a plugin's answer: the checks an answer passes before the pipeline
//! takes any of it, beyond reading it (its shape, and through [`output_limits`](super::output_limits)
//! the limits on what it makes). `switchyard plugin call` makes the same checks, so that an author
//! sees the fault the host would dead-letter with, and so does a plugin's trial run at load, so that
//! a file whose answers the pipeline would refuse never replaces a good one.

use super::error::{PluginError, PluginFault};
use super::output_limits::{check_made_message, check_made_reply, check_outputs};
use crate::message::Message;
use switchyard_wire::MessageRef;

/// Check a filter's `decisions` for a batch of `inputs` messages: one for each.
pub fn check_decisions<D>(decisions: &[D], inputs: usize) -> Result<(), PluginFault> {
    match decisions.len() == inputs {
        true => Ok(()),
        false => Err(PluginFault::Malformed(format!("{} decisions for {inputs} messages", decisions.len()))),
    }
}

/// Check a transform's answer to a batch of `inputs` messages: each of its `errors` names an
/// input of the batch, none twice, and its outputs (`messages`) are within the output limits;
/// the outputs, checked, in order.
pub fn check_transformed<'m>(
    messages: &'m [u8],
    errors: &[(u32, PluginError)],
    inputs: usize,
    max_message_bytes: usize,
) -> Result<Vec<MessageRef<'m>>, PluginFault> {
    if !errors.is_empty() {
        let mut failed = vec![false; inputs];
        for &(index, _) in errors {
            let named = failed
                .get_mut(index as usize)
                .ok_or_else(|| PluginFault::Malformed(format!("an error names input {index} of {inputs}")))?;
            if std::mem::replace(named, true) {
                return Err(PluginFault::Malformed(format!("errors name input {index} twice")));
            }
        }
    }
    check_outputs(messages, inputs, max_message_bytes)
}

/// Read the request a middleware forwards (`batch`): one whole message, within the limits on a
/// message a plugin makes.
pub fn read_forward(batch: &[u8], max_message_bytes: usize) -> Result<Message, PluginFault> {
    let forwarded = read_one(batch).map_err(PluginFault::Malformed)?;
    check_made_message(&forwarded, max_message_bytes)?;
    Ok(forwarded)
}

/// Read a reply a middleware made (`batch`), its own answer to a request or the reply it passes
/// back: one whole message, within the limits on a reply, its size within `room`.
pub fn read_reply(batch: &[u8], room: usize) -> Result<Message, PluginFault> {
    let reply = read_one(batch).map_err(PluginFault::Malformed)?;
    check_made_reply(&reply, room)?;
    Ok(reply)
}

/// The one message of `batch`, with its payload (a middleware's answer, a transport's reply: a
/// one-message batch, as the WIT says); else what is wrong with it.
pub(crate) fn read_one(batch: &[u8]) -> Result<Message, String> {
    let mut messages = switchyard_wire::decode(batch);
    match (messages.next(), messages.next()) {
        (Some(Ok(message)), None) if message.payload.is_none() => Err("a message without its payload".into()),
        (Some(Ok(message)), None) => Ok(Message::from_wire(&message)),
        (Some(Err(err)), _) => Err(err.to_string()),
        _ => Err("expected exactly one message".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected() -> PluginError {
        PluginError::Rejected("bad".into())
    }

    #[test]
    fn a_transform_error_must_name_an_input_of_the_batch_once() {
        assert!(check_transformed(&[], &[(0, rejected()), (2, rejected())], 3, 1 << 20).is_ok());
        for (errors, problem) in [
            (vec![(3, rejected())], "an error names input 3 of 3"),
            (vec![(u32::MAX, rejected())], "an error names input 4294967295 of 3"),
            (vec![(1, rejected()), (0, rejected()), (1, rejected())], "errors name input 1 twice"),
        ] {
            match check_transformed(&[], &errors, 3, 1 << 20) {
                Err(PluginFault::Malformed(said)) => assert_eq!(said, problem),
                other => panic!("{errors:?}: {other:?}"),
            }
        }
    }
}
