"""A run is `finished` only when it finished: signals at random moments, serial and under xdist; SIGTERM;
Ctrl-C during the summary; -x; and `latest` never taking an incomplete run silently."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import FAKE_BACKEND, cases_stored, rows

SLOW_BACKEND = FAKE_BACKEND.replace("import json\n", "import json\nimport time\n").replace(
    "        replies = []\n        for r in requests:\n            if \"boom\"",
    "        replies = []\n        time.sleep(0.2)\n        for r in requests:\n            if \"boom\"")
assert "time.sleep(0.2)" in SLOW_BACKEND

SUITE = """
import pytest

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(11))
def test_a(model, i):
    assert model.generate(f"q{i}").text

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(11))
def test_b(model, i):
    assert model.generate(f"r{i}").text
"""
TESTS = 22


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}



def _check_incomplete_output(out: str, recorded: int) -> None:
    """The last lines of an incomplete run: how many tests did not run, and the command that resumes."""
    last = out.strip().splitlines()[-2:]
    assert last[0].startswith("evals: run 1 is incomplete (") and f"{TESTS - recorded} of {TESTS} tests did not run" \
        in last[0], out[-3000:]
    assert last[1].startswith("evals: resume with: pytest ") and last[1].endswith("--evals-resume"), out[-3000:]
    assert "gates hold" not in out, out[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_signals_at_random_moments_never_store_a_partial_run_as_finished(pytester: pytest.Pytester,
                                                                         xdist: bool) -> None:
    pytester.makeconftest(SLOW_BACKEND)
    pytester.makepyfile(test_suite=SUITE)
    db = pytester.path / ".evals" / "evals.sqlite"
    rng = random.Random(20261129 + xdist)
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m", "-q",
            "--evals-batch-size=1", *(["-n", "2"] if xdist else [])]
    seen = set()
    for trial in range(4):
        if db.parent.exists():
            for path in db.parent.iterdir():
                path.unlink()
        after = rng.randint(1, TESTS - 3)  # signal once this many cases are stored: an event, not a guess
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        count = rng.choice([1, 2])
        group = rng.choice([False, True])  # Ctrl-C in a terminal reaches every process; `kill` one
        proc = subprocess.Popen(base, cwd=pytester.path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while cases_stored(db) < after and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(count):
            if proc.poll() is None:
                os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=120)
        where = f"trial {trial}: after {after} cases, {count} x {signal.Signals(signum).name} to the " \
                f"{'group' if group else 'controller'}: {out[-3000:]}"
        (status, exit_status, tests, not_run), = rows(pytester, "SELECT status, exit_status, tests, tests_not_run "
                                                                "FROM runs")
        recorded = cases_stored(db)
        assert (status == "finished") == (recorded == TESTS), where
        if status == "interrupted":
            seen.add("interrupted")
            assert proc.returncode == exit_status == pytest.ExitCode.INTERRUPTED, where
            assert (tests, not_run) == (TESTS, TESTS - recorded), where
            _check_incomplete_output(out, recorded)
            resumed = subprocess.run([*base, "--evals-resume"], cwd=pytester.path, env=_env(), capture_output=True,
                                     text=True, timeout=120)
            assert resumed.returncode == 0, resumed.stdout[-3000:]
            assert f"evals-resume: {recorded} cases replayed from run 1" in resumed.stdout
            assert rows(pytester, "SELECT status, count(*) FROM runs JOIN cases ON cases.run_id = runs.id "
                                  "WHERE runs.id = 2") == [("finished", TESTS)]
        else:  # every case had ended when the signal came: the record is whole and says so
            assert (tests, not_run) == (TESTS, 0), where
    assert "interrupted" in seen  # the signals did land mid-run


def test_sigterm_in_a_test_body_ends_the_run_as_ctrl_c_does(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite="""
        import os, signal
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # as a CI runner on timeout
    """)
    result = fake_project.runpytest_subprocess("--model=fake:m", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert rows(fake_project, "SELECT status, exit_status, tests, tests_not_run FROM runs") == [("interrupted", 2, 6, 4)]
    assert rows(fake_project, "SELECT count(*) FROM cases") == [(2,)]
    result.stdout.fnmatch_lines(["evals: run 1 is incomplete (interrupted): 4 of 6 tests did not run; what ran is stored",
                                 "evals: resume with: pytest *--model=fake:m -p no:cacheprovider --evals-resume"])


def test_a_second_sigterm_as_the_process_ends_keeps_its_exit_status(fake_project: pytest.Pytester) -> None:
    """CI runners send SIGTERM more than once. Once a run is stopped by one, everything is recorded as the
    process ends, and a later one (here: as the interpreter exits) must not turn exit status 2 into a kill."""
    fake_project.makepyfile(test_suite="""
        import atexit, os, signal
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
            if i == 1:
                atexit.register(os.kill, os.getpid(), signal.SIGTERM)  # the second one, after pytest's end
                os.kill(os.getpid(), signal.SIGTERM)
    """)
    result = fake_project.runpytest_subprocess("--model=fake:m", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.ret
    assert rows(fake_project, "SELECT status, exit_status, tests, tests_not_run FROM runs") == [("interrupted", 2, 4, 3)]


def test_a_run_interrupted_before_its_first_case_ended_is_still_stored(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite="""
        import os, signal
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_a(model, i):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first case runs
    """)
    result = fake_project.runpytest_subprocess("--model=fake:m", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert rows(fake_project, "SELECT status, exit_status, tests, tests_not_run FROM runs") == [("interrupted", 2, 4, 4)]
    assert rows(fake_project, "SELECT count(*) FROM cases") == [(0,)]
    result.stdout.fnmatch_lines(["evals: run 1 is incomplete (interrupted): 4 of 4 tests did not run; what ran is stored",
                                 "evals: resume with: pytest *--evals-resume"])


def test_sigterm_in_a_worker_marks_the_run_interrupted(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite="""
        import os, signal
        import pytest

        @pytest.mark.parametrize("i", range(8))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
            if i == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # only this worker is told to stop
    """)
    result = fake_project.runpytest_subprocess("--model=fake:m", "-n", "2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    (status, tests, not_run), = rows(fake_project, "SELECT status, tests, tests_not_run FROM runs")
    (recorded,), = rows(fake_project, "SELECT count(*) FROM cases")
    assert status == "interrupted" and tests == 8 and not_run == 8 - recorded > 0
    result.stdout.fnmatch_lines(["evals: resume with: pytest *--model=fake:m -n 2 -p no:cacheprovider --evals-resume"])


def test_ctrl_c_during_the_summary_keeps_the_record_and_exits_2(fake_project: pytest.Pytester) -> None:
    """Every case ran, so the run is finished; the signal waits until the summary is written, and the
    exit status (the process's and the stored one) says the run was interrupted."""
    fake_project.makeconftest(FAKE_BACKEND + """
import os, signal

def pytest_terminal_summary():
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)  # twice: a second Ctrl-C is held back too
""")
    fake_project.makepyfile(test_suite="""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
    """)
    result = fake_project.runpytest_subprocess("--model=fake:m", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*evals: all 1 gates hold*", "*run 1 stored in*", "*3 passed*"])
    assert rows(fake_project, "SELECT status, exit_status, tests, tests_not_run FROM runs") == [("finished", 2, 3, 0)]


def test_a_second_ctrl_c_while_the_first_is_handled_still_stores_the_run(fake_project: pytest.Pytester) -> None:
    fake_project.makeconftest(FAKE_BACKEND + """
import os, signal

def pytest_keyboard_interrupt():
    os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
""")
    fake_project.makepyfile(test_suite="""
        import os, signal
        import pytest

        @pytest.mark.parametrize("i", range(5))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
            if i == 1:
                os.kill(os.getpid(), signal.SIGINT)
    """)
    result = fake_project.runpytest_subprocess("--model=fake:m", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert rows(fake_project, "SELECT status, exit_status, tests, tests_not_run FROM runs") == [("interrupted", 2, 5, 4)]
    result.stdout.fnmatch_lines(["evals: run 1 is incomplete (interrupted): 4 of 5 tests did not run; what ran is stored",
                                 "evals: resume with: *"])


def test_x_stops_an_incomplete_run_that_is_not_finished(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(test_suite="""
        import pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("i", range(5))
        def test_a(model, i):
            assert i != 1
    """)
    result = fake_project.runpytest("--model=fake:m", "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # -x keeps pytest's meaning
    assert rows(fake_project, "SELECT status, exit_status, tests, tests_not_run FROM runs") == [("interrupted", 1, 5, 3)]
    assert rows(fake_project, "SELECT verdict FROM benchmarks") == [("incomplete",)]
    result.stdout.fnmatch_lines(["*INCOMPLETE*", "evals: run 1 is incomplete (stopping after 1 failures): 3 of 5 "
                                 "tests did not run; what ran is stored", "evals: resume with: pytest --model=fake:m -x*"
                                 "--evals-resume"])


def test_latest_never_takes_an_incomplete_run_silently(fake_project: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake_project.makepyfile(test_suite="""
        import os, signal
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
            if i == 2 and os.environ.get("STOP"):
                os.kill(os.getpid(), signal.SIGINT)
    """)
    assert fake_project.runpytest_subprocess("--model=fake:m").ret == 0
    monkeypatch.setenv("STOP", "1")
    assert fake_project.runpytest_subprocess("--model=fake:m").ret == pytest.ExitCode.INTERRUPTED
    skipped = "latest is run 1, the newest finished run; newer runs that did not finish are skipped: " \
              "run 2 (interrupted: 2 of 4 tests did not run)"
    cli = subprocess.run([sys.executable, "-m", "pytest_evals.cli", "show", "latest"], cwd=fake_project.path,
                         capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stderr.strip() == f"pytest-evals: {skipped}"
    assert cli.stdout.startswith("run 1: finished")
    shown = subprocess.run([sys.executable, "-m", "pytest_evals.cli", "show", "2"], cwd=fake_project.path,
                           capture_output=True, text=True).stdout
    assert shown.startswith("run 2: interrupted (2 of 4 tests did not run; pytest --evals-resume runs them)")
    monkeypatch.delenv("STOP")
    result = fake_project.runpytest_subprocess("--model=fake:m", "--evals-baseline=latest")
    result.stdout.fnmatch_lines([f"evals-baseline: {skipped}", "*baseline: run 1 *", f"evals-baseline: {skipped}"])


def test_a_killed_run_is_not_left_running(fake_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 leaves no chance to write anything: the next run on this host finds the run's process gone
    and marks it interrupted (how many of its tests did not run stays unknown)."""
    fake_project.makepyfile(test_suite="""
        import os, signal
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_a(model, i):
            assert model.generate(f"q{i}").text
            if i == 1 and os.environ.get("KILL"):
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    monkeypatch.setenv("KILL", "1")
    assert fake_project.runpytest_subprocess("--model=fake:m").ret == -signal.SIGKILL
    assert rows(fake_project, "SELECT status, tests, tests_not_run FROM runs") == [("running", None, None)]
    monkeypatch.delenv("KILL")
    assert fake_project.runpytest_subprocess("--model=fake:m", "--evals-resume").ret == 0
    assert rows(fake_project, "SELECT id, status, tests, tests_not_run FROM runs") == [
        (1, "interrupted", None, None), (2, "finished", 4, 0)]


# A signal that lands inside one step of recording a case (sent by the process to itself, there): in the
# gate bookkeeping, while the run's row is written, or inside the case's transaction before its COMMIT.
SIGNAL_INSIDE = FAKE_BACKEND + '''
import os
import signal

from pytest_evals.scoring.gates import Gates
from pytest_evals.store.database import Store

SEEN = {"gates": 0, "start_run": 0, "record_case": 0}


def _signal_at(step):
    SEEN[step] += 1
    if step == STEP and SEEN[step] == AT:
        os.kill(os.getpid(), signal.SIGINT)


_add, _start, _insert = Gates.add, Store.start_run, Store._insert


def add(self, *args, **kwargs):
    _signal_at("gates")
    return _add(self, *args, **kwargs)


def start_run(self, *args, **kwargs):
    _signal_at("start_run")
    return _start(self, *args, **kwargs)


def insert(self, table, ids, row):
    found = _insert(self, table, ids, row)
    if table == "calls":  # the case's row is in, its transaction not yet committed
        _signal_at("record_case")
    return found


Gates.add, Store.start_run, Store._insert = add, start_run, insert
'''

FIVE = """
import pytest

@pytest.mark.parametrize("i", range(5))
def test_a(model, i):
    assert model.generate(f"q{i}").text
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
@pytest.mark.parametrize("step, at", [("gates", 3), ("gates", 5), ("start_run", 1), ("record_case", 3),
                                      ("record_case", 5)])
def test_a_signal_inside_a_step_of_recording_never_counts_a_case_that_was_not_committed(
        pytester: pytest.Pytester, step: str, at: int, xdist: bool) -> None:
    """The run's status and counts follow what is committed: a case is committed and counted as ended, or
    neither, wherever the signal lands; `finished` only when every case is stored."""
    pytester.makeconftest(SIGNAL_INSIDE + f"\nSTEP, AT = {step!r}, {at}\n")
    pytester.makepyfile(test_suite=FIVE)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m",
                             "--evals-batch-size=1", *(["-n", "2"] if xdist else [])],
                            cwd=pytester.path, env=_env(), capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    (status, tests, not_run), = rows(pytester, "SELECT status, tests, tests_not_run FROM runs")
    recorded = cases_stored(pytester.path / ".evals" / "evals.sqlite")
    assert result.returncode == pytest.ExitCode.INTERRUPTED, out[-3000:]
    assert (status == "finished") == (recorded == 5), out[-3000:]
    assert (tests, not_run) == (5, 5 - recorded), out[-3000:]
    if recorded < 5:
        assert f"{5 - recorded} of 5 tests did not run" in out, out[-3000:]


def test_a_run_row_that_cannot_be_closed_is_said_and_fails_the_run(fake_project: pytest.Pytester) -> None:
    fake_project.makeconftest(FAKE_BACKEND + """
import sqlite3

from pytest_evals.store.database import Store


def finish_run(self, *args, **kwargs):
    raise sqlite3.OperationalError("disk I/O error")


Store.finish_run = finish_run
""")
    fake_project.makepyfile(test_suite=FIVE)
    result = fake_project.runpytest_subprocess("--model=fake:m")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*evals: the run's row could not be closed, so it still says 'running'*"
                                 "disk I/O error*"])
    assert "gates hold" not in result.stdout.str()
    assert rows(fake_project, "SELECT status, count(*) FROM runs JOIN cases ON cases.run_id = runs.id") == \
        [("running", 5)]
