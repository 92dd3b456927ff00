"""{{name}}: a Switchyard filter plugin.

Config key `topic_prefix`: keep only messages whose topic starts with it
(unset: keep everything). Counters: `kept`, `dropped`.
"""

from switchyard_plugin import Verdict, config, count, filter_plugin


def keeps(topic, prefix):
    """Whether a message on `topic` passes a filter configured with `prefix`."""
    return prefix is None or topic.startswith(prefix)


@filter_plugin
def decide(message):
    if keeps(message.topic, config("topic_prefix")):
        count("kept")
        return Verdict.KEEP
    count("dropped")
    return Verdict.DROP
