"""Loaded backends, one per spec per process, shared by every case that process runs."""

from __future__ import annotations

import json
from typing import Callable

from ..backends.base import Backend, BackendError, BackendSettings
from ..backends.registry import BackendRegistry
from ..backends.specs import ModelSpec, SpecError
from .cache import ReplayBackend
from .reliability import CircuitBreaker


def model_identity(spec: ModelSpec, fingerprint: str | None, transport_options: frozenset[str]) -> str:
    """The model part of a case key: the spec without its backend's transport options, and the weights."""
    options = sorted((k, v) for k, v in spec.options if k not in transport_options)
    base = spec.raw.partition("?")[0]
    return json.dumps([base, options, fingerprint], sort_keys=True, default=repr)


class BackendPool:
    def __init__(self, registry: BackendRegistry, settings: BackendSettings, replay: bool = False) -> None:
        self.registry = registry
        self.settings = settings
        # --evals-cache=replay: nothing is loaded, checked or probed; every call is answered by the cache
        self.replay = replay
        self._loaded: dict[ModelSpec, Backend] = {}
        self._failed: dict[ModelSpec, str] = {}  # a load that failed fails every later case at once
        self._checked: dict[ModelSpec, str | None] = {}
        self._identities: dict[ModelSpec, str] = {}
        self._weights: dict[ModelSpec, tuple[str, str | None]] = {}
        self._breakers: dict[ModelSpec, CircuitBreaker] = {}
        self._serves: dict[ModelSpec, frozenset[str]] = {}
        self._batching: dict[ModelSpec, bool] = {}
        self.announce: Callable[[str], None] | None = None  # says a long load is starting (the controller's)

    def serves(self, spec: ModelSpec) -> frozenset[str]:
        """What ``spec`` can serve, asked once per process (routing decides with it)."""
        if spec not in self._serves:
            backend = self.registry.resolve(spec.backend)
            self._serves[spec] = backend.capabilities if self.replay else backend.serves(spec)
        return self._serves[spec]

    def batches_across_cases(self, spec: ModelSpec) -> bool:
        """Whether the backend of ``spec`` gains from batches across cases (only then are its cases run in windows)."""
        if spec not in self._batching:
            if self.replay:  # answers come from the cache, one by one, at no cost
                return False
            try:
                self._batching[spec] = self.registry.resolve(spec.backend).batches_across_cases
            except SpecError:  # an unknown prefix is reported at start-up, not here
                self._batching[spec] = False
        return self._batching[spec]

    def submits(self, spec: ModelSpec) -> bool:
        """Whether the backend of ``spec`` starts each request on its own (``Backend.submit``: HTTP), rather
        than answering batches in rounds."""
        try:
            return self.registry.resolve(spec.backend).submit is not Backend.submit
        except SpecError:
            return False

    def breaker(self, spec: ModelSpec, name: str) -> CircuitBreaker:
        """One circuit breaker per backend in this process, shared by every case."""
        breaker = self._breakers.get(spec)
        if breaker is None:
            breaker = self._breakers[spec] = CircuitBreaker(name)
        return breaker

    def identity(self, spec: ModelSpec) -> str:
        """The model part of every case key: spec without its backend's transport options, plus a
        weights fingerprint."""
        if spec not in self._identities:
            _, fingerprint = self.model_and_weights(spec)
            self._identities[spec] = model_identity(spec, fingerprint, self._transport(spec))
        return self._identities[spec]

    def model_and_weights(self, spec: ModelSpec) -> tuple[str, str | None]:
        """The model without its weights (spec less transport options), and the weights' fingerprint
        (None where unknown, e.g. the files are not on this machine): the call cache keeps them apart."""
        if spec not in self._weights:
            try:
                fingerprint = self.registry.resolve(spec.backend).fingerprint(spec)
            except (SpecError, OSError, ValueError):
                fingerprint = None
            self._weights[spec] = (model_identity(spec, None, self._transport(spec)), fingerprint)
        return self._weights[spec]

    def _transport(self, spec: ModelSpec) -> frozenset[str]:
        try:
            return self.registry.resolve(spec.backend).transport_options
        except SpecError:
            return frozenset()

    def availability_problem(self, spec: ModelSpec) -> str | None:
        """The one-line reason ``spec`` cannot be served here (package, path, server), or None."""
        if self.replay:
            return None
        if spec not in self._checked:
            try:
                self.registry.resolve(spec.backend).check(spec)
                self._checked[spec] = self.availability_problem(spec.fallback) if spec.fallback else None
            except SpecError as exc:
                self._checked[spec] = str(exc)
            except ValueError as exc:  # a backend's own validation, e.g. a malformed hub id
                self._checked[spec] = f"--model {spec.raw}: {exc}"
        return self._checked[spec]

    def get(self, spec: ModelSpec) -> Backend:
        if spec in self._loaded:
            return self._loaded[spec]
        problem = self._failed.get(spec) or self.availability_problem(spec)
        if problem:
            raise BackendError(problem)
        if not self.replay and self.announce is not None:
            self._announce_load(spec)
        try:
            backend = (ReplayBackend(spec, self.settings, self.registry.resolve(spec.backend).capabilities)
                       if self.replay else self.registry.resolve(spec.backend)(spec, self.settings))
        except Exception as exc:
            self._failed[spec] = f"{spec.label}: could not load the model: {type(exc).__name__}: {exc}"
            raise BackendError(self._failed[spec]) from exc
        self._loaded[spec] = backend
        return backend

    def _announce_load(self, spec: ModelSpec) -> None:
        try:
            note = self.registry.resolve(spec.backend).load_note(spec)
        except Exception:  # noqa: BLE001 - a note is a courtesy; the load says what is wrong
            return
        if note and self.announce is not None:
            self.announce(note)

    def close(self) -> None:
        for backend in self._loaded.values():
            try:
                backend.close()
            except Exception:
                pass
        self._loaded.clear()
