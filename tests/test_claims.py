"""Paths the README claims that no other test ran (issue 20, item 4): a model that fails to load, an
``openai:`` server that refuses the key or writes a malformed stream chunk, a teardown that fails, a
database that fails at the end of a run, a malformed ini ``evals_retry``, and the JUnit property of a
case that ended in error."""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from conftest import FAKE_BACKEND, _required, counts, free_port, rows

SUITE = """
import pytest

@pytest.mark.evals_threshold(0.0)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_bench(model, prompt):
    assert model.generate(prompt, max_tokens=8).text
"""


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest cuts its short summary lines at the terminal's width: wide enough for a whole reason."""
    monkeypatch.setenv("COLUMNS", "240")


def suite(project: pytest.Pytester, *prompts: str) -> None:
    project.makepyfile(test_suite=SUITE.replace("PROMPTS", repr(list(prompts))))


def one_line_reasons(result: pytest.RunResult) -> list[str]:
    """pytest's short summary lines of the cases that ended in error."""
    return [line for line in result.stdout.lines if line.startswith("ERROR ")]


def error_section(result: pytest.RunResult) -> list[str]:
    """The lines of pytest's ERRORS section, each header line as a pattern ``*HEADER*``."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "= ERRORS =" in line) + 1
    end = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    return [f"*{line.strip('_ ')}*" if line.startswith("___") else line for line in lines[start:end]]


# --- a model that fails to load -----------------------------------------------------------------------
BROKEN_BACKEND = FAKE_BACKEND + '''
from pathlib import Path


class BrokenBackend(FakeBackend):
    def __init__(self, spec, settings):
        with open(Path(__file__).parent / "loads.txt", "a") as handle:  # how often a load was tried
            handle.write("load\\n")
        raise RuntimeError("CUDA out of memory while loading the weights")


def pytest_evals_register_backends(register):
    register("fake", FakeBackend)
    register("broken", BrokenBackend)
'''


def test_a_model_that_fails_to_load_ends_its_cases_as_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(BROKEN_BACKEND)
    suite(pytester, "a", "b", "c")
    result = pytester.runpytest("--model=broken:m", "--model=fake:ok")
    assert counts(result) == {"passed": 3, "errors": 3}
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # errors fail the run (max error rate 0)
    reason = "broken:m: could not load the model: RuntimeError: CUDA out of memory while loading the weights"
    stored = rows(pytester, "select nodeid, outcome, error from cases order by nodeid")
    assert [(n.rsplit("-", 1)[1], o) for n, o, _ in stored] == [
        ("broken:m]", "error"), ("fake:ok]", "passed")] * 3
    assert all(e.endswith(reason) and "\n" not in e for n, o, e in stored if o == "error")
    # the load is tried once: the later cases end at once with the same reason
    assert (pytester.path / "loads.txt").read_text().count("load") == 1
    # pytest's ERRORS section: each case's header and the one-line reason, nothing else
    section = error_section(result)
    assert section == [line for case in "abc" for line in (f"*ERROR at setup of test_bench[{case}-broken:m]*",
                                                           reason)]
    assert one_line_reasons(result) == [f"ERROR test_suite.py::test_bench[{case}-broken:m] - Failed: {reason}"
                                        for case in "abc"]
    out = result.stdout.str()
    assert "Traceback" not in out and "pool.py" not in out  # the plugin's internals stay out of it


# --- an openai: server that refuses the key, or writes a malformed stream chunk --------------------
@pytest.fixture
def stub(tmp_path: Path):
    """tests/stubserver.py with any extra flags: ``url = stub(*flags)``; readiness is asked of /stats,
    which needs no key. Stopped after the test."""
    _required("uvicorn", "pip install 'llama-cpp-python[server]'")
    procs: list[subprocess.Popen] = []

    def start(*flags: str) -> str:
        port = free_port()
        log = tmp_path / f"stub{port}.log"
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).parent / "stubserver.py"), str(port), "0.01", "0", *flags],
                stdout=handle, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            assert procs[-1].poll() is None, f"the stub server exited; see {log}"
            try:
                if httpx.get(f"{base}/stats", timeout=1).status_code == 200:
                    return f"{base}/v1"
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the stub server did not answer; see {log}")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def stats(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/stats", timeout=5).json()


def test_a_server_that_refuses_the_key_is_a_usage_error_at_start_up(
        pytester: pytest.Pytester, stub, monkeypatch: pytest.MonkeyPatch) -> None:
    url = stub("--api-key=sk-right")
    suite(pytester, "a", "b")
    spec = f"openai:stub@{url}"
    for key, status in ((None, 401), ("sk-wrong", 403)):
        if key is None:
            monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        else:
            monkeypatch.setenv("OPENAI_API_KEY", key)
        result = pytester.runpytest_subprocess(f"--model={spec}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        # under an outer xdist run, pytest-benchmark warns on stderr that it is disabled: not ours
        errors = [line for line in result.stderr.lines if line.strip() and "PytestBenchmarkWarning" not in line
                  and line.strip() != "warner(PytestBenchmarkWarning(text))"]
        assert errors == [f"ERROR: --model {spec}: the server refused the API key (HTTP {status}); "
                          "set OPENAI_API_KEY"]
        assert "Traceback" not in result.stdout.str() and "collected" not in result.stdout.str()
    assert stats(url)["requests"] == 0  # refused at start-up: no case sent a request
    assert not (pytester.path / ".evals").exists()  # nor was a run stored
    # the key the server accepts: the same run works
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right")
    result = pytester.runpytest_subprocess(f"--model={spec}")
    assert result.ret == 0 and counts(result) == {"passed": 2}


def test_a_malformed_stream_chunk_ends_the_case_as_error_and_loses_no_record(
        pytester: pytest.Pytester, stub) -> None:
    url = stub()
    suite(pytester, "one", "garble two", "three")
    result = pytester.runpytest_subprocess(f"--model=openai:stub@{url}")
    assert counts(result) == {"passed": 2, "errors": 1}
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    errors = one_line_reasons(result)
    assert len(errors) == 1 and "test_bench[garble two-openai:stub]" in errors[0]
    assert "malformed stream chunk from /completions" in errors[0]
    assert "Traceback" not in result.stdout.str()
    # every case is stored, the failed one with its reason and its call (the prompt it sent, the error)
    stored = {n.split("[")[1].split("-")[0]: (o, e) for n, o, e in rows(
        pytester, "select nodeid, outcome, error from cases")}
    assert {k: o for k, (o, _) in stored.items()} == {"one": "passed", "garble two": "error", "three": "passed"}
    assert "malformed stream chunk from /completions" in stored["garble two"][1]
    assert "\n" not in stored["garble two"][1]
    calls = rows(pytester, "select cases.outcome, calls.input_text, calls.output_text, calls.error "
                           "from calls join cases on cases.id = calls.case_id order by calls.id")
    assert sorted((o, i, out, e is None) for o, i, out, e in calls) == [
        ("error", "garble two", None, False), ("passed", "one", "echo:one", True),
        ("passed", "three", "echo:three", True)]
    # a malformed chunk is a server fault, not a cut stream (re-sent up to 40 times): the request went
    # once in its window's batch and, that having failed, once alone (the README's batching rule)
    assert stats(url)["garbled"] == 2


# --- a teardown that fails --------------------------------------------------------------------------
def test_a_failed_teardown_turns_a_passed_case_into_error(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite="""
        import pytest

        @pytest.fixture
        def workspace(request):
            yield
            if request.node.callspec.params["i"] == 1:
                raise RuntimeError("could not remove the workspace")

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("i", range(3))
        def test_bench(model, workspace, i):
            assert model.generate(f"q{i}").text
    """)
    result = fake_project.runpytest("--model=fake:a", "--junitxml=out.xml")
    # pytest counts the body's pass and the teardown's error; the case itself is an error
    assert counts(result) == {"passed": 3, "errors": 1}
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    stored = rows(fake_project, "select nodeid, outcome, error from cases order by nodeid")
    assert [(n, o) for n, o, _ in stored] == [(f"test_suite.py::test_bench[{i}-fake:a]", o)
                                              for i, o in enumerate(("passed", "error", "passed"))]
    assert stored[1][2] == "RuntimeError: could not remove the workspace"
    assert one_line_reasons(result) == [
        "ERROR test_suite.py::test_bench[1-fake:a] - RuntimeError: could not remove the workspace"]
    cases = {c.get("name"): c for c in ET.parse(fake_project.path / "out.xml").getroot().iter("testcase")}
    assert properties(cases["test_bench[1-fake:a]"]) == {"evals.outcome": "error"}
    assert properties(cases["test_bench[0-fake:a]"]) == {"evals.outcome": "passed"}


def properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in case.iter("property")}


# --- the JUnit property of a case that ended in error --------------------------------------------------
def test_junit_marks_a_case_that_ended_in_error(fake_project: pytest.Pytester) -> None:
    suite(fake_project, "fine", "boom", "wrong")
    fake_project.makepyfile(test_wrong="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        def test_wrong(model):
            assert model.generate("x").text == "y", "expected 'y'"
    """)
    result = fake_project.runpytest("--model=fake:a", "--junitxml=out.xml")
    assert counts(result) == {"passed": 2, "errors": 1, "wrong": 1}
    cases = {c.get("name"): c for c in ET.parse(fake_project.path / "out.xml").getroot().iter("testcase")}
    error = cases["test_bench[boom-fake:a]"]
    assert properties(error) == {"evals.outcome": "error"}
    # an error raised in the test body is a <failure> (as the README says), with the one-line reason
    failure = error.find("failure")
    assert failure is not None and "server went away" in failure.get("message", "")
    assert properties(cases["test_bench[fine-fake:a]"]) == {"evals.outcome": "passed"}
    assert properties(cases["test_wrong[fake:a]"]) == {"evals.outcome": "failed"}
    assert rows(fake_project, "select outcome from cases where nodeid like '%boom%'") == [("error",)]


# --- a malformed ini evals_retry -----------------------------------------------------------------------
@pytest.mark.parametrize("line, reason", [
    ("attempts=three", "'attempts=three' is not a number"),
    ("attempts 3", "'attempts' must be KEY=VALUE"),
    ("tries=3", "got an unexpected keyword argument 'tries'"),
    ("on=rate_limit,oops", "on='oops' is not one of rate_limit, timeout, server, connection"),
    ("attempts=0", "attempts=0 must be a whole number >= 1"),
])
def test_a_malformed_ini_evals_retry_is_one_usage_error_line(fake_project: pytest.Pytester, line: str,
                                                             reason: str) -> None:
    suite(fake_project, "a")
    fake_project.makeini(f"[pytest]\nevals_retry = {line}\n")
    result = fake_project.runpytest("--model=fake:a")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [text for text in result.stderr.lines if text.strip()]
    assert errors == [f"ERROR: ini evals_retry = {line!r}: {reason}"]
    assert not (fake_project.path / ".evals").exists()


# --- a database error at the end of a run -------------------------------------------------------------
# After the last case is committed, another connection takes the database's write lock and keeps it:
# the run's last writes (the benchmarks' rows, the run's end) fail as on a database held by another
# session. The busy timeout is shortened so the test waits a fraction of a second, not 30 s.
LOCKING_CONFTEST = FAKE_BACKEND + '''
import sqlite3

import pytest

from pytest_evals.store.database import Store

HOLDER = []


def pytest_configure(config):
    Store.BUSY_TIMEOUT_MS = 200


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    result = yield
    holder = sqlite3.connect(session.config.rootpath / ".evals" / "evals.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    HOLDER.append(holder)
    return result


def pytest_unconfigure(config):
    for holder in HOLDER:
        holder.rollback()
        holder.close()
'''


def test_a_database_error_at_the_end_of_a_run_is_one_line_and_fails_the_run(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(LOCKING_CONFTEST)
    suite(pytester, "a", "b", "c")
    result = pytester.runpytest("--model=fake:a")
    assert counts(result) == {"passed": 3}
    # every gate holds, but the run's record is not whole: the exit status says so
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "Traceback" not in out and "all 1 gates hold" not in out
    db = pytester.path / ".evals" / "evals.sqlite"
    problem = [line for line in result.stdout.lines if str(db) in line and "locked" in line]
    assert len(problem) == 1
    assert problem[0].startswith("evals: every case is stored, the run's scores and verdicts are not: ")
    assert problem[0].endswith("database is locked by another running session; wait for it to end or pass "
                               "another --evals-db PATH")
    # the cases committed before stay
    assert rows(pytester, "select outcome from cases") == [("passed",)] * 3
    assert rows(pytester, "select count(*) from benchmarks") == [(0,)]
