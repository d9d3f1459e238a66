"""Spec prefix -> backend class: the built-in backends and those plugins register.

A built-in backend is one line of ``BUILTIN_BACKENDS``: a lazy ``"module:Class"`` path, imported only
when a spec of its prefix is used. Everything else a backend means to the plugin (what it serves,
whether a spec names a server with ``@URL``, which options stay out of case keys) is declared on its
class (``backends.base.Backend``), so a backend a plugin registers is treated exactly as a built-in one.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from ..errors import SpecError

BUILTIN_BACKENDS: dict[str, str] = {
    "hf": "pytest_evals.backends.hf:HFBackend",
    "vllm": "pytest_evals.backends.vllm:VLLMBackend",
    "openai": "pytest_evals.backends.openai:OpenAIBackend",
}
BASE_BACKEND = "pytest_evals.backends.base:Backend"  # the declarations of a prefix nothing else describes


class BackendRegistry:
    """Spec prefix -> backend class (a ``Backend`` subclass), imported on first use."""

    def __init__(self) -> None:
        self._entries: dict[str, Any] = dict(BUILTIN_BACKENDS)

    @classmethod
    def of_prefixes(cls, prefixes: Iterable[str]) -> "BackendRegistry":
        """A registry of just these prefixes: built-in ones keep their backend, any other name gets the
        base class's declarations (for parsing specs of a prefix whose backend is not at hand)."""
        registry = cls()
        registry._entries = {p: BUILTIN_BACKENDS.get(p, BASE_BACKEND) for p in prefixes}
        return registry

    def register(self, prefix: str, backend: Any) -> None:
        """Register a backend class (or a lazy ``"module:Class"`` path) for ``prefix:`` specs."""
        self._entries[prefix] = backend

    @property
    def prefixes(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def resolve(self, prefix: str) -> type:
        """The backend class of ``prefix`` (a ``Backend`` subclass); a lazy path is imported now."""
        entry = self._entries.get(prefix)
        if entry is None:
            raise SpecError(f"no backend registered for {prefix!r} specs")
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            try:
                entry = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise SpecError(f"the backend registered for '{prefix}:' specs ({entry}) cannot be imported "
                                f"({type(exc).__name__}: {exc}); fix the path given to register()") from None
            self._entries[prefix] = entry
        return entry
