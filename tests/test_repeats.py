"""Repeated samples (--evals-repeat, evals_repeat): pass@k, intervals over cases, flaky cases, resume and cache."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
from conftest import FAKE_BACKEND, counts, rows

from pytest_evals.scoring.stats import BenchmarkScores, pass_at_k, wilson

# A fake backend that samples: at a temperature above 0 each answer carries a random number; it fails a
# prompt with "boom" in it while FAKE_BOOM is set.
SAMPLER = FAKE_BACKEND + '''
import os
import random

_generate = FakeBackend.generate


def generate(self, requests):
    with open(os.environ["FAKE_LOG"], "a") as handle:
        handle.write(f"{len(requests)}\\n")
    for r in requests:
        if "boom" in r.prompt and os.environ.get("FAKE_BOOM"):
            raise ConnectionError("server went away")
    return [Reply(text=f"{r.prompt}:{random.random() if r.temperature > 0 else 0}", prompt_tokens=1,
                  completion_tokens=1) for r in requests]


FakeBackend.generate = generate
'''

SUITE = """
import pytest

@pytest.mark.parametrize("case", ["always", "never", "half"])
def test_sampled(model, evals_sample, evals_score, case):
    reply = model.generate(case, max_tokens=4, temperature=0.8)
    evals_score(length=float(len(reply.text)))
    assert case == "always" or (case == "half" and evals_sample.index % 2 == 0)
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest(SAMPLER)
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("FAKE_LOG", str(pytester.path / "fake.log"))
    return pytester


def requests_sent(pytester: pytest.Pytester) -> int:
    log = pytester.path / "fake.log"
    sent = sum(int(n) for n in log.read_text().split()) if log.exists() else 0
    log.unlink(missing_ok=True)
    return sent


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    # by brute force: the share of k-subsets of the n samples that hold at least one pass
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                assert math.isclose(pass_at_k(n, c, k), sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError, match="pass@6 needs at least 6 samples, not 5"):
        pass_at_k(5, 1, 6)


def test_the_interval_counts_cases_not_samples() -> None:
    # 20 cases of 5 samples that agree within each case: 50 independent coin flips they are not
    scores = BenchmarkScores("b", "m")
    for case in range(20):
        for sample in range(5):
            outcome = "passed" if case < 10 else "failed"
            scores.add(f"t[{case}-s{sample + 1}of5]", outcome, None, f"t[{case}]", sample, 5)
    clustered = scores.pass_rate()
    naive = wilson(50, 100)
    assert clustered.value == 0.5 and clustered.n == 20
    assert clustered.high - clustered.low > 1.5 * (naive.high - naive.low)
    # pass@5 only (5 samples: no pass@10), over the 20 cases; each case's samples all pass or all fail, so its
    # pass@5 is 1 or 0, and their mean is 0.5
    assert {k: (e.value, e.n) for k, e in scores.pass_at().items()} == {"pass@5": (0.5, 20)}
    assert scores.flaky == []


def test_pass_at_k_of_a_benchmark_is_the_mean_of_its_cases() -> None:
    """By hand, with C(n, k) the binomial coefficient: pass@k = 1 - C(n - c, k) / C(n, k) for a case of n
    scored samples of which c passed; a case with fewer than k scored samples has no pass@k."""
    scores = BenchmarkScores("b", "m")
    for case, outcomes in {"a": "PPPFFFFFFF", "b": "FFFFFFFFFF", "c": "EPPFFFFFFF"}.items():
        for sample, letter in enumerate(outcomes):
            outcome = {"P": "passed", "F": "failed", "E": "error"}[letter]
            scores.add(f"t[{case}-s{sample + 1}of10]", outcome, None, f"t[{case}]", sample, 10)
    # pass@5: a, 3 of 10: 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12; b: 0; c, 2 of 9 scored: 1 - C(7,5)/C(9,5)
    # = 1 - 21/126 = 5/6; the mean (11/12 + 0 + 10/12) / 3 = 7/12. pass@10: a 1, b 0 (c has 9 scored): 1/2
    found = {k: (e.value, e.n) for k, e in scores.pass_at().items()}
    assert found == {"pass@5": (pytest.approx(7 / 12), 3), "pass@10": (0.5, 2)}


def test_each_sample_is_a_test_and_the_case_keeps_its_pass_rate_pass_at_k_and_flakiness(
        project: pytest.Pytester) -> None:
    result = project.runpytest("--model=fake:m", "--evals-repeat=4", "-v")
    assert counts(result) == {"passed": 6, "wrong": 6}
    result.stdout.fnmatch_lines(["*test_sampled[[]always-fake:m-s1of4[]] PASSED*",
                                 "*test_sampled[[]half-fake:m-s2of4[]] WRONG*"])
    assert requests_sent(project) == 12  # batched together, yet each sample is a request of its own
    result.stdout.fnmatch_lines([
        "evals-repeat: test_suite.py::test_sampled [fake:m]: 3 cases x 4 samples; scores are means over cases, with "
        "intervals over cases; 1 flaky (their samples disagree): test_sampled[half-fake:m]",
        "*test_suite.py::test_sampled  fake:m  pass_rate  3       0  50.0%*FAIL*",
        "*pass@4     3*0.667*"])
    stored = rows(project, "SELECT nodeid, samples, scored, passed, errors, pass_rate, pass_at_k, flaky "
                           "FROM repeated_cases ORDER BY nodeid")
    assert [(r[0].split("::")[-1], *r[1:6], json.loads(r[6]), r[7]) for r in stored] == [
        ("test_sampled[always-fake:m]", 4, 4, 4, 0, 1.0, {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}, 0),
        ("test_sampled[half-fake:m]", 4, 4, 2, 0, 0.5, {"1": 0.5, "2": 5 / 6, "3": 1.0, "4": 1.0}, 1),
        ("test_sampled[never-fake:m]", 4, 4, 0, 0, 0.0, {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0}, 0)]
    assert rows(project, "SELECT sample, samples, repeat_of FROM cases WHERE nodeid LIKE '%half-fake:m-s3of4%'") == [
        (3, 4, "test_suite.py::test_sampled[half-fake:m]")]
    assert rows(project, "SELECT metric, n FROM benchmarks ORDER BY id") == [("pass_rate", 3), ("length", 3),
                                                                             ("pass@4", 3)]
    outputs = [r[0] for r in rows(project, "SELECT output_text FROM calls WHERE input_text = 'always'")]
    assert len(set(outputs)) == 4  # four samples, four answers
    shown = subprocess.run([sys.executable, "-m", "pytest_evals.cli", "show", "latest"], capture_output=True,
                           text=True, cwd=project.path)
    assert shown.stdout.splitlines()[-1] == "  test_suite.py::test_sampled [fake:m]: 3 cases x 4 samples, 1 flaky"


def test_the_marker_wins_and_a_bad_one_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(test_marked="""
        import pytest

        @pytest.mark.evals_repeat(2)
        def test_two(model):
            assert model.generate("x", temperature=1.0).text
        """)
    result = project.runpytest("--model=fake:m", "--evals-repeat=5", "test_marked.py")
    result.assert_outcomes(passed=2)
    project.makepyfile(test_marked="""
        import pytest

        @pytest.mark.evals_repeat(0)
        def test_none(model):
            pass
        """)
    result = project.runpytest("--model=fake:m", "test_marked.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, as pytest's own bad marks
    result.stdout.fnmatch_lines(["*ERROR collecting test_marked.py*",
                                 "test_marked.py::test_none: @pytest.mark.evals_repeat(0): the number of samples "
                                 "must be a whole number, at least 1", "*short test summary*"])


def test_under_the_option_a_greedy_case_runs_once_beside_sampled_ones(project: pytest.Pytester) -> None:
    """--evals-repeat over a mixed suite: the sampled test is repeated; the greedy one runs its first
    sample, skips the others with the reason, and the summary says so; the run exits 0."""
    project.makepyfile(test_greedy="""
        def test_greedy(model):
            assert model.generate("x").text
        """)
    for args in ([], ["-n", "2"]):
        result = project.runpytest_subprocess("--model=fake:m", "--evals-repeat=3", "test_greedy.py", "test_suite.py",
                                              "--evals-threshold=test_suite.py::test_sampled 0.5", "-rs", *args)
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
        assert counts(result) == {"passed": 1 + 5, "wrong": 4, "skipped": 2}
        result.stdout.fnmatch_lines([
            "*greedy: model.generate() asks for temperature 0, so all 3 samples would be the same answer: the case "
            "runs once (sample 1); --evals-repeat-greedy repeats it anyway*",
            "evals-repeat: test_greedy.py::test_greedy [[]fake:m[]]: 1 case ran once, not repeated: greedy calls "
            "(temperature 0) give every sample the same answer; --evals-repeat-greedy repeats them anyway",
            "test_greedy.py::test_greedy *pass_rate  1 * 100.0%  [[]20.7%, 100.0%[]] * PASS"])
        assert "test_greedy [fake:m]: 1 case x 3 samples" not in result.stdout.str()
        assert requests_sent(project) == 1 + 9
        greedy = [r for r in rows(project, "SELECT nodeid, outcome FROM cases WHERE run_id = (SELECT max(id) FROM runs)")
                  if "test_greedy" in r[0]]
        assert sorted(greedy) == [("test_greedy.py::test_greedy[fake:m-s1of3]", "passed"),
                                  ("test_greedy.py::test_greedy[fake:m-s2of3]", "skipped"),
                                  ("test_greedy.py::test_greedy[fake:m-s3of3]", "skipped")]
    result = project.runpytest("--model=fake:m", "--evals-repeat=3", "--evals-repeat-greedy", "test_greedy.py")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3)


def test_a_tests_own_repeat_marker_on_greedy_calls_is_a_usage_error_unless_meant(project: pytest.Pytester) -> None:
    project.makepyfile(test_greedy="""
        import pytest

        @pytest.mark.evals_repeat(3)
        def test_greedy(model):
            assert model.generate("x").text
        """)
    result = project.runpytest("--model=fake:m", "test_greedy.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines([
        "FAIL test_greedy.py::test_greedy [[]fake:m[]]: model.generate() asks for temperature 0 in a case repeated 3 "
        "times, so every sample would be the same answer; pass temperature > 0 to the call, or say greedy samples "
        "are meant: @pytest.mark.evals_repeat(3, greedy=True) or --evals-repeat-greedy"])
    assert requests_sent(project) == 0
    project.makepyfile(test_greedy="""
        import pytest

        @pytest.mark.evals_repeat(3, greedy=True)
        def test_greedy(model):
            assert model.generate("x").text
        """)
    result = project.runpytest("--model=fake:m", "test_greedy.py")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=3)


def test_resume_runs_only_the_samples_that_did_not_finish(project: pytest.Pytester, monkeypatch) -> None:
    project.makepyfile(test_suite="""
        def test_flaky_server(model, evals_sample):
            prompt = "boom" if evals_sample.index == 1 else "fine"
            assert model.generate(prompt, temperature=0.5).text
        """)
    monkeypatch.setenv("FAKE_BOOM", "1")
    first = project.runpytest("--model=fake:m", "--evals-repeat=3")
    first.assert_outcomes(passed=2, errors=1)
    monkeypatch.delenv("FAKE_BOOM")
    requests_sent(project)
    resumed = project.runpytest("--model=fake:m", "--evals-repeat=3", "--evals-resume")
    resumed.assert_outcomes(passed=3)
    resumed.stdout.fnmatch_lines(["evals-resume: 2 of 3 cases already done in run 1*"])
    assert requests_sent(project) == 1


def test_each_sample_has_its_own_answer_in_the_call_cache(project: pytest.Pytester) -> None:
    assert counts(project.runpytest("--model=fake:m", "--evals-repeat=3", "--evals-cache=use")) == {
        "passed": 5, "wrong": 4}
    assert requests_sent(project) == 9
    con_rows = rows(project, "SELECT nodeid, calls.output_text FROM cases JOIN calls ON calls.case_id = cases.id "
                             "WHERE cases.run_id = 1 ORDER BY nodeid")
    import sqlite3

    cache = sqlite3.connect(project.path / ".evals" / "cache.sqlite")
    assert sorted(cache.execute("SELECT sample FROM answers").fetchall()) == [(0,)] * 3 + [(1,)] * 3 + [(2,)] * 3
    cache.close()
    replayed = project.runpytest("--model=fake:m", "--evals-repeat=3", "--evals-cache=replay")
    assert counts(replayed) == {"passed": 5, "wrong": 4}
    assert requests_sent(project) == 0
    assert rows(project, "SELECT nodeid, calls.output_text FROM cases JOIN calls ON calls.case_id = cases.id "
                         "WHERE cases.run_id = 2 ORDER BY nodeid") == con_rows
    assert len({text for _, text in con_rows}) == 9  # not one cached answer served to every sample
