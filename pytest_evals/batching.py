"""Batching across cases: each case stays an ordinary pytest item, but its first model call is served
from a batched backend call made for a window of cases before they run.

Before a case runs, the plugin takes the window of up to W cases that are about to run in this
process (the next items of the same module or class; under xdist, this worker's queue) and *traces*
them: it runs each through pytest's own protocol, unlogged, with a model that records the case's first
request and stops the case there. The recorded requests are deduplicated and sent to each backend as
one batched call (the backend sorts by length and pads; an HTTP backend sends them concurrently). Then
each case runs normally: a call whose requests are in the window's results is answered from them; any
other call (a second turn, a request the trace did not reach, a batch that failed) goes to the backend
alone, as without batching, with its retries. A traced case that never runs (``-x``, Ctrl-C, the
budget) records nothing.

The cost: code in a test body before its first model call runs twice (once traced). A batch size of 1
(``--evals-batch-size 1``) turns this off.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Hashable

import pytest

from .backends.base import ChatRequest, PartialBatch

if TYPE_CHECKING:
    from .backends.base import Backend

WINDOW_PER_BATCH = 8  # a window holds this many batches' worth of cases


class TraceStop(BaseException):
    """Stops a traced case at its first model call (a BaseException, so ``except Exception`` in a test
    body does not swallow it)."""


def request_key(method: str, request: Any) -> Hashable:
    if isinstance(request, ChatRequest):
        return method, json.dumps([request.messages, request.max_tokens, request.temperature, request.tools,
                                   request.tool_choice], sort_keys=True, default=str)
    return method, request  # the other requests are frozen dataclasses of hashable fields


class Planner:
    """One per process: the traced requests of the current window, and the results of their batches."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.tracing = False
        self.traced: list[tuple[Backend, str, list[Any]]] = []
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

    def serve(self, backend: Backend, method: str, requests: list[Any]) -> list[Any]:
        self.last_hit = None
        if self.tracing:
            self.traced.append((backend, method, list(requests)))
            raise TraceStop
        keys = [(id(backend), request_key(method, r)) for r in requests]
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
        for backend, method, requests in self.traced:
            _, unique, refs = groups.setdefault((id(backend), method), (backend, {}, {}))
            for request in requests:
                key = request_key(method, request)
                unique.setdefault(key, request)
                refs[key] = refs.get(key, 0) + 1
        self.traced = []
        for (backend_id, method), (backend, unique, refs) in groups.items():
            if background and getattr(backend, "background_batches", False):
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


def batches_across_cases(registry: Any, spec: Any) -> bool:
    """Whether the backend of ``spec`` gains from batches across cases (only then are cases traced)."""
    try:
        return bool(getattr(registry.resolve(spec.backend), "batches_across_cases", False))
    except Exception:  # noqa: BLE001 - an unknown prefix is reported at start-up, not here
        return False


traced_key = pytest.StashKey[bool]()
head_key = pytest.StashKey[bool]()  # the first case of a window


class BatchPlugin:
    """Traces the window ahead of each untraced eval case and runs its requests as batches."""

    def __init__(self, config: pytest.Config, planner: Planner) -> None:
        self.config = config
        self.planner = planner
        self._batching: dict[Any, bool] = {}

    def _batches(self, spec: Any) -> bool:
        if spec not in self._batching:
            from .plugin import pool_key

            self._batching[spec] = batches_across_cases(self.config.stash[pool_key].registry, spec)
        return self._batching[spec]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if self.planner.tracing or not self._plannable(item):
            return
        if not item.stash.get(traced_key, False):
            self._trace_window(item, item)
            self.planner.run_traced(background=True)  # HTTP: in flight while the next window is traced
            item.stash[head_key] = True
        if item.stash.get(head_key, False) and self.planner.can_prefetch:
            # HTTP: trace the next window now and send its requests while this one's cases run
            following = next((o for o in self._upcoming(item) if o.parent is item.parent
                              and not o.stash.get(traced_key, False) and self._plannable(o)), None)
            if following is not None:
                self._trace_window(following, item)
                following.stash[head_key] = True
                self.planner.run_traced(background=True)

    def _trace_window(self, first: pytest.Item, current: pytest.Item) -> None:
        """Trace ``first`` and the untraced cases that follow it in this process, up to the window size."""
        window = [first]
        for other in self._upcoming(first):
            if len(window) >= self.planner.window:
                break
            if (other is not first and other.parent is first.parent and not other.stash.get(traced_key, False)
                    and self._plannable(other)):
                window.append(other)
        for case in window:
            case.stash[traced_key] = True
            self._trace(case, current)
        self.planner.can_prefetch = self.planner.can_prefetch or any(
            getattr(backend, "background_batches", False) for backend, _, _ in self.planner.traced)

    def pytest_sessionfinish(self) -> None:
        self.planner.close()

    def _plannable(self, item: pytest.Item) -> bool:
        from .plugin import _spec_of, key_of, served_key
        from .resume import resume_state_key

        spec = _spec_of(item)
        if spec is None or any(item.get_closest_marker(m) is not None for m in ("skip", "skipif", "xfail")):
            return False  # a body pytest would skip is never run, traced or not
        served = item.stash.get(served_key, spec)
        if not self._batches(served):
            return False  # its backend gains nothing from batches: no trace to pay for
        state = item.config.stash.get(resume_state_key, None)
        return state is None or key_of(item, spec) not in state.finished  # a replayed case makes no call

    def _upcoming(self, item: pytest.Item) -> list[pytest.Item]:
        """The items this process runs after ``item``, in order (under xdist: this worker's queue)."""
        items = item.session.items
        interactor = next((p for p in self.config.pluginmanager.get_plugins()
                           if hasattr(p, "torun") and hasattr(p, "nextitem_index")), None)
        if interactor is None:
            try:
                return items[items.index(item) + 1:]
            except ValueError:
                return []
        with interactor.torun.lock() as queue:
            pending = [i for i in queue if isinstance(i, int)]
        following = interactor.nextitem_index
        indices = ([following] if isinstance(following, int) else []) + pending
        return [items[i] for i in indices]

    def _trace(self, case: pytest.Item, current: pytest.Item) -> None:
        """Run ``case`` up to its first model call: its fixtures set up, its body called, its fixtures
        torn down, without pytest's run-test hooks or reports (nothing is logged, recorded or formatted;
        a failure here is the case's own to meet when it runs). The teardown stops at the parent it
        shares with ``current``, so module and class fixtures stay up."""
        setup_state = case.session._setupstate  # the same bookkeeping pytest's own protocol uses
        self.planner.tracing = True
        has_request = hasattr(case, "_request")
        try:
            if has_request and not case._request:  # type: ignore[attr-defined]
                case._initrequest()  # type: ignore[attr-defined]
            try:
                setup_state.setup(case)
                case.runtest()
            except (pytest.exit.Exception, KeyboardInterrupt):
                raise
            except BaseException:  # noqa: BLE001 - TraceStop, or the case's own failure
                pass
            try:
                setup_state.teardown_exact(current.parent)  # type: ignore[arg-type]
            except (pytest.exit.Exception, KeyboardInterrupt):
                raise
            except BaseException:  # noqa: BLE001 - a failing teardown fails when the case runs
                pass
        finally:
            self.planner.tracing = False
            if has_request:  # as pytest's protocol leaves an item: the real run builds its request anew
                case._request = False  # type: ignore[attr-defined]
                case.funcargs = None  # type: ignore[attr-defined]
