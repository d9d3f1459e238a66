"""``--evals-budget`` as a ceiling: before a priced call is sent, its worst-case cost is reserved.

The worst case of a call is its prompt's tokens, bounded from above (a token per UTF-8 byte of its text:
no byte-level or byte-fallback tokenizer makes more, plus room for the special and chat-template tokens
around it), and all of its ``max_tokens`` answered. One :class:`Ledger` per run holds the budget: the
controller's, which grants reservations to every process that calls a model (xdist workers ask over a
channel of their own, ``serve``). A reservation is granted while what was spent, what is reserved and
this call's worst case stay within the budget; once the answer is in, the reservation is settled at the
call's cost (a failed call, or one whose cost is unknown, keeps all of it: nobody knows what it cost).

A call that does not fit waits where reservations held now may free room for it: a process holding none
sleeps until the others' calls settle; a case's body in a window of batched cases steps aside
(``Planner.aside``) until the window's calls in flight are answered. Otherwise, or where its worst
case would pass the budget even with nothing reserved, it is refused (:class:`BudgetRefused`: its case
is skipped and the run stops). GPU-time prices (``gpu_hour``) are known only once a call has taken its
time: such calls are not reserved, and the budget stops the run when their cases are reported, as before.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..backends.base import ChatRequest, GenerateRequest, LoglikelihoodRequest
from .metering import Price

SPECIAL_TOKENS = 32  # room for a call's special tokens and what a chat template adds (a default system prompt)
TOKENS_PER_MESSAGE = 16  # and for each message's role markers and separators
WAIT_POLL_S = 0.05  # how often a waiting call asks again


REFUSED_STOP = "a call's worst case would pass what is left; cases in flight finish, the rest are not run"


class BudgetRefused(BaseException):
    """A call's worst case does not fit in what is left of the budget: it is not sent. A BaseException,
    so neither a retry nor a test's ``except Exception`` takes it for a fault of the backend."""


def prompt_bound(method: str, request: Any) -> int:
    """An upper bound on a request's prompt tokens."""
    if isinstance(request, GenerateRequest):
        return _bytes(request.prompt) + SPECIAL_TOKENS
    if isinstance(request, LoglikelihoodRequest):
        return _bytes(request.context) + _bytes(request.continuation) + SPECIAL_TOKENS
    if isinstance(request, ChatRequest):
        text = json.dumps(list(request.messages), ensure_ascii=False) + json.dumps(list(request.tools), ensure_ascii=False)
        return _bytes(text) + TOKENS_PER_MESSAGE * len(request.messages) + SPECIAL_TOKENS
    raise TypeError(f"{method}: no prompt bound for {type(request).__name__}")


def worst_case(price: Price | None, method: str, requests: Sequence[Any]) -> float | None:
    """The most ``requests`` can cost at ``price``; None where that cannot be known before the call (no
    token price: unpriced, or priced by GPU time)."""
    if price is None or price.gpu_hour is not None:
        return None
    total = 0.0
    for request in requests:
        answered = getattr(request, "max_tokens", 0)  # a loglikelihood answers no tokens
        total += price.cost(prompt_bound(method, request), answered, None) or 0.0
    return total


def _calls(n: int) -> str:
    return f"{n} call{'s' * (n != 1)}"


def _bytes(text: str) -> int:
    return len(text.encode("utf-8"))


GRANTED, WAIT, REFUSED = "granted", "wait", "refused"


@dataclass
class Ledger:
    """The run's budget: spent, reserved now, and what the reservations did (for the summary)."""

    budget: float
    spent: float = 0.0  # settled calls: their cost, or all they reserved where it is unknown
    reserved: float = 0.0  # held by calls in flight
    peak_reserved: float = 0.0
    granted: int = 0
    refused: int = 0
    largest_refused: float = 0.0  # the largest worst case refused
    beyond: int = 0  # calls that cost more than they reserved (a prompt above its bound)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, worst: float, can_wait: bool) -> str:
        """GRANTED (held until settled); WAIT (where the caller ``can_wait``): it fits once reservations
        held now settle; else REFUSED."""
        with self._lock:
            if self.spent + self.reserved + worst <= self.budget:
                self.reserved += worst
                self.peak_reserved = max(self.peak_reserved, self.reserved)
                self.granted += 1
                return GRANTED
            if can_wait and self.reserved > 0 and self.spent + worst <= self.budget:
                return WAIT
            self.refused += 1
            self.largest_refused = max(self.largest_refused, worst)
            return REFUSED

    def settle(self, worst: float, cost: float | None) -> None:
        """A granted call ended: it spent ``cost`` (None: unknown, so all it reserved)."""
        with self._lock:
            self.reserved = max(0.0, self.reserved - worst)
            if cost is not None and cost > worst:
                self.beyond += 1
            self.spent += worst if cost is None else cost

    def summary(self) -> str:
        """What the reservations did, for the budget's line."""
        text = f"calls reserved their worst case first (at most ${self.peak_reserved:.4f} at once)"
        if self.refused:
            text += (f"; {_calls(self.refused)} refused (the largest would have reserved "
                     f"${self.largest_refused:.4f})")
        if self.beyond:
            text += f"; {_calls(self.beyond)} cost more than their bound"
        return text


class Ceiling:
    """One process's side of the budget: the run's ledger here (the controller, or a lone process), or a
    channel to the controller's (an xdist worker). Tracks what this process holds."""

    def __init__(self, ledger: Ledger | None = None, ask: Callable[[tuple[Any, ...]], str | None] | None = None,
                 wait: Callable[[float], None] = time.sleep) -> None:
        assert (ledger is None) != (ask is None)
        self.ledger = ledger
        self._ask = ask  # sends a message to the controller's ledger; the verdict of a reservation
        self._wait = wait
        self.held = 0.0

    def hold(self, price: Price | None, method: str, requests: Sequence[Any],
             step_aside: Callable[[], None] | None = None) -> "Hold":
        """Reserve the worst case of ``requests``, waiting for room where reservations held now may free
        it (``step_aside``: where this process holds some, lets the rest of its window go on until its
        calls are answered); raises :class:`BudgetRefused` where it does not fit."""
        worst = worst_case(price, method, requests)
        if worst is None:
            return Hold(self, None)
        while True:
            verdict = self._reserve(worst, can_wait=self.held <= 0 or step_aside is not None)
            if verdict == GRANTED:
                self.held += worst
                return Hold(self, worst)
            if verdict == REFUSED:
                raise BudgetRefused(f"not run: the evals budget would be passed by this call's worst case "
                                    f"(${worst:.4f}: its prompt's bound and max_tokens at its price)")
            if self.held <= 0:
                self._wait(WAIT_POLL_S)  # only other processes hold reservations: their calls settle on their own
            else:
                step_aside()  # type: ignore[misc]  # (it could wait: see above)

    def _reserve(self, worst: float, can_wait: bool) -> str:
        if self.ledger is not None:
            return self.ledger.reserve(worst, can_wait)
        return self._ask(("reserve", worst, can_wait))  # type: ignore[misc, return-value]

    def settle(self, worst: float, cost: float | None) -> None:
        self.held = max(0.0, self.held - worst)
        if self.ledger is not None:
            self.ledger.settle(worst, cost)
        else:
            self._ask(("settle", worst, cost))  # type: ignore[misc]


@dataclass
class Hold:
    """A call's reservation (``worst`` None: nothing reserved), settled once."""

    ceiling: Ceiling
    worst: float | None

    def settle(self, cost: float | None) -> None:
        if self.worst is not None:
            worst, self.worst = self.worst, None
            self.ceiling.settle(worst, cost)


def serve(ledger: Ledger, channel: Any) -> None:
    """The controller answers a worker's channel: a reservation's verdict at once; a settlement silently."""
    def answer(message: tuple[Any, ...]) -> None:
        if message[0] == "reserve":
            channel.send(ledger.reserve(message[1], message[2]))  # (worst, can_wait)
        elif message[0] == "settle":
            ledger.settle(message[1], message[2])

    channel.setcallback(answer)


def asker(channel: Any, timeout_s: float = 120.0) -> Callable[[tuple[Any, ...]], str | None]:
    """A worker's messages to the controller's ledger: a reservation waits for its verdict."""
    def ask(message: tuple[Any, ...]) -> str | None:
        channel.send(message)
        if message[0] != "reserve":
            return None
        return channel.receive(timeout_s)

    return ask
