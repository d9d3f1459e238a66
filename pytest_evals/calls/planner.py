"""The batch planner: every model call of a window of cases, gathered into rounds of batched backend calls.

One ``Planner`` per process (``batching.windows`` holds the plugin that runs windows of cases). Each case's
body runs in a greenlet of its own, on the main thread; a model call asks :meth:`Planner.answer`, which
parks the body and hands its requests to the window. When every body of the window is parked (or done),
the window makes one backend call per backend and method for all the requests (equal requests once),
then resumes each body with its answers, in order, until it asks again or ends: a conversation's second
turn, a tool loop's next round and a judge's grade are batched exactly like a first call. An HTTP
backend (one that can ``submit`` requests on their own) gets each request as its body parks, and the
body goes on as soon as its answer is in, so up to ``--evals-concurrency`` requests stay in flight at
every turn. A call whose batch failed is made again alone, with the case's own retries. Nothing here
knows pytest.
"""

from __future__ import annotations

import contextvars
import json
import time
from concurrent.futures import Future
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any, Callable, Hashable, Iterator

import greenlet

from ..backends.base import Backend, ChatRequest, PartialBatch

WINDOW_PER_BATCH = 2  # a window holds this many batches' worth of cases (a local model's rounds)
WINDOW_PER_REQUEST = 8  # and this many cases per request in flight (a backend that submits: HTTP)
ASIDE = object()  # what a body waiting for room in the budget switches to its window (``Planner.aside``)


def window_size(batch_size: int | None, concurrency: int | None, budget: bool) -> int:
    """How many cases run together: enough to fill every round's batches of the local models
    (``batch_size``, None if the run has none) and to keep ``concurrency`` requests in flight on the
    servers (None if none); under a budget one batch's worth, so a spent budget stops within a batch."""
    if budget:
        return max(batch_size or 1, concurrency or 1)
    return max(WINDOW_PER_BATCH * (batch_size or 0), WINDOW_PER_REQUEST * (concurrency or 0), 2)


def request_key(method: str, request: Any, sample: int = 0) -> Hashable:
    """Equal requests of one round share one answer; the samples of a repeated case do not (nor do
    sampled requests of different cases: see ``_key``)."""
    if isinstance(request, ChatRequest):
        return method, json.dumps([request.messages, request.max_tokens, request.temperature, request.tools,
                                   request.tool_choice], sort_keys=True, default=str), sample
    return method, request, sample  # the other requests are frozen dataclasses of hashable fields


@dataclass
class Ask:
    """A parked body's model call."""

    backend: Backend
    method: str
    requests: list[Any]
    sample: int


NOT_SENT = "evals_not_sent"  # on a stop raised in a body whose requests never left this process: no call


@dataclass
class Answer:
    """What a round gives a parked call: its results and the backend call's time (``shared``: the call
    held other cases' requests too). ``results`` None: the batch failed for it; it calls alone."""

    results: list[Any] | None
    elapsed: float | None = None
    shared: bool = False
    stop: BaseException | None = None  # the run is stopping: raised in the body instead of an answer


@dataclass(frozen=True)
class Served:
    """A call's results, and the time of the backend call that served them where a window's round or
    flight made it (None: the case called alone, and its results carry their own times, if any).
    ``shared``: that call carried other cases' requests too. Returned with the results, never kept on
    the planner: a case that calls alone after its round failed must not read another case's time."""

    results: list[Any]
    elapsed: float | None = None
    shared: bool = False


@dataclass(eq=False)
class _Flight:
    """A parked body whose requests are in flight on a backend that started them (``submit``)."""

    body: "Body"
    futures: list[Future[Any]]
    started: float
    beside: bool  # other requests were in flight beside these: served concurrently, as a batch
    keys: list[tuple[int, Hashable]]  # its requests' keys among those in flight (shared by equal requests)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def answer(self) -> Answer:
        """Its results, or None for all where one failed (the case calls alone and meets its fault)."""
        elapsed = time.perf_counter() - self.started
        if any(f.cancelled() or f.exception() is not None for f in self.futures):
            return Answer(None)
        return Answer([f.result() for f in self.futures], elapsed, self.beside)


class Body(greenlet.greenlet):
    """One case's body, run until it asks the model (parked) or ends."""

    def __init__(self, body: Callable[[], Any], case: object, planner: "Planner") -> None:
        super().__init__(body)
        self.case = case
        self.planner = planner
        self.gr_context = contextvars.copy_context()  # the body sees the context variables the window saw


def _halt(stop: Callable[[], BaseException | None], stopping: BaseException, sent: bool) -> Answer:
    """The stop a parked body raises instead of an answer: its own exception, marked (``NOT_SENT``) where its
    requests never left this process (a round not run, a body waiting for room in the budget), so that no
    call is recorded for them; a flight's requests were sent, and what they cost is unknown."""
    own = stop()
    if own is None:
        return Answer(None, stop=stopping)
    if not sent:
        setattr(own, NOT_SENT, True)
    return Answer(None, stop=own)


class Planner:
    """One per process: runs the bodies of a window and batches their calls round by round."""

    def __init__(self, window: int, sliding: bool = False) -> None:
        self.window = window
        # a case starts as soon as another ends, up to ``window`` at once, instead of window after window:
        # for backends that submit (HTTP), so the requests in flight never drain at a window's end
        self.sliding = sliding
        self._in_flight: Backend | None = None  # the backend of the round being called
        self._started: dict[int, Backend] = {}  # the backends that started requests on their own

    def close(self) -> None:
        """Ctrl-C: the requests in flight are for bodies that will not go on; stop them now."""
        for backend in [self._in_flight, *self._started.values()]:
            if backend is not None:
                backend.cancel()

    # --- a body's side ---------------------------------------------------------------------------
    def serve(self, backend: Backend, method: str, requests: list[Any], sample: int = 0) -> Served:
        """The results of ``requests`` and how they were served: from the window's next round where a
        window runs this body, else from the backend alone (also where the round's call failed for
        them). ``sample``: which sample of a repeated case asks (each gets its own answer)."""
        body = greenlet.getcurrent()
        if not isinstance(body, Body) or body.planner is not self:
            return Served(getattr(backend, method)(requests))
        answer: Answer = body.parent.switch(Ask(backend, method, list(requests), sample))
        if answer.stop is not None:
            raise answer.stop
        if answer.results is None:
            return Served(getattr(backend, method)(requests))
        return Served(answer.results, answer.elapsed, answer.shared)

    def aside(self) -> Callable[[], None] | None:
        """Where a body of this planner's window runs now: what steps it aside until the window's calls in
        flight are answered (a call waiting for room in the budget, ``calls.ceiling``); else None."""
        body = greenlet.getcurrent()
        if not isinstance(body, Body) or body.planner is not self:
            return None

        def step_aside() -> None:
            answer: Answer = body.parent.switch(ASIDE)
            if answer.stop is not None:
                raise answer.stop

        return step_aside

    def answer(self, backend: Backend, method: str, requests: list[Any], sample: int = 0) -> list[Any]:
        """The results of ``requests`` (see :meth:`serve`)."""
        return self.serve(backend, method, requests, sample).results

    # --- the window's side -----------------------------------------------------------------------
    def start(self, body: Callable[[], Any], case: object) -> tuple[Body, Any]:
        """Start a body: (its greenlet, its first Ask, or its result where it ended without one)."""
        started = Body(body, case, self)
        return started, started.switch()

    def rounds(self, parked: list[tuple[Body, Ask]], resume: Callable[[Body, Answer], Any],
               stop: Callable[[], BaseException | None],
               more: Callable[[], list[tuple[Body, Any]]] = list) -> Iterator[tuple[Body, Any]]:
        """Answer the parked bodies until every one has ended; yield each body and its result as it ends.

        A backend that can start requests on their own (``submit``: HTTP) gets each request as soon as
        its body parks, and the body is resumed as soon as its answers are in, while the others are in
        flight; the other backends get rounds: one call for all the requests parked when no body can go
        on. ``resume(body, answer)`` switches into the body and returns what it switched back; ``stop()``
        gives what to raise in a parked body instead of an answer (the run is stopping; asked once per
        body, so each raises an exception of its own). ``more()``, asked after each body ends, starts
        further bodies: each with its first Ask (a body that ended at once is the caller's)."""
        local: list[tuple[Body, Ask]] = []
        aside: list[Body] = []  # bodies waiting for room in the budget until the calls in flight are answered
        flying: dict[_Flight, None] = {}  # (in the order they started)
        in_flight: dict[tuple[int, Hashable], Future[Any]] = {}  # equal requests in flight at once: one
        landing: SimpleQueue[_Flight] = SimpleQueue()  # a flight once per future that lands (any thread)

        def place(body: Body, ask: Ask | object) -> None:
            if ask is ASIDE:
                aside.append(body)
                return
            assert isinstance(ask, Ask)
            flight = self._submit(body, ask, in_flight)
            if flight is None:
                local.append((body, ask))
                return
            flying[flight] = None
            for future in flight.futures:
                future.add_done_callback(lambda _, flight=flight: landing.put(flight))
            if not flight.futures:
                landing.put(flight)  # an ask of no requests: answered at once (no future will call back)

        def landed() -> list[_Flight]:
            """The flights whose every answer is in, each once; their requests are no longer shared."""
            found: dict[_Flight, None] = {}
            while not landing.empty():
                flight = landing.get()
                if flight in flying and flight.done():
                    found[flight] = None
            for flight in found:
                del flying[flight]
                for key, future in zip(flight.keys, flight.futures):
                    if in_flight.get(key) is future:
                        del in_flight[key]
            return list(found)

        for body, ask in parked:
            place(body, ask)
        while local or flying or aside:
            stopping = stop()
            ready: list[tuple[Body, Answer]]
            if stopping is not None:
                for flight in flying:
                    for future in flight.futures:
                        future.cancel()
                ready = ([(b, _halt(stop, stopping, sent=False)) for b, _ in local]
                         + [(f.body, _halt(stop, stopping, sent=True)) for f in flying]
                         + [(b, _halt(stop, stopping, sent=False)) for b in aside])
                local, flying, aside = [], {}, []
                in_flight.clear()
            elif (done := landed()):
                ready = [(f.body, f.answer()) for f in done]
            elif local:
                answers = self._round([ask for _, ask in local])
                ready = [(body, answer) for (body, _), answer in zip(local, answers)]
                local = []
            elif flying:
                landing.put(landing.get())  # sleep until a request lands (it is taken again above)
                continue
            else:
                ready = []
            if stopping is None:  # calls were answered (their reservations settled), or none is in flight:
                ready += [(body, Answer(None)) for body in aside]  # the bodies aside ask for room again
                aside = []
            for body, answer in ready:
                value = resume(body, answer)
                if body.dead:
                    yield body, value  # (its case is torn down before anything else runs)
                    for new, first in more():  # the cases started in its place, each parked at its first call
                        place(new, first)
                else:
                    place(body, value)

    def _submit(self, body: Body, ask: Ask, in_flight: dict[tuple[int, Hashable], Future[Any]]) -> _Flight | None:
        """Start an ask's requests on a backend that can, sharing equal requests still in flight (their
        answers not yet taken): its flight; None where the backend cannot."""
        keys = [(id(ask.backend), _key(ask, r, id(ask))) for r in ask.requests]
        # only a request still waiting is shared: one that has landed (its flight not yet taken) is not
        # (a failed one would fail this ask too, and a finished one is not in flight beside it)
        futures: list[Future[Any] | None] = [f if f is not None and not f.done() else None
                                             for f in map(in_flight.get, keys)]
        beside = any(not f.done() for f in in_flight.values())
        new = [r for r, f in zip(ask.requests, futures) if f is None]
        if new:
            started = ask.backend.submit(ask.method, new)
            if started is None:
                return None
            self._started[id(ask.backend)] = ask.backend
            fresh = iter(started)
            futures = [f if f is not None else next(fresh) for f in futures]
        for key, future in zip(keys, futures):
            in_flight[key] = future  # type: ignore[assignment]
        return _Flight(body, futures, time.perf_counter(), beside or len(ask.requests) > 1, keys)  # type: ignore[arg-type]

    def _round(self, asks: list[Ask]) -> list[Answer]:
        """One backend call per backend and method for every parked request (equal requests once)."""
        groups: dict[tuple[int, str], tuple[Backend, dict[Hashable, Any], set[int]]] = {}
        for n, ask in enumerate(asks):
            _, unique, askers = groups.setdefault((id(ask.backend), ask.method), (ask.backend, {}, set()))
            askers.add(n)
            for request in ask.requests:
                unique.setdefault(_key(ask, request, n), request)
        found: dict[tuple[int, Hashable], tuple[Any, float, bool]] = {}
        for (backend_id, method), (backend, unique, askers) in groups.items():
            start = time.perf_counter()
            self._in_flight = backend
            try:
                results: list[Any] = getattr(backend, method)(list(unique.values()))
            except PartialBatch as partial:  # keep what succeeded; the rest call alone
                results = partial.results
            except Exception:  # noqa: BLE001 - each case meets the fault itself, alone, where it is recorded
                results = [None] * len(unique)
            finally:
                self._in_flight = None
            elapsed = time.perf_counter() - start
            for key, result in zip(unique, results):
                if result is not None:  # (shared: the call served more than this one ask)
                    found[(backend_id, key)] = (result, elapsed, len(askers) > 1)
        answers = []
        for n, ask in enumerate(asks):
            entries = [found.get((id(ask.backend), _key(ask, r, n))) for r in ask.requests]
            if ask.requests and all(e is not None for e in entries):
                answers.append(Answer([e[0] for e in entries], max(e[1] for e in entries),  # type: ignore[index]
                                      any(e[2] for e in entries)))  # type: ignore[index]
            else:
                answers.append(Answer(None))
        return answers


def _key(ask: Ask, request: Any, asker: int) -> Hashable:
    """Equal requests share one answer, except sampled ones (temperature above 0): each case draws its own."""
    key = request_key(ask.method, request, ask.sample)
    return (key, asker) if (getattr(request, "temperature", 0) or 0) > 0 else key
