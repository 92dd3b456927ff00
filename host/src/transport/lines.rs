//! Lines of a child process's output, each read up to a length: a longer one comes cut to its
//! start, the rest of it skipped, and reading goes on at the next line. Nothing a line holds ends
//! the reading (unlike `LinesCodec`, whose stream ends at a line too long or not UTF-8, closing
//! the pipe: the process's next write would fail and kill it). And lines written to its input,
//! counted as they go ([`write_line`]): whether any of a line went is what tells an attempt cut at
//! its deadline that sent nothing from one that may have delivered.

use super::progress::{AttemptProgress, Step, Wait};
use bytes::{Buf, BytesMut};
use std::pin::Pin;
use std::task::Poll;
use tokio::io::AsyncWrite;
use tokio_util::codec::Decoder;

/// One line read, without its newline.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Line {
    /// The line's bytes, or the first of them when it was cut.
    pub(super) bytes: BytesMut,
    /// How long the whole line was.
    pub(super) length: usize,
}

impl Line {
    /// Whether the line was longer than the reader takes: `bytes` holds only its start.
    pub(super) fn is_cut(&self) -> bool {
        self.bytes.len() < self.length
    }
}

/// A [`Decoder`] of [`Line`]s of any bytes, each taken whole up to `max` bytes.
#[derive(Debug)]
pub(super) struct LineCodec {
    max: usize,
    /// How much of a longer line is kept (at most `max`).
    head: usize,
    /// How far the buffer was searched for a newline already.
    searched: usize,
    /// The line too long being skipped to its end.
    cut: Option<Line>,
}

impl LineCodec {
    /// Lines of up to `max` bytes taken whole; of a longer one, its first `head` bytes.
    pub(super) fn new(max: usize, head: usize) -> LineCodec {
        LineCodec { max, head: head.min(max), searched: 0, cut: None }
    }
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buffer: &mut BytesMut) -> std::io::Result<Option<Line>> {
        if let Some(cut) = &mut self.cut {
            let Some(end) = newline(buffer) else {
                cut.length += buffer.len();
                buffer.clear();
                return Ok(None);
            };
            cut.length += end;
            buffer.advance(end + 1);
            return Ok(self.cut.take());
        }
        let searchable = buffer.len().min(self.max + 1);
        match newline(&buffer[self.searched..searchable]) {
            Some(end) => {
                let length = self.searched + end;
                self.searched = 0;
                let mut bytes = buffer.split_to(length + 1);
                bytes.truncate(length);
                Ok(Some(Line { bytes, length }))
            }
            None if buffer.len() > self.max => {
                self.searched = 0;
                let bytes = buffer.split_to(self.head);
                self.cut = Some(Line { length: bytes.len(), bytes });
                self.decode(buffer)
            }
            None => {
                self.searched = searchable;
                Ok(None)
            }
        }
    }

    /// The lines left, the last one also when no newline ends it.
    fn decode_eof(&mut self, buffer: &mut BytesMut) -> std::io::Result<Option<Line>> {
        if let Some(line) = self.decode(buffer)? {
            return Ok(Some(line));
        }
        self.searched = 0;
        let last =
            (!buffer.is_empty()).then(|| buffer.split()).map(|bytes| Line { length: bytes.len(), bytes });
        Ok(self.cut.take().or(last))
    }
}

fn newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| byte == b'\n')
}

/// How [`write_line`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Written {
    /// The line went whole.
    Whole,
    /// None of it went: its attempt was cut at its deadline before the first byte could.
    Abandoned,
}

/// Write `line` whole to `input`, counting in `written` the bytes taken so far: what a deadline
/// that cuts the write finds there. The attempt the line is for (`progress`, when the destination
/// core runs it) is claimed for sending just before each try at the first byte
/// ([`AttemptProgress::start_sending`]), and is [`Step::Waiting`] again while the input takes none
/// (a process not reading, its pipe full): so an attempt cut before its line started sent nothing,
/// and its line is then never written. A cut that falls between the claim and its giving back
/// finds the attempt sending: uncertain, never wrongly unsent.
pub(super) async fn write_line(
    input: &mut (impl AsyncWrite + Unpin),
    line: &[u8],
    written: &mut usize,
    progress: Option<&AttemptProgress>,
) -> std::io::Result<Written> {
    std::future::poll_fn(|context| {
        while *written < line.len() {
            if *written == 0 && progress.is_some_and(|progress| !progress.start_sending()) {
                return Poll::Ready(Ok(Written::Abandoned));
            }
            match Pin::new(&mut *input).poll_write(context, &line[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(taken)) => *written += taken,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    if let Some(progress) = progress.filter(|_| *written == 0) {
                        progress.mark(Step::Waiting(Wait::Process));
                    }
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(Written::Whole))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn lines(codec: &mut LineCodec, input: &[u8]) -> Vec<(Vec<u8>, usize)> {
        let mut buffer = BytesMut::from(input);
        let mut lines = Vec::new();
        while let Some(line) = codec.decode_eof(&mut buffer).unwrap() {
            lines.push((line.bytes.to_vec(), line.length));
        }
        lines
    }

    #[test]
    fn a_line_too_long_comes_cut_and_the_next_one_whole() {
        let mut codec = LineCodec::new(4, 2);
        let read = lines(&mut codec, b"abcd\nabcdefgh\n\xff\xfe\nxyz");
        let expected: [(&[u8], usize); 4] = [(b"abcd", 4), (b"ab", 8), (b"\xff\xfe", 2), (b"xyz", 3)];
        assert_eq!(read, expected.map(|(bytes, length)| (bytes.to_vec(), length)));
    }

    #[test]
    fn a_line_arriving_in_pieces_is_read_once_whole_or_skipped_to_its_end() {
        let mut codec = LineCodec::new(4, 4);
        let mut buffer = BytesMut::new();
        for (piece, read) in [(&b"ab"[..], None), (b"c", None), (b"d\nabcde", Some(4)), (b"fg", None)] {
            buffer.extend_from_slice(piece);
            assert_eq!(codec.decode(&mut buffer).unwrap().map(|line| line.length), read);
        }
        buffer.extend_from_slice(b"h\nok\n");
        let cut = codec.decode(&mut buffer).unwrap().unwrap();
        assert!(cut.is_cut());
        assert_eq!((&cut.bytes[..], cut.length), (&b"abcd"[..], 8));
        assert_eq!(codec.decode(&mut buffer).unwrap().unwrap().bytes, &b"ok"[..]);
        assert!(buffer.is_empty());
    }

    #[tokio::test]
    async fn a_line_its_input_takes_none_of_sends_nothing_and_once_abandoned_never_goes() {
        let (mut input, mut process) = tokio::io::duplex(8);
        input.write_all(b"full up\n").await.unwrap();
        let (progress, mut written) = (AttemptProgress::default(), 0);
        let line = b"0123456789\n";
        assert!(write_line(&mut input, line, &mut written, Some(&progress)).now_or_never().is_none());
        assert_eq!(
            (written, progress.abandon()),
            (0, Step::Waiting(Wait::Process)),
            "cut before its first byte"
        );
        process.read_exact(&mut [0; 8]).await.unwrap();
        let later = write_line(&mut input, line, &mut written, Some(&progress)).await.unwrap();
        assert_eq!((later, written), (Written::Abandoned, 0), "never written once abandoned");
    }

    #[tokio::test]
    async fn a_line_partly_taken_may_have_been_sent_and_goes_on_whole() {
        let (mut input, mut process) = tokio::io::duplex(8);
        let (progress, mut written) = (AttemptProgress::default(), 0);
        let line = b"0123456789\n";
        let mut writing = Box::pin(write_line(&mut input, line, &mut written, Some(&progress)));
        assert!((&mut writing).now_or_never().is_none());
        assert_eq!(progress.abandon(), Step::MaySend, "part of it went: the deadline finds it sending");
        let mut read = [0; 11];
        let (done, _) = tokio::join!(writing, process.read_exact(&mut read));
        assert_eq!((done.unwrap(), &read), (Written::Whole, line), "the line goes on whole");
        assert_eq!(written, line.len());
    }
}
