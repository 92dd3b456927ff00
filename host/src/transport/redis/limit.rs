//! The limit on a Redis answer's length: a connection's stream that counts each answer's bytes as
//! the redis crate reads them, and fails once one passes the limit, so that a server (or something
//! posing as one) cannot make the host hold an answer without end.
//!
//! The count follows RESP's framing as the redis crate's parser does: a line ends at the first
//! `\r\n`, a bulk value's length says how many bytes follow it, an aggregate's count how many values
//! it holds. A length the count cannot read (a line longer than any number) is taken for one without
//! end: that answer fails at the limit, as the parser would have gone on reading it.

use crate::resilience::{FatalReason, Outcome};
use redis::RedisError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an answer holds besides the text a reply carries: its type bytes, lengths and `\r\n`s. An
/// answer longer than this and `max_message_bytes` cannot make a reply the host takes.
const ANSWER_FRAMING_BYTES: usize = 1 << 10;

/// The bytes of a line kept while it is read: room for any number, and the start of an error's text.
const LINE_KEPT: usize = 64;

/// The length of a value whose length could not be read: without end.
const ENDLESS: u64 = u64::MAX;

/// An answer that passed the limit, not read further: the error its connection's stream fails with.
#[derive(Debug)]
pub(super) struct AnswerTooLong {
    /// The limit, in bytes.
    limit: usize,
    /// For an error answer, the start of its text (none for a bulk error).
    error: Option<String>,
}

impl std::fmt::Display for AnswerTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error.as_deref() {
            None => write!(f, "an answer of more than {} bytes: not read", self.limit),
            Some("") => write!(f, "an error answer of more than {} bytes: not read", self.limit),
            Some(start) => {
                write!(f, "an error answer of more than {} bytes: not read; it begins {start:?}", self.limit)
            }
        }
    }
}

impl std::error::Error for AnswerTooLong {}

impl AnswerTooLong {
    /// The answer too long that `err`, an attempt's error, reports: the stream's error, which the
    /// redis crate hands to the command whose answer it was (the others see their connection
    /// closed).
    pub(super) fn reported_by(err: &RedisError) -> Option<&AnswerTooLong> {
        let source = std::error::Error::source(err)?;
        let io =
            source.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?.downcast_ref::<io::Error>()?;
        io.get_ref()?.downcast_ref()
    }

    /// How the attempt whose answer it was ended: an error answer dead-letters the message, as any
    /// error answer not known to be retried does; any other answer delivered it, and its reply is
    /// refused.
    pub(super) fn outcome(&self) -> (Outcome, String) {
        let outcome = match self.error {
            Some(_) => Outcome::Fatal(FatalReason::Rejected),
            None => Outcome::ReplyRefused,
        };
        (outcome, self.to_string())
    }
}

/// A connection's stream, the answers read from it counted (see the module docs).
pub(super) struct LimitedStream<S> {
    stream: S,
    count: AnswerCount,
}

impl<S> LimitedStream<S> {
    /// `stream`, whose answers may each be as long as a reply of `max_reply_bytes` needs.
    pub(super) fn new(stream: S, max_reply_bytes: usize) -> LimitedStream<S> {
        let limit = max_reply_bytes.saturating_add(ANSWER_FRAMING_BYTES);
        LimitedStream { stream, count: AnswerCount::new(limit) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        match this.count.read(&buf.filled()[start..]) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(too_long) => {
                // What passed the limit is not handed on.
                buf.set_filled(start);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, too_long)))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Where the count stands in the answers read so far.
#[derive(Debug)]
struct AnswerCount {
    limit: usize,
    /// The bytes of the answer being read; 0 between answers.
    bytes: usize,
    /// The type byte of the answer being read.
    kind: u8,
    /// The values still to end before the answer does, the one being read included; 0 between
    /// answers.
    values: u64,
    /// The bytes of a bulk value's body and its `\r\n` still to come.
    body: u64,
    /// The start of the line being read, its type byte first.
    line: Vec<u8>,
    /// Whether the line is longer than what [`line`](Self::line) keeps.
    line_cut: bool,
    /// Whether the line's last byte was `\r`.
    after_cr: bool,
}

impl AnswerCount {
    fn new(limit: usize) -> AnswerCount {
        let line = Vec::with_capacity(LINE_KEPT);
        AnswerCount { limit, bytes: 0, kind: 0, values: 0, body: 0, line, line_cut: false, after_cr: false }
    }

    /// Count `bytes`, the next ones read: an error once an answer passed the limit.
    fn read(&mut self, mut bytes: &[u8]) -> Result<(), AnswerTooLong> {
        while let Some(&byte) = bytes.first() {
            let taken = if self.body > 0 {
                let taken = bytes.len().min(usize::try_from(self.body).unwrap_or(usize::MAX));
                self.body -= taken as u64;
                if self.body == 0 {
                    self.value_holds(0);
                }
                taken
            } else {
                if self.values == 0 {
                    (self.kind, self.values) = (byte, 1);
                }
                self.line_byte(byte);
                1
            };
            bytes = &bytes[taken..];
            self.bytes += taken;
            if self.bytes > self.limit {
                return Err(self.too_long());
            }
            if self.values == 0 {
                self.bytes = 0;
            }
        }
        Ok(())
    }

    fn line_byte(&mut self, byte: u8) {
        if self.after_cr && byte == b'\n' {
            self.after_cr = false;
            self.line_ended();
            return;
        }
        self.after_cr = byte == b'\r';
        match self.line.len() < LINE_KEPT {
            true => self.line.push(byte),
            false => self.line_cut = true,
        }
    }

    /// A line ended (its `\r` kept, its `\n` not): what it says comes next.
    fn line_ended(&mut self) {
        let text = (!self.line_cut).then(|| &self.line[1..self.line.len() - 1]);
        let number = text.and_then(|text| std::str::from_utf8(text).ok()?.trim().parse::<i64>().ok());
        let kind = self.line[0];
        self.line.clear();
        self.line_cut = false;
        let count = |per_entry: u64| number.map_or(ENDLESS, |n| (n.max(0) as u64).saturating_mul(per_entry));
        match (kind, number) {
            // A bulk string or an array of length -1: nil.
            (b'$' | b'*' | b'~', Some(..0)) | (b'>', Some(..=0)) => self.value_holds(0),
            (b'$' | b'!' | b'=', _) => match number {
                Some(length @ 0..) => self.body = length as u64 + 2,
                _ => self.body = ENDLESS,
            },
            (b'*' | b'~' | b'>', _) => self.value_holds(count(1)),
            (b'%', _) => self.value_holds(count(2)),
            // Attributes, then the value they are about.
            (b'|', _) => self.value_holds(count(2).saturating_add(1)),
            _ => self.value_holds(0),
        }
    }

    /// The value being read ended, holding `values` more that make it up.
    fn value_holds(&mut self, values: u64) {
        self.values = (self.values - 1).saturating_add(values);
    }

    fn too_long(&self) -> AnswerTooLong {
        let error = match self.kind {
            b'-' => Some(String::from_utf8_lossy(&self.line[1..]).into_owned()),
            b'!' => Some(String::new()),
            _ => None,
        };
        AnswerTooLong { limit: self.limit, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `answers`, read in chunks of `chunk` bytes, pass a limit of `limit` bytes an answer.
    fn read(limit: usize, answers: &[u8], chunk: usize) -> Result<(), AnswerTooLong> {
        let mut count = AnswerCount::new(limit);
        answers.chunks(chunk).try_for_each(|bytes| count.read(bytes))
    }

    #[test]
    fn answers_within_the_limit_pass_however_they_are_cut_into_reads() {
        // Each at most 16 bytes (a bulk string's body may hold `\r\n`), 93 in all.
        let answers: &[&[u8]] = &[
            b":12\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*2\r\n:1\r\n$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"-ERR no\r\n",
            b"%1\r\n+a\r\n:1\r\n",
            b"*1\r\n*1\r\n*0\r\n",
            b"|1\r\n+a\r\n:1\r\n:2\r\n",
            b"+OK\r\n",
        ];
        let answers = answers.concat();
        for chunk in [1, 3, 7, answers.len()] {
            assert!(read(16, &answers, chunk).is_ok(), "in reads of {chunk} bytes");
        }
    }

    #[test]
    fn an_answer_past_the_limit_fails_whatever_makes_it_long() {
        let long: &[(&[u8], &str)] = &[
            (b"$17\r\n", "a bulk string's length"),
            (b"*100\r\n:1\r\n:1\r\n:1\r\n", "an array without end"),
            (b"*2\r\n$4\r\nabcd\r\n$4\r\nabcd\r\n", "an array of short values"),
            (b"+OKOKOKOKOKOKOKOKOK", "a line without end"),
            (b"$                          1\r\nx\r\n", "a length the count cannot read"),
        ];
        for (answer, what) in long {
            let answer = [b":1\r\n", *answer, &[b'x'; 20]].concat();
            let too_long = read(16, &answer, 1).expect_err(what);
            assert_eq!(too_long.to_string(), "an answer of more than 16 bytes: not read", "{what}");
            assert_eq!(too_long.outcome().0, Outcome::ReplyRefused, "{what}");
        }
    }

    #[test]
    fn an_error_answer_past_the_limit_says_how_it_begins() {
        let too_long = read(16, b"-ERR far too long to read", 4).expect_err("too long");
        assert_eq!(
            too_long.to_string(),
            "an error answer of more than 16 bytes: not read; it begins \"ERR far too long\""
        );
        assert_eq!(too_long.outcome().0, Outcome::Fatal(FatalReason::Rejected));
    }
}
