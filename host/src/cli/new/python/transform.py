"""{{name}}: a Switchyard transform plugin.

Stamps every message with the header `x-stamp`, whose value is the config key
`stamp` (default `{{name}}`); the rest passes unchanged.
"""

from switchyard_plugin import config, transform_plugin


def stamp(configured):
    """The stamp for a plugin configured with `configured`."""
    return "{{name}}" if configured is None else configured


@transform_plugin
def transform(message, out):
    out.emit(message).with_header("x-stamp", stamp(config("stamp"))).finish()
