"""`count` sums a call's increments by name (up to the largest u64) and
`drain_counts` hands the totals over once; a delta that is not a non-negative
integer, or a name that is not a `str`, is refused and counts nothing. Run:
`python3 plugin-sdk/python/test_counts.py`."""

import pathlib
import sys
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from switchyard_plugin.host import count, drain_counts  # noqa: E402


class Counts(unittest.TestCase):
    def setUp(self):
        drain_counts()

    def test_increments_are_summed_by_name_and_drained_once(self):
        count("seen")
        count("seen", 2)
        count("bytes", 10)
        count("none", 0)
        self.assertEqual(sorted(drain_counts()), [("bytes", 10), ("seen", 3)])
        self.assertEqual(drain_counts(), [], "the totals start again from zero")

    def test_a_sum_stops_at_the_largest_u64_as_the_hosts_counters_do(self):
        count("huge", 2**64 - 2)
        count("huge", 5)
        count("huger", 2**70)
        self.assertEqual(sorted(drain_counts()), [("huge", 2**64 - 1), ("huger", 2**64 - 1)])

    def test_a_delta_that_is_not_a_non_negative_integer_is_refused_and_counts_nothing(self):
        for delta in (-1, 1.5, "2", None):
            with self.subTest(delta=delta):
                with self.assertRaisesRegex(ValueError, "the delta must be a non-negative integer"):
                    count("seen", delta)
        self.assertEqual(drain_counts(), [])

    def test_a_name_that_is_not_a_str_is_refused_where_it_is_given_and_counts_nothing(self):
        for name in (42, None, b"seen"):
            with self.subTest(name=name):
                with self.assertRaisesRegex(TypeError, "the name must be a str"):
                    count(name)
        self.assertEqual(drain_counts(), [])


if __name__ == "__main__":
    unittest.main()
