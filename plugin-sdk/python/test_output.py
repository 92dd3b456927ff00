"""A transform's outputs (`Output`, `Emit`): what a handler may write and how
a mistake is reported. Run: `python3 plugin-sdk/python/test_output.py`."""

import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from switchyard_plugin.output import Output  # noqa: E402
from switchyard_plugin.wire import Message, decode  # noqa: E402

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


if __name__ == "__main__":
    unittest.main()
