//! What the host takes from one transform call (and of a middleware's forward and replies): at
//! most so many messages made of one, so many headers on one, none larger than
//! `host.max_message_bytes`, and each with a topic admission would take (a reply's topic aside).
//! The pipeline checks every output against them before it builds any (a fault hands the inputs
//! back untouched), through [`answers`](super::answers), as `switchyard plugin call` does.

use super::PluginFault;
use crate::message::{ID_HEADER, Message, STREAM_SEQ_HEADER, SendersHeaders};
use switchyard_wire::{MessageRef, WireError};

/// Messages a transform may make of one message, at most.
const MAX_OUTPUTS_PER_MESSAGE: usize = 1024;

/// Headers one message a transform makes may carry, at most, besides the host's own it gives a
/// message as it takes it in (as admission counts them: a message admitted with the most headers
/// it takes, sent on unchanged, is within the limit).
const MAX_OUTPUT_HEADERS: usize = 1024;

/// Check one output of a transform against the limits, counting it against its input in
/// `counts` (one slot per input).
fn check_output<'m>(
    message: Result<MessageRef<'m>, WireError>,
    counts: &mut [usize],
    max_message_bytes: usize,
) -> Result<MessageRef<'m>, PluginFault> {
    let m = message.map_err(|err| PluginFault::Malformed(err.to_string()))?;
    let inputs = counts.len();
    let count = counts
        .get_mut(m.source as usize)
        .ok_or_else(|| PluginFault::Malformed(format!("output names input {} of {inputs}", m.source)))?;
    if *count == MAX_OUTPUTS_PER_MESSAGE {
        let problem = format!("more than {MAX_OUTPUTS_PER_MESSAGE} messages out of one");
        return Err(PluginFault::OutputLimit(problem));
    }
    *count += 1;
    if m.payload.is_none() {
        // It would go on empty, counted at the size it claimed.
        return Err(PluginFault::Malformed("an output without its payload".into()));
    }
    check_made(m.topic, m.headers(), m.payload_len, max_message_bytes)?;
    Ok(m)
}

/// Check what a transform written in Rust (a builder's [`NativeTransform`](crate::NativeTransform))
/// made of one message against the same limits.
pub(crate) fn check_native_outputs(outputs: &[Message], max_message_bytes: usize) -> Result<(), PluginFault> {
    if outputs.len() > MAX_OUTPUTS_PER_MESSAGE {
        let problem = format!("more than {MAX_OUTPUTS_PER_MESSAGE} messages out of one");
        return Err(PluginFault::OutputLimit(problem));
    }
    outputs.iter().try_for_each(|m| check_made_message(m, max_message_bytes))
}

/// Check one message a plugin made (a native transform's output, a middleware's forward)
/// against the limits a transform's outputs are held to.
pub(crate) fn check_made_message(m: &Message, max_message_bytes: usize) -> Result<(), PluginFault> {
    let headers = m.headers.iter().map(|(name, value)| (name.as_str(), value.as_str()));
    check_made(&m.topic, headers, m.payload.len(), max_message_bytes)
}

/// Check a reply a middleware made: its own answer to a request, or the reply it passes back.
/// Its headers are held to a made message's limits, and its size to `room` (`host.max_message_bytes`,
/// or more for a reply passed back that was larger when the destination gave it). Its topic is not
/// checked: no route reads a reply's, and a destination's reply may carry any.
pub(crate) fn check_made_reply(m: &Message, room: usize) -> Result<(), PluginFault> {
    let headers = m.headers.iter().map(|(name, value)| (name.as_str(), value.as_str()));
    check_headers_and_size(m.topic.len(), headers, m.payload.len(), room)
}

/// Check one message a transform made: a topic and headers admission would take, not too many
/// headers, not too large.
fn check_made<'m>(
    topic: &str,
    headers: impl Iterator<Item = (&'m str, &'m str)>,
    payload_len: usize,
    max_message_bytes: usize,
) -> Result<(), PluginFault> {
    if let Some(problem) = crate::host::topic_problem(topic) {
        return Err(PluginFault::Malformed(format!("an output's {problem}")));
    }
    check_headers_and_size(topic.len(), headers, payload_len, max_message_bytes)
}

/// Check the headers of a message a plugin made (each valid, not too many) and its size, counted
/// as at admission from its topic's length (`topic_len`), payload and headers.
fn check_headers_and_size<'m>(
    topic_len: usize,
    headers: impl Iterator<Item = (&'m str, &'m str)>,
    payload_len: usize,
    max_message_bytes: usize,
) -> Result<(), PluginFault> {
    // One pass: each header valid, how many and their bytes as admission counts them.
    let mut senders = SendersHeaders::default();
    for (name, value) in headers {
        if let Some(problem) = crate::host::header_problem(name, value) {
            return Err(PluginFault::Malformed(format!("an output's {problem}")));
        }
        senders.add(name, value);
    }
    if senders.count() > MAX_OUTPUT_HEADERS {
        let problem = format!(
            "a message with more than {MAX_OUTPUT_HEADERS} headers besides {ID_HEADER} and {STREAM_SEQ_HEADER}"
        );
        return Err(PluginFault::OutputLimit(problem));
    }
    let size = topic_len + payload_len + senders.bytes();
    if size > max_message_bytes {
        let problem = format!("a message of {size} bytes, over host.max_message_bytes ({max_message_bytes})");
        return Err(PluginFault::OutputLimit(problem));
    }
    Ok(())
}

/// The size of a message a plugin made as its limits count it, as admission counts it
/// ([`Message::size`]): its topic's length (`topic_len`), payload and headers, all but the host's
/// own it gives a message as it takes it in.
pub(crate) fn made_size<'m>(
    topic_len: usize,
    headers: impl Iterator<Item = (&'m str, &'m str)>,
    payload_len: usize,
) -> usize {
    let mut senders = SendersHeaders::default();
    headers.for_each(|(name, value)| senders.add(name, value));
    topic_len + payload_len + senders.bytes()
}

/// [`made_size`] of a message a plugin made (a native transform's output, a middleware's forward
/// or reply).
pub(crate) fn made_message_size(m: &Message) -> usize {
    m.size()
}

/// Check every output (`batch`) of a transform called on `inputs` messages; the outputs, in order.
pub(crate) fn check_outputs(
    batch: &[u8],
    inputs: usize,
    max_message_bytes: usize,
) -> Result<Vec<MessageRef<'_>>, PluginFault> {
    let (mut counts, mut checked) = (vec![0; inputs], Vec::with_capacity(inputs));
    for message in switchyard_wire::decode(batch) {
        checked.push(check_output(message, &mut counts, max_message_bytes)?);
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn one_output(topic: &str) -> Vec<u8> {
        let mut batch = Vec::new();
        Message::new(topic, "x").encode(&mut batch, 0, true);
        batch
    }

    #[test]
    fn an_output_topic_admission_would_refuse_is_refused() {
        // Outputs' topics went unchecked: a transform could send `..` into a `file` destination's
        // path, or a control character into a subject.
        assert!(check_outputs(&one_output("orders.eu"), 1, 1 << 20).is_ok());
        for (topic, problem) in [
            ("..", "an output's topic \"..\" has an empty segment"),
            ("a.>", "an output's topic \"a.>\" has wildcard \">\""),
            ("a\nb", "an output's topic \"a\\nb\" contains whitespace or control characters"),
        ] {
            match check_outputs(&one_output(topic), 1, 1 << 20) {
                Err(PluginFault::Malformed(said)) => assert_eq!(said, problem),
                other => panic!("{topic:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_output_without_its_payload_is_refused() {
        let mut batch = Vec::new();
        Message::new("orders.eu", "not sent").encode(&mut batch, 0, false);
        match check_outputs(&batch, 1, 1 << 20) {
            Err(PluginFault::Malformed(said)) => assert_eq!(said, "an output without its payload"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_output_header_no_transport_could_carry_is_refused() {
        // A transform's `bad name` or line break in a value failed every attempt at an http
        // destination, and was taken for the endpoint's answer.
        let with_header = |name: &str, value: &str| {
            let mut batch = Vec::new();
            Message::new("orders.eu", "x").with_header(name, value).encode(&mut batch, 0, true);
            check_outputs(&batch, 1, 1 << 20).map(drop)
        };
        assert!(with_header("X-Tenant_2", "acme, ünïcode\tand tab").is_ok());
        for (name, value, problem) in [
            ("bad name", "v", "an output's header name \"bad name\" is not an HTTP token"),
            ("", "v", "an output's header name \"\" is not an HTTP token"),
            ("x-a:b", "v", "an output's header name \"x-a:b\" is not an HTTP token"),
            (
                "x-split",
                "a\r\nx-sy-id: forged",
                "an output's header x-split: its value holds a control character",
            ),
            ("x-nul", "a\0", "an output's header x-nul: its value holds a control character"),
        ] {
            match with_header(name, value) {
                Err(PluginFault::Malformed(said)) => assert_eq!(said, problem),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }
}
