"""Does ``pytest-evals plan`` give the power it says? Each setting is planned, then run many times through
the plugin's own gate code (``scoring.gates.Gates``: the same object the controller decides verdicts with,
fed one case at a time), and the share of runs in which the gate held (or caught the drop) is the achieved
power, printed beside the target and the power the plan states for its n.

    python benchmarks/power_check.py [--runs 10000] [--seed 32]

Five settings: two pass-rate gates (each twice: the n for its 95% interval to clear the threshold, and the
n for its verdict alone), a metric gate over normal case values, the baseline gate from a discordance, and
the baseline gate from a run's per-case pass rates (cases resampled with replacement, each run sampled
afresh: flaky cases flip both ways). ``tests/test_power.py`` runs the same settings with fewer runs.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from typing import Callable

from pytest_evals.scoring import power as pw
from pytest_evals.scoring.gates import Gates, Verdict
from pytest_evals.scoring.stats import PASS_RATE, BenchmarkScores

BENCH, MODEL = "test_x.py::test_bench", "m"
# a run's per-case pass rates for the --from setting: 24 cases always right, 8 always wrong, 8 flaky
FROM_RUN_RATES = [1.0] * 24 + [0.0] * 8 + [0.8, 0.6, 0.4, 0.2] * 2


@dataclass(frozen=True)
class Setting:
    id: str  # short, for test ids
    name: str
    plan: pw.Plan
    target: float
    simulate: Callable[[int, random.Random], bool]  # one run of n cases: did the gate hold / catch the drop?


def _decide(lines: list[str], cases: list[tuple[str, dict[str, float] | None]],
            baseline: list[str] | None = None) -> Verdict:
    """One run through the plugin's gates: ``cases`` are (outcome, scores), one per case."""
    gates = Gates(lines, [], max_error_rate=0.0, alpha=0.05, margin=0.0)
    for i, (outcome, scores) in enumerate(cases):
        gates.add(BENCH, MODEL, f"{BENCH}[c{i}]", outcome, scores, None)
    before = None
    if baseline is not None:
        found = before = BenchmarkScores(BENCH, MODEL)
        for i, outcome in enumerate(baseline):
            found.add(f"{BENCH}[c{i}]", outcome, None)
    (verdict,) = gates.verdicts({(BENCH, MODEL): before} if before is not None else None)
    return verdict


def _outcome(passed: bool) -> str:
    return "passed" if passed else "failed"


def threshold_settings(expect: float, minimum: float, power: float) -> list[Setting]:
    line = [f"* {minimum}"]

    def run(n: int, rng: random.Random, interval: bool) -> bool:
        verdict = _decide(line, [(_outcome(rng.random() < expect), None) for _ in range(n)])
        return verdict.holds and (not interval or verdict.estimates[PASS_RATE].low >= minimum)

    clear = pw.cases_for_threshold(expect, minimum, power, pw.interval_clears(minimum))
    gate = pw.cases_for_threshold(expect, minimum, power)
    what = f"threshold --expect {expect} --threshold {minimum} --power {power}"
    key = f"threshold-{expect}-{minimum}"
    return [Setting(f"{key}-interval", f"{what}: interval clears", clear, power, lambda n, rng: run(n, rng, True)),
            Setting(f"{key}-verdict", f"{what}: verdict holds", gate, power, lambda n, rng: run(n, rng, False))]


def metric_setting(mean: float, sd: float, minimum: float, power: float) -> Setting:
    def run(n: int, rng: random.Random) -> bool:
        return _decide([f"* f1={minimum}"], [("passed", {"f1": rng.gauss(mean, sd)}) for _ in range(n)]).holds

    return Setting(f"metric-{mean}-{sd}-{minimum}",
                   f"metric --mean {mean} --sd {sd} --threshold {minimum}: verdict holds",
                   pw.cases_for_metric(mean, sd, minimum, power), power, run)


def _caught(verdict: Verdict) -> bool:
    return any(name == PASS_RATE and "regression" in why for name, why in verdict.why)


def baseline_setting(drop: float, discordance: float, power: float) -> Setting:
    to_fail, to_pass = (discordance + drop) / 2, (discordance - drop) / 2
    both_pass = (1 - discordance) * 0.75  # the concordant cases: three in four pass in both runs (McNemar ignores it)

    def run(n: int, rng: random.Random) -> bool:
        now, before = [], []
        for _ in range(n):
            u = rng.random()
            pair = (("passed", "failed") if u < to_fail else ("failed", "passed") if u < to_fail + to_pass
                    else ("passed", "passed") if u < to_fail + to_pass + both_pass else ("failed", "failed"))
            before.append(pair[0])
            now.append(pair[1])
        return _caught(_decide(["* 0"], [(o, None) for o in now], before))

    return Setting(f"baseline-{drop}-{discordance}",
                   f"baseline --drop {drop} --discordance {discordance}: regression caught",
                   pw.cases_for_baseline(drop, discordance, power), power, run)


def from_run_setting(rates: list[float], drop: float, power: float) -> Setting:
    keep = 1 - drop / (sum(rates) / len(rates))

    def run(n: int, rng: random.Random) -> bool:
        picked = rng.choices(rates, k=n)  # a suite drawn from the run's cases
        before = [_outcome(rng.random() < p) for p in picked]
        now = [_outcome(rng.random() < p * keep) for p in picked]
        return _caught(_decide(["* 0"], [(o, None) for o in now], before))

    discordance, _ = pw.discordance_from_rates(rates, drop)
    flaky = sum(0 < r < 1 for r in rates)
    return Setting(f"baseline-{drop}-from-run",
                   f"baseline --drop {drop} --from RUN ({len(rates)} cases, {flaky} flaky): regression caught",
                   pw.cases_for_baseline(drop, discordance, power), power, run)


def settings() -> list[Setting]:
    return [*threshold_settings(0.7, 0.6, 0.8), *threshold_settings(0.9, 0.8, 0.9),
            metric_setting(0.6, 0.25, 0.55, 0.8), baseline_setting(0.1, 0.2, 0.8),
            from_run_setting(FROM_RUN_RATES, 0.1, 0.8)]


def achieved(setting: Setting, runs: int, seed: int) -> float:
    rng = random.Random(seed)
    return sum(setting.simulate(setting.plan.n, rng) for _ in range(runs)) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=32)
    args = parser.parse_args()
    print(f"{args.runs:,} simulated runs per setting through scoring.gates.Gates (seed {args.seed})\n")
    print("| setting | n | target | planned (exact) | achieved | achieved - target | time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for setting in settings():
        started = time.perf_counter()
        got = achieved(setting, args.runs, args.seed)
        print(f"| {setting.name} | {setting.plan.n} | {setting.target:.1%} | {setting.plan.power:.1%} | {got:.1%} | "
              f"{(got - setting.target) * 100:+.1f} | {time.perf_counter() - started:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
