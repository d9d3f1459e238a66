"""What ``pytest-evals plan`` prints: the cases a gate needs, from ``scoring.power``, in words."""

from __future__ import annotations

from statistics import NormalDist

from ..scoring import power as pw
from ..scoring.stats import CONFIDENCE, BenchmarkScores, percent


def threshold_lines(expect: float, minimum: float, power: float) -> list[str]:
    """A pass-rate gate: the cases for its 95% interval to clear the threshold, then for its verdict alone."""
    clear = pw.cases_for_threshold(expect, minimum, power, pw.interval_clears(minimum))
    gate = pw.cases_for_threshold(expect, minimum, power)
    false_pass = pw.threshold_power(gate.n, minimum, minimum)
    return [
        f"pass-rate gate >= {percent(minimum)}, expected pass rate {percent(expect)}, power {percent(power)}:",
        f"  {pw.cases(clear.n)}: the gate holds with its 95% interval above {percent(minimum)}: power {clear.power:.1%} "
        f"({clear.method}){_settled(clear, power)}",
        f"  {pw.cases(gate.n)}: the verdict alone (score >= {percent(minimum)}) holds: power {gate.power:.1%} "
        f"({gate.method}){_settled(gate, power)}; but a model at {percent(minimum)} passes it too, "
        f"{false_pass:.0%} of the time",
    ]


def metric_lines(mean: float, sd: float, minimum: float, power: float) -> list[str]:
    """A metric gate: its verdict (the mean >= minimum) and, by the normal approximation, its interval."""
    gate = pw.cases_for_metric(mean, sd, minimum, power)
    z = NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / 2)
    # the interval clears when the mean's low end (mean - z sd / sqrt(n)) does: the verdict's n with z added
    # to the power's quantile
    clear = pw.cases_for_metric(mean, sd, minimum, NormalDist().cdf(NormalDist().inv_cdf(power) + z))
    return [
        f"metric gate >= {minimum:g}, expected mean {mean:g} (sd {sd:g} over cases), power {percent(power)}:",
        f"  {pw.cases(clear.n)}: the gate holds with its 95% interval above {minimum:g}: power {percent(power)} (normal "
        "approximation of the bootstrap interval)",
        f"  {pw.cases(gate.n)}: the verdict alone (mean >= {minimum:g}) holds: power {gate.power:.1%} ({gate.method})",
    ]


def baseline_lines(drop: float, discordance: float, power: float, alpha: float, margin: float) -> list[str]:
    plan = pw.cases_for_baseline(drop, discordance, power, alpha, margin)
    return [f"baseline gate (alpha {alpha:g}, margin {margin:g}), a drop of {pw.points(drop)}, the runs disagreeing "
            f"on {percent(discordance)} of cases, power {percent(power)}:",
            f"  {plan.n} paired cases: the gate finds the regression: power {plan.power:.1%} ({plan.method})"
            f"{_settled(plan, power)}"]


def baseline_from_run_lines(run_id: int, scores: dict[tuple[str, str], BenchmarkScores], drop: float,
                            power: float, alpha: float, margin: float) -> list[str]:
    """One plan per benchmark and model of a stored run, from its cases' pass rates (resampled)."""
    lines = [f"baseline gate (alpha {alpha:g}, margin {margin:g}), a drop of {pw.points(drop)}, "
             f"power {percent(power)}, "
             f"cases resampled from run {run_id} (a case's pass rate: its samples' share, 1 or 0 if run once):"]
    once = False
    for (benchmark, model), found in scores.items():
        rates = case_rates(found)
        discordance, _ = pw.discordance_from_rates(rates, drop)
        plan = pw.cases_for_baseline(drop, discordance, power, alpha, margin)
        flaky = sum(0 < r < 1 for r in rates)
        once = once or not found.repeated
        lines.append(f"  {benchmark} [{model}]: {plan.n} paired cases: power {plan.power:.1%} ({plan.method})"
                     f"{_settled(plan, power)}; run {run_id} has {len(rates)} cases, pass rate "
                     f"{sum(rates) / len(rates):.1%}, {flaky} flaky: the runs disagree on {discordance:.1%}")
    if once:
        lines.append("  cases run once count as never flaky: the runs disagree only where the drop bites, the "
                     "easiest drop to see; run with --evals-repeat N to measure flakiness, or give --discordance")
    return lines


def case_rates(scores: BenchmarkScores) -> list[float]:
    """Each scored case's pass rate: over its samples where repeated, else 1 or 0."""
    rates = [s.pass_rate() for s in scores.repeated.values()]
    rates += [float(o == "passed") for n, o in scores.outcomes.items()
              if n not in scores.case_of and o in ("passed", "failed")]
    return [r for r in rates if r is not None]


def _settled(plan: pw.Plan, power: float) -> str:
    """Where a smaller suite has the power but some sizes between fall short (the sawing of a discrete
    test), say so: the n named has it, and so has every larger suite."""
    if plan.first is None:
        return ""
    return (f"; at least {percent(power)} from here on ({plan.first} cases reach {plan.first_power:.1%} first, "
            "but some sizes between fall short)")
