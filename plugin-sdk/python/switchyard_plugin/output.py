"""Where a transform writes its output messages: straight into the reply batch."""

from .wire import Message, ascii_lower, write_message

__all__ = ["Output", "Emit"]


def set_header(headers, name, value):
    """`headers` with header `name` set: the first header of that name (ASCII
    case-insensitive) takes the new name and value and later ones are removed;
    without one, the header is appended."""
    lowered = ascii_lower(name)
    result, replaced = [], False
    for key, old in headers:
        if ascii_lower(key) != lowered:
            result.append((key, old))
        elif not replaced:
            result.append((name, value))
            replaced = True
    if not replaced:
        result.append((name, value))
    return result


class Output:
    """The output messages of one transform call, encoded as they are written.

    Every output carries the index of the input it came from (`source`) and
    that input's id; the host relies on both.
    """

    def __init__(self):
        self._batch = bytearray()
        self._source = 0
        #: How many `emit`s are neither finished nor given a value they refused.
        self._unfinished = 0

    def _start(self, source):
        self._source = source
        self._unfinished = 0
        return len(self._batch)

    def _check_finished(self):
        """Raise if an `emit` was left unfinished: nothing is written without
        `finish()`, so its output would vanish."""
        if self._unfinished:
            raise TypeError("out.emit(message) was not finished: an output is written only by its finish()")

    def _truncate(self, mark):
        del self._batch[mark:]

    def _into_batch(self):
        return bytes(self._batch)

    def forward(self, message):
        """Pass `message` on unchanged."""
        self.emit(message).finish()

    def emit(self, message):
        """Start an output copied from `message`; change it with the `with_*`
        methods of `Emit`, then write it with `Emit.finish()`."""
        return Emit(self, message)


class Emit:
    """An output message being built, see `Output.emit`. Nothing is written
    until `finish()`; one left unfinished fails the message it came from."""

    __slots__ = ("_out", "_message", "_pending")

    def __init__(self, out, message):
        self._out = out
        self._message = Message(
            message.topic, message.headers, message.payload or b"", id=message.id, priority=message.priority
        )
        self._pending = True
        out._unfinished += 1

    def _settle(self):
        """This output is no longer awaited: it is being finished, or was given up."""
        if self._pending:
            self._pending = False
            self._out._unfinished -= 1

    def _refused(self, error):
        """`error`, with this output given up: a handler that catches a value
        refused may go on without it."""
        self._settle()
        return error

    def with_topic(self, topic):
        """Replace the topic (a `str`)."""
        if not isinstance(topic, str):
            raise self._refused(
                TypeError(f"with_topic({topic!r}): the topic must be a str (got {type(topic).__name__})")
            )
        self._message.topic = topic
        return self

    def with_payload(self, payload):
        """Replace the payload: `bytes` (or a `bytearray`, a `memoryview`) or a
        `str`, encoded as UTF-8."""
        if isinstance(payload, str):
            payload = payload.encode()
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            payload = bytes(payload)
        else:
            # `bytes(5)` is five NUL bytes, and `bytes([1])` a guess: neither is what was meant.
            raise self._refused(
                TypeError(f"with_payload: the payload must be bytes or a str (got {type(payload).__name__})")
            )
        self._message.payload, self._message.payload_len = payload, len(payload)
        return self

    def with_priority(self, priority):
        """Replace the priority class: an integer in 0..=255, higher is more urgent."""
        if not isinstance(priority, int) or not 0 <= priority <= 255:
            raise self._refused(ValueError(f"with_priority({priority!r}): the priority must be an integer in 0..=255"))
        self._message.priority = priority
        return self

    def with_header(self, name, value):
        """Set header `name`: the first header of that name takes the new name
        and value, later ones are removed, and a new name is appended. Both are `str`."""
        if not isinstance(name, str) or not isinstance(value, str):
            raise self._refused(
                TypeError(
                    f"with_header({name!r}, {value!r}): a header's name and value must be str "
                    f"(got {type(name).__name__}, {type(value).__name__})"
                )
            )
        self._message.headers = set_header(self._message.headers, name, value)
        return self

    def finish(self):
        """Write the message to the output batch (it is finished also when it
        cannot be written and this raises)."""
        self._settle()
        self._message.source = self._out._source
        write_message(self._out._batch, self._message)
