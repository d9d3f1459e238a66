"""Batching across cases: a window of cases runs together, each model call it makes batched with the
same call of the others (first calls, second turns, tool rounds), each body once, and everything else
(outcomes, records, fixtures, captured output, resume, xdist) as without batching. Plugin logic with a fake
backend that logs the size of every call it gets; the real backends' batches are compared in
tests/test_hf.py and benchmarks/."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import FAKE_BACKEND, rows

LOGGING_BACKEND = FAKE_BACKEND.replace('''    def generate(self, requests):
        replies = []''', '''    def generate(self, requests):
        with open("backend_calls.log", "a") as log:
            log.write(json.dumps([r.prompt for r in requests]) + "\\n")
        replies = []''')

SUITE = '''
import pytest

SETUPS = []

@pytest.fixture(scope="module")
def shared():
    SETUPS.append(1)
    return len(SETUPS)

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("i", range(20))
def test_case(model, shared, i):
    assert shared == 1  # module fixtures are set up once, traces or not
    prompt = "same" if i in (3, 4) else ("boom" if i == 7 and BOOM else f"q{i}")
    reply = model.generate(prompt)
    if i == 9:
        model.generate("second call")  # not the first call: made alone
    assert i % 5 != 4, reply.text
'''


def backend_calls(project: pytest.Pytester) -> list[list[str]]:
    log = project.path / "backend_calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run(project: pytest.Pytester, *args: str, boom: bool = False) -> subprocess.CompletedProcess:
    project.makepyfile(test_suite=f"BOOM = {boom}\n" + SUITE)
    (project.path / "backend_calls.log").unlink(missing_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m", *args],
                          cwd=project.path, env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(LOGGING_BACKEND)
    return pytester


def outcomes(project: pytest.Pytester, run_id: int) -> dict[str, tuple]:
    return {n: (o, t) for n, o, t in rows(project, f"SELECT nodeid, outcome, output_text FROM cases WHERE run_id = {run_id}")}


def test_a_window_is_one_batched_call_and_the_outcomes_equal_one_at_a_time(project: pytest.Pytester) -> None:
    batched = run(project)
    assert batched.returncode == 0, batched.stdout[-2000:]
    calls = backend_calls(project)
    # one call for the 20 first requests, deduplicated (cases 3 and 4 share a prompt), then case 9's second
    assert [len(c) for c in calls] == [19, 1] and calls[1] == ["second call"]
    assert "evals-batch: 20 of 21 model calls served from batches across cases; 1 one at a time" in batched.stdout
    assert rows(project, "SELECT count(*) FROM calls WHERE batched = 1") == [(20,)]
    alone = run(project, "--evals-batch-size", "1", "--evals-db", "alone.sqlite")
    assert alone.returncode == 0 and [len(c) for c in backend_calls(project)] == [1] * 21
    import sqlite3

    con = sqlite3.connect(project.path / "alone.sqlite")
    assert outcomes(project, 1) == {n: (o, t) for n, o, t in con.execute("SELECT nodeid, outcome, output_text FROM cases")}
    assert con.execute("SELECT count(*) FROM calls WHERE batched = 1").fetchone() == (0,)


def test_a_failed_batch_leaves_each_case_to_its_own_call(project: pytest.Pytester) -> None:
    result = run(project, boom=True)
    calls = backend_calls(project)
    assert len(calls[0]) == 19 and "boom" in calls[0]  # the batch failed as a whole ...
    assert sum(len(c) == 1 for c in calls) == 21  # ... so every case called alone (case 9 twice)
    got = outcomes(project, 1)
    assert got["test_suite.py::test_case[7-fake:m]"][0] == "error"
    assert sum(o == "passed" for o, _ in got.values()) == 15
    assert "1 error" in result.stdout


PARTIAL_BACKEND = FAKE_BACKEND + '''

from pytest_evals.backends.base import PartialBatch


class PartialBackend(FakeBackend):
    """A request containing "flaky" fails inside a call of several requests and succeeds alone."""

    def generate(self, requests):
        replies = super().generate(requests)
        if len(requests) > 1 and any("flaky" in r.prompt for r in requests):
            raise PartialBatch([None if "flaky" in r.prompt else reply for r, reply in zip(requests, replies)],
                               ConnectionError("dropped inside the batch"))
        return replies


def pytest_evals_register_backends(register):
    register("partial", PartialBackend)
'''


def test_a_case_that_calls_alone_after_its_batch_failed_keeps_its_own_timing(pytester: pytest.Pytester) -> None:
    """The round's time is returned with its results, never left on the planner for the next case to read:
    the case whose request failed in the batch calls alone, and its row says so (not batched, no batch
    time), while the cases the batch served keep theirs."""
    pytester.makeconftest(PARTIAL_BACKEND)
    pytester.makepyfile(test_timing="""
        import pytest

        @pytest.mark.parametrize("prompt", ["ok1", "ok2", "flaky"])
        def test_timing(model, prompt):
            assert model.generate(prompt).text
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--model=partial:m")
    assert result.ret == 0, result.stdout.str()[-2000:]
    got = {prompt: (batched, batch_s) for prompt, batched, batch_s in
           rows(pytester, "SELECT input_text, batched, batch_s FROM calls WHERE error IS NULL")}
    assert got["flaky"] == (None, None)
    assert got["ok1"][0] == 1 and got["ok2"][0] == 1 and got["ok1"][1] is not None


def test_x_stops_after_the_window_in_flight_and_records_every_case_that_ran(project: pytest.Pytester) -> None:
    result = run(project, "-x", "-rs")
    assert result.returncode == 1
    assert [len(c) for c in backend_calls(project)] == [19]  # the whole window's first calls, as one batch ...
    # ... so every case of it ran, and is reported and recorded: a case that cost a call is never dropped;
    # case 9, waiting for its second answer when case 4 failed, was skipped there
    got = outcomes(project, 1)
    assert len(got) == 20 and got["test_suite.py::test_case[9-fake:m]"][0] == "skipped"
    assert "not run to its end: the run is stopping (stopping after " in result.stdout


def test_resumed_cases_are_not_run_again(project: pytest.Pytester) -> None:
    stopped = run(project, "-x", "--evals-batch-size", "1")  # one at a time: -x stops at the fifth case
    assert stopped.returncode == 1 and len(outcomes(project, 1)) == 5
    resumed = run(project, "--evals-resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    first = backend_calls(project)[0]
    assert "q0" not in first and "same" not in first and len(first) == 15  # cases 5-19
    assert "evals-resume: 5 cases replayed from run 1, not run again" in resumed.stdout


def test_under_xdist_each_worker_batches_its_queue(project: pytest.Pytester) -> None:
    result = run(project, "-n", "2")
    assert result.returncode == 0, result.stdout[-2000:]
    (batched,) = rows(project, "SELECT count(*) FROM calls WHERE batched = 1")[0]
    assert batched >= 10 and max(len(c) for c in backend_calls(project)) > 1
    assert rows(project, "SELECT count(*), sum(outcome = 'passed') FROM cases") == [(20, 16)]


BODIES = '''
import pytest

def body(name):
    with open("bodies.log", "a") as log:
        log.write(name + "\\n")

@pytest.mark.parametrize("i", range(12))
def test_no_model_call(model, i):
    body(f"never-{i}")  # never reaches the model

@pytest.mark.parametrize("i", range(12))
def test_sometimes(model, i):
    body(f"sometimes-{i}")
    if i % 3 == 0:
        return  # some cases end without a call
    assert model.generate(f"s{i}").text

@pytest.mark.evals_batch(False)
@pytest.mark.parametrize("i", range(6))
def test_opted_out(model, i):
    body(f"out-{i}")
    assert model.generate(f"o{i}").text

@pytest.mark.parametrize("i", range(6))
def test_always(model, i):
    body(f"always-{i}")
    assert model.generate(f"a{i}").text
'''


def _bodies(project: pytest.Pytester) -> dict[str, int]:
    runs: dict[str, int] = {}
    for line in (project.path / "bodies.log").read_text().split():
        group = line.split("-")[0]
        runs[group] = runs.get(group, 0) + 1
    return runs


def batched_by_test(project: pytest.Pytester) -> dict[str, float]:
    return dict(rows(project, "SELECT substr(nodeid, 1, instr(nodeid, '[') - 1), total(batched) FROM cases "
                              "JOIN calls ON calls.case_id = cases.id GROUP BY 1"))


def test_every_body_runs_once(project: pytest.Pytester) -> None:
    project.makepyfile(test_bodies=BODIES)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m"],
                          cwd=project.path, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert _bodies(project) == {"never": 12, "sometimes": 12, "out": 6, "always": 6}
    # the bodies that call the model were batched (whatever their siblings did); the opted-out went alone
    assert batched_by_test(project) == {"test_bodies.py::test_sometimes": 8, "test_bodies.py::test_opted_out": 0,
                                        "test_bodies.py::test_always": 6}


def test_ini_evals_batch_false_opts_every_test_out_and_a_marker_brings_one_back(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nevals_batch = false\n")
    project.makepyfile(test_bodies=BODIES.replace("@pytest.mark.evals_batch(False)", "@pytest.mark.evals_batch(True)"))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m"],
                          cwd=project.path, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert _bodies(project) == {"never": 12, "sometimes": 12, "out": 6, "always": 6}
    assert batched_by_test(project) == {"test_bodies.py::test_sometimes": 0, "test_bodies.py::test_opted_out": 6,
                                        "test_bodies.py::test_always": 0}


def test_a_bad_evals_batch_marker_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(test_bad="""
        import pytest

        @pytest.mark.evals_batch("no")
        def test_x(model):
            pass
    """)
    result = project.runpytest("--model=fake:m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: test_bad.py::test_x: @pytest.mark.evals_batch takes True or False, "
                                 "e.g. @pytest.mark.evals_batch(False)"])


def test_the_window_holds_two_batches_or_eight_cases_per_request_in_flight() -> None:
    from pytest_evals.calls.planner import window_size

    assert window_size(32, None, budget=False) == 64  # a local model: two batches (a round's chunks)
    assert window_size(2, None, budget=False) == 4
    assert window_size(None, 10, budget=False) == 80  # a server: 8 cases per request in flight
    assert window_size(4, 10, budget=False) == 80 and window_size(64, 10, budget=False) == 128
    assert window_size(32, None, budget=True) == 32 and window_size(None, 8, budget=True) == 8  # one batch's worth


def test_the_batch_line_counts_the_same_calls_on_both_sides(fake_project: pytest.Pytester) -> None:
    """A judge's batched calls are not model calls: counted among the shared ones, they made the line say
    '12 of 6 model calls served from batches across cases; -6 one at a time'."""
    fake_project.makepyfile(test_judged="""
        import pytest

        @pytest.mark.evals_judge("fake:j")
        @pytest.mark.parametrize("i", range(6))
        def test_judged(model, judge, i):
            model.generate(f"q{i}")
            judge.generate(f"grade {i}")
        """)
    result = fake_project.runpytest("--model=fake:m")
    assert rows(fake_project, "SELECT role, sum(batched) FROM calls GROUP BY role ORDER BY role") == [("judge", 6),
                                                                                                        ("model", 6)]
    result.stdout.fnmatch_lines(["evals-batch: 6 of 6 model calls served from batches across cases; 0 one at a time"])
