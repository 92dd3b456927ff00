"""`log` takes the host's levels (the WIT `level`) in any case, and "warning"
for warn; another level is refused with a ValueError listing them. The host
import (`wit_world`) is stubbed. Run: `python3 plugin-sdk/python/test_log.py`."""

import enum
import pathlib
import sys
import types
import unittest
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from switchyard_plugin.host import log  # noqa: E402


class Logging(unittest.TestCase):
    def setUp(self):
        # The bindings componentize-py generates for the WIT `host` interface, as far as `log` uses them.
        host = types.ModuleType("wit_world.imports.host")
        host.Level = enum.Enum("Level", "TRACE DEBUG INFO WARN ERROR")
        host.logged = []
        host.log = lambda level, message: host.logged.append((level, message))
        imports = types.ModuleType("wit_world.imports")
        imports.host = host
        wit_world = types.ModuleType("wit_world")
        wit_world.imports = imports
        modules = {"wit_world": wit_world, "wit_world.imports": imports, "wit_world.imports.host": host}
        patcher = mock.patch.dict(sys.modules, modules)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.host = host

    def test_the_hosts_levels_in_any_case_and_warning_for_warn(self):
        for level in ("trace", "debug", "info", "warn", "warning", "WARNING", "Error"):
            log(level, level)
        names = [level.name for level, _ in self.host.logged]
        self.assertEqual(names, ["TRACE", "DEBUG", "INFO", "WARN", "WARN", "WARN", "ERROR"])

    def test_another_level_is_refused_listing_the_valid_ones(self):
        for level in ("fatal", "", None):
            with self.subTest(level=level):
                with self.assertRaises(ValueError) as raised:
                    log(level, "x")
                self.assertEqual(
                    str(raised.exception),
                    f"log({level!r}, ...): the level must be one of trace, debug, info, warn (or warning), error",
                )
        self.assertEqual(self.host.logged, [])


if __name__ == "__main__":
    unittest.main()
