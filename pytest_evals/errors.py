"""The error a domain module raises for bad configuration.

Specs, routes, gates, prices and retry policies are checked where they are defined, without pytest:
each raises a :class:`ConfigError` whose message names the problem and the fix. ``options.usage_error``
is the one place that turns it into ``pytest.UsageError`` (a clean one-line exit at start-up).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration: the message names the problem and the fix, in one line."""


class SpecError(ConfigError):
    """A spec that cannot be served; the message names the spec and the fix."""
