"""The batch planner: the requests traced for a window of cases, and the results of their batches.

One ``Planner`` per process (``batching.py`` holds the plugin that traces windows). A case's model
call asks :meth:`Planner.answer`: while a window is traced it records the request and stops the case
(:class:`TraceStop`); afterwards it answers from the window's batched results, or calls the backend
alone where the batch has no result for it. Nothing here knows pytest.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Hashable

from .backends.base import Backend, ChatRequest, PartialBatch

WINDOW_PER_BATCH = 8  # a window holds this many batches' worth of cases


class TraceStop(BaseException):
    """Stops a traced case at its first model call (a BaseException, so ``except Exception`` in a test
    body does not swallow it)."""


def request_key(method: str, request: Any, sample: int = 0) -> Hashable:
    """Equal requests of one window share one answer; the samples of a repeated case do not."""
    if isinstance(request, ChatRequest):
        return method, json.dumps([request.messages, request.max_tokens, request.temperature, request.tools,
                                   request.tool_choice], sort_keys=True, default=str), sample
    return method, request, sample  # the other requests are frozen dataclasses of hashable fields


class Planner:
    """One per process: the traced requests of the current window, and the results of their batches."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.tracing = False
        self.traced: list[tuple[Backend, str, list[Any], int]] = []
        self.results: dict[tuple[int, Hashable], list[Any]] = {}  # key -> [result, batch seconds, cases left]
        self.last_hit: float | None = None  # the batch time of the call just served, None if not served
        self.pending: dict[tuple[int, Hashable], Future[None]] = {}  # keys whose batch runs in the background
        self._background: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()
        self.can_prefetch = False  # a backend of this run allows its batches in the background
        self._prefetching: dict[int, Backend] = {}  # the backends with batches sent in the background

    def close(self) -> None:
        """At the session's end every case that runs has run: a batch still in flight is for cases
        that never will (-x, Ctrl-C, the budget), so it is stopped, not waited for."""
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)  # batches not started: dropped
            for backend in self._prefetching.values():
                backend.cancel()
            self._background.shutdown(wait=True)

    def answer(self, backend: Backend, method: str, requests: list[Any], sample: int = 0) -> list[Any]:
        """The results of ``requests``: from the window's batches where they hold them, else from the backend.
        ``sample``: which sample of a repeated case asks (each sample gets its own answer)."""
        self.last_hit = None
        if self.tracing:
            self.traced.append((backend, method, list(requests), sample))
            raise TraceStop
        keys = [(id(backend), request_key(method, r, sample)) for r in requests]
        for key in keys:
            future = self.pending.pop(key, None)
            if future is not None:
                future.result()  # its batch is still in flight: wait for it (it never raises)
        with self.lock:
            entries = [self.results.get(k) for k in keys]
            hit = bool(keys) and all(e is not None for e in entries)
            if hit:
                for key, entry in zip(keys, entries):
                    entry[2] -= 1
                    if entry[2] <= 0:
                        del self.results[key]
        if hit:
            self.last_hit = max(entry[1] for entry in entries)
            return [entry[0] for entry in entries]
        return getattr(backend, method)(requests)

    def run_traced(self, background: bool = False) -> None:
        """One batched call per backend and method for the window's requests. A call that fails leaves
        its requests to the cases, which then make them alone, with their retry policies. With
        ``background``, the calls of backends that allow it (HTTP) run in a thread while the cases of
        the window before run and the next window is traced; two windows' requests share the backend's
        concurrency limit, so it stays full across a window's end. A case whose request is still in
        flight waits for it."""
        groups: dict[tuple[int, str], tuple[Backend, dict[Hashable, Any], dict[Hashable, int]]] = {}
        for backend, method, requests, sample in self.traced:
            _, unique, refs = groups.setdefault((id(backend), method), (backend, {}, {}))
            for request in requests:
                key = request_key(method, request, sample)
                unique.setdefault(key, request)
                refs[key] = refs.get(key, 0) + 1
        self.traced = []
        for (backend_id, method), (backend, unique, refs) in groups.items():
            if background and backend.background_batches:
                if self._background is None:  # this window's batch and the next one's, side by side
                    self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="evals-batch")
                self._prefetching[backend_id] = backend
                future = self._background.submit(self._run_batch, backend_id, backend, method, unique, refs)
                for key in unique:
                    self.pending[(backend_id, key)] = future
            else:
                self._run_batch(backend_id, backend, method, unique, refs)

    def _run_batch(self, backend_id: int, backend: Backend, method: str, unique: dict[Hashable, Any],
                   refs: dict[Hashable, int]) -> None:
        start = time.perf_counter()
        try:
            results = getattr(backend, method)(list(unique.values()))
        except PartialBatch as partial:  # keep what succeeded; the rest call alone
            results = partial.results
        except Exception:  # noqa: BLE001 - each case meets the fault itself, where it is recorded
            return
        elapsed = time.perf_counter() - start
        with self.lock:
            for key, result in zip(unique, results):
                if result is not None:
                    self.results[(backend_id, key)] = [result, elapsed, refs[key]]
