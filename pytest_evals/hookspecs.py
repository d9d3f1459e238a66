"""The plugin's own hooks, added through ``pytest_addhooks``."""

from __future__ import annotations

from typing import Callable

import pytest


@pytest.hookspec
def pytest_evals_register_backends(register: Callable[..., None]) -> None:
    """Register backends for new spec prefixes.

    Call ``register(prefix, backend)`` once per prefix, where ``backend`` is a
    :class:`pytest_evals.backends.base.Backend` subclass or a lazy ``"module:Class"`` path (so that
    nothing heavy is imported until a spec with that prefix is used). ``--model PREFIX:TARGET`` then
    routes to it. A registered prefix may replace a built-in one.
    """
