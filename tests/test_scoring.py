"""Intervals and paired tests, checked against scipy and statsmodels."""

from __future__ import annotations

import random

import pytest
from conftest import require

from pytest_evals.scoring.stats import (
    BenchmarkScores,
    bootstrap_mean,
    compare,
    mcnemar_exact,
    regression_reasons,
    wilson,
)

statsmodels_proportion = require("statsmodels.stats.proportion", "pip install statsmodels", module_level=True)
scipy_stats = require("scipy.stats", "pip install scipy", module_level=True)


@pytest.mark.parametrize("successes, n", [(0, 10), (1, 10), (37, 60), (60, 60), (5, 7), (480, 1000), (1, 1)])
def test_wilson_matches_statsmodels(successes: int, n: int) -> None:
    low, high = statsmodels_proportion.proportion_confint(successes, n, alpha=0.05, method="wilson")
    estimate = wilson(successes, n)
    assert estimate.value == successes / n
    assert estimate.low == pytest.approx(low, abs=1e-12)
    assert estimate.high == pytest.approx(high, abs=1e-12)


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (3, 9), (10, 10), (1, 20), (25, 12)])
def test_exact_mcnemar_matches_statsmodels(b: int, c: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    expected = mcnemar([[10, b], [c, 10]], exact=True).pvalue
    assert mcnemar_exact(c, b) == pytest.approx(expected, abs=1e-12)
    assert mcnemar_exact(b, c) == pytest.approx(scipy_stats.binomtest(min(b, c), b + c).pvalue if b + c else 1.0)


def test_bootstrap_interval_is_deterministic_and_agrees_with_scipy() -> None:
    rng = random.Random(3)
    values = [rng.random() ** 2 for _ in range(200)]
    first, second = bootstrap_mean(values), bootstrap_mean(list(values))
    assert first == second  # fixed seed: the same interval on every run
    reference = scipy_stats.bootstrap((values,), lambda x, axis: x.mean(axis=axis), confidence_level=0.95,
                                      n_resamples=20000, method="percentile", random_state=1).confidence_interval
    # Different resampling streams: the two percentile intervals agree to Monte Carlo error.
    assert first.low == pytest.approx(reference.low, abs=0.01)
    assert first.high == pytest.approx(reference.high, abs=0.01)
    assert first.low < first.value < first.high


def scores(outcomes: dict[str, str], f1: dict[str, float] | None = None) -> BenchmarkScores:
    result = BenchmarkScores("t.py::test", "m")
    for nodeid, outcome in outcomes.items():
        result.add(nodeid, outcome, {"f1": f1[nodeid]} if f1 else None)
    return result


def test_compare_pairs_by_identity_not_position() -> None:
    base = scores({"a": "passed", "b": "failed", "c": "passed", "gone": "passed"})
    now = scores({"c": "failed", "a": "passed", "b": "passed", "new": "failed"})
    result = compare(now, base)
    assert result.paired == 3
    assert result.to_fail == ("c",) and result.to_pass == ("b",)
    assert result.rate_difference == 0.0 and result.p_value == 1.0


def test_a_significant_regression_has_a_reason_and_noise_does_not() -> None:
    ids = [f"c{i}" for i in range(40)]
    base = scores({i: "passed" for i in ids}, {i: 0.9 for i in ids})
    worse = scores({i: ("failed" if n < 12 else "passed") for n, i in enumerate(ids)}, {i: 0.5 for i in ids})
    reasons = regression_reasons(compare(worse, base), alpha=0.05, margin=0.0)
    assert any("pass rate fell 30.0%" in r and "12 now fail" in r for r in reasons)
    assert any(r.startswith("f1 fell 0.4") for r in reasons)
    noisy = scores({i: ("failed" if n < 2 else "passed") for n, i in enumerate(ids)}, {i: 0.9 for i in ids})
    assert regression_reasons(compare(noisy, base), alpha=0.05, margin=0.0) == []
    # a margin forgives a drop smaller than itself
    assert not any("pass rate" in r for r in regression_reasons(compare(worse, base), alpha=0.05, margin=0.35))


def test_cases_that_never_vary_do_not_make_the_interval_a_point() -> None:
    """Six cases that all failed were shown as [0.0%, 0.0%]: a bootstrap of values that never vary."""
    from pytest_evals.scoring.stats import score_estimate

    assert score_estimate([0.0] * 6, share=True).format_interval(True) == "[0.0%, 39.0%]"  # Wilson's, 0 of 6
    assert score_estimate([1.0] * 6, share=True).format_interval(True) == "[61.0%, 100.0%]"
    # a named metric's scale is the test's own (a judge's grade of 1 to 5): no interval to give
    for value in (0.0, 1.0, 0.5):
        constant = score_estimate([value] * 6, share=False)
        assert constant.value == value and constant.format_interval(False) == "no variation"
    spread = score_estimate([0.0, 1.0, 0.0, 1.0], share=False)
    assert spread.low is not None and spread.low < spread.value < spread.high  # the bootstrap, as before


def test_cases_that_ran_once_under_repeats_are_scored_as_cases_run_once() -> None:
    """Greedy cases under --evals-repeat run their first sample only: their pass rate is a proportion over
    cases with Wilson's interval (not a bootstrap of three 0/1 values, [0%, 100%]) and there is no pass@k."""
    from pytest_evals.scoring.stats import BenchmarkScores, wilson

    scores = BenchmarkScores("b", "m")
    for case, outcome in (("c1", "passed"), ("c2", "failed"), ("c3", "failed")):
        scores.add(f"t[{case}-s1of2]", outcome, None, f"t[{case}]", 0, 2)
        scores.add(f"t[{case}-s2of2]", "skipped", None, f"t[{case}]", 1, 2)
    assert not scores.sampled and scores.pass_rate() == wilson(1, 3) and scores.pass_at() == {}
    scores.add("t[c1-s2of2]", "failed", None, "t[c1]", 1, 2)  # now one case has two samples
    assert scores.sampled and scores.pass_rate().low == 0.0 and "pass@2" in scores.pass_at()
