//! A WebAssembly filter's answer (the WIT `decisions`): one decision per
//! message, then what the call counted, in one buffer.
//!
//! ```text
//! decisions = u32 n, decision{n}, count*
//! decision  = u8 3, u8 verdict (1 keep, 0 drop) | u8 kind (0 rejected, 1 retryable, 2 failed), str reason
//! count     = str name, u64 delta                              (little-endian)
//! ```
//! A decision is encoded as a native filter writes it ([`write_decision`]).
//! The counts would otherwise take a `host.count` call, nearly a third of a
//! small filter's call (`docs/performance.md`, session 39).
//!
//! ```
//! use switchyard_wire::decisions::{DecisionsWriter, read_decisions};
//! use switchyard_wire::native::ErrorKind;
//! let mut answer = DecisionsWriter::default();
//! answer.decision(Ok(true));
//! answer.decision(Err((ErrorKind::Rejected, "no tenant")));
//! answer.count("kept", 1);
//! let mut counts = Vec::new();
//! let decisions = read_decisions(&answer.finish(), |name, delta| counts.push((name.to_owned(), delta)));
//! assert_eq!(decisions.unwrap().len(), 2);
//! assert_eq!(counts, [("kept".to_owned(), 1)]);
//! ```

use crate::native::{ErrorKind, Failure, write_decision};
use crate::{Reader, WireError, write_bytes};

/// Writes a filter's answer: every decision first, then the counts.
#[derive(Debug)]
pub struct DecisionsWriter {
    out: Vec<u8>,
    decisions: u32,
    counting: bool,
}

impl Default for DecisionsWriter {
    fn default() -> Self {
        DecisionsWriter::with_capacity(0)
    }
}

impl DecisionsWriter {
    /// An answer with room for `bytes` bytes before it grows.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut out = Vec::with_capacity(bytes.max(4));
        out.extend_from_slice(&[0; 4]);
        DecisionsWriter { out, decisions: 0, counting: false }
    }

    /// Append the decision for the next message: `Ok(true)` keep, `Ok(false)` drop.
    ///
    /// # Panics
    /// After [`count`](Self::count): the decisions come first.
    pub fn decision(&mut self, decision: Result<bool, (ErrorKind, &str)>) {
        assert!(!self.counting, "a filter's decisions come before its counts");
        write_decision(&mut self.out, decision);
        self.decisions += 1;
    }

    /// Append a count: add `delta` to the plugin's counter `name`.
    pub fn count(&mut self, name: &str, delta: u64) {
        self.counting = true;
        write_bytes(&mut self.out, name.as_bytes());
        self.out.extend_from_slice(&delta.to_le_bytes());
    }

    /// The answer's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.out[..4].copy_from_slice(&self.decisions.to_le_bytes());
        self.out
    }
}

/// Read a filter's answer: its decisions in order (`Ok(true)` keep,
/// `Ok(false)` drop), and each count handed to `count` as it is read. The
/// counts before a malformed byte have been handed over when the error
/// returns.
pub fn read_decisions(
    answer: &[u8],
    mut count: impl FnMut(&str, u64),
) -> Result<Vec<Result<bool, Failure>>, WireError> {
    let mut reader = Reader::checking(answer);
    let n = reader.u32()? as usize;
    // Two bytes at least per decision: a count past that cannot be true.
    let mut decisions = Vec::with_capacity(n.min(answer.len() / 2));
    for _ in 0..n {
        decisions.push(reader.decision()?);
    }
    while reader.pos < answer.len() {
        let name = reader.str()?;
        count(name, u64::from_le_bytes(reader.array()?));
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer's decisions and counts.
    type Read = (Vec<Result<bool, Failure>>, Vec<(String, u64)>);

    fn read(answer: &[u8]) -> Result<Read, WireError> {
        let mut counts = Vec::new();
        let decisions = read_decisions(answer, |name, delta| counts.push((name.to_owned(), delta)))?;
        Ok((decisions, counts))
    }

    #[test]
    fn decisions_and_counts_read_back_as_written() {
        let mut answer = DecisionsWriter::with_capacity(64);
        answer.decision(Ok(true));
        answer.decision(Err((ErrorKind::Failed, "no config")));
        answer.decision(Ok(false));
        answer.count("kept", 1);
        answer.count("dropped", u64::MAX);
        let failed = Failure { kind: ErrorKind::Failed, message: "no config".into() };
        assert_eq!(
            read(&answer.finish()).unwrap(),
            (vec![Ok(true), Err(failed), Ok(false)], vec![("kept".into(), 1), ("dropped".into(), u64::MAX)])
        );
        assert_eq!(read(&DecisionsWriter::default().finish()).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn a_malformed_answer_is_an_error_naming_the_offset() {
        let mut answer = DecisionsWriter::default();
        answer.decision(Ok(true));
        answer.count("kept", 1);
        let answer = answer.finish();
        let problem = |bytes: &[u8]| {
            let error = read(bytes).unwrap_err();
            (error.offset, error.problem)
        };
        assert_eq!(problem(&[]), (0, "truncated"));
        assert_eq!(problem(&answer[..answer.len() - 1]), (14, "truncated"), "a count cut short");
        let mut more_than_written = answer.clone();
        more_than_written[0] = 2;
        assert_eq!(
            problem(&more_than_written),
            (7, "unknown answer tag"),
            "a decision count past the decisions"
        );
        let mut bad_verdict = answer.clone();
        bad_verdict[5] = 7;
        assert_eq!(problem(&bad_verdict), (6, "unknown verdict"));
        let mut bad_name = answer;
        bad_name[10] = 0xff;
        assert_eq!(problem(&bad_name), (6, "string is not UTF-8"));
    }

    #[test]
    #[should_panic(expected = "decisions come before its counts")]
    fn a_decision_after_a_count_is_refused() {
        let mut answer = DecisionsWriter::default();
        answer.count("kept", 1);
        answer.decision(Ok(true));
    }
}
