"""A transform's outputs (`Output`, `Emit`) and what a handler returns: what a
handler may write and how a mistake is reported. The bindings a component
gets (`wit_world`) are stubbed, so this runs in plain `python3`. Run:
`python3 plugin-sdk/python/test_output.py`."""

import collections
import pathlib
import sys
import types
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from switchyard_plugin import Verdict, filter_plugin, transform_plugin  # noqa: E402
from switchyard_plugin.output import Output  # noqa: E402
from switchyard_plugin.wire import FAILED, Message, decode, encode, encode_decisions  # noqa: E402


def stub_bindings():
    """Install the parts of `wit_world` a transform's export uses: `Transformed`,
    the WIT `error` cases (as `(case, text)` pairs) and a host that counts nothing."""
    modules = {name: types.ModuleType(name) for name in (
        "wit_world", "wit_world.imports", "wit_world.imports.types", "wit_world.imports.host",
        "wit_world.exports", "wit_world.exports.transform",
    )}
    for case in ("Rejected", "Retryable", "Failed"):
        setattr(modules["wit_world.imports.types"], f"Error_{case}", lambda text, case=case: (case, text))
    modules["wit_world.imports.host"].count = lambda name, delta: None
    modules["wit_world.exports.transform"].Transformed = collections.namedtuple("Transformed", "messages errors")
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    sys.modules.update(modules)


stub_bindings()

INPUT = Message("orders", [("x-a", "1")], b"\x01\x02", id=7)


class Emitting(unittest.TestCase):
    def test_a_priority_outside_0_to_255_or_not_an_integer_is_refused(self):
        out = Output()
        for priority in (256, 300, -1, 1.5, "3", None):
            with self.subTest(priority=priority):
                with self.assertRaisesRegex(
                    ValueError, rf"^with_priority\({priority!r}\): the priority must be an integer in 0\.\.=255$"
                ):
                    out.emit(INPUT).with_priority(priority)
        out.emit(INPUT).with_priority(0).finish()
        out.emit(INPUT).with_priority(255).finish()
        self.assertEqual([message.priority for message in decode(out._into_batch())], [0, 255])

    def test_a_value_of_the_wrong_type_is_refused_with_a_type_error_saying_what_is_expected(self):
        out = Output()
        refusals = [
            (lambda: out.emit(INPUT).with_payload(5), "with_payload: the payload must be bytes or a str (got int)"),
            (lambda: out.emit(INPUT).with_payload([1]), "with_payload: the payload must be bytes or a str (got list)"),
            (lambda: out.emit(INPUT).with_payload(None), "with_payload: the payload must be bytes or a str (got NoneType)"),
            (
                lambda: out.emit(INPUT).with_header("x-n", 5),
                "with_header('x-n', 5): a header's name and value must be str (got str, int)",
            ),
            (lambda: out.emit(INPUT).with_topic(b"t"), "with_topic(b't'): the topic must be a str (got bytes)"),
        ]
        for write, message in refusals:
            with self.subTest(message=message):
                with self.assertRaises(TypeError) as raised:
                    write()
                self.assertEqual(str(raised.exception), message)
        self.assertEqual(out._into_batch(), b"")

    def test_a_payload_may_be_bytes_a_bytes_like_object_or_a_str(self):
        out = Output()
        for payload in (b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x01\x02"), "\x01\x02"):
            out.emit(INPUT).with_payload(payload).finish()
        self.assertEqual([message.payload for message in decode(out._into_batch())], [b"\x01\x02"] * 4)

    def test_a_message_that_cannot_be_written_leaves_the_batch_as_it_was(self):
        out = Output()
        out.forward(INPUT)
        before = out._into_batch()
        # The topic and first header are written before the bad value is reached.
        for value in ("\ud800", 5):
            with self.subTest(value=value):
                with self.assertRaises((UnicodeEncodeError, TypeError, AttributeError)):
                    out.emit(INPUT).with_header("x-n", value).finish()
                self.assertEqual(out._into_batch(), before)
        out.forward(INPUT)
        self.assertEqual(decode(out._into_batch()), [INPUT, INPUT])


SYNCHRONOUS = "plugin handlers must be synchronous: the export answers the host without awaiting what they return"


class Returning(unittest.TestCase):
    def test_an_async_transform_fails_each_message_instead_of_dropping_it_silently(self):
        @transform_plugin
        async def transform(message, out):
            out.forward(message)

        answer = Transform().transform(encode([INPUT, INPUT]))  # noqa: F821 - defined by transform_plugin
        failed = ("Failed", f"TypeError: the transform returned a coroutine: {SYNCHRONOUS}")
        self.assertEqual(answer, (b"", [(0, failed), (1, failed)]))

    def test_an_async_filter_fails_each_message_saying_why(self):
        @filter_plugin
        async def decide(message):
            return Verdict.KEEP

        answer = Filter().filter(encode([INPUT], heads_only=True))  # noqa: F821 - defined by filter_plugin
        reason = f"TypeError: the filter returned a coroutine, not a Verdict: {SYNCHRONOUS}"
        self.assertEqual(answer, encode_decisions([(FAILED, reason)]))


if __name__ == "__main__":
    unittest.main()
