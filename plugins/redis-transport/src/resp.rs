//! Just enough RESP (the Redis protocol) for one command and its reply.

use std::io::{self, BufRead, Read, Write};

/// Longest reply line or bulk string read; a longer one is a protocol error.
const MAX_REPLY: usize = 1 << 20;

/// One reply of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `:42` or a bulk string: the answer's bytes.
    Value(Vec<u8>),
    /// A null bulk string or array.
    Null,
    /// `-ERR ...`: the server refused the command.
    Error(String),
}

/// Write `args` as one RESP command (an array of bulk strings).
pub fn write_command(out: &mut impl Write, args: &[&[u8]]) -> io::Result<()> {
    let mut command = Vec::with_capacity(16 + args.iter().map(|arg| arg.len() + 16).sum::<usize>());
    command.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        command.extend_from_slice(arg);
        command.extend_from_slice(b"\r\n");
    }
    out.write_all(&command)
}

/// Read one reply. Arrays (which these commands never answer) are refused.
pub fn read_reply(input: &mut impl BufRead) -> io::Result<Reply> {
    let line = read_line(input)?;
    let (kind, rest) = line.split_first().ok_or_else(|| malformed("an empty reply line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' | b':' => Ok(Reply::Value(rest.to_vec())),
        b'-' => Ok(Reply::Error(text())),
        b'$' => {
            let length: i64 = text().parse().map_err(|_| malformed("a bad bulk length"))?;
            let Ok(length) = usize::try_from(length) else { return Ok(Reply::Null) };
            if length > MAX_REPLY {
                return Err(malformed("a bulk string too long"));
            }
            let mut bulk = vec![0; length + 2];
            input.read_exact(&mut bulk)?;
            bulk.truncate(length);
            Ok(Reply::Value(bulk))
        }
        b'*' if text() == "-1" => Ok(Reply::Null),
        _ => Err(malformed("a reply of a kind not expected")),
    }
}

/// One CRLF-terminated line, without its CRLF.
fn read_line(input: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let read = input.by_ref().take(MAX_REPLY as u64).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(malformed("a reply line without CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the server sent {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        write_command(&mut out, &[b"RPUSH", b"jobs", b"a\r\nb"]).unwrap();
        assert_eq!(out, b"*3\r\n$5\r\nRPUSH\r\n$4\r\njobs\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn replies_of_each_kind_are_read() {
        let mut input: &[u8] = b":12\r\n$9\r\n1-0\r\nabcd\r\n-LOADING busy\r\n$-1\r\n+OK\r\n";
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Value(b"12".to_vec()));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Value(b"1-0\r\nabcd".to_vec()));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Error("LOADING busy".into()));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Null);
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Value(b"OK".to_vec()));
        assert_eq!(read_reply(&mut input).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
