"""--evals-stop-early: the stopping rule's error rate by simulation, and the plugin on a real session."""

from __future__ import annotations

import math
import random

import pytest
from conftest import rows

from pytest_evals.scoring.early import hypergeom_tail, looks, settle


def test_hypergeometric_tails_match_counting() -> None:
    # 10 items, 4 successes, 3 drawn: P(X >= 2) = (C(4,2)C(6,1) + C(4,3)) / C(10,3) = (36 + 4) / 120
    assert hypergeom_tail(2, 10, 4, 3, upper=True) == pytest.approx(40 / 120)
    assert hypergeom_tail(1, 10, 4, 3, upper=False) == pytest.approx(1 - 40 / 120)
    assert hypergeom_tail(4, 10, 4, 3, upper=True) == 0.0
    assert looks(5) == (1, 2, 3, 4, 5) and looks(100)[:21] == tuple(range(1, 21)) + (22,) and looks(100)[-1] == 100


def test_certain_verdicts_need_no_statistics() -> None:
    assert settle(30, 0, 31, 60, 0.5, 0.05).certain  # 30 of 60 pass already: the full run passes
    fail = settle(2, 0, 33, 60, 0.5, 0.05)  # 2 + 27 left < 30
    assert fail.verdict == "fail" and fail.certain
    assert settle(2, 1, 32, 60, 0.5, 0.05) is None or not settle(2, 1, 32, 60, 0.5, 0.05).certain


@pytest.mark.parametrize("total,minimum,passes", [(60, 0.5, 29), (60, 0.5, 30), (120, 0.7, 83), (120, 0.7, 84)])
def test_peeking_after_every_case_keeps_the_error_rate(total: int, minimum: float, passes: int) -> None:
    """At the threshold, from either side (the hardest truth to call), the share of random orders whose
    early verdict differs from the full run's stays within alpha; peeking at the full alpha after every
    case (no spending) is wrong in about a fifth of them, so this fails if the spending is dropped."""
    rng, runs, wrong = random.Random(7), 400, 0
    truth = "pass" if passes >= math.ceil(minimum * total - 1e-9) else "fail"
    for _ in range(runs):
        order = [1] * passes + [0] * (total - passes)
        rng.shuffle(order)
        passed = 0
        for n, outcome in enumerate(order, 1):
            passed += outcome
            settled = settle(passed, 0, n, total, minimum, 0.05)
            if settled is not None:
                wrong += settled.verdict != truth
                break
    assert wrong / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs), wrong


def test_a_clear_verdict_stops_early() -> None:
    rng = random.Random(3)
    order = [1] * 54 + [0] * 6
    rng.shuffle(order)
    passed = 0
    for n, outcome in enumerate(order, 1):
        passed += outcome
        settled = settle(passed, 0, n, 60, 0.5, 0.05)
        if settled:
            break
    assert settled.verdict == "pass" and not settled.certain and n < 25


SUITE = """
import pytest

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(100))
def test_clear(model, i):
    assert model.generate(f"q{i}").text and i % 10 != 3  # 90% pass

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(40))
def test_borderline(model, i):
    assert model.generate(f"b{i}").text and i % 2 == 0  # 50% pass: settled only by its last cases

def test_plain():
    pass
"""


def test_a_clear_benchmark_stops_and_a_borderline_one_runs_to_the_end(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest("--model=fake:m", "--evals-stop-early", "-rs")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    line = [l for l in result.outlines if l.startswith("evals-stop-early: test_suite.py::test_clear [fake:m]")]
    assert len(line) == 1 and "PASS settled at" in line[0] and "by an exact test" in line[0], result.outlines
    settled_at = int(line[0].split("PASS settled at ")[1].split(" of ")[0])
    saved = int(line[0].split("saved ")[1].split(" cases")[0])
    assert 5 < settled_at < 60 and saved > 0  # (cases of a window already started finish, as with -x)
    assert f"saved {saved} cases not run, about {saved} model calls" in line[0]
    assert not any("test_borderline" in l for l in result.outlines if l.startswith("evals-stop-early"))
    stored = dict(rows(fake_project, "SELECT benchmark || ':' || outcome, count(*) FROM cases GROUP BY 1"))
    assert stored["test_suite.py::test_clear:skipped"] == saved
    assert stored["test_suite.py::test_borderline:passed"] == 20 and stored["test_suite.py::test_borderline:failed"] == 20
    # the order is the seeded one: the same cases ran again; another seed runs others
    first = rows(fake_project, "SELECT nodeid FROM cases WHERE run_id = 1 AND outcome != 'skipped' AND nodeid LIKE '%clear%'")
    again = fake_project.runpytest("--model=fake:m", "--evals-stop-early")
    assert rows(fake_project, "SELECT nodeid FROM cases WHERE run_id = 2 AND outcome != 'skipped' "
                              "AND nodeid LIKE '%clear%'") == first
    assert again.ret == pytest.ExitCode.OK


def test_stop_early_is_refused_under_xdist_and_with_repeats(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest_subprocess("--model=fake:m", "--evals-stop-early", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --evals-stop-early: not under xdist yet*drop -n/--tx*"])
    result = fake_project.runpytest("--model=fake:m", "--evals-stop-early", "--evals-repeat=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_without_batching_the_benchmark_stops_at_the_case_that_settles_it(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite=SUITE)
    result = fake_project.runpytest("--model=fake:m", "--evals-stop-early", "-o", "evals_batch=false")
    assert result.ret == pytest.ExitCode.OK
    line = next(l for l in result.outlines if l.startswith("evals-stop-early: test_suite.py::test_clear"))
    settled_at = int(line.split("PASS settled at ")[1].split(" of ")[0])
    assert f"saved {100 - settled_at} cases not run" in line
    assert rows(fake_project, "SELECT count(*) FROM cases WHERE outcome != 'skipped' AND nodeid LIKE '%clear%'") == [
        (settled_at,)]
