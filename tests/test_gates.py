"""Score gates, exit status, JUnit properties and the baseline gate, through pytester (fake backend)."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET

import pytest
from conftest import counts

# Ten cases; those listed in the environment variable EVALS_WRONG answer wrongly.
SUITE = """
import os
import pytest

WRONG = set(os.environ.get("EVALS_WRONG", "c0").split(","))

@pytest.mark.parametrize("i", range(10), ids=lambda i: f"c{i}")
@MARKER
def test_bench(model, evals_score, i):
    evals_score(f1=0.2 if f"c{i}" in WRONG else 0.9)
    assert f"c{i}" not in WRONG
"""


def suite(pytester: pytest.Pytester, marker: str = "pytest.mark.usefixtures()", **extra: str) -> None:
    pytester.makepyfile(test_gate=SUITE.replace("MARKER", marker), **extra)


def test_a_gate_that_holds_exits_0_although_cases_failed(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(0.8, f1=0.5)")
    result = fake_project.runpytest("--model=fake:a")
    assert counts(result) == {"passed": 9, "wrong": 1}  # the wrong answer is counted as a score
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*evals summary*",
        # the strength column: 90% on 10 cases holds, but no score on 10 cases puts the interval above 80%
        "test_gate.py::test_bench*fake:a*pass_rate*10*0*90.0%*[[]59.6%, 98.2%[]]*>=80%*PASS  "
        "interval spans it: even 10 of 10 would not clear it",
        "*f1*10*0.83*>=0.5*PASS  interval clears it by 0.19",
        "evals: all 1 gates hold; exit status 0: its 1 wrong answer counts in the scores, not as test failures",
    ])


def test_a_gate_that_fails_exits_1_with_the_reason(fake_project: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("EVALS_WRONG", "c0,c1,c2,c3")
    suite(fake_project, "pytest.mark.evals_threshold(0.8, f1=0.5)")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["FAIL test_gate.py::test_bench [[]fake:a[]]: pass_rate 60.0% < 80% (marker)"])
    result.stdout.no_fnmatch_line("*f1 0.62 < 0.5*")  # 0.62 >= 0.5: that metric holds


def test_a_failing_plain_test_keeps_pytest_meaning(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(0.5)", test_unit="def test_unit():\n    assert False\n")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == 1
    result.stdout.no_fnmatch_line("*gates hold*")


def test_errors_fail_the_run_unless_allowed(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(
        test_err="""
        import pytest

        @pytest.mark.evals_threshold(0.5)
        @pytest.mark.parametrize("p", ["ok1", "ok2", "ok3", "boom"])
        def test_calls(model, p):
            model.generate(p)
        """
    )
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == 1
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*FAIL test_err.py::test_calls [[]fake:a[]]: 1 of 4 cases ended in error "
                                 "(25.0% > --evals-max-error-rate 0.0%)"])
    result = fake_project.runpytest("--model=fake:a", "--evals-max-error-rate=0.25")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["test_err.py::test_calls*pass_rate*3*1*100.0%*PASS  "  # errors not scored
                                 "interval spans it: even 3 of 3 would not clear it"])


def test_precedence_marker_then_command_line_then_ini(fake_project: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("EVALS_WRONG", "c0,c1,c2")  # pass rate 70%
    fake_project.makeini("[pytest]\nevals_thresholds =\n    *::test_bench 0.9\n")
    suite(fake_project)
    result = fake_project.runpytest("--model=fake:a")
    result.stdout.fnmatch_lines(["*pass_rate 70.0% < 90% (ini evals_thresholds)"])
    assert result.ret == 1
    result = fake_project.runpytest("--model=fake:a", "--evals-threshold=test_gate.py::test_bench 0.6")
    assert result.ret == 0
    suite(fake_project, "pytest.mark.evals_threshold(0.75)")
    result = fake_project.runpytest("--model=fake:a", "--evals-threshold=test_gate.py::test_bench 0.6")
    result.stdout.fnmatch_lines(["*pass_rate 70.0% < 75% (marker)"])
    assert result.ret == 1


@pytest.mark.parametrize(
    "marker, message",
    [
        ("pytest.mark.evals_threshold(1.5)", "*evals_threshold: min_pass_rate=1.5 is outside 0..1"),
        ("pytest.mark.evals_threshold(0.5, 0.6)", "*evals_threshold takes one positional argument*"),
        ("pytest.mark.evals_threshold(f1='high')", "*evals_threshold: f1='high' is not a number"),
        ("pytest.mark.evals_threshold()", "*name at least one minimum*"),
    ],
)
def test_bad_markers_are_usage_errors(fake_project: pytest.Pytester, marker: str, message: str) -> None:
    suite(fake_project, marker)
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_gate.py::test_bench: @pytest.mark.{message}"])


def test_malformed_ini_line_and_unknown_metric(fake_project: pytest.Pytester) -> None:
    suite(fake_project)
    fake_project.makeini("[pytest]\nevals_thresholds =\n    *::test_bench high\n")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini evals_thresholds '*::test_bench high': 'high' is not a number"])
    fake_project.makeini("[pytest]\nevals_thresholds =\n    *::test_bench 0.5 rouge=0.3\n")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["FAIL test_gate.py::test_bench [[]fake:a[]]: threshold on metric 'rouge' "
                                 "(ini evals_thresholds), but no case recorded it; record it with "
                                 "evals_score(rouge=...) or fix the name"])


def test_junit_carries_case_scores_and_benchmark_aggregates(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(0.8)")
    fake_project.runpytest_subprocess("--model=fake:a", "-n", "2", "--junitxml=out.xml")
    root = ET.parse(fake_project.path / "out.xml").getroot()
    case = next(c for c in root.iter("testcase") if c.get("name") == "test_bench[c0-fake:a]")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props == {"evals.outcome": "failed", "evals.score.f1": "0.2"}
    assert case.find("failure") is not None  # a wrong answer is still a JUnit failure
    suite_props = {p.get("name"): p.get("value") for p in root.find("testsuite").find("properties")}
    prefix = "evals.test_gate.py::test_bench[fake:a]"
    assert suite_props[f"{prefix}.verdict"] == "pass"
    assert suite_props[f"{prefix}.pass_rate"] == "0.9"
    low, high = map(float, suite_props[f"{prefix}.pass_rate.interval95"].split())
    assert (low, high) == (pytest.approx(0.595849, abs=1e-5), pytest.approx(0.982124, abs=1e-5))
    assert float(suite_props[f"{prefix}.f1"]) == pytest.approx(0.83)


def test_gate_results_are_stored(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(0.8, f1=0.5)")
    fake_project.runpytest("--model=fake:a")
    con = sqlite3.connect(fake_project.path / ".evals" / "evals.sqlite")
    rows = con.execute("SELECT metric, n, value, minimum, threshold_source, verdict FROM benchmarks").fetchall()
    assert rows == [("pass_rate", 10, 0.9, 0.8, "marker", "pass"), ("f1", 10, pytest.approx(0.83), 0.5,
                                                                     "marker", "pass")]
    assert con.execute("SELECT exit_status FROM runs").fetchone() == (0,)


def test_baseline_gate_fails_a_significant_regression_and_lists_flips(fake_project: pytest.Pytester,
                                                                       monkeypatch) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(0.3)")
    monkeypatch.setenv("EVALS_WRONG", "none")
    assert fake_project.runpytest("--model=fake:a").ret == 0  # run 1: all pass
    monkeypatch.setenv("EVALS_WRONG", "c1")
    result = fake_project.runpytest("--model=fake:a", "--evals-baseline=latest")
    assert result.ret == 0  # one flip is not significant
    # what the comparison could have caught: on 10 paired cases, only a drop of two thirds
    result.stdout.fnmatch_lines(["baseline: run 1 (paired by case; alpha 0.05, margin 0)",
                                 "test_gate.py::test_bench*pass_rate*90.0%*>=30%*PASS  interval clears it by 4 cases; "
                                 "80% power for a drop of 67.3 points",
                                 "*vs baseline: 1 now fail: test_bench[[]c1-fake:a[]]"])
    monkeypatch.setenv("EVALS_WRONG", "c0,c1,c2,c3,c4,c5,c6")
    result = fake_project.runpytest("--model=fake:a", "--evals-baseline=1")
    assert result.ret == 1
    # each failing row says why in its own row: the pass rate is above its minimum, and fails as a regression
    result.stdout.fnmatch_lines(["test_gate.py::test_bench*pass_rate*30.0%*>=30%*FAIL  regression against the baseline  "
                                 "interval spans it: 3 cases short of clearing; 80% power for a drop of 68.6 points",
                                 "*f1*FAIL  regression against the baseline"])
    result.stdout.fnmatch_lines([
        "FAIL test_gate.py::test_bench [[]fake:a[]]: regression against the baseline: pass rate fell 70.0% "
        "on 10 paired cases (7 now fail, 0 now pass; McNemar p=0.0156 < 0.05)",
        "FAIL test_gate.py::test_bench [[]fake:a[]]: regression against the baseline: f1 fell 0.49*",
        "*vs baseline: 7 now fail: test_bench[[]c0-fake:a[]], *, test_bench[[]c4-fake:a[]] and 2 more",
    ])
    # a margin larger than the drop forgives it; the pass-rate threshold still holds at 30%
    result = fake_project.runpytest("--model=fake:a", "--evals-baseline=1", "--evals-margin=0.75")
    assert result.ret == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--evals-baseline=7"], "ERROR: --evals-baseline 7: no run 7 in *evals.sqlite; `pytest-evals runs` lists them"),
        (["--evals-baseline=first"], "ERROR: --evals-baseline first: 'first': expected a run id or 'latest'"),
        (["--evals-baseline=latest", "--evals-db=none.sqlite"],
         "ERROR: --evals-baseline latest: there is no database at *none.sqlite yet*"),
        (["--evals-alpha=0"], "ERROR: --evals-alpha 0.0: must be between 0 and 1"),
    ],
)
def test_bad_baseline_input_is_one_line(fake_project: pytest.Pytester, args: list[str], message: str) -> None:
    suite(fake_project)
    fake_project.runpytest("--model=fake:a")
    result = fake_project.runpytest("--model=fake:a", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_benchmark_whose_cases_all_skip_does_not_fail(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(
        test_skip="""
        import pytest

        @pytest.mark.evals_threshold(0.9)
        @pytest.mark.parametrize("i", range(3))
        def test_later(model, i):
            pytest.skip("not served yet")
        """
    )
    result = fake_project.runpytest("--model=fake:a")
    result.assert_outcomes(skipped=3)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["test_skip.py::test_later*pass_rate*0*0*-*-*>=90%*PASS"])


def test_a_bad_marker_under_xdist_fails_its_cases_with_the_one_line(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(1.5)")
    result = fake_project.runpytest_subprocess("--model=fake:a", "-n", "2")
    result.assert_outcomes(errors=10)
    result.stdout.fnmatch_lines(["*test_gate.py::test_bench: @pytest.mark.evals_threshold: min_pass_rate=1.5 is "
                                 "outside 0..1*"])
    assert "Traceback" not in result.stdout.str()


def test_exit_status_is_pytests_when_x_cut_the_run_short(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "pytest.mark.evals_threshold(0.5)")
    result = fake_project.runpytest("--model=fake:a", "-x")
    assert result.ret == 1  # stopped at the first wrong answer: the gate saw one case only
    result.stdout.no_fnmatch_line("*gates hold*")
