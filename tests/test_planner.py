"""The batch planner's flights: requests a backend started on its own (``submit``, as HTTP does), answered as
they land from another thread. The backend here is a stand-in that answers from a thread of its own: what
is tested is the planner's bookkeeping, not a backend."""

from __future__ import annotations

import _thread
import queue
import threading
from concurrent.futures import Future
from typing import Any, Iterator

import pytest

from pytest_evals.calls.planner import Planner


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A planner that waits for an answer that never comes would block for good: interrupted instead."""
    timer = threading.Timer(120, _thread.interrupt_main)
    timer.start()
    yield
    timer.cancel()


class Answering:
    """Starts each request on a thread of its own that answers ``answer:<request>``; a request of several
    is answered last first. ``hold``: requests left unanswered until released; ``fail``: requests that
    fail as they are sent. A call made alone (``chat``) answers ``alone:<request>``."""

    def __init__(self, hold: set[str] = frozenset(), fail: set[str] = frozenset()) -> None:
        self.submitted: list[list[str]] = []
        self.hold = set(hold)
        self.fail = set(fail)
        self.held: list[tuple[Future[Any], str]] = []
        self.work: queue.SimpleQueue[list[tuple[Future[Any], str]] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._answer, daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        while (batch := self.work.get()) is not None:
            for future, request in reversed(batch):
                future.set_result(f"answer:{request}")

    def submit(self, method: str, requests: list[str]) -> list[Future[Any]]:
        self.submitted.append(list(requests))
        futures: list[Future[Any]] = [Future() for _ in requests]  # pending, as run_coroutine_threadsafe's are
        pairs = list(zip(futures, requests))
        for future, request in pairs:
            if request in self.fail:
                future.set_exception(RuntimeError(f"{request} failed"))
        self.held += [p for p in pairs if p[1] in self.hold]
        self.work.put([p for p in pairs if p[1] not in self.hold | self.fail])
        return futures

    def chat(self, requests: list[str]) -> list[str]:
        return [f"alone:{r}" for r in requests]

    def release(self) -> None:
        for future, request in self.held:
            future.set_result(f"answer:{request}")

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()


def run_bodies(planner: Planner, bodies: list[Any], later: list[Any] = (), stop: Any = lambda: None) -> dict[int, Any]:
    """Run ``bodies`` (then ``later``, one started as each body ends) through ``planner.rounds``: what each
    returned, by its number (bodies first, then later ones)."""
    order = [*bodies, *later]
    started = [planner.start(body, n) for n, body in enumerate(bodies)]
    waiting = iter(range(len(bodies), len(order)))
    results: dict[int, Any] = {}

    def more() -> list[Any]:
        n = next(waiting, None)
        return [] if n is None else [planner.start(order[n], n)]

    for body, value in planner.rounds([(b, ask) for b, ask in started if not b.dead],
                                      lambda body, answer: body.switch(answer), stop, more):
        results[body.case] = value
    return results


def test_equal_requests_in_flight_go_once_and_a_later_equal_one_goes_again() -> None:
    backend = Answering()
    planner = Planner(window=4, sliding=True)
    ask = lambda: planner.answer(backend, "chat", ["same"])  # noqa: E731
    try:
        results = run_bodies(planner, [ask, ask], later=[ask])
    finally:
        backend.close()
    assert results == {0: ["answer:same"], 1: ["answer:same"], 2: ["answer:same"]}
    # the two first asks shared one request; the third came after their answer was taken: its own
    assert backend.submitted == [["same"], ["same"]]


def test_a_call_of_several_requests_goes_on_only_when_all_have_landed() -> None:
    backend = Answering(hold={"b"})
    planner = Planner(window=4, sliding=True)
    seen: list[str] = []

    def several() -> list[str]:
        answers = planner.answer(backend, "chat", ["a", "b"])
        seen.append("several")
        return answers

    def first() -> list[str]:
        answers = planner.answer(backend, "chat", ["c"])
        seen.append("first")
        backend.release()  # "a" has landed, "b" was held: "several" had to wait until now
        return answers

    try:
        results = run_bodies(planner, [several, first])
    finally:
        backend.close()
    assert results == {0: ["answer:a", "answer:b"], 1: ["answer:c"]}
    assert seen == ["first", "several"]


def test_a_stop_cancels_the_requests_in_flight_and_raises_in_each_waiting_body() -> None:
    backend = Answering(hold={"slow"})
    planner = Planner(window=4, sliding=True)
    stopping: list[BaseException] = []

    class Stop(Exception):
        pass

    def slow() -> str:
        try:
            planner.answer(backend, "chat", ["slow"])
        except Stop:
            return "stopped"
        return "answered"

    def fast() -> str:
        planner.answer(backend, "chat", ["fast"])
        stopping.append(Stop())  # the run stops once this case has its answer
        return "answered"

    try:
        results = run_bodies(planner, [slow, fast], stop=lambda: stopping[0] if stopping else None)
    finally:
        backend.close()
    assert results == {0: "stopped", 1: "answered"}
    assert [f.cancelled() for f, _ in backend.held] == [True]


def test_a_call_of_no_requests_is_answered_at_once() -> None:
    backend = Answering()
    planner = Planner(window=4, sliding=True)
    try:
        results = run_bodies(planner, [lambda: planner.answer(backend, "chat", []),
                                       lambda: planner.answer(backend, "chat", ["x"])])
    finally:
        backend.close()
    assert results == {0: [], 1: ["answer:x"]}


def test_a_request_that_failed_is_not_shared_with_a_later_equal_one() -> None:
    """An equal request shares only one still waiting: the second ask sends its own instead of taking
    the first one's failure (and calling alone, on the main thread, while the others wait)."""
    backend = Answering(hold={"slow"}, fail={"bad"})
    planner = Planner(window=4, sliding=True)

    def second() -> list[str]:
        answers = planner.answer(backend, "chat", ["bad"])
        backend.release()
        return answers

    try:
        results = run_bodies(planner, [lambda: planner.answer(backend, "chat", ["bad", "slow"]), second])
    finally:
        backend.close()
    assert backend.submitted == [["bad", "slow"], ["bad"]]
    assert results == {0: ["alone:bad", "alone:slow"], 1: ["alone:bad"]}  # each met the failure, then called alone


def test_a_stop_marks_the_bodies_whose_requests_were_never_sent() -> None:
    """A body parked for a round that will not run (or waiting for room in the budget) raises a stop marked
    not sent, so that no call is recorded for it; a flight's requests were sent, so its stop is not marked."""
    from pytest_evals.calls.planner import NOT_SENT, _halt

    made = iter([RuntimeError("stop 1"), RuntimeError("stop 2")])
    unsent, sent = _halt(lambda: next(made), RuntimeError("shared"), sent=False), _halt(lambda: next(made),
                                                                                        RuntimeError("shared"), sent=True)
    assert getattr(unsent.stop, NOT_SENT, False) and not getattr(sent.stop, NOT_SENT, False)
    assert str(unsent.stop) == "stop 1" and str(sent.stop) == "stop 2"
