"""A transform that stamps every message with the header `x-stamp` and leaves
the rest alone: the same outputs as the Rust `stamp-transform`, written in
Python.

Config key: `stamp`, the header's value (default `python-transform`).
"""

import functools

from switchyard_plugin import config, transform_plugin


@functools.cache
def stamp():
    """Read from the host once per instance (not at build time: no host then)."""
    configured = config("stamp")
    return "python-transform" if configured is None else configured


@transform_plugin
def transform(message, out):
    out.emit(message).with_header("x-stamp", stamp()).finish()
