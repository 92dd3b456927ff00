import unittest

from app import stamp


class StampTest(unittest.TestCase):
    def test_the_stamp_is_the_configured_one_or_the_plugin_name(self):
        self.assertEqual(stamp("v2"), "v2")
        self.assertEqual(stamp(None), "{{name}}")


if __name__ == "__main__":
    unittest.main()
