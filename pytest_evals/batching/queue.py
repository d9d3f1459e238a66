"""The cases this process runs next, and reporting a window's case as the one running.

Without xdist they are ``session.items`` after the item; under xdist, this worker's queue, read from its
worker loop, and a worker sends each report with the index of the item it runs: a window's case is
reported under its own index (the controller and the worker's own check read it).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest

from .._pytest_internals import queued_indices, reporting_as, xdist_worker_loop

MISSING = object()  # not looked up yet


class Queue:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._index: dict[int, int] | None = None  # id(item) -> its index in session.items (xdist)
        self._worker_loop: Any = MISSING

    def _loop(self) -> Any:
        """xdist's worker loop, where this process is a worker (it holds the queue and the item running);
        looked up once, when the first test runs (xdist registers it before)."""
        if self._worker_loop is MISSING:
            self._worker_loop = xdist_worker_loop(self.config)
        return self._worker_loop

    @property
    def distributed(self) -> bool:
        """Whether this process is an xdist worker (more items may come to its queue)."""
        return self._loop() is not None

    def upcoming(self, item: pytest.Item) -> list[pytest.Item]:
        """The items this process runs after ``item``, in order (under xdist: this worker's queue)."""
        items = item.session.items
        loop = self._loop()
        if loop is None:
            try:
                return items[items.index(item) + 1:]
            except ValueError:
                return []
        return [items[i] for i in queued_indices(loop)]

    @contextlib.contextmanager
    def reporting(self, item: pytest.Item) -> Iterator[None]:
        """Reports sent meanwhile are ``item``'s (under xdist, its index is the one running)."""
        loop = self._loop()
        if loop is None:
            yield
            return
        if self._index is None:
            self._index = {id(i): n for n, i in enumerate(item.session.items)}
        with reporting_as(loop, self._index[id(item)]):
            yield
