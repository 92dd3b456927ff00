"""Glue between a handler and the component's exports.

componentize-py looks in the app module for one class per exported WIT
interface, named after it (`Filter`, `Transform`, `Format`). The decorators
below define those classes in the module of the function they decorate, so a
plugin is one decorated function.
"""

import enum
import inspect
import sys

from .errors import Failed, PluginError, Rejected, Retryable
from .host import drain_counts, flush_counts
from .output import Output
from .wire import FAILED, REJECTED, RETRYABLE, WireError, decode, encode_decisions, well_formed

__all__ = ["FORMAT_VERSION", "Verdict", "filter_plugin", "transform_plugin"]

#: The version of the wire layout this SDK speaks (the WIT `format` export).
FORMAT_VERSION = 1


class Verdict(enum.Enum):
    """What a filter decided about one message."""

    #: Pass the message on to the next stage.
    KEEP = 0
    #: Drop the message: a counted decision, not a loss.
    DROP = 1


class Format:
    """The WIT `format` export: which wire layout this plugin speaks."""

    def version(self):
        return FORMAT_VERSION


def _error_parts(error):
    """The kind (`REJECTED`, `RETRYABLE`, `FAILED`) and text of an exception a handler raised.

    It never raises itself: it is called for one message, and an error here
    would fail every message of the call."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - a `__str__` that raises still leaves the message its decision
        text = "(its text could not be read)"
    if isinstance(error, Rejected):
        return REJECTED, text
    if isinstance(error, Retryable):
        return RETRYABLE, text
    if isinstance(error, (Failed, PluginError, WireError)):
        return FAILED, text
    return FAILED, f"{type(error).__name__}: {text}"


def _refuse_coroutine(result, returned):
    """Raise if a handler returned a coroutine, as an `async def` one does:
    nothing awaits it, so its body would never run and a transform's message
    would vanish without an error. It is closed, since it will never run (no
    "never awaited" warning). `returned` says which handler, for the error."""
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(
            f"{returned}: plugin handlers must be synchronous: the export answers the host without awaiting what they return"
        )


def _refuse_value(result):
    """Raise if a transform returned anything but `None`: nothing reads it, so
    a message it meant to pass on (`lambda message, out: message`) would
    vanish without an error, as would what a generator was to do."""
    if result is not None:
        raise TypeError(
            f"the transform returned {type(result).__name__}: a transform writes its outputs with "
            "out.forward(message) or out.emit(message)...finish() and returns None"
        )


def _wit_error(error):
    """The WIT `error` for an exception a handler raised."""
    from wit_world.imports import types

    kind, text = _error_parts(error)
    return (types.Error_Rejected, types.Error_Retryable, types.Error_Failed)[kind](well_formed(text))


def _export(handler, **classes):
    module = sys.modules[handler.__module__]
    for name, cls in dict(classes, Format=Format).items():
        setattr(module, name, cls)
    return handler


def filter_plugin(decide):
    """Export `decide(message) -> Verdict` as this component's filter.

    Called once per message head (no payload bytes: `message.payload` is
    `None`, `message.payload_len` is known), in batch order. Raise `Rejected`,
    `Retryable` or `Failed` to report an error for that message alone.
    """

    class Filter:
        def filter(self, messages):
            decisions = []
            try:
                batch = decode(messages)
            except WireError as error:
                batch = ()
                decisions.append(_error_parts(error))
            for message in batch:
                try:
                    verdict = decide(message)
                    _refuse_coroutine(verdict, "the filter returned a coroutine, not a Verdict")
                    if not isinstance(verdict, Verdict):
                        raise TypeError(f"the filter returned {verdict!r}, not a Verdict")
                    decisions.append(verdict is Verdict.KEEP)
                except Exception as error:  # noqa: BLE001 - every error is reported, none kills the plugin
                    decisions.append(_error_parts(error))
            return encode_decisions(decisions, drain_counts())

    return _export(decide, Filter=Filter)


def transform_plugin(transform):
    """Export `transform(message, out)` as this component's transform.

    Called once per message (payload included), in batch order. Write zero
    outputs to drop the message, `out.forward(message)` to pass it on
    unchanged, `out.emit(message)...finish()` to pass on a changed copy, as
    many as you like to split it. An exception discards the outputs already
    written for this message and reports the error for it alone, and so does
    returning a value or leaving an `emit` unfinished.
    """

    class Transform:
        def transform(self, messages):
            from wit_world.exports.transform import Transformed

            out, errors = Output(), []
            try:
                batch = decode(messages)
            except WireError as error:
                batch = ()
                errors.append((0, _wit_error(error)))
            for index, message in enumerate(batch):
                mark = out._start(index)
                try:
                    result = transform(message, out)
                    _refuse_coroutine(result, "the transform returned a coroutine")
                    out._check_finished()
                    _refuse_value(result)
                except Exception as error:  # noqa: BLE001 - every error is reported, none kills the plugin
                    out._truncate(mark)
                    errors.append((index, _wit_error(error)))
            flush_counts()
            return Transformed(out._into_batch(), errors)

    return _export(transform, Transform=Transform)
