"""A transform's outputs (`Output`, `Emit`) and what a handler returns: what a
handler may write and how a mistake is reported. The bindings a component
gets (`wit_world`) are stubbed, so this runs in plain `python3`. Run:
`python3 plugin-sdk/python/test_output.py`."""

import collections
import pathlib
import sys
import types
import unittest
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from switchyard_plugin import Rejected, Verdict, count, filter_plugin, transform_plugin  # noqa: E402
from switchyard_plugin.output import Output  # noqa: E402
from switchyard_plugin.wire import FAILED, REJECTED, Message, decode, encode, encode_decisions  # noqa: E402


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

    def test_header_names_match_ascii_case_insensitively_and_no_other_way(self):
        # The Kelvin sign is "k" to `str.lower`, not to the Rust SDK and the host.
        message = Message("orders", [("\u212a", "kelvin"), ("X-Tenant", "acme")])
        self.assertEqual((message.header("k"), message.header("x-TENANT")), (None, "acme"))
        out = Output()
        out.emit(message).with_header("k", "1").with_header("x-tenant", "other").finish()
        headers = [("\u212a", "kelvin"), ("x-tenant", "other"), ("k", "1")]
        self.assertEqual(decode(out._into_batch())[0].headers, headers)

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


OUTPUTS = "a transform writes its outputs with out.forward(message) or out.emit(message)...finish() and returns None"
UNFINISHED = "out.emit(message) was not finished: an output is written only by its finish()"


def transformed(handler, messages):
    """What the transform `handler` answers for `messages`: its outputs as
    `(id, source, header x-y)` and its errors."""
    transform_plugin(handler)
    answer = Transform().transform(encode(messages))  # noqa: F821 - defined by transform_plugin
    return [(message.id, message.source, message.header("x-y")) for message in decode(answer.messages)], answer.errors


class Slipping(unittest.TestCase):
    """A handler's slip that would drop its message without a word fails that message instead."""

    def test_a_transform_that_returns_a_value_fails_its_message_with_what_it_wrote_discarded(self):
        def generator(message, out):
            out.forward(message)
            yield

        def forwarded_and_returned(message, out):
            out.forward(message)
            return True

        for handler, returned in ((lambda message, out: message, "Message"), (generator, "generator"),
                                  (forwarded_and_returned, "bool")):
            with self.subTest(returned=returned):
                failed = ("Failed", f"TypeError: the transform returned {returned}: {OUTPUTS}")
                self.assertEqual(transformed(handler, THREE[1:2]), ([], [(0, failed)]))

    def test_an_emit_left_unfinished_fails_its_message_alone_with_what_it_wrote_discarded(self):
        failed = ("Failed", f"TypeError: {UNFINISHED}")

        def stamped_all(message, out):
            out.emit(message).with_header("x-y", "z")

        self.assertEqual(transformed(stamped_all, THREE), ([], [(0, failed), (1, failed), (2, failed)]))
        # A lambda returns the `Emit` too: that it was not finished is the slip to name.
        stamped_all = lambda message, out: out.emit(message).with_header("x-y", "z")  # noqa: E731
        self.assertEqual(transformed(stamped_all, THREE[1:2]), ([], [(0, failed)]))

        def stamped_but_one(message, out):
            out.forward(message)
            stamped = out.emit(message).with_header("x-y", "z")
            if message.id != 1:
                stamped.finish()

        outputs = [(0, 0, None), (0, 0, "z"), (2, 2, None), (2, 2, "z")]
        self.assertEqual(transformed(stamped_but_one, THREE), (outputs, [(1, failed)]))

    def test_an_emit_given_a_value_it_refuses_is_given_up_so_a_handler_that_catches_the_error_may_go_on(self):
        refusals = {
            "with_header": lambda emit: emit.with_header("x-y", 5),
            "with_topic": lambda emit: emit.with_topic(b"t"),
            "with_payload": lambda emit: emit.with_payload(5),
            "with_priority": lambda emit: emit.with_priority(300),
        }
        for name, refuse in refusals.items():
            with self.subTest(name=name):

                def handler(message, out):
                    try:
                        refuse(out.emit(message)).finish()
                    except (TypeError, ValueError):
                        out.emit(message).with_header("x-y", "instead").finish()

                self.assertEqual(transformed(handler, THREE[1:2]), ([(1, 0, "instead")], []))


#: Three messages, ids 0, 1, 2: the handlers below go wrong on the second.
THREE = [Message("orders", id=id) for id in range(3)]


class FailingAlone(unittest.TestCase):
    """What goes wrong with one message fails that message alone: were the
    export to raise, the host would run each message again on its own and
    count the one at fault a plugin fault, not rejected, which a route with
    `on_error = "fail-open"` lets through."""

    def test_a_counter_name_that_is_not_a_str_fails_its_message_alone(self):
        @filter_plugin
        def decide(message):
            count(42 if message.id == 1 else "seen")
            return Verdict.KEEP

        answer = Filter().filter(encode(THREE, heads_only=True))  # noqa: F821 - defined by filter_plugin
        refused = (FAILED, "TypeError: count(42, 1): the name must be a str (got int)")
        self.assertEqual(answer, encode_decisions([True, refused, True], [("seen", 2)]))

    def test_a_lone_surrogate_in_a_filters_reason_or_counter_name_is_written_as_a_question_mark(self):
        @filter_plugin
        def decide(message):
            count("seen\udcff")
            if message.id == 1:
                raise Rejected("not ours: \udcff")
            return Verdict.KEEP

        answer = Filter().filter(encode(THREE, heads_only=True))  # noqa: F821 - defined by filter_plugin
        self.assertEqual(answer, encode_decisions([True, (REJECTED, "not ours: ?"), True], [("seen?", 3)]))

    def test_an_exception_whose_text_cannot_be_read_fails_its_message_alone(self):
        class Unreadable(Exception):
            def __str__(self):
                raise ValueError("no text")

        @filter_plugin
        def decide(message):
            if message.id == 1:
                raise Unreadable()
            return Verdict.DROP

        answer = Filter().filter(encode(THREE, heads_only=True))  # noqa: F821 - defined by filter_plugin
        unreadable = (FAILED, "Unreadable: (its text could not be read)")
        self.assertEqual(answer, encode_decisions([False, unreadable, False]))

    def test_a_transform_hands_the_host_its_reasons_and_counter_names_as_well_formed_text(self):
        @transform_plugin
        def transform(message, out):
            count("seen\udcff")
            if message.id == 1:
                raise Rejected("not ours: \udcff")
            out.forward(message)

        counted = []
        with mock.patch.object(sys.modules["wit_world.imports.host"], "count", lambda *call: counted.append(call)):
            answer = Transform().transform(encode(THREE))  # noqa: F821 - defined by transform_plugin
        self.assertEqual(decode(answer.messages), [THREE[0], Message("orders", id=2, source=2)])
        self.assertEqual((answer.errors, counted), ([(1, ("Rejected", "not ours: ?"))], [("seen?", 3)]))


if __name__ == "__main__":
    unittest.main()
