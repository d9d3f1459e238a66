"""The power of a gate: how many cases it needs, and what a run's gates could have detected.

Every figure comes from the gate's own decision, called case count by case count: a threshold gate holds
when ``stats.meets(point estimate, minimum)`` (its pass rate is ``stats.wilson``'s point); the baseline gate
finds a regression when ``stats.regressions`` says so of ``stats.flip_comparison`` (an exact McNemar test at
``alpha``, beyond ``margin``). The sums over outcomes are exact binomial ones, so the planned power is the
gate's, not an approximation's. Pure Python: no pytest, no numpy.

- A pass-rate gate: with n cases of true pass rate p the gate holds when at least k(n) pass, so its power
  is P(Binomial(n, p) >= k(n)). k(n) jumps by one case now and then, so the power saws up and down as n
  grows; ``cases_for_threshold`` names the n from which every larger suite has the power.
- A metric gate (a mean): the mean of n cases with mean m and spread sd is normal, N(m, sd^2 / n).
- The baseline gate: each paired case flips to failing with probability (d + drop) / 2 and to passing
  with (d - drop) / 2, d being the discordance (the share of cases on which the two runs disagree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Callable, Iterator, Sequence

from .stats import (
    CONFIDENCE,
    PASS_RATE,
    Comparison,
    Estimate,
    flip_comparison,
    meets,
    regressions,
    wilson,
)

DEFAULT_POWER = 0.8
MAX_CASES = 1_000_000  # a plan that needs more says so instead
MAX_PAIRED = 50_000  # the baseline gate's: its exact sums grow with the square of the discordant pairs


class PlanError(ValueError):
    """A plan that cannot be made (a rate outside 0..1, an expected rate that does not clear the threshold);
    the message names the fix."""


@dataclass(frozen=True)
class Plan:
    """The cases a gate needs: ``n`` has ``power`` (exact: the gate's own decision summed over outcomes)."""

    n: int
    power: float
    method: str  # how the power was computed, said beside the number
    first: int | None = None  # the smallest n with the power, where some larger ones fall short of it
    first_power: float | None = None


def binomial_pmf(k: int, n: int, p: float) -> float:
    if k < 0 or k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return float(k == (0 if p <= 0.0 else n))
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_terms(n: int, p: float, floor: float = 1e-16) -> Iterator[tuple[int, float]]:
    """(k, P(X = k)) for the k that carry the mass of Binomial(n, p): outwards from the mode while a term
    is above ``floor`` (terms fall faster the further out, so what is left is negligible)."""
    mode = min(n, max(0, math.floor((n + 1) * p)))
    yield mode, binomial_pmf(mode, n, p)
    for step in (-1, 1):
        k = mode + step
        while 0 <= k <= n:
            term = binomial_pmf(k, n, p)
            if term < floor:
                break
            yield k, term
            k += step


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, math.fsum(t for j, t in binomial_terms(n, p) if j >= k))


# --- threshold gates ---------------------------------------------------------------------------------

def passes_needed(n: int, holds: Callable[[int, int], bool], start: int = 0) -> int:
    """The fewest passes of ``n`` with which ``holds(passes, n)``; n + 1 when none do. ``holds`` is monotone
    in the passes; ``start`` (the answer for a nearby n) makes the search a step or two."""
    k = min(max(start, 0), n + 1)
    while k > 0 and holds(k - 1, n):
        k -= 1
    while k <= n and not holds(k, n):
        k += 1
    return k


def gate_holds(minimum: float) -> Callable[[int, int], bool]:
    """The pass-rate gate's decision with ``passes`` of ``n`` scored: its point estimate meets the minimum."""
    return lambda passes, n: meets(wilson(passes, n).value, minimum)


def interval_clears(minimum: float) -> Callable[[int, int], bool]:
    """Stricter than the gate: the whole 95% (Wilson) interval at or above the minimum."""
    return lambda passes, n: wilson(passes, n).low >= minimum


def power_curve(rate: float, holds: Callable[[int, int], bool], n_max: int) -> Iterator[tuple[int, float]]:
    """(n, P(gate holds)) for n = 1..n_max, in O(1) per n: P(X_n >= k) = P(X_{n-1} >= k) + p P(X_{n-1} = k-1)
    (one more case, passing with probability p), then k moves to the passes n needs."""
    tail, k = 1.0, 0  # P(X_0 >= 0)
    for n in range(1, n_max + 1):
        tail += rate * binomial_pmf(k - 1, n - 1, rate)
        needed = passes_needed(n, holds, k)
        while k < needed:
            tail -= binomial_pmf(k, n, rate)
            k += 1
        while k > needed:
            k -= 1
            tail += binomial_pmf(k, n, rate)
        yield n, min(1.0, max(0.0, tail))


def threshold_power(n: int, rate: float, minimum: float, holds: Callable[[int, int], bool] | None = None) -> float:
    """P(a pass-rate gate with ``minimum`` holds on ``n`` cases of true pass rate ``rate``)."""
    return binomial_tail(n, rate, passes_needed(n, holds or gate_holds(minimum), math.floor(n * minimum)))


def cases_for_threshold(rate: float, minimum: float, power: float = DEFAULT_POWER,
                        holds: Callable[[int, int], bool] | None = None) -> Plan:
    """The n from which a pass-rate gate holds with at least ``power`` for every suite as large or larger,
    checked up to twice the first n that has it."""
    _check_rate("the expected pass rate", rate)
    _check_rate("the threshold", minimum)
    _check_power(power)
    if rate <= minimum:
        raise PlanError(f"an expected pass rate of {rate:g} does not clear a threshold of {minimum:g}: the gate "
                        f"holds with power above 50% only when the expected rate is above the threshold")
    holds = holds or gate_holds(minimum)
    powers: list[float] = []
    first = None
    for n, p in power_curve(rate, holds, MAX_CASES):
        powers.append(p)
        if first is None and p >= power:
            first = n
        if first is not None and n >= max(2 * first, first + 100):
            break
    else:
        raise PlanError(f"more than {MAX_CASES:,} cases: an expected pass rate of {rate:g} is too close to the "
                        f"threshold {minimum:g} to gate on")
    short = [n for n, p in enumerate(powers, 1) if p < power]
    n = short[-1] + 1 if short else 1
    dips = first is not None and first < n
    return Plan(n, powers[n - 1], "exact: binomial", first if dips else None, powers[first - 1] if dips else None)


def cases_for_metric(mean: float, sd: float, minimum: float, power: float = DEFAULT_POWER) -> Plan:
    """The n at which a metric gate (the mean of the cases' values >= minimum) holds with ``power``: the mean
    of n cases is N(mean, sd^2 / n), exactly for normal case values and nearly so for others (the central
    limit theorem; a metric bounded in 0..1 with few cases deviates most)."""
    _check_power(power)
    if not sd > 0 or not math.isfinite(sd):
        raise PlanError(f"--sd {sd:g}: the spread of the cases' values must be a positive number")
    if mean <= minimum:
        raise PlanError(f"an expected mean of {mean:g} does not clear a threshold of {minimum:g}: the gate holds "
                        f"with power above 50% only when the expected mean is above the threshold")
    z = NormalDist().inv_cdf(power)
    n = max(1, math.ceil((z * sd / (mean - minimum)) ** 2 - 1e-9))
    if n > MAX_CASES:
        raise PlanError(f"more than {MAX_CASES:,} cases: a mean of {mean:g} is too close to {minimum:g} to gate on")
    return Plan(n, metric_power(n, mean, sd, minimum), "exact for normal case values; the mean of n cases is normal")


def metric_power(n: int, mean: float, sd: float, minimum: float) -> float:
    return 1.0 - NormalDist(mean, sd / math.sqrt(n)).cdf(minimum)


# --- the baseline gate -------------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _flips_needed(paired: int, alpha: float, margin: float) -> "_FlipsNeeded":
    return _FlipsNeeded(paired, alpha, margin)


class _FlipsNeeded:
    """For ``paired`` cases of which ``discordant`` flipped: the fewest flips to failing with which the
    baseline gate finds a regression (discordant + 1 when none do), from the gate's own ``regressions``."""

    def __init__(self, paired: int, alpha: float, margin: float) -> None:
        self.paired, self.alpha, self.margin = paired, alpha, margin
        self.found: dict[int, int] = {}

    def detected(self, to_fail: int, to_pass: int) -> bool:
        comparison = flip_comparison(self.paired, ("",) * to_fail, ("",) * to_pass)
        return any(name == PASS_RATE for name, _ in regressions(comparison, self.alpha, self.margin))

    def __call__(self, discordant: int) -> int:
        # monotone: more flips to failing (and fewer to passing) only lower McNemar's p and raise the change
        if discordant not in self.found:
            holds = lambda f, d: self.detected(f, d - f)  # noqa: E731
            near = self.found.get(discordant - 1, self.found.get(discordant + 1))
            if near is None:  # halve the range (a p-value costs O(discordant)), then step
                low, high = discordant // 2, discordant + 1  # low: no regression (not more to failing)
                while high - low > 1:
                    middle = (low + high) // 2
                    low, high = (low, middle) if holds(middle, discordant) else (middle, high)
                near = high
            self.found[discordant] = passes_needed(discordant, holds, near)
        return self.found[discordant]


def baseline_power(paired: int, drop: float, discordance: float, alpha: float = 1 - CONFIDENCE,
                   margin: float = 0.0) -> float:
    """P(the baseline gate finds a regression) on ``paired`` cases when the pass rate truly fell by ``drop``
    and the runs disagree on a share ``discordance`` of the cases: sum over the discordant count D
    (Binomial(paired, discordance)) of P(Binomial(D, q) >= flips needed), q the chance a flip is to failing."""
    _check_baseline(drop, discordance)
    needed = _flips_needed(paired, alpha, margin)
    to_fail = (discordance + drop) / 2 / discordance
    return min(1.0, math.fsum(weight * binomial_tail(d, to_fail, needed(d))
                              for d, weight in binomial_terms(paired, discordance, 1e-11)))


def cases_for_baseline(drop: float, discordance: float, power: float = DEFAULT_POWER,
                       alpha: float = 1 - CONFIDENCE, margin: float = 0.0, settle: int = 10) -> Plan:
    """The fewest paired cases with which the baseline gate detects ``drop`` with ``power``: the power is
    found by doubling, then halving the gap; the ``settle`` sizes after the answer must keep it (the exact
    test's steps make the power saw a little), else the answer moves past the dip."""
    _check_power(power)
    _check_baseline(drop, discordance)
    if drop <= margin:
        raise PlanError(f"a drop of {drop:g} is within the margin {margin:g}: the gate never calls it a regression")

    def enough(n: int) -> bool:
        return baseline_power(n, drop, discordance, alpha, margin) >= power

    # the normal approximation first: exact sums over tens of thousands of discordant pairs take minutes
    z = NormalDist().inv_cdf
    approx = ((z(1 - alpha / 2) * math.sqrt(discordance) + z(power) * math.sqrt(discordance - drop ** 2))
              / (drop - margin)) ** 2
    if approx > MAX_PAIRED:
        raise PlanError(f"about {approx:,.0f} paired cases (normal approximation), more than the {MAX_PAIRED:,} "
                        f"planned exactly: a drop of {drop:g} is too small to detect against a discordance of "
                        f"{discordance:g}")
    high = 8
    while not enough(high):
        if high > 4 * MAX_PAIRED:
            raise PlanError(f"more than {MAX_PAIRED:,} paired cases: a drop of {drop:g} is too small to detect")
        high *= 2
    low = high // 2 if high > 8 else 0  # low lacks the power (or is 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    first = n = high
    while True:
        short = [m for m in range(n + 1, n + settle + 1) if not enough(m)]
        if not short:
            break
        n = short[-1] + 1
    return Plan(n, baseline_power(n, drop, discordance, alpha, margin), "exact: binomial sums over the flips",
                first if first < n else None,
                baseline_power(first, drop, discordance, alpha, margin) if first < n else None)


def detectable_drop(paired: int, discordance: float, power: float = DEFAULT_POWER,
                    alpha: float = 1 - CONFIDENCE, margin: float = 0.0) -> float | None:
    """The smallest drop the baseline gate detects with ``power`` on ``paired`` cases, assuming the runs
    disagree on a share ``discordance`` of the cases or, for a larger drop, on as many as it flips. None when
    no drop is (too few cases: even every case flipping to failing is not significant enough)."""
    if paired <= 0:
        return None

    def enough(drop: float) -> bool:
        return baseline_power(paired, drop, max(discordance, drop), alpha, margin) >= power

    if not enough(1.0):
        return None
    low, high = margin, min(1.0, margin + 1 / paired)  # up by doubling: large drops flip many cases, dearly
    while not enough(high):
        low, high = high, min(1.0, margin + 2 * (high - margin))
    while high - low > 0.001:  # to a tenth of a point: finer than any pass rate is read
        middle = (low + high) / 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


# --- --from RUN: the rates of a stored run ----------------------------------------------------------

def discordance_from_rates(rates: Sequence[float], drop: float) -> tuple[float, float]:
    """The discordance and the drop when a run's cases (pass rates ``rates``: means over a case's samples, or
    0/1 for a case run once) are resampled with replacement, each run sampled afresh, and the candidate loses
    the same share of every case's pass rate (p -> p (1 - drop / mean)). Each resampled case then flips to
    failing with probability mean p (1 - p') and to passing with mean (1 - p) p': the flips of n resampled
    cases are multinomial, so the baseline gate's exact power applies."""
    if not rates:
        raise PlanError("the run has no scored cases to plan from")
    mean = math.fsum(rates) / len(rates)
    if drop >= mean:
        raise PlanError(f"a drop of {drop:g} is more than the run's pass rate {mean:.3g}")
    keep = 1 - drop / mean
    to_fail = math.fsum(p * (1 - p * keep) for p in rates) / len(rates)
    to_pass = math.fsum((1 - p) * p * keep for p in rates) / len(rates)
    return to_fail + to_pass, to_fail - to_pass


# --- what a run's gates could have detected -------------------------------------------------------

def threshold_margin(passes: int, n: int, minimum: float) -> str:
    """How far a pass-rate gate's 95% interval is from its threshold, in cases: how many more wrong answers
    it would take for the interval to reach the threshold, or how many more passes to clear it."""
    clears = interval_clears(minimum)
    if clears(passes, n):
        needed = passes_needed(n, clears, passes)
        if needed == 0:
            return "interval clears it at any score"
        return f"interval clears it by {cases(passes - needed + 1)}"
    if wilson(passes, n).high < minimum:
        reach = passes_needed(n, lambda k, m: wilson(k, m).high >= minimum, passes)
        return f"interval below it by {cases(reach - passes)}"
    needed = passes_needed(n, clears, passes)
    if needed > n:
        return f"interval spans it: even {n} of {n} would not clear it"
    return f"interval spans it: {cases(needed - passes)} short of clearing"


def interval_margin(low: float | None, high: float | None, minimum: float, share: bool = False) -> str:
    """A metric's (or a pass rate's over repeated samples) interval against its threshold, in its units."""
    if low is None or high is None:
        return ""
    shown = points if share else (lambda x: f"{x:.3g}")
    if low >= minimum:
        return f"interval clears it by {shown(low - minimum)}"
    if high < minimum:
        return f"interval below it by {shown(minimum - high)}"
    return f"interval spans it: {shown(minimum - low)} short of clearing"


def could_detect(paired: int, to_fail: int, to_pass: int, alpha: float, margin: float,
                 power: float = DEFAULT_POWER) -> str:
    """The smallest drop a baseline comparison on ``paired`` cases had ``power`` to detect, taking the
    runs' observed disagreement (the flips either way) as their discordance."""
    if paired <= 0:
        return ""
    drop = detectable_drop(paired, (to_fail + to_pass) / paired, power, alpha, margin)
    if drop is None:
        return f"no drop detectable on {cases(paired)} paired"
    return f"{power:.0%} power for a drop of {points(drop)}"


def minimum_strength(name: str, minimum: float, estimate: Estimate, passes: int | None) -> str:
    """How far one row's interval is from its minimum: in cases for a pass rate over cases run once (``passes``
    of ``estimate.n``), else in the row's units; nothing for a minimum of 0 (every score meets it) or no score."""
    if estimate.value is None or not estimate.n or minimum <= 0:
        return ""
    if name == PASS_RATE and passes is not None:
        return threshold_margin(passes, estimate.n, minimum)
    return interval_margin(estimate.low, estimate.high, minimum, share=name == PASS_RATE)


def gate_strength(passes: int | None, minimums: dict[str, float], estimates: dict[str, Estimate],
                  comparison: Comparison | None, alpha: float, margin: float) -> tuple[tuple[str, str], ...]:
    """(metric, what its gate could tell) for each row of a verdict: the interval's distance from each minimum
    and, against a baseline, the drop it had 80% power to detect; a passing gate on a dozen cases reads as
    weak here. ``passes``: the cases passed, where the pass rate is over cases run once."""
    notes = {name: minimum_strength(name, minimum, estimates[name], passes)
             for name, minimum in minimums.items() if name in estimates}
    if comparison is not None and comparison.paired:
        detect = could_detect(comparison.paired, len(comparison.to_fail), len(comparison.to_pass), alpha, margin)
        notes[PASS_RATE] = "; ".join(filter(None, (notes.get(PASS_RATE), detect)))
    return tuple((name, text) for name, text in notes.items() if text)


def cases(k: int) -> str:
    return f"{k} case{'s' * (k != 1)}"


def points(share: float) -> str:
    """A share as percentage points, to a tenth: 12.9 points, 1 point."""
    text = f"{share * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text} point{'s' * (text != '1')}"


def _check_rate(what: str, value: float) -> None:
    if not 0 <= value <= 1 or not math.isfinite(value):
        raise PlanError(f"{what} {value:g} is outside 0..1; give it as a share (0.7 for 70%)")


def _check_power(power: float) -> None:
    if not 0 < power < 1:
        raise PlanError(f"--power {power:g} is outside (0, 1); the usual is 0.8")


def _check_baseline(drop: float, discordance: float) -> None:
    if not 0 < drop <= 1:
        raise PlanError(f"--drop {drop:g} is outside (0, 1]; give the fall in pass rate as a share (0.05 for 5 points)")
    if not 0 < discordance <= 1:
        raise PlanError(f"--discordance {discordance:g} is outside (0, 1]: the share of cases on which the two runs "
                        "disagree")
    if drop > discordance:
        raise PlanError(f"a drop of {drop:g} needs at least that share of cases to flip, but --discordance is "
                        f"{discordance:g}; the discordance is at least the drop")


def stored_strength(r: dict[str, Any]) -> str:
    """What a stored gate row (``benchmarks``) could tell (:func:`minimum_strength`): its pass count where
    its interval is Wilson's (cases run once), none for the default gate (every case must pass: no interval
    clears 100%). For ``pytest-evals show`` and the HTML report."""
    if r.get("minimum") is None or (r.get("threshold_source") or "").startswith("default") or r["value"] is None:
        return ""
    estimate = Estimate(r["value"], r["low"], r["high"], r["n"])
    passes = round(r["value"] * r["n"])
    wilsons = r["metric"] == PASS_RATE and r["low"] is not None and math.isclose(wilson(passes, r["n"]).low, r["low"])
    return minimum_strength(r["metric"], r["minimum"], estimate, passes if wilsons else None)
