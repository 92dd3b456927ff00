"""Write Switchyard plugins in Python.

A plugin is one decorated function in a module that componentize-py turns
into a WASM component (see this package's README)::

    from switchyard_plugin import Verdict, config, count, filter_plugin

    @filter_plugin
    def decide(message):
        prefix = config("topic_prefix") or ""
        keep = message.topic.startswith(prefix)
        count("kept" if keep else "dropped")
        return Verdict.KEEP if keep else Verdict.DROP

Modules: `wire` (the byte layout and `Message`), `errors` (what a handler
raises), `output` (a transform's `Output`), `host` (log, config, now_millis,
count), `exports` (the decorators per plugin kind).
"""

from .wire import Message, WireError, decode, encode
from .errors import Failed, PluginError, Rejected, Retryable
from .output import Emit, Output
from .host import config, count, log, now_millis
from .exports import FORMAT_VERSION, Verdict, filter_plugin, transform_plugin

__all__ = [
    "Message", "WireError", "decode", "encode",
    "PluginError", "Rejected", "Retryable", "Failed",
    "Output", "Emit",
    "log", "config", "now_millis", "count",
    "FORMAT_VERSION", "Verdict", "filter_plugin", "transform_plugin",
]
