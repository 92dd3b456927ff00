import unittest

from app import keeps


class KeepsTest(unittest.TestCase):
    def test_keeps_topics_under_the_prefix_and_everything_without_one(self):
        self.assertTrue(keeps("orders.eu", "orders."))
        self.assertFalse(keeps("billing.eu", "orders."))
        self.assertTrue(keeps("billing.eu", None))


if __name__ == "__main__":
    unittest.main()
