"""Functions the host offers every plugin (the WIT `host` import).

The bindings (`wit_world`) exist only inside a component built by
componentize-py; importing this module elsewhere works, calling it does not.
"""

__all__ = ["log", "config", "now_millis", "count"]


def _host():
    from wit_world.imports import host

    return host


def log(level, message):
    """Write a log line attributed to this plugin; `level` is one of
    `"trace"`, `"debug"`, `"info"`, `"warn"`, `"error"`."""
    host = _host()
    host.log(host.Level[level.upper()], message)


def config(key):
    """This plugin's configuration value for `key` (`[[plugin]] config`), or `None`."""
    return _host().config(key)


def now_millis():
    """Wall-clock time in milliseconds since the Unix epoch."""
    return _host().now_millis()


def count(name, delta=1):
    """Add `delta` to this plugin's counter `name` (a host metric)."""
    _host().count(name, delta)
