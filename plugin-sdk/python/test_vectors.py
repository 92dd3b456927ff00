"""The codec against the golden vectors (`plugin-sdk/wire/vectors/`): every
`NAME.bin` decodes to the messages of `NAME.json`, and those encode to exactly
`NAME.bin`; every filter answer of `decisions/NAME.json` encodes to exactly
`decisions/NAME.bin`. Run: `python3 plugin-sdk/python/test_vectors.py`."""

import base64
import json
import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from switchyard_plugin.wire import FAILED, REJECTED, RETRYABLE, Message, decode, encode, encode_decisions  # noqa: E402

VECTORS = pathlib.Path(__file__).parent.parent / "wire" / "vectors"


def expected(entry):
    """The `Message` a vector's JSON entry describes."""
    omitted = "payload_omitted" in entry
    payload = None if omitted else base64.b64decode(entry["payload"])
    return Message(
        entry["topic"],
        [tuple(pair) for pair in entry["headers"]],
        payload,
        id=int(entry["id"]),
        priority=entry["priority"],
        source=entry["source"],
        payload_len=entry["payload_omitted"] if omitted else None,
    )


class GoldenVectors(unittest.TestCase):
    def test_every_vector_decodes_to_its_json_and_encodes_to_its_bytes(self):
        names = sorted(path.stem for path in VECTORS.glob("*.bin"))
        self.assertGreater(len(names), 0, f"no vectors in {VECTORS}")
        for name in names:
            with self.subTest(vector=name):
                raw = (VECTORS / f"{name}.bin").read_bytes()
                messages = [expected(entry) for entry in json.loads((VECTORS / f"{name}.json").read_text())["messages"]]
                self.assertEqual(decode(raw), messages)
                self.assertEqual(encode(messages), raw)
        print(f"{len(names)} vectors passed", file=sys.stderr)


def decision(entry):
    """A decision as `encode_decisions` takes it, from a vector's JSON spelling."""
    if entry in ("keep", "drop"):
        return entry == "keep"
    ((kind, reason),) = entry.items()
    return {"rejected": REJECTED, "retryable": RETRYABLE, "failed": FAILED}[kind], reason


class DecisionsVectors(unittest.TestCase):
    def test_every_filter_answer_encodes_to_its_bytes(self):
        names = sorted(path.stem for path in (VECTORS / "decisions").glob("*.bin"))
        self.assertGreater(len(names), 0, f"no vectors in {VECTORS / 'decisions'}")
        for name in names:
            with self.subTest(vector=name):
                vector = json.loads((VECTORS / "decisions" / f"{name}.json").read_text())
                decisions = [decision(entry) for entry in vector["decisions"]]
                counts = [(counter, int(delta)) for counter, delta in vector["counts"]]
                self.assertEqual(encode_decisions(decisions, counts), (VECTORS / "decisions" / f"{name}.bin").read_bytes())
        print(f"{len(names)} filter answers passed", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
