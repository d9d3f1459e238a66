"""The budget's ledger: each call reserves its worst case before it is sent (``calls.ceiling``)."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from pytest_evals.backends.base import ChatRequest, GenerateRequest, LoglikelihoodRequest
from pytest_evals.calls.ceiling import (
    GRANTED,
    REFUSED,
    SPECIAL_TOKENS,
    TOKENS_PER_MESSAGE,
    WAIT,
    BudgetRefused,
    Ceiling,
    Ledger,
    asker,
    prompt_bound,
    serve,
    worst_case,
)
from pytest_evals.calls.metering import Price

DOLLAR_A_TOKEN = Price("*", 1e6, 1e6)


def test_the_worst_case_is_a_bound_on_the_prompt_and_all_of_max_tokens() -> None:
    assert prompt_bound("generate", GenerateRequest("héllo")) == 6 + SPECIAL_TOKENS  # UTF-8 bytes, not characters
    assert prompt_bound("loglikelihood", LoglikelihoodRequest("a b", " c")) == 5 + SPECIAL_TOKENS
    chat = ChatRequest(({"role": "user", "content": "hi"},), max_tokens=10)
    assert prompt_bound("chat", chat) == len('[{"role": "user", "content": "hi"}][]') + TOKENS_PER_MESSAGE + SPECIAL_TOKENS
    assert worst_case(DOLLAR_A_TOKEN, "generate", [GenerateRequest("ab", max_tokens=3)] * 2) == 2 * (2 + SPECIAL_TOKENS + 3)
    assert worst_case(DOLLAR_A_TOKEN, "loglikelihood", [LoglikelihoodRequest("a", "b")]) == 2 + SPECIAL_TOKENS  # no answer
    assert worst_case(Price("*", gpu_hour=2.0), "generate", [GenerateRequest("x")]) is None  # known only afterwards
    assert worst_case(None, "generate", [GenerateRequest("x")]) is None


def test_a_reservation_is_granted_while_it_fits_and_settles_at_the_calls_cost() -> None:
    ledger = Ledger(10.0)
    assert ledger.reserve(4.0, can_wait=True) == GRANTED and ledger.reserve(4.0, can_wait=True) == GRANTED
    assert ledger.reserve(4.0, can_wait=True) == WAIT  # fits once the 8 held settle
    assert ledger.reserve(4.0, can_wait=False) == REFUSED and ledger.refused == 1
    ledger.settle(4.0, 1.5)  # answered: what it did not use is released
    assert (ledger.spent, ledger.reserved) == (1.5, 4.0)
    assert ledger.reserve(4.0, can_wait=True) == GRANTED and ledger.peak_reserved == 8.0
    ledger.settle(4.0, None)  # failed, or its cost is unknown: it keeps all it reserved
    assert (ledger.spent, ledger.reserved) == (5.5, 4.0)
    ledger.settle(4.0, 4.5)  # more than its bound: counted, and spent as it was
    assert (ledger.spent, ledger.reserved, ledger.beyond) == (10.0, 0.0, 1)
    assert ledger.reserve(0.5, can_wait=True) == REFUSED  # nothing held could free room: final
    assert ledger.largest_refused == 4.0
    assert "2 calls refused" in ledger.summary() and "1 call cost more than their bound" in ledger.summary()


def test_a_process_holding_nothing_waits_for_the_others_and_one_holding_some_steps_aside() -> None:
    ledger = Ledger(110.0)
    other = Ceiling(ledger)
    held = other.hold(DOLLAR_A_TOKEN, "generate", [GenerateRequest("x" * 30, max_tokens=30)])  # $92 held
    waits: list[float] = []

    def wait(seconds: float) -> None:  # while this process waits, the other's call is answered
        waits.append(seconds)
        held.settle(10.0)

    waiting = Ceiling(ledger, wait=wait)
    hold = waiting.hold(DOLLAR_A_TOKEN, "generate", [GenerateRequest("y" * 30, max_tokens=30)])
    assert len(waits) == 1 and hold.worst == 92.0 and ledger.reserved == 92.0
    # holding a reservation of its own, a process never sleeps (its own calls could not end while it did):
    # outside a window it is refused; in one it steps aside until the window's calls in flight are answered
    small = [GenerateRequest("z", max_tokens=7)]  # $40: 10 spent + 92 held + 40 > 110; alone, 10 + 40 fits
    with pytest.raises(BudgetRefused, match=r"worst case \(\$40.0000"):
        waiting.hold(DOLLAR_A_TOKEN, "generate", small)
    asides: list[int] = []

    def aside() -> None:
        asides.append(1)
        hold.settle(30.0)  # meanwhile the window's call in flight is answered

    granted = waiting.hold(DOLLAR_A_TOKEN, "generate", small, aside)
    assert asides == [1] and granted.worst == 40.0 and (ledger.spent, ledger.reserved) == (40.0, 40.0)


class _Pipe:
    """Both ends of an execnet channel in one process: what one end sends, the other's callback or
    ``receive`` gets."""

    def __init__(self) -> None:
        self.callback: Any = None
        self.replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.to_controller = self  # the worker's end sends to the controller's callback

    def setcallback(self, callback: Any) -> None:
        self.callback = callback

    def send(self, message: Any) -> None:
        if isinstance(message, tuple):
            self.callback(message)  # the worker's message
        else:
            self.replies.put(message)  # the controller's verdict

    def receive(self, timeout: float) -> Any:
        return self.replies.get(timeout=timeout)


def test_a_worker_reserves_and_settles_through_the_controllers_ledger() -> None:
    ledger, pipe = Ledger(50.0), _Pipe()
    serve(ledger, pipe)
    worker = Ceiling(ask=asker(pipe))
    hold = worker.hold(DOLLAR_A_TOKEN, "generate", [GenerateRequest("abc", max_tokens=5)])
    assert ledger.reserved == hold.worst == 3 + SPECIAL_TOKENS + 5 and worker.held == hold.worst
    hold.settle(7.0)
    hold.settle(7.0)  # once
    assert (ledger.spent, ledger.reserved, worker.held) == (7.0, 0.0, 0.0)
    with pytest.raises(BudgetRefused):
        worker.hold(DOLLAR_A_TOKEN, "generate", [GenerateRequest("abc", max_tokens=20)])
    assert ledger.refused == 1
