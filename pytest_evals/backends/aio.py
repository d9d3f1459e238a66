"""Async HTTP for synchronous callers: one asyncio event loop per process, in a daemon thread.

Backends keep the synchronous, batch-first protocol (a list of requests in, a list of results out);
an HTTP backend runs each list as coroutines on this loop, many requests in flight under its servers'
limits (``fleet.Fleet``), and the calling thread waits for the list. Callers in several threads (a case,
and the batch planner's next window) share the loop and each backend's fleet.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

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
