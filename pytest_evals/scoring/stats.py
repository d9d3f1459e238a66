"""Aggregates, 95% intervals, gates and paired comparisons. Pure Python: no pytest, no numpy.

- Proportions (pass rate) get a Wilson score interval.
- Means of named metrics get a percentile bootstrap interval with a fixed seed over the values in
  sorted order, so the same cases give the same interval on every run and machine, in whatever order
  they ended.
- Repeated samples of a case (--evals-repeat): the case is the unit (means over its samples, a
  bootstrap over cases), with the unbiased pass@k of each case.
- Two runs are compared on the cases both have, matched by identity: an exact McNemar test on
  pass/fail flips, a paired bootstrap on the differences of named metrics.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Sequence

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261127
PASS_RATE = "pass_rate"


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None
    n: int

    def format(self, percent: bool) -> str:
        if self.value is None:
            return "-"
        if percent:
            return f"{self.value:.1%}"
        return f"{self.value:.3g}"

    def format_interval(self, percent: bool) -> str:
        if self.low is None or self.high is None:
            return "no variation" if self.n > 1 and self.value is not None else "-"
        if percent:
            return f"[{self.low:.1%}, {self.high:.1%}]"
        return f"[{self.low:.3g}, {self.high:.3g}]"


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """Wilson score interval for a proportion (as statsmodels' proportion_confint(method='wilson'))."""
    if n == 0:
        return Estimate(None, None, None, 0)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def percent(value: float) -> str:
    """A share as a percentage, with a decimal only where it matters: 50%, 62.5%."""
    text = f"{value:.1%}"
    return text.replace(".0%", "%")


def sorted_quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    position = (len(sorted_values) - 1) * q
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    return sorted_values[lower] + (sorted_values[upper] - sorted_values[lower]) * (position - lower)


def bootstrap_mean(values: Sequence[float], confidence: float = CONFIDENCE,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """Mean with a percentile bootstrap interval; deterministic for given values."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    rng = random.Random(seed)
    # resampled in sorted order: the same values in any order (cases ending in another order under xdist, a
    # run merged from shards) give the same interval
    ordered = sorted(values)
    means = sorted(math.fsum(rng.choices(ordered, k=n)) / n for _ in range(resamples))
    alpha = 1 - confidence
    return Estimate(mean, sorted_quantile(means, alpha / 2), sorted_quantile(means, 1 - alpha / 2), n)


def score_estimate(values: Sequence[float], share: bool) -> Estimate:
    """A benchmark's mean score over its cases, with an interval that does not claim certainty from cases
    that never vary (resampling them gives a point). A ``share`` (a pass rate over samples, pass@k: values
    from 0 to 1) that is all 0 or all 1 gets the proportion's interval (Wilson's: 0 of 6 is [0%, 39%]); a
    named metric, whose scale is the test's own (a grade of 1 to 5), gets none ("no variation"); the rest
    get the bootstrap's. One case is such a case too: resampling it gives only itself."""
    n = len(values)
    if n >= 1 and all(v == values[0] for v in values):
        if share and values[0] in (0.0, 1.0):
            return replace(wilson(int(values[0]) * n, n), value=float(values[0]))
        return Estimate(float(values[0]), None, None, n)
    return bootstrap_mean(values)


def mcnemar_exact(flips_to_pass: int, flips_to_fail: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at p = 1/2."""
    n = flips_to_pass + flips_to_fail
    if n == 0:
        return 1.0
    k = min(flips_to_pass, flips_to_fail)
    # in integers (a float sum of the binomial coefficients overflows past about 1,030 discordant pairs),
    # each coefficient from the one before
    term = total = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, 2 * total / 2 ** n)


def meets(value: float, minimum: float) -> bool:
    """A gate's minimum holds on the point estimate (the pass rate, a metric's mean), not on its interval:
    the one comparison every threshold gate makes (``pytest-evals plan`` computes its power from it)."""
    return value >= minimum


@dataclass(frozen=True)
class Threshold:
    """Minimums for one benchmark: the pass rate and named metrics (means)."""

    minimums: tuple[tuple[str, float], ...]
    source: str  # "marker", "command line" or "ini", for messages

    def items(self) -> list[tuple[str, float]]:
        return list(self.minimums)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: the chance that k of them drawn without
    replacement hold at least one pass."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, not {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class CaseSamples:
    """The samples of one case, as the controller saw them."""

    count: int  # samples asked for
    outcomes: dict[int, str] = field(default_factory=dict)  # sample index -> outcome

    @property
    def passed(self) -> int:
        return sum(o == "passed" for o in self.outcomes.values())

    @property
    def scored(self) -> int:
        return sum(o in ("passed", "failed") for o in self.outcomes.values())

    @property
    def errors(self) -> int:
        return sum(o == "error" for o in self.outcomes.values())

    @property
    def flaky(self) -> bool:
        """Its scored samples disagree: some passed, some failed."""
        return 0 < self.passed < self.scored

    def pass_rate(self) -> float | None:
        return self.passed / self.scored if self.scored else None

    def pass_at(self) -> dict[int, float]:
        """pass@k for every k up to the samples scored."""
        return {k: pass_at_k(self.scored, self.passed, k) for k in range(1, self.scored + 1)}


@dataclass
class BenchmarkScores:
    """What one benchmark (per model) scored in a run.

    With repeated samples (--evals-repeat) a case is the unit: its pass rate and metrics are means over
    its samples, and the benchmark's estimates are means over cases with a bootstrap over cases, so
    samples of one case do not count as independent evidence.
    """

    benchmark: str
    model: str
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> outcome
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> nodeid -> value
    repeated: dict[str, CaseSamples] = field(default_factory=dict)  # a repeated case's nodeid -> its samples
    case_of: dict[str, str] = field(default_factory=dict)  # a sample's nodeid -> its case's
    usage: list[str] = field(default_factory=list)  # usage errors its cases ended on (one line each, once)

    def add(self, nodeid: str, outcome: str, scores: dict[str, float] | None, case: str | None = None,
            sample: int | None = None, samples: int | None = None) -> None:
        self.outcomes[nodeid] = outcome
        if case is not None and sample is not None and samples is not None:
            self.case_of[nodeid] = case
            self.repeated.setdefault(case, CaseSamples(samples)).outcomes[sample] = outcome
        if outcome not in ("passed", "failed"):
            return  # an errored or skipped case was not scored: its metrics are not counted either
        for name, value in (scores or {}).items():
            self.metrics.setdefault(name, {})[nodeid] = value

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    @property
    def scored(self) -> int:
        return self.count("passed") + self.count("failed")

    def _per_case(self, values: dict[str, float]) -> list[float]:
        """Each case's mean over its samples (a case that is not repeated is its own mean)."""
        grouped: dict[str, list[float]] = {}
        for nodeid, value in values.items():
            grouped.setdefault(self.case_of.get(nodeid, nodeid), []).append(value)
        return [math.fsum(v) / len(v) for v in grouped.values()]

    @property
    def sampled(self) -> bool:
        """Whether a case has more than one scored sample: the pass rate is then a mean over cases of their
        rates over samples. (A greedy case under --evals-repeat runs once: it is a case like any other.)"""
        return any(c.scored > 1 for c in self.repeated.values())

    def pass_rate(self) -> Estimate:
        if not self.sampled:
            return wilson(self.count("passed"), self.scored)
        scored = {n: float(o == "passed") for n, o in self.outcomes.items() if o in ("passed", "failed")}
        return score_estimate(self._per_case(scored), share=True)

    def metric(self, name: str) -> Estimate:
        values = self.metrics.get(name, {})
        return score_estimate(self._per_case(values) if self.repeated else list(values.values()), share=False)

    def pass_at(self) -> dict[str, Estimate]:
        """pass@k over the repeated cases, for k in 5, 10 and the number of samples (k > 1): the mean of each
        case's unbiased pass@k, over the cases with at least k scored samples, bootstrapped over cases."""
        if not self.sampled:
            return {}
        count = max(c.count for c in self.repeated.values())
        found = {}
        for k in sorted({k for k in (5, 10, count) if 1 < k <= count}):
            values = [c.pass_at()[k] for c in self.repeated.values() if c.scored >= k]
            found[f"pass@{k}"] = score_estimate(values, share=True)
        return found

    @property
    def flaky(self) -> list[str]:
        """The repeated cases whose scored samples disagree."""
        return [case for case, samples in self.repeated.items() if samples.flaky]

    @property
    def error_rate(self) -> float:
        ran = self.scored + self.count("error")
        return self.count("error") / ran if ran else 0.0


def scores_of(cases: list[dict]) -> dict[tuple[str, str], BenchmarkScores]:
    """Stored ``cases`` rows grouped per benchmark and model, as the gates see them."""
    grouped: dict[tuple[str, str], BenchmarkScores] = {}
    for row in cases:
        key = (row["benchmark"], row["model"])
        scores = json.loads(row["scores"]) if row["scores"] else None
        grouped.setdefault(key, BenchmarkScores(*key)).add(row["nodeid"], row["outcome"], scores, row.get("repeat_of"),
                                                           _index(row.get("sample")), row.get("samples"))
    return grouped


def _index(sample: int | None) -> int | None:
    return None if sample is None else sample - 1  # stored from 1


@dataclass(frozen=True)
class Comparison:
    """A benchmark compared with a baseline run on the cases both have."""

    paired: int
    to_fail: tuple[str, ...]  # passed in the baseline, failed now
    to_pass: tuple[str, ...]
    rate_difference: float | None  # now - baseline, over the paired cases
    p_value: float
    metric_differences: dict[str, Estimate]  # now - baseline, paired bootstrap


def compare(now: BenchmarkScores, baseline: BenchmarkScores, alpha: float = 1 - CONFIDENCE) -> Comparison:
    """Pair the cases both runs scored; metric differences get a (1 - alpha) paired bootstrap interval. The
    flips are listed by nodeid, whatever order the cases ended in."""
    both = sorted(n for n, o in now.outcomes.items()
                  if o in ("passed", "failed") and baseline.outcomes.get(n) in ("passed", "failed"))
    to_fail = tuple(n for n in both if baseline.outcomes[n] == "passed" and now.outcomes[n] == "failed")
    to_pass = tuple(n for n in both if baseline.outcomes[n] == "failed" and now.outcomes[n] == "passed")
    metric_differences = {}
    for name, values in now.metrics.items():
        before = baseline.metrics.get(name, {})
        diffs = [values[n] - before[n] for n in values if n in before]
        if diffs:
            metric_differences[name] = bootstrap_mean(diffs, confidence=1 - alpha)
    return flip_comparison(len(both), to_fail, to_pass, metric_differences)


def flip_comparison(paired: int, to_fail: tuple[str, ...], to_pass: tuple[str, ...],
                    metric_differences: dict[str, Estimate] | None = None) -> Comparison:
    """The pass rate's side of a comparison from its flips: the change over the paired cases and McNemar's p
    (``compare`` pairs two runs' cases into it; ``power`` counts flips into it)."""
    difference = (len(to_pass) - len(to_fail)) / paired if paired else None
    return Comparison(paired, to_fail, to_pass, difference, mcnemar_exact(len(to_pass), len(to_fail)),
                      metric_differences or {})


def regressions(comparison: Comparison, alpha: float, margin: float) -> list[tuple[str, str]]:
    """(metric, why) for each metric significantly worse than its baseline (empty when none is)."""
    found = []
    d = comparison.rate_difference
    if d is not None and d < -margin and comparison.p_value < alpha:
        found.append((PASS_RATE, f"pass rate fell {-d:.1%} on {comparison.paired} paired cases "
                                 f"({len(comparison.to_fail)} now fail, {len(comparison.to_pass)} now pass; "
                                 f"McNemar p={comparison.p_value:.3g} < {alpha:g})"))
    for name, diff in comparison.metric_differences.items():
        # worse at alpha by more than the margin: the paired interval lies wholly below -margin
        if diff.high is not None and diff.high < -margin:
            found.append((name, f"{name} fell {-(diff.value or 0):.3g} on {diff.n} paired cases "
                                f"({1 - alpha:.0%} interval of the change [{diff.low:.3g}, {diff.high:.3g}])"))
    return found


def regression_reasons(comparison: Comparison, alpha: float, margin: float) -> list[str]:
    """Why a benchmark is significantly worse than its baseline (empty when it is not)."""
    return [why for _, why in regressions(comparison, alpha, margin)]
