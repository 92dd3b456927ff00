"""Functions the host offers every plugin (the WIT `host` import).

The bindings (`wit_world`) exist only inside a component built by
componentize-py; importing this module elsewhere works, calling it does not.
"""

from .wire import well_formed

__all__ = ["log", "config", "now_millis", "count"]


def _host():
    from wit_world.imports import host

    return host


#: The host's log levels (the WIT `level`, as the bindings name them) by the
#: names `log` takes, lower-cased: the WIT's own, and "warning".
_LEVELS = {"trace": "TRACE", "debug": "DEBUG", "info": "INFO", "warn": "WARN", "warning": "WARN", "error": "ERROR"}


def log(level, message):
    """Write a log line attributed to this plugin; `level` is one of
    `"trace"`, `"debug"`, `"info"`, `"warn"` (or `"warning"`), `"error"`, in
    any case."""
    name = _LEVELS.get(level.lower()) if isinstance(level, str) else None
    if name is None:
        raise ValueError(f"log({level!r}, ...): the level must be one of trace, debug, info, warn (or warning), error")
    host = _host()
    host.log(host.Level[name], message)


def config(key):
    """This plugin's configuration value for `key` (`[[plugin]] config`), or `None`."""
    return _host().config(key)


def now_millis():
    """Wall-clock time in milliseconds since the Unix epoch."""
    return _host().now_millis()


#: Counter increments not yet handed to the host, by name: summed here and
#: handed over once per call (`drain_counts`), as the Rust SDK does, instead
#: of a host call per `count`.
_counts = {}

#: Where a sum stops, as the host's counters do: the most a `u64` holds.
_U64_MAX = 2**64 - 1


def count(name, delta=1):
    """Add `delta` (a non-negative integer) to this plugin's counter `name`
    (a `str`, a host metric). The increments reach the host when the current
    call returns; a sum stops at 2**64 - 1, as the host's counters do.

    A name or delta of the wrong kind is refused here, in the handler that
    gave it, so that it fails that message alone: once summed, it would fail
    the whole call as the totals are handed over."""
    if not isinstance(name, str):
        raise TypeError(f"count({name!r}, {delta!r}): the name must be a str (got {type(name).__name__})")
    if not isinstance(delta, int) or delta < 0:
        raise ValueError(f"count({name!r}, {delta!r}): the delta must be a non-negative integer")
    _counts[name] = min(_counts.get(name, 0) + delta, _U64_MAX)


def drain_counts():
    """Each counter's total since the last drain, as `(name, delta)` pairs;
    the totals start again from zero."""
    drained = [(name, total) for name, total in _counts.items() if total > 0]
    _counts.clear()
    return drained


def flush_counts():
    """Hand the summed increments to the host, a `count` call per counter (a
    lone surrogate in a name written as `?`, as `encode_decisions` writes it)."""
    host = _host()
    for name, total in drain_counts():
        host.count(well_formed(name), total)
