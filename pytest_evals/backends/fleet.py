"""Which server a request goes to: an HTTP backend's servers (``openai:NAME@URL1,URL2,...``) and the
requests each has in flight.

A request waits until a server has a free slot under that server's own limit, then goes to the one with
the fewest requests outstanding (ties: the first listed), urgent requests first (a case's own call does
not queue behind the next window's batch), the others in arrival order. Each server's limit follows AIMD:
a 429 or a cut stream halves it; ``limit`` successes in a row raise it by one, back up to the ceiling
(``--evals-concurrency``). Each server has a circuit breaker: after ``THRESHOLD`` faults in a row
(connection refused, a timeout, a 5xx) it is left out for a cool-down, then one request probes it
(half-open): an answer brings it back, a fault leaves it out for twice as long (at most
``MAX_COOLDOWN_S``). A server is left out only while another can be used: when all are out, requests go
to them anyway and their faults reach the case, so with one server this is its concurrency limit and
nothing more.

Used from one event loop, so it needs no lock; a release grants the waiters it can serve, not all.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Collection, Generic, Sequence, TypeVar

T = TypeVar("T")
THRESHOLD = 3  # faults in a row that leave a server out
COOLDOWN_S = 1.0  # the first cool-down; doubled after each failed probe
MAX_COOLDOWN_S = 30.0


@dataclass(eq=False)
class Lane(Generic[T]):
    """One server: what a request runs on (``item``), its limit and breaker, its requests in flight."""

    name: str  # the server's URL, as recorded in calls.server
    item: T
    ceiling: int
    limit: int = 0  # the limit of the moment (AIMD), set to the ceiling at first
    active: int = 0  # requests outstanding on it
    streak: int = 0  # successes in a row since the limit last changed
    failures: int = 0  # faults in a row
    opened_at: float | None = None  # left out since (the breaker opened); None: in use
    cooldown_s: float = COOLDOWN_S
    probing: bool = False  # half-open: one request is finding out whether it is back
    answered: int = 0  # requests it answered

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.limit = self.limit or self.ceiling


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[Lane]
    avoid: Collection[Lane] = field(default=())


class Fleet(Generic[T]):
    """The servers of one backend, each with ``ceiling`` requests in flight at most."""

    def __init__(self, servers: Sequence[tuple[str, T]], ceiling: int, *, threshold: int = THRESHOLD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not servers:
            raise ValueError("a fleet needs at least one server")
        self.lanes: list[Lane[T]] = [Lane(name, item, ceiling) for name, item in servers]
        self.threshold = threshold
        self._clock = clock
        self._urgent: deque[_Waiter] = deque()
        self._waiters: deque[_Waiter] = deque()

    # --- the choice ------------------------------------------------------------------------------
    def choose(self, avoid: Collection[Lane] = ()) -> Lane[T] | None:
        """The server a request starts on now, or None (it waits): of those it may use with a free slot,
        the one with the fewest requests outstanding. It may use a server that is in, one whose
        cool-down is over and that nobody probes (half-open), and any at all (but ``avoid``, the servers
        that failed it) when none is in."""
        candidates = [lane for lane in self.lanes if lane not in avoid]
        if any(lane.opened_at is None for lane in candidates):
            now = self._clock()
            candidates = [lane for lane in candidates if lane.opened_at is None
                          or (not lane.probing and now - lane.opened_at >= lane.cooldown_s)]
        free = [lane for lane in candidates if lane.active < lane.limit]
        return min(free, key=lambda lane: lane.active) if free else None  # min keeps the first of equals

    def up(self) -> Lane[T]:
        """The first server in use (the first listed when all are out): for a question to any server."""
        return next((lane for lane in self.lanes if lane.opened_at is None), self.lanes[0])

    # --- slots -----------------------------------------------------------------------------------
    @asynccontextmanager
    async def slot(self, urgent: bool = False, avoid: Collection[Lane] = ()) -> AsyncIterator[Lane[T]]:
        """A slot on the server chosen for this request, held while the block runs; ``avoid``: servers
        that already failed it."""
        lane = await self._acquire(urgent, tuple(avoid))
        try:
            yield lane
        finally:
            self._release(lane)

    async def _acquire(self, urgent: bool, avoid: Collection[Lane]) -> Lane[T]:
        waiter = _Waiter(asyncio.get_running_loop().create_future(), avoid)
        (self._urgent if urgent else self._waiters).append(waiter)
        self._grant()  # at once where a server is free and nobody waits before it
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():  # granted, then cancelled: hand it on
                self._release(waiter.future.result())
            raise

    def _release(self, lane: Lane[T]) -> None:
        lane.active -= 1
        lane.probing = False  # a probe that neither answered nor failed (a 400, a cancel): another may probe
        self._grant()

    def _grant(self) -> None:
        """Start every waiter a server can take now, urgent ones first, each in its turn. A waiter that
        avoids the only free server is passed over; one that avoids none and finds none ends the round
        (nothing is free for those behind it either)."""
        for queue in (self._urgent, self._waiters):
            passed: list[_Waiter] = []
            while queue:
                waiter = queue[0]
                if waiter.future.done():  # (a cancelled waiter is dropped)
                    queue.popleft()
                    continue
                lane = self.choose(waiter.avoid)
                if lane is None and not waiter.avoid:
                    queue.extendleft(reversed(passed))
                    return
                waiter = queue.popleft()
                if lane is None:
                    passed.append(waiter)
                    continue
                lane.active += 1
                lane.probing = lane.opened_at is not None
                waiter.future.set_result(lane)
            queue.extendleft(reversed(passed))

    # --- outcomes --------------------------------------------------------------------------------
    def succeeded(self, lane: Lane[T]) -> None:
        """The server answered: it is in (again), and its limit grows back by one after ``limit`` in a row."""
        lane.answered += 1
        lane.failures = 0
        lane.cooldown_s = COOLDOWN_S
        reopened = lane.opened_at is not None
        lane.opened_at = None
        lane.streak += 1
        grown = lane.streak >= lane.limit and lane.limit < lane.ceiling
        if grown:
            lane.limit += 1
            lane.streak = 0
        if grown or reopened:
            self._grant()

    def throttled(self, lane: Lane[T]) -> None:
        """A 429 or a cut stream: half as many in flight on this server."""
        lane.limit = max(1, lane.limit // 2)
        lane.streak = 0

    def failed(self, lane: Lane[T]) -> None:
        """A fault of the server (no connection, a timeout, a 5xx): after ``threshold`` in a row it is left
        out; a probe that fails leaves it out twice as long."""
        lane.failures += 1
        lane.streak = 0
        if lane.opened_at is not None:
            lane.cooldown_s = min(2 * lane.cooldown_s, MAX_COOLDOWN_S)
        elif lane.failures < self.threshold:
            return
        lane.opened_at = self._clock()
        try:  # when its cool-down ends, a waiter may probe it
            asyncio.get_running_loop().call_later(lane.cooldown_s, self._grant)
        except RuntimeError:  # no loop (a test of the choice alone)
            pass
