"""The Switchyard wire layout: message batches as one flat byte buffer.

The same layout as the Rust crate `switchyard-wire` (see `wit/types.wit`),
all integers little-endian::

    batch   = message*
    message = u64 id, u32 source, u8 priority, u8 flags, str topic,
              u32 header-count, (str name, str value)*, bytes payload
    str     = bytes = u32 length, length bytes   (strings are UTF-8)

With `FLAG_PAYLOAD_OMITTED` set, `bytes payload` is only its `u32` length (the
real payload size) and no bytes follow: filters and balancers see heads only.

This module needs nothing but the standard library, so it runs (and is
tested) under plain `python3` as well as inside a component.
"""

import struct

__all__ = [
    "FLAG_PAYLOAD_OMITTED", "REJECTED", "RETRYABLE", "FAILED",
    "WireError", "Message", "decode", "encode", "encode_decisions", "write_message",
]

#: Flag bit: the payload bytes were left out; only their length is present.
FLAG_PAYLOAD_OMITTED = 1

#: The kinds of error a filter's decision can carry, numbered as the WIT `error` orders them.
REJECTED, RETRYABLE, FAILED = 0, 1, 2
#: The tag of a decision that is a verdict, not an error.
_VERDICT = 3

#: ASCII capitals to their small letters, and nothing else (see `ascii_lower`).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

_FIXED = struct.Struct("<QIBB")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def ascii_lower(text):
    """`text` with its ASCII capitals made small and nothing else changed: header
    names match ASCII case-insensitively, as the Rust SDK and the host match
    them (`str.lower` would match the Kelvin sign "\u212a" to "k")."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


class WireError(ValueError):
    """A malformed buffer: `offset` is where decoding failed, `problem` what was wrong."""

    def __init__(self, offset, problem):
        super().__init__(f"malformed message batch at byte {offset}: {problem}")
        self.offset = offset
        self.problem = problem


class Message:
    """One message: `id`, `source`, `priority`, `topic`, `headers` (a list of
    `(name, value)` pairs in order), `payload` (`bytes`, or `None` when the
    batch carries heads only) and `payload_len` (always known)."""

    __slots__ = ("id", "source", "priority", "topic", "headers", "payload", "payload_len")

    def __init__(self, topic, headers=(), payload=b"", id=0, priority=0, source=0, payload_len=None):
        self.id = id
        self.source = source
        self.priority = priority
        self.topic = topic
        self.headers = list(headers)
        self.payload = payload
        self.payload_len = len(payload or b"") if payload_len is None else payload_len

    def header(self, name):
        """The first header named `name` (ASCII case-insensitive), or `None`."""
        name = ascii_lower(name)
        for key, value in self.headers:
            if ascii_lower(key) == name:
                return value
        return None

    def __eq__(self, other):
        return isinstance(other, Message) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self):
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"Message({fields})"


class _Reader:
    def __init__(self, buf):
        self.buf = buf
        self.pos = 0

    def take(self, length):
        end = self.pos + length
        if end > len(self.buf):
            raise WireError(self.pos, "truncated")
        chunk = self.buf[self.pos:end]
        self.pos = end
        return chunk

    def u32(self):
        return _U32.unpack(self.take(4))[0]

    def bytes(self):
        return bytes(self.take(self.u32()))

    def str(self):
        start = self.pos
        raw = self.take(self.u32())
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise WireError(start, "string is not UTF-8") from None

    def message(self):
        id, source, priority, flags = _FIXED.unpack(self.take(_FIXED.size))
        topic = self.str()
        headers = [(self.str(), self.str()) for _ in range(self.u32())]
        if flags & FLAG_PAYLOAD_OMITTED:
            payload, payload_len = None, self.u32()
        else:
            payload = self.bytes()
            payload_len = len(payload)
        return Message(topic, headers, payload, id=id, priority=priority, source=source, payload_len=payload_len)


def decode(batch):
    """The messages of `batch` (a bytes-like object), in order; raises `WireError`."""
    reader = _Reader(memoryview(batch))
    messages = []
    while reader.pos < len(batch):
        messages.append(reader.message())
    return messages


def _put_bytes(out, raw):
    out += _U32.pack(len(raw))
    out += raw


def well_formed(text):
    """`text` with each lone surrogate (what `surrogateescape` makes of bytes
    that are not UTF-8: a file name, an environment variable) replaced by `?`,
    so that it can be written as UTF-8. For the text of an answer that must
    not fail: a filter's reasons and counter names are written after every
    message was decided, where an error would fail the whole call."""
    return text.encode(errors="replace").decode()


def write_message(out, message, heads_only=False):
    """Append `message` to the `bytearray` `out`; `heads_only` leaves the
    payload bytes out and writes only their length.

    A message is written whole or not at all: when a field cannot be written
    (a header value that is not a `str`, a lone surrogate), what was written of
    it is dropped before the error propagates, so a handler that catches it
    writes on into a well-formed batch (half a message would make the host
    refuse the whole answer as malformed)."""
    mark = len(out)
    try:
        omitted = heads_only or message.payload is None
        out += _FIXED.pack(message.id, message.source, message.priority, FLAG_PAYLOAD_OMITTED if omitted else 0)
        _put_bytes(out, message.topic.encode())
        out += _U32.pack(len(message.headers))
        for name, value in message.headers:
            _put_bytes(out, name.encode())
            _put_bytes(out, value.encode())
        if omitted:
            out += _U32.pack(message.payload_len)
        else:
            _put_bytes(out, message.payload)
    except BaseException:
        del out[mark:]
        raise


def encode(messages, heads_only=False):
    """The batch holding `messages`, in order, as `bytes`."""
    out = bytearray()
    for message in messages:
        write_message(out, message, heads_only)
    return bytes(out)


def encode_decisions(decisions, counts=()):
    """A filter's answer (the WIT `decisions`) as `bytes`::

        decisions = u32 n, decision{n}, count*
        decision  = u8 3, u8 verdict (1 keep, 0 drop) | u8 kind, str reason
        count     = str name, u64 delta

    `decisions` holds one entry per message: `True` keeps it, `False` drops
    it, `(kind, reason)` is an error (`kind` one of `REJECTED`, `RETRYABLE`,
    `FAILED`). `counts` holds `(name, delta)` pairs: what the call counted.
    A lone surrogate in a reason or name is written as `?` (`well_formed`)."""
    out = bytearray(_U32.pack(len(decisions)))
    for decision in decisions:
        if isinstance(decision, bool):
            out += bytes((_VERDICT, int(decision)))
        else:
            kind, reason = decision
            out.append(kind)
            _put_bytes(out, reason.encode(errors="replace"))
    for name, delta in counts:
        _put_bytes(out, name.encode(errors="replace"))
        out += _U64.pack(delta)
    return bytes(out)
