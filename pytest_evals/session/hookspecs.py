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
    routes to it. A registered prefix may replace a built-in one. What the class declares
    (``capabilities``, ``takes_url``, ``transport_options``, ...) applies as it does to built-in backends.
    """


@pytest.hookspec
def pytest_evals_prices(register: Callable[..., None]) -> None:
    """Supply prices: ``register(glob, input_per_m=…, output_per_m=…)`` in USD per million tokens, or
    ``register(glob, gpu_hour=…)`` for local backends priced by GPU time. Lines of the ini key
    ``evals_prices`` are read after these, so the user's file overrides a plugin.
    """
