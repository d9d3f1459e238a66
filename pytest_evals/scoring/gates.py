"""Score gates: thresholds from the marker, the command line and the ini file; verdicts; exit status.

A benchmark (per model) passes its gate when every minimum holds on the point estimate (pass rate
over passed + failed cases; means of named metrics), its error rate is within
``--evals-max-error-rate``, and, with ``--evals-baseline``, it is not significantly worse than the
baseline run. A benchmark without a threshold must pass every case, as pytest would have it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import pytest

from ..errors import ConfigError
from .power import gate_strength
from .stats import PASS_RATE, BenchmarkScores, Comparison, Estimate, Threshold, compare, meets, percent, regressions

MARKER = "evals_threshold"


class GateError(ConfigError):
    """A bad threshold (marker, --evals-threshold or ini evals_thresholds); the message names the fix."""

DEFAULT_THRESHOLD = Threshold(((PASS_RATE, 1.0),), "default: every case must pass")


def _minimums(source: str, min_pass_rate: Any = None, **metric_minimums: Any) -> tuple[tuple[str, float], ...]:
    items = ([(PASS_RATE, min_pass_rate)] if min_pass_rate is not None else []) + list(metric_minimums.items())
    if not items:
        raise GateError(f"{source}: name at least one minimum, e.g. evals_threshold(0.6) or f1=0.5")
    result = []
    for name, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GateError(f"{source}: {name}={value!r} is not a number")
        if name == PASS_RATE and not 0 <= value <= 1:
            raise GateError(f"{source}: min_pass_rate={value} is outside 0..1")
        result.append((name, float(value)))
    return tuple(result)


def threshold_from_marker(mark: pytest.Mark, where: str) -> Threshold:
    """``@pytest.mark.evals_threshold(min_pass_rate=None, **metric_minimums)``; bad use is a usage error."""
    source = f"{where}: @pytest.mark.{MARKER}"
    if len(mark.args) > 1:
        raise GateError(f"{source} takes one positional argument (min_pass_rate), got {len(mark.args)}")
    kwargs = dict(mark.kwargs)
    if mark.args:
        if "min_pass_rate" in kwargs:
            raise GateError(f"{source}: min_pass_rate given twice")
        kwargs["min_pass_rate"] = mark.args[0]
    return Threshold(_minimums(source, **kwargs), "marker")


def parse_threshold_line(line: str, source: str) -> tuple[str, Threshold]:
    """``GLOB [MIN_PASS_RATE] [min_pass_rate=X] [METRIC=X ...]``: one benchmark nodeid or glob per line."""
    where = f"{source} {line.strip()!r}"
    tokens = line.split()
    if len(tokens) < 2:
        raise GateError(f"{where}: expected 'BENCHMARK_GLOB 0.6' or 'BENCHMARK_GLOB min_pass_rate=0.6 f1=0.5'")
    kwargs: dict[str, Any] = {}
    for position, token in enumerate(tokens[1:]):
        name, eq, value = token.partition("=")
        if not eq:
            if position:
                raise GateError(f"{where}: {token!r} must be METRIC=VALUE")
            name, value = "min_pass_rate", token
        try:
            kwargs[name] = float(value)
        except ValueError:
            raise GateError(f"{where}: {token!r} is not a number") from None
    return tokens[0], Threshold(_minimums(where, **kwargs), source)


@dataclass(frozen=True)
class Verdict:
    benchmark: str
    model: str
    threshold: Threshold
    estimates: dict[str, Estimate]  # pass_rate and each named metric
    errors: int
    reasons: tuple[str, ...]  # why the gate failed; empty when it holds
    comparison: Comparison | None = None
    usage_errors: tuple[str, ...] = ()
    incomplete: bool = False  # some of its tests did not run (an interrupted run): no verdict either way
    # (metric, why its row fails): below its minimum, missing, a regression; an error rate above
    # --evals-max-error-rate is the pass rate's row's (the first row carries the error count)
    why: tuple[tuple[str, str], ...] = ()
    alpha: float = 0.05  # the baseline gate's settings, for the drop it could detect
    margin: float = 0.0
    passes: int | None = None  # cases passed, where the pass rate is over cases run once (not over samples)

    @cached_property
    def strength(self) -> tuple[tuple[str, str], ...]:
        """(metric, what its gate could tell): the interval's distance from each minimum (none for the default,
        every case must pass) and, against a baseline, the drop it had 80% power to detect."""
        minimums = {} if self.threshold == DEFAULT_THRESHOLD else dict(self.threshold.minimums)
        return gate_strength(self.passes, minimums, self.estimates, self.comparison, self.alpha, self.margin)

    @property
    def holds(self) -> bool:
        return not self.reasons and not self.usage_errors and not self.incomplete

    @property
    def label(self) -> str:
        """pass, fail, or incomplete (as stored and in JUnit); the summary shows it in capitals."""
        return "incomplete" if self.incomplete else "pass" if self.holds else "fail"

    def row_label(self, metric: str, first: bool) -> str:
        """The verdict of one metric's row: its own check, not another metric's. The first row (the pass
        rate, with the error count) also carries the error-rate check; a metric without a minimum has none."""
        if self.incomplete:
            return "incomplete" if first or metric in dict(self.threshold.minimums) else ""
        if any(name == metric for name, _ in self.why):
            return "fail"
        return "pass" if first or metric in dict(self.threshold.minimums) else ""


class Gates:
    """Collects scores per benchmark and model on the controller; decides verdicts at the end."""

    def __init__(self, command_line: Iterable[str], ini: Iterable[str], max_error_rate: float,
                 alpha: float, margin: float) -> None:
        self.lines = ([*command_line], [l for l in ini if l.strip()])  # as given: stored with the run (settings)
        self.command_line = [parse_threshold_line(l, "--evals-threshold") for l in self.lines[0]]
        self.ini = [parse_threshold_line(l, "ini evals_thresholds") for l in self.lines[1]]
        self.max_error_rate = max_error_rate
        self.alpha = alpha
        self.margin = margin
        self.scores: dict[tuple[str, str], BenchmarkScores] = {}
        self.markers: dict[str, Threshold] = {}

    def settings(self, baseline: int | None) -> dict[str, Any]:
        """What decides the verdicts besides the cases (``runs.gates``, with the baseline run's id), so that a
        stored run's verdicts can be decided again from its stored cases (:meth:`from_settings`)."""
        return {"command_line": self.lines[0], "ini": self.lines[1], "max_error_rate": self.max_error_rate,
                "alpha": self.alpha, "margin": self.margin, "baseline": baseline,
                "markers": {b: [[list(m) for m in t.minimums], t.source] for b, t in sorted(self.markers.items())},
                "usage": [[b, m, s.usage] for (b, m), s in self.scores.items() if s.usage]}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], scores: dict[tuple[str, str], BenchmarkScores]) -> "Gates":
        """The gates a run was decided by (:meth:`settings`), holding ``scores`` (``stats.scores_of`` of its
        stored cases)."""
        gates = cls(settings["command_line"], settings["ini"], settings["max_error_rate"], settings["alpha"],
                    settings["margin"])
        gates.markers = {b: Threshold(tuple((n, float(v)) for n, v in minimums), source)
                         for b, (minimums, source) in settings["markers"].items()}
        gates.scores = scores
        for benchmark, model, lines in settings["usage"]:
            if (benchmark, model) in scores:
                scores[(benchmark, model)].usage.extend(l for l in lines if l not in scores[(benchmark, model)].usage)
        return gates

    def add(self, benchmark: str, model: str, nodeid: str, outcome: str, scores: dict[str, float] | None,
            marker: Threshold | None, case: str | None = None, sample: int | None = None,
            samples: int | None = None, usage_error: str | None = None) -> None:
        """One case (or one sample of a repeated case: ``sample`` from 0 of ``samples`` of ``case``)."""
        key = (benchmark, model)
        found = self.scores.setdefault(key, BenchmarkScores(benchmark, model))
        found.add(nodeid, outcome, scores, case, sample, samples)
        if usage_error is not None and usage_error not in found.usage:
            found.usage.append(usage_error)
        if marker is not None:
            self.markers[benchmark] = marker

    def threshold_for(self, benchmark: str) -> Threshold:
        """Marker, then command line, then ini (the last matching line of each wins), then the default."""
        if benchmark in self.markers:
            return self.markers[benchmark]
        for rules in (self.command_line, self.ini):
            matches = [t for glob, t in rules if fnmatch.fnmatchcase(benchmark, glob)]
            if matches:
                return matches[-1]
        return DEFAULT_THRESHOLD

    def verdicts(self, baseline: dict[tuple[str, str], BenchmarkScores] | None = None,
                 incomplete: frozenset[str] | set[str] = frozenset()) -> list[Verdict]:
        """A verdict per benchmark and model; those in ``incomplete`` (tests not run) get none."""
        verdicts = []
        for (benchmark, model), scores in self.scores.items():
            threshold = self.threshold_for(benchmark)
            estimates = {PASS_RATE: scores.pass_rate()}
            estimates.update({name: scores.metric(name) for name in sorted(scores.metrics)})
            estimates.update(scores.pass_at())
            reasons, usage = [], list(scores.usage)
            why: list[tuple[str, str]] = []
            for name, minimum in threshold.items():
                if name not in estimates:
                    if not scores.scored:
                        continue  # no case got as far as recording metrics (all errored or skipped)
                    usage.append(f"threshold on metric {name!r} ({threshold.source}), "
                                 f"but no case recorded it; record it with evals_score({name}=...) or fix the name")
                    why.append((name, "no case recorded it"))
                    estimates[name] = Estimate(None, None, None, 0)  # its row shows the missing metric
                    continue
                value = estimates[name].value
                if value is None:
                    continue  # nothing scored: all skipped (as pytest, no failure) or errored (gated below)
                if not meets(value, minimum):
                    shown = f"{value:.1%} < {percent(minimum)}" if name == PASS_RATE else f"{value:.3g} < {minimum:g}"
                    reasons.append(f"{name} {shown} ({threshold.source})")
                    why.append((name, f"below its minimum ({threshold.source})"))
            errors = scores.count("error")
            if errors and scores.error_rate > self.max_error_rate:
                ran = scores.scored + errors
                reasons.append(f"{errors} of {ran} cases ended in error ({scores.error_rate:.1%} > "
                               f"--evals-max-error-rate {self.max_error_rate:.1%})")
                why.append((PASS_RATE, f"errors {scores.error_rate:.1%} > {self.max_error_rate:.1%} allowed"))
            comparison = None
            if baseline is not None and (benchmark, model) in baseline:
                comparison = compare(scores, baseline[(benchmark, model)], self.alpha)
                for name, text in regressions(comparison, self.alpha, self.margin):
                    reasons.append(f"regression against the baseline: {text}")
                    why.append((name, "regression against the baseline"))
            verdicts.append(Verdict(benchmark, model, threshold, estimates, errors, tuple(reasons), comparison,
                                    tuple(usage), incomplete=benchmark in incomplete, why=tuple(why),
                                    alpha=self.alpha, margin=self.margin,
                                    passes=None if scores.sampled else scores.count("passed")))
        return verdicts


def exit_status(verdicts: list[Verdict], other_failures: int = 0, unrecorded: bool = False) -> pytest.ExitCode:
    """A whole run's exit status from its verdicts: 4 when a case ended on a usage error; 1 when a gate fails,
    a test that is not an eval case failed, or cases could not be recorded; else 0. (A run with tests that
    did not run is 2 before this is asked.)"""
    if any(v.usage_errors for v in verdicts):
        return pytest.ExitCode.USAGE_ERROR
    if other_failures or unrecorded or not all(v.holds for v in verdicts):
        return pytest.ExitCode.TESTS_FAILED
    return pytest.ExitCode.OK
