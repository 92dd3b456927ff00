"""A filter that keeps messages by topic prefix and by header: the same
decisions as the Rust `header-filter`, written in Python.

Config keys (all optional; an unset key imposes nothing):
- `topic_prefix`: keep only messages whose topic starts with it.
- `require_header`: keep only messages carrying this header (name compared
  ASCII case-insensitively).
- `require_value`: ...and only when that header has exactly this value.
  Setting it without `require_header` fails every message.

Counters: `kept`, `dropped`.
"""

import functools

from switchyard_plugin import Failed, Verdict, config, count, filter_plugin


@functools.cache
def settings():
    """The plugin's configuration, read once per instance."""
    return config("topic_prefix"), config("require_header"), config("require_value")


def keeps(message):
    topic_prefix, require_header, require_value = settings()
    if topic_prefix is not None and not message.topic.startswith(topic_prefix):
        return False
    if require_header is None:
        if require_value is not None:
            raise Failed("config key `require_value` needs `require_header`")
        return True
    value = message.header(require_header)
    return value is not None and (require_value is None or value == require_value)


@filter_plugin
def decide(message):
    if keeps(message):
        count("kept", 1)
        return Verdict.KEEP
    count("dropped", 1)
    return Verdict.DROP
