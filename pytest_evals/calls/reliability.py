"""Retries, the circuit breaker and fallbacks: a transient fault is retried as the user asked; a
fault that outlives its retries is an ``error``, never a wrong answer; a dead backend is detected fast.

- ``@pytest.mark.evals_retry(attempts=3, wait_s=1.0, max_wait_s=60, on=(...))`` and the ini key
  ``evals_retry = attempts=8 wait_s=0.5`` set the policy (marker first). Retries use tenacity:
  exponential backoff with full jitter up to ``max_wait_s``; a server's ``Retry-After`` (seconds or
  an HTTP date) wins when given, capped at ``max_wait_s``.
- Each backend (per process) has a circuit breaker: after ``threshold`` consecutive transient faults
  it opens, and calls fail at once until a cool-down has passed; then one call may probe it.
- A spec naming several servers (``openai:NAME@URL1,URL2``) has a breaker per server too, below the
  calls (``backends.fleet``): a request a server fails goes to another, so a call fails, and meets the
  retries and the breaker above, only when no server could answer it.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import pytest

from ..backends.base import FAULT_KINDS, BackendError, TransientError
from ..errors import ConfigError

T = TypeVar("T")
MARKER = "evals_retry"


class RetryConfigError(ConfigError):
    """A bad evals_retry marker or ini line; the message names the fix."""


class CircuitOpen(BackendError):
    """The backend failed too often in a row; the call was not attempted."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    wait_s: float = 1.0
    max_wait_s: float = 60.0
    on: tuple[str, ...] = FAULT_KINDS

    def __post_init__(self) -> None:
        if isinstance(self.on, str):
            object.__setattr__(self, "on", tuple(k.strip() for k in self.on.split(",") if k.strip()))
        object.__setattr__(self, "on", tuple(self.on))
        unknown = [k for k in self.on if k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"on={unknown[0]!r} is not one of {', '.join(FAULT_KINDS)}")
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts={self.attempts!r} must be a whole number >= 1")
        if self.wait_s < 0 or self.max_wait_s < 0:
            raise ValueError("wait_s and max_wait_s must not be negative")

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, TransientError) and exc.kind in self.on

    def wait(self, attempt: int, exc: BaseException | None, rng: random.Random) -> float:
        """Seconds before the next attempt (attempt counts from 1)."""
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.max_wait_s)
        ceiling = min(self.max_wait_s, self.wait_s * 2 ** (attempt - 1))
        return rng.uniform(min(self.wait_s / 2, ceiling), ceiling) if ceiling else 0.0


NO_RETRY = RetryPolicy(attempts=1)


def policy_from_marker(mark: pytest.Mark, where: str) -> RetryPolicy:
    try:
        return RetryPolicy(*mark.args, **mark.kwargs)
    except TypeError as exc:
        message = str(exc).replace("RetryPolicy.__init__()", f"@pytest.mark.{MARKER}()")
        raise RetryConfigError(f"{where}: {message}") from None
    except ValueError as exc:
        raise RetryConfigError(f"{where}: @pytest.mark.{MARKER}: {exc}") from None


def policy_from_ini(text: str) -> RetryPolicy | None:
    """``attempts=8 wait_s=0.5 max_wait_s=30 on=rate_limit,server``."""
    if not text.strip():
        return None
    kwargs: dict[str, Any] = {}
    for token in text.split():
        name, eq, value = token.partition("=")
        if not eq:
            raise RetryConfigError(f"ini {MARKER} = {text!r}: {token!r} must be KEY=VALUE")
        try:
            kwargs[name] = int(value) if name == "attempts" else value if name == "on" else float(value)
        except ValueError:
            raise RetryConfigError(f"ini {MARKER} = {text!r}: {token!r} is not a number") from None
    try:
        return RetryPolicy(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RetryConfigError(f"ini {MARKER} = {text!r}: {exc}".replace("RetryPolicy.__init__() ", "")) from None


@dataclass
class CircuitBreaker:
    """Per backend and process: open after ``threshold`` consecutive transient faults."""

    name: str
    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def before(self) -> None:
        with self.lock:
            if self.opened_at is None:
                return
            if time.monotonic() - self.opened_at < self.cooldown_s:
                raise CircuitOpen(f"circuit open for {self.name} after {self.failures} consecutive failures; "
                                  f"not calling it for {self.cooldown_s:g} s")
            self.opened_at = None  # half-open: this call probes the backend

    def success(self) -> None:
        with self.lock:
            self.failures = 0
            self.opened_at = None

    def failure(self) -> None:
        with self.lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.opened_at = time.monotonic()


def call_with_retries(run: Callable[[int], T], policy: RetryPolicy, breaker: CircuitBreaker | None,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``run(attempt)`` until it succeeds, a fault is not retryable, or the attempts are spent."""
    def attempt(number: int) -> T:
        if breaker is not None:
            breaker.before()
        try:
            result = run(number)
        except TransientError:
            if breaker is not None:
                breaker.failure()
            raise
        if breaker is not None:
            breaker.success()
        return result

    if policy.attempts <= 1:  # nothing to retry: spare tenacity's machinery (most cases)
        return attempt(1)
    from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

    rng = random.Random()

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return policy.wait(state.attempt_number, exc, rng)

    retrying = Retrying(stop=stop_after_attempt(policy.attempts), wait=wait,
                        retry=retry_if_exception(policy.retries), reraise=True, sleep=sleep)
    for state in retrying:
        with state:
            result = attempt(state.retry_state.attempt_number)
    return result
