"""Why a plugin could not handle a message: raise one of these from a handler."""

__all__ = ["PluginError", "Rejected", "Retryable", "Failed"]


class PluginError(Exception):
    """Base of the errors a handler raises; its text travels to the host."""


class Rejected(PluginError):
    """The message is bad: the host dead-letters it and never retries."""


class Retryable(PluginError):
    """A transient condition: the host may retry the message."""


class Failed(PluginError):
    """The plugin itself failed (a bug, a missing config key). Any other
    exception a handler raises is reported as `Failed` too."""
