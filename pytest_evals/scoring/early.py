"""When a benchmark's pass-rate gate is settled before all its cases ran (``--evals-stop-early``).

The cases run in a seeded random order, so the first n of a benchmark's N cases are a sample drawn
without replacement from them. The question is the full run's verdict: would the pass rate over all N
cases reach the minimum, i.e. would at least ``need`` of them pass? After n cases with k passes, the
number of passes K among the N has a hypergeometric likelihood; the gate is settled

- for certain when k >= need (the full run passes whatever the rest do) or when k plus every case not
  yet run is still short of need (it fails whatever they do);
- statistically when the exact hypergeometric test rejects the other verdict at a look: PASS when
  P(X >= k | K = need - 1) <= alpha / looks (no suite that would fail gives k passes this easily), FAIL when
  P(X <= k + errors | K = need) <= alpha / looks.

Looks are at fixed counts of cases (every count up to 20, then about every 10% more), fixed before the
run; the alpha is spent evenly over them (Bonferroni), so peeking at every look keeps the chance of a
verdict the full run would not give at most alpha, whatever the truth. A case that ended in error is
counted as a failure for a PASS and as a pass for a FAIL, so errors never help either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

FIRST_LOOKS = 20  # every count of cases up to this is a look
GROWTH = 1.1  # then each look about 10% after the one before


@lru_cache(maxsize=256)
def looks(total: int) -> tuple[int, ...]:
    """The counts of cases at which a benchmark of ``total`` cases is checked (the last is ``total``)."""
    found = list(range(1, min(total, FIRST_LOOKS) + 1))
    while found and found[-1] < total:
        found.append(min(total, max(found[-1] + 1, math.ceil(found[-1] * GROWTH))))
    return tuple(found)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeom_tail(k: int, total: int, successes: int, drawn: int, upper: bool) -> float:
    """P(X >= k) (``upper``) or P(X <= k) for X, the successes among ``drawn`` of ``total`` items holding
    ``successes``, drawn without replacement."""
    low, high = max(0, drawn - (total - successes)), min(drawn, successes)
    span = range(max(k, low), high + 1) if upper else range(low, min(k, high) + 1)
    if not span:
        return 0.0
    base = _log_comb(total, drawn)
    return min(1.0, math.fsum(math.exp(_log_comb(successes, x) + _log_comb(total - successes, drawn - x) - base)
                              for x in span))


@dataclass(frozen=True)
class Settled:
    verdict: str  # "pass" or "fail": the full run's verdict, as settled at this point
    certain: bool  # no remaining case could change it (no statistics involved)
    ran: int
    total: int

    def describe(self, minimum: float) -> str:
        how = "whatever the rest do" if self.certain else "by an exact test with its error rate held"
        return f"{self.verdict.upper()} settled at {self.ran} of {self.total} cases ({how}; minimum {minimum:.0%})"


def settle(passed: int, errors: int, ran: int, total: int, minimum: float, alpha: float) -> Settled | None:
    """The full run's verdict on ``pass rate >= minimum`` over ``total`` cases, if the first ``ran`` (with
    ``passed`` passes and ``errors`` errors) settle it; None while it is open. Statistical verdicts are given
    only at a look (:func:`looks`)."""
    need = math.ceil(minimum * total - 1e-9)  # passes the full run needs
    if passed >= need:
        return Settled("pass", True, ran, total)
    if passed + errors + (total - ran) < need:
        return Settled("fail", True, ran, total)
    plan = looks(total)
    if ran not in plan:
        return None
    spend = alpha / len(plan)
    if hypergeom_tail(passed, total, need - 1, ran, upper=True) <= spend:
        return Settled("pass", False, ran, total)
    if hypergeom_tail(passed + errors, total, need, ran, upper=False) <= spend:
        return Settled("fail", False, ran, total)
    return None
