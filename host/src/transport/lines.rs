//! Lines of a child process's output, each read up to a length: a longer one comes cut to its
//! start, the rest of it skipped, and reading goes on at the next line. Nothing a line holds ends
//! the reading (unlike `LinesCodec`, whose stream ends at a line too long or not UTF-8, closing
//! the pipe: the process's next write would fail and kill it).

use bytes::{Buf, BytesMut};
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
