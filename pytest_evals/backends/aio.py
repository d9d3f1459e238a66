"""Async HTTP for synchronous callers: one asyncio event loop per process, in a daemon thread.

Backends keep the synchronous, batch-first protocol (a list of requests in, a list of results out);
an HTTP backend runs each list as coroutines on this loop, many requests in flight under a
``Limiter``, and the calling thread waits for the list. Callers in several threads (a case, and the
batch planner's next window) share the loop and each backend's limiter.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Coroutine, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """An event loop running forever in a daemon thread; ``run`` waits for one coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="evals-http", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], inflight: set[Future[Any]] | None = None) -> T:
        """The coroutine's result; while it runs its future is in ``inflight``, where ``cancel`` from
        another thread ends it (the caller then gets ``concurrent.futures.CancelledError``)."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("EventLoopThread.run called from its own loop: it would wait for itself")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        if inflight is not None:
            inflight.add(future)
        try:
            return future.result()
        except BaseException:  # Ctrl-C or an error: nothing keeps running on the caller's behalf
            future.cancel()
            raise
        finally:
            if inflight is not None:
                inflight.discard(future)


_shared: EventLoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> EventLoopThread:
    """This process's loop, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared._thread.is_alive():
            _shared = EventLoopThread()
        return _shared


class Limiter:
    """At most ``limit`` requests in flight, granted in arrival order, urgent ones first (a case's own
    call does not queue behind the next window's batch). A 429 halves the limit; ``limit`` successes in
    a row raise it by one, back up to ``ceiling`` (additive increase, multiplicative decrease). Used from
    one event loop, so it needs no lock; a release wakes one waiter, not all."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.active = 0
        self.streak = 0
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def slot(self, urgent: bool = False) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if self.active < self.limit and not self._urgent and not self._waiters:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._waiters).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled: hand the slot on
                self._release()
            raise

    def _release(self) -> None:
        self.active -= 1
        self._grant()

    def _grant(self) -> None:
        while self.active < self.limit and (self._urgent or self._waiters):
            waiter = (self._urgent or self._waiters).popleft()
            if not waiter.done():  # (a cancelled waiter is passed over)
                self.active += 1
                waiter.set_result(None)

    def succeeded(self) -> None:
        self.streak += 1
        if self.streak >= self.limit and self.limit < self.ceiling:
            self.limit += 1
            self.streak = 0
            self._grant()

    def throttled(self) -> None:
        self.limit = max(1, self.limit // 2)
        self.streak = 0
