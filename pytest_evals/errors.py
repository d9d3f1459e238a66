"""The errors a domain module raises for bad configuration, and for data that cannot be read as cases.

Specs, routes, gates, prices and retry policies are checked where they are defined, without pytest:
each raises a :class:`ConfigError` whose message names the problem and the fix. ``options.usage_error``
is the one place that turns it into ``pytest.UsageError`` (a clean one-line exit at start-up).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad configuration: the message names the problem and the fix, in one line."""


class SpecError(ConfigError):
    """A spec that cannot be served; the message names the spec and the fix."""


class DataError(ValueError):
    """A data file (or dataset) that cannot be read as cases: the message names the file, the line where
    there is one, and what is wrong. Raised at collection, it is the module's one-line collection error."""
