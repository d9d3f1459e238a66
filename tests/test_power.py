"""pytest-evals plan and what a run's gates could have detected (scoring/power.py): the exact sums checked
against scipy and brute force, the planned power checked by simulating the plugin's own gates, and the
verb on real stored runs. The full-size simulation (10,000 runs per setting) is benchmarks/power_check.py."""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as sp

from pytest_evals.scoring import power as pw
from pytest_evals.scoring.gates import Gates
from pytest_evals.scoring.stats import PASS_RATE, mcnemar_exact, wilson

ROOT = Path(__file__).resolve().parent.parent


def _power_check():
    spec = importlib.util.spec_from_file_location("power_check", ROOT / "benchmarks" / "power_check.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


POWER_CHECK = _power_check()


def test_the_threshold_power_is_the_binomial_tail_of_the_passes_the_gate_needs() -> None:
    for n, rate, minimum in [(12, 0.7, 0.6), (50, 0.85, 0.8), (333, 0.5, 0.45), (7, 0.99, 1.0)]:
        needed = math.ceil(round(n * minimum, 9))  # value >= minimum, as the gate compares
        assert pw.passes_needed(n, pw.gate_holds(minimum)) == needed
        assert pw.threshold_power(n, rate, minimum) == pytest.approx(sp.binom.sf(needed - 1, n, rate), abs=1e-12)
    # the O(1)-a-step curve agrees with each n summed afresh, over a long run of n
    holds = pw.interval_clears(0.6)
    for n, p in pw.power_curve(0.7, holds, 400):
        assert p == pytest.approx(pw.threshold_power(n, 0.7, 0.6, holds), abs=1e-9)


def test_the_planned_n_is_the_first_from_which_every_size_has_the_power() -> None:
    for holds in (None, pw.interval_clears(0.6)):
        plan = pw.cases_for_threshold(0.7, 0.6, 0.8, holds)
        powers = [pw.threshold_power(n, 0.7, 0.6, holds) for n in range(1, 2 * plan.n + 1)]
        assert all(p >= 0.8 for p in powers[plan.n - 1:]) and powers[plan.n - 2] < 0.8
        assert plan.power == pytest.approx(powers[plan.n - 1])
        if plan.first is not None:  # the sawtooth: a smaller n has the power, a size between does not
            assert powers[plan.first - 1] >= 0.8 and any(p < 0.8 for p in powers[plan.first:plan.n - 1])
    # the metric gate: the mean of n normal values clears the threshold with the power, n - 1 does not
    plan = pw.cases_for_metric(0.6, 0.25, 0.55, 0.8)
    assert plan.power >= 0.8 > pw.metric_power(plan.n - 1, 0.6, 0.25, 0.55)


def test_the_baseline_power_is_the_gates_decision_summed_over_every_outcome() -> None:
    """Brute force on 14 paired cases: every (flips to failing, flips to passing) with its multinomial
    probability, each decided by the plugin's Gates on real BenchmarkScores."""
    n, drop, discordance = 14, 0.3, 0.4
    to_fail, to_pass = (discordance + drop) / 2, (discordance - drop) / 2
    total = 0.0
    for f, g in itertools.product(range(n + 1), repeat=2):
        if f + g > n:
            continue
        outcomes = ["failed"] * f + ["passed"] * g + ["passed"] * (n - f - g)
        before = ["passed"] * f + ["failed"] * g + ["passed"] * (n - f - g)
        verdict = POWER_CHECK._decide(["* 0"], [(o, None) for o in outcomes], before)
        if POWER_CHECK._caught(verdict):
            total += (math.factorial(n) / (math.factorial(f) * math.factorial(g) * math.factorial(n - f - g))
                      * to_fail ** f * to_pass ** g * (1 - discordance) ** (n - f - g))
    assert 0.1 < total < 0.9  # a setting where the sum is not trivially 0 or 1
    assert pw.baseline_power(n, drop, discordance) == pytest.approx(total, abs=1e-12)


def test_mcnemar_holds_past_a_thousand_discordant_pairs() -> None:
    # a float sum of the binomial coefficients overflowed here (a run with that many flips crashed its gate)
    assert mcnemar_exact(600, 700) == pytest.approx(sp.binomtest(600, 1300).pvalue, rel=1e-9)
    assert mcnemar_exact(2500, 2600) == pytest.approx(sp.binomtest(2500, 5100).pvalue, rel=1e-9)


def test_the_detectable_drop_is_the_smallest_with_the_power() -> None:
    drop = pw.detectable_drop(200, 0.15)
    assert pw.baseline_power(200, drop, max(0.15, drop)) >= 0.8 > pw.baseline_power(200, drop - 0.002, 0.15)
    assert pw.detectable_drop(5, 0.2) is None  # 5 of 5 flipping has McNemar p = 0.0625: nothing is detectable
    assert pw.could_detect(5, 1, 0, 0.05, 0.0) == "no drop detectable on 5 cases paired"


@pytest.mark.parametrize("setting", POWER_CHECK.settings(), ids=lambda s: s.id)
def test_simulated_gates_reach_the_planned_power(setting) -> None:
    """Runs of the planned n through the plugin's Gates (1,000 runs; 300 for the metric, whose bootstrap
    interval is slow): the achieved power is the planned one within 3 points. The five settings' planned powers
    are within 3 points of the target; the verdict-alone rows of a pass-rate gate land above it, because at
    their small n one case more or less moves the power by more than that (no n lands nearer)."""
    runs = 300 if setting.name.startswith("metric") else 1000
    got = POWER_CHECK.achieved(setting, runs, seed=32)
    assert abs(got - setting.plan.power) <= 0.03, (got, setting.plan)
    assert setting.plan.power >= setting.target
    if "verdict holds" not in setting.name or setting.name.startswith("metric"):
        assert setting.plan.power - setting.target <= 0.03, setting.plan


def test_the_strength_of_a_gate_reads_in_cases() -> None:
    assert pw.threshold_margin(10, 12, 0.6) == "interval spans it: 1 case short of clearing"
    assert pw.threshold_margin(12, 12, 0.6) == "interval clears it by 2 cases"  # 11 of 12 still clears
    assert wilson(10, 12).low < 0.6 <= wilson(11, 12).low and wilson(10, 12).low < 0.6
    assert pw.threshold_margin(9, 10, 0.8) == "interval spans it: even 10 of 10 would not clear it"
    assert pw.threshold_margin(2, 20, 0.5) == "interval below it by 4 cases"
    assert wilson(5, 20).high < 0.5 <= wilson(6, 20).high
    # a verdict carries it per row; the default gate (every case must pass) has none
    gates = Gates(["*bench 0.6"], [], max_error_rate=0.0, alpha=0.05, margin=0.0)
    for i in range(12):
        gates.add("t.py::test_bench", "m", f"t.py::test_bench[{i}]", "passed" if i < 10 else "failed", None, None)
        gates.add("t.py::test_other", "m", f"t.py::test_other[{i}]", "passed", None, None)
    weak, plain = gates.verdicts()
    assert weak.holds and weak.strength == ((PASS_RATE, "interval spans it: 1 case short of clearing"),)
    assert plain.strength == ()


def test_the_rates_of_a_run_give_the_discordance() -> None:
    # cases run once: only the drop flips cases, all to failing
    assert pw.discordance_from_rates([1.0] * 8 + [0.0] * 2, 0.1) == pytest.approx((0.1, 0.1))
    # a flaky case (p = 1/2) disagrees with itself half the time, either way
    assert pw.discordance_from_rates([0.5], 0.0001)[0] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(pw.PlanError, match="more than the run's pass rate"):
        pw.discordance_from_rates([1.0, 0.0], 0.6)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_evals.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_plan_prints_n_and_how_it_was_computed(tmp_path: Path) -> None:
    out = cli(tmp_path, "plan", "threshold", "--expect", "0.7", "--threshold", "0.6")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "pass-rate gate >= 60%, expected pass rate 70%, power 80%:"
    assert lines[1].startswith("  186 cases: the gate holds with its 95% interval above 60%: power 82.0% (exact: "
                               "binomial); at least 80% from here on (177 cases reach 81.3% first")
    assert re.match(r"  18 cases: the verdict alone \(score >= 60%\) holds: power 85.9% \(exact: binomial\).*"
                    r"a model at 60% passes it too, 56% of the time$", lines[2])
    out = cli(tmp_path, "plan", "baseline", "--drop", "0.1", "--discordance", "0.2", "--power", "0.9")
    assert out.stdout.splitlines()[1].startswith("  ")
    assert re.match(r"  2\d\d paired cases: the gate finds the regression: power 90.\d% \(exact: binomial sums",
                    out.stdout.splitlines()[1])
    out = cli(tmp_path, "plan", "metric", "--mean", "0.6", "--sd", "0.25", "--threshold", "0.55")
    assert "  18 cases: the verdict alone (mean >= 0.55) holds: power 80.2% (exact for normal case values" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["threshold", "--expect", "0.7"], "plan threshold needs --threshold: e.g. pytest-evals plan threshold "
                                       "--expect 0.7 --threshold 0.6"),
    (["threshold", "--expect", "0.5", "--threshold", "0.6"], "an expected pass rate of 0.5 does not clear a "
                                                             "threshold of 0.6*"),
    (["metric", "--mean", "0.6", "--sd", "0.2", "--threshold", "0.5", "--drop", "0.1"], "plan metric does not take "
                                                                                        "--drop*"),
    (["baseline", "--drop", "0.05"], "plan baseline takes --discordance D * or --from RUN *, one of the two"),
    (["baseline", "--drop", "0.3", "--discordance", "0.2"], "a drop of 0.3 needs at least that share of cases to "
                                                            "flip, but --discordance is 0.2*"),
    (["baseline", "--drop", "0.05", "--from", "latest"], "*no such database*"),
    (["threshold", "--expect", "1.7", "--threshold", "0.6"], "the expected pass rate 1.7 is outside 0..1*"),
])
def test_bad_plans_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = cli(tmp_path, "plan", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1
    from fnmatch import fnmatch
    assert fnmatch(out.stderr.strip(), f"pytest-evals: {message}"), out.stderr


SAMPLED = """
import pytest

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(10))
def test_bench(model, evals_sample, i):
    model.generate(f"q{i}", temperature=0.8)
    # cases 0-5 always right, 6-7 always wrong, 8 and 9 right on every other sample
    assert i < 6 or (i >= 8 and evals_sample.index % 2 == 0)
"""


def test_plan_from_a_stored_run(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_bench=SAMPLED)
    fake_project.runpytest("--model=fake:a", "--evals-repeat=4")
    out = cli(fake_project.path, "plan", "baseline", "--drop", "0.1", "--from", "latest")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("baseline gate (alpha 0.05, margin 0), a drop of 10 points, power 80%, cases "
                               "resampled from run 1")
    # the rates: six cases 1, two 0, two 1/2: discordance from the flaky pair and the drop, computed exactly
    discordance, _ = pw.discordance_from_rates([1.0] * 6 + [0.0] * 2 + [0.5] * 2, 0.1)
    n = pw.cases_for_baseline(0.1, discordance).n
    assert lines[1].startswith(f"  test_bench.py::test_bench [fake:a]: {n} paired cases: power ")
    assert lines[1].endswith(f"run 1 has 10 cases, pass rate 70.0%, 2 flaky: the runs disagree on {discordance:.1%}")
    assert len(lines) == 2  # samples measured the flakiness: no note about cases run once
    out = cli(fake_project.path, "plan", "baseline", "--drop", "0.1", "--from", "1", "--benchmark", "test_other")
    assert out.returncode == 2 and "run 1 has no cases of that --benchmark/--model" in out.stderr
