"""Case identity and --evals-resume, including kill -9 of the whole process group at several points."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import FAKE_BACKEND, rows

CASES = 12
SUITE = f"""
import os
import time
import pytest

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range({CASES}), ids=lambda i: f"c{{i:02d}}")
def test_bench(model, evals_score, i):
    reply = model.generate(f"q{{i}}")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open("executed.log", "a") as log:
        log.write(f"c{{i:02d}} {{worker}}\\n")
    if os.environ.get("EVALS_KILL_IN_CASE") == f"c{{i:02d}}":
        os.killpg(os.getpgid(0), 9)  # the machine dies with this case in flight
    time.sleep(0.05)
    evals_score(f1=i / 10)
    passed = reply.text.endswith(f"Q{{i}}") and i % 4 != 3
    with open("finished.log", "a") as log:  # the body's work is done: only its reports remain
        log.write(f"c{{i:02d}} {{worker}}\\n")
    assert passed
"""

KILLER = """
import os

KILL_AFTER = int(os.environ.get("EVALS_KILL_AFTER", "0"))
RECORDED = []


def pytest_runtest_logreport(report):
    # Runs after pytest-evals recorded the case (its hook is registered first); controller only.
    if not KILL_AFTER or os.environ.get("PYTEST_XDIST_WORKER") or report.when != "teardown":
        return
    RECORDED.append(report.nodeid)
    if len(RECORDED) == KILL_AFTER:
        os.killpg(os.getpgid(0), 9)
"""


@pytest.fixture
def project(fake_project: pytest.Pytester) -> pytest.Pytester:
    fake_project.makeconftest(FAKE_BACKEND + KILLER)
    fake_project.makepyfile(test_bench=SUITE)
    return fake_project


def run(project: pytest.Pytester, *args: str, model: str = "fake:a", **env: str) -> subprocess.CompletedProcess:
    """pytest in its own process group, so that killing the group spares this test."""
    # an outer xdist worker's variables would make the inner controller look like a worker
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | env
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--model={model}", *args],
                          cwd=project.path, env=environment, capture_output=True, text=True, timeout=120,
                          start_new_session=True)


def logged(project: pytest.Pytester, name: str = "executed.log") -> list[tuple[str, str]]:
    """(case, worker) of each line of a log the bodies write, in the order written."""
    log = project.path / name
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [(words[0], words[1] if len(words) > 1 else "main") for words in lines]


def executed(project: pytest.Pytester) -> list[str]:
    return [case for case, _ in logged(project)]


def nodeid(case: str) -> str:
    return f"test_bench.py::test_bench[{case}-fake:a]"


def outcomes(project: pytest.Pytester, run_id: int) -> dict[str, str]:
    """The run's cases; none where no database was written (a run killed before it stored its first case)."""
    database = project.path / ".evals" / "evals.sqlite"
    if not database.exists() or not rows(project, "SELECT name FROM sqlite_master WHERE name = 'cases'"):
        return {}
    return dict(rows(project, f"SELECT nodeid, outcome FROM cases WHERE run_id = {run_id}"))


def test_resume_replays_finished_cases_and_reports_as_an_uninterrupted_run(project: pytest.Pytester) -> None:
    first = run(project)
    assert first.returncode == 0
    reference = outcomes(project, 1)
    assert len(reference) == CASES and list(reference.values()).count("failed") == 3
    (project.path / "executed.log").unlink()

    result = run(project, "--evals-resume", "-v", "--junitxml=resumed.xml")
    assert result.returncode == 0, result.stdout
    assert executed(project) == []  # nothing ran again
    assert f"evals-resume: {CASES} of {CASES} cases already done in run 1 (use --evals-fresh to start over)" \
        in result.stdout
    assert "test_bench.py::test_bench[c00-fake:a] PASSED (resumed)" in result.stdout
    assert "test_bench.py::test_bench[c03-fake:a] WRONG (resumed)" in result.stdout
    assert re.fullmatch(r"=+ 9 passed, 3 wrong in .* =+", result.stdout.splitlines()[-1])
    assert outcomes(project, 2) == reference
    assert rows(project, "SELECT count(*), min(resumed_from) FROM cases WHERE run_id = 2") == [(CASES, 1)]
    assert rows(project, "SELECT count(*) FROM calls WHERE run_id = 2") == [(CASES,)]
    assert rows(project, "SELECT metric, value FROM benchmarks WHERE run_id = 2") == \
        rows(project, "SELECT metric, value FROM benchmarks WHERE run_id = 1")
    junit = (project.path / "resumed.xml").read_text()
    assert junit.count("<failure") == 3 and 'name="evals.resumed_from_run" value="1"' in junit

    fresh = run(project, "--evals-resume", "--evals-fresh")
    assert fresh.returncode == 0 and len(executed(project)) == CASES


def test_changed_source_or_model_reruns_and_transport_settings_do_not(project: pytest.Pytester) -> None:
    run(project)
    (project.path / "executed.log").unlink()
    run(project, "--evals-resume", "--evals-batch-size=3", "--evals-timeout=30", "-n", "2")
    assert executed(project) == []  # transport settings and worker count are not part of the key
    run(project, "--evals-resume", "--model=fake:b")  # a second model: only its cases run
    assert len(executed(project)) == CASES
    (project.path / "executed.log").unlink()
    project.makepyfile(test_bench=SUITE.replace("time.sleep(0.05)", "time.sleep(0.01)"))
    run(project, "--evals-resume", "--model=fake:b")
    assert len(executed(project)) == 2 * CASES  # the test's source changed: every case runs again


def test_errors_and_skips_run_again(fake_project: pytest.Pytester) -> None:
    fake_project.makepyfile(
        test_mixed="""
        import os, pytest

        @pytest.mark.evals_threshold(0.0)
        @pytest.mark.parametrize("p", ["ok", "boom", "skip"])
        def test_mixed(model, p):
            if p == "skip" and not os.environ.get("NOW_RUN"):
                pytest.skip("later")
            model.generate("fine" if os.environ.get("NOW_RUN") else p)
            with open("executed.log", "a") as log:  # after the first model call: see test_bench
                log.write(p + "\\n")
        """
    )
    run(fake_project)
    (fake_project.path / "executed.log").unlink()
    result = run(fake_project, "--evals-resume", NOW_RUN="1")
    assert sorted(executed(fake_project)) == ["boom", "skip"]
    assert result.returncode == 0
    assert set(outcomes(fake_project, 2).values()) == {"passed"}


# Under xdist one case at a time (--evals-batch-size 1): a worker running a window reports each case as
# its body ends, and every report the controller has not stored yet is in flight at a kill, up to a
# window's worth; one at a time, the bound below (the last case each worker finished) is exact. Serially
# windows run, and each case is stored as its body ends.
@pytest.mark.parametrize("workers", [[], ["-n", "2", "--evals-batch-size", "1"]], ids=["serial", "xdist"])
@pytest.mark.parametrize("kill", [{"EVALS_KILL_AFTER": "1"}, {"EVALS_KILL_AFTER": "5"},
                                  {"EVALS_KILL_AFTER": "11"}, {"EVALS_KILL_IN_CASE": "c07"}],
                         ids=["after-1", "after-5", "after-11", "inside-c07"])
def test_kill_9_then_resume_loses_nothing_and_repeats_nothing_finished(
        project: pytest.Pytester, workers: list[str], kill: dict[str, str]) -> None:
    killed = run(project, *workers, **kill)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    assert rows(project, "PRAGMA integrity_check") == [("ok",)]
    committed = set(outcomes(project, 1))
    ran_before = executed(project)
    # nothing committed lost: every case whose body ended is stored, but those in flight at the kill. In
    # flight: a case whose body ended but whose teardown report the writer (the controller) had not yet
    # stored. Serially there is none: the controller runs the bodies and stores each case before the next
    # starts, and it is killed inside a body or just after storing a case. Under xdist a worker starts a
    # case only when it holds the next one (or the order to shut down), and with 12 cases on 2 workers
    # xdist sends a worker more only as the controller handles the end of its previous case, after that
    # case's report: so only the last case each worker finished can be in flight, and none of the worker
    # that started the case that killed the run.
    finished = logged(project, "finished.log")
    assert committed <= {nodeid(case) for case, _ in finished}  # stored only once its body ended
    last_of = {worker: nodeid(case) for case, worker in finished}  # the last each worker finished
    if "EVALS_KILL_IN_CASE" in kill:
        killer = dict(logged(project))[kill["EVALS_KILL_IN_CASE"]]
        last_of.pop(killer, None)
        assert nodeid(kill["EVALS_KILL_IN_CASE"]) not in committed
    else:  # the controller was killed right after storing its EVALS_KILL_AFTER'th case
        assert len(committed) == int(kill["EVALS_KILL_AFTER"])
    in_flight = set(last_of.values()) if workers else set()
    assert {nodeid(case) for case, _ in finished} - committed <= in_flight, (finished, committed)

    resumed = run(project, *workers, "--evals-resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    ran_after = executed(project)[len(ran_before):]
    final = outcomes(project, 2)
    # nothing lost: the resumed run accounts for every case, as an uninterrupted run would
    assert len(final) == CASES
    assert [o for n, o in sorted(final.items())] == ["failed" if i % 4 == 3 else "passed" for i in range(CASES)]
    # nothing finished repeated: only cases that were never committed ran again
    repeated = committed & {nodeid(c) for c in ran_after}
    assert repeated == set()
    assert len(ran_after) == CASES - len(committed)
    assert f"evals-resume: {len(committed)} of {CASES} cases already done in run 1" in resumed.stdout


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--evals-batch-size", "1"]], ids=["serial", "xdist"])
def test_a_resume_killed_in_its_turn_loses_nothing_and_repeats_nothing(
        project: pytest.Pytester, workers: list[str]) -> None:
    """Run 1 stores c05-c11. Run 2 resumes it with every case: c00-c04 run first, then c05 and c06 are
    replayed, and it is killed before those copies were due (a batch is copied when it is full, when a
    case that ran is written, or at the end). Run 3 takes c05-c11 from run 1, through run 2."""
    first = run(project, *workers, "-k", "not (c00 or c01 or c02 or c03 or c04)")
    assert first.returncode == 0, first.stdout[-2000:]
    assert sorted(outcomes(project, 1)) == [nodeid(f"c{i:02d}") for i in range(5, CASES)]
    (project.path / "executed.log").unlink()
    killed = run(project, *workers, "--evals-resume", EVALS_KILL_AFTER="7")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:]
    assert rows(project, "SELECT resumed_run FROM runs WHERE id = 2") == [(1,)]
    stored = dict(rows(project, "SELECT nodeid, resumed_from FROM cases WHERE run_id = 2"))
    ran = {n for n, origin in stored.items() if origin is None}
    assert ran <= {nodeid(f"c{i:02d}") for i in range(5)}
    if not workers:  # serially c00-c04 ran and were written, and no copy was due when it was killed
        assert ran == set(stored) == {nodeid(f"c{i:02d}") for i in range(5)}
    else:  # (a replayed report can reach the controller before one that ran: its copy is then written first)
        assert {origin for origin in stored.values() if origin is not None} <= {1}
    ran_before = len(executed(project))

    resumed = run(project, *workers, "--evals-resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    done = len(ran) + CASES - 5
    assert f"evals-resume: {done} of {CASES} cases already done in run 2 (with run 1, which it resumed)" \
        in resumed.stdout
    ran_again = {nodeid(case) for case in executed(project)[ran_before:]}
    assert ran_again == {nodeid(f"c{i:02d}") for i in range(5)} - ran  # nothing stored runs again
    final = dict(rows(project, "SELECT nodeid, resumed_from FROM cases WHERE run_id = 3"))
    assert len(final) == CASES
    assert {final[nodeid(f"c{i:02d}")] for i in range(5, CASES)} == {1}  # where they really ran
    assert {final[n] for n in ran} == ({2} if ran else set())
    assert rows(project, "SELECT count(*) FROM calls WHERE run_id = 3") == [(CASES,)]


def test_replayed_cases_are_copied_a_batch_at_a_time(project: pytest.Pytester) -> None:
    """With batches of 5 (ini-free: the conftest sets it), a resume killed after its 7th replayed case holds
    the first batch, all of it, and nothing of the next; its usage and gates were whole in a finished one."""
    project.makeconftest(FAKE_BACKEND + KILLER + "\nfrom pytest_evals.session.replay import ReplaySource\n"
                         "ReplaySource.BATCH = 5\nReplaySource.WAIT_S = 3600\n")
    assert run(project).returncode == 0
    killed = run(project, "--evals-resume", EVALS_KILL_AFTER="7")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(outcomes(project, 2)) == [nodeid(f"c{i:02d}") for i in range(5)]
    assert rows(project, "SELECT count(*) FROM calls WHERE run_id = 2") == [(5,)]
    whole = run(project, "--evals-resume", "-p", "no:randomly")
    assert whole.returncode == 0 and "12 of 12 cases already done in run 2 (with run 1, which it resumed)" in whole.stdout
    assert rows(project, "SELECT count(*), count(DISTINCT nodeid), min(resumed_from), max(resumed_from) "
                         "FROM cases WHERE run_id = 3") == [(CASES, CASES, 1, 1)]
    assert "evals-resume: 12 cases replayed from run 2 (with run 1, which it resumed), not run again" in whole.stdout
    assert re.search(r"fake:a +12 ", whole.stdout), whole.stdout  # every case's calls in the usage table
    assert rows(project, "SELECT metric, value FROM benchmarks WHERE run_id = 3") == \
        rows(project, "SELECT metric, value FROM benchmarks WHERE run_id = 1")


def test_progress_line_on_long_runs(project: pytest.Pytester) -> None:
    project.makeconftest(FAKE_BACKEND + "\nfrom pytest_evals.session.progress import Progress\n"
                         "Progress.FIRST_AFTER_S = 0.2\nProgress.EVERY_S = 0.2\n")
    result = run(project, "--evals-batch-size=1")  # no windows: the time left is known from the second test on
    assert result.returncode == 0
    lines = [line for line in result.stdout.splitlines() if line.startswith("evals: ") and "tests done" in line]
    assert lines, result.stdout
    done, total = lines[0].split()[1], lines[0].split()[3]
    assert 0 < int(done) <= CASES and int(total) == CASES
    assert any(line.endswith("s left") and "/s, about" in line for line in lines), lines


def test_works_without_xdist_loaded(project: pytest.Pytester) -> None:
    result = run(project, "-p", "no:xdist", "--evals-resume")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "evals: all 1 gates hold" in result.stdout


def test_case_keys_are_the_stable_json_digest_that_earlier_versions_stored(pytester: pytest.Pytester) -> None:
    """Keys written by an earlier run must still match: the key is the SHA-256 of the JSON list
    [version, nodeid, params JSON, model, source], however it is computed."""
    import hashlib
    import inspect
    import json

    from pytest_evals.session.resume import KEY_VERSION, case_key

    pytester.makepyfile(test_keys='''
        import pytest

        @pytest.mark.parametrize("q", ["a \\"quoted\\" é", {"nested": [1, 2.5, None]}])
        def test_case(q):
            pass
        ''')
    items, _ = pytester.inline_genitems("-p", "no:evals")
    assert len(items) == 2
    for item in items:
        stable = lambda v: json.dumps(v, sort_keys=True, default=repr)  # noqa: E731
        params = {k: v for k, v in item.callspec.params.items() if k != "model"}
        reference = stable([KEY_VERSION, item.nodeid, stable(params), "hf:m", inspect.getsource(item.function)])
        assert case_key(item, "hf:m") == f"v{KEY_VERSION}:" + hashlib.sha256(reference.encode()).hexdigest()[:40]


# Kills with windows on (the default): a window's cases run together and are reported in pytest's order as
# their bodies end, so under xdist the reports a worker sent that the controller had not stored are lost
# with a kill, up to a window's worth per worker; with sliding windows (a backend that submits: HTTP), up
# to two windows' worth. Kill points are drawn from a seeded generator: after the controller stored its
# k-th case, or inside a case's body.
MANY = 40


def _kill_trials(seed: int, trials: int) -> list[dict[str, str]]:
    import random

    rng = random.Random(seed)
    return [({"EVALS_KILL_AFTER": str(rng.randint(1, MANY - 2))} if rng.random() < 0.5
             else {"EVALS_KILL_IN_CASE": f"c{rng.randint(2, MANY - 1):02d}"}) for _ in range(trials)]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fake", "http"], ids=["rounds", "sliding"])
def test_kill_9_with_windows_on_loses_at_most_the_documented_reports_and_repeats_nothing(
        fake_project: pytest.Pytester, stub_server, backend: str) -> None:
    fake_project.makeconftest(FAKE_BACKEND + KILLER)
    fake_project.makepyfile(test_bench=SUITE.replace(f"range({CASES})", f"range({MANY})"))
    if backend == "fake":  # rounds: windows of 2 batches of 4 cases
        spec, options, window, windows = "fake:a", ["--evals-batch-size", "4"], 8, 1
    else:  # sliding: 8 cases per request in flight, up to 2 in flight
        spec, options, window, windows = f"openai:stub@{stub_server(latency_s=0.02)}", ["--evals-concurrency", "2"], 16, 2
    args = ["-n", "2", *options]
    name = spec.split("@")[0]
    for trial, kill in enumerate(_kill_trials(20261202 + (backend == "http"), 3)):
        for path in [fake_project.path / ".evals", *fake_project.path.glob("*.log")]:
            if path.is_dir():
                for f in path.iterdir():
                    f.unlink()
            elif path.exists():
                path.unlink()
        killed = run(fake_project, *args, model=spec, **kill)
        where = f"trial {trial} {kill}: {killed.stdout[-2000:]}"
        assert killed.returncode == -signal.SIGKILL, where
        if (fake_project.path / ".evals" / "evals.sqlite").exists():  # (none before the first case is stored)
            assert rows(fake_project, "PRAGMA integrity_check") == [("ok",)]
        committed = set(outcomes(fake_project, 1))
        finished = {f"test_bench.py::test_bench[{case}-{name}]" for case, _ in logged(fake_project, "finished.log")}
        assert committed <= finished, where  # stored only once its body ended
        # lost: bodies that ended, their reports not stored: at most the documented windows of each worker
        assert len(finished - committed) <= 2 * windows * window, (where, len(finished - committed))
        ran_before = len(executed(fake_project))
        resumed = run(fake_project, *args, "--evals-resume", model=spec)
        assert resumed.returncode in (0, 1), resumed.stdout[-3000:]  # (the stub's answers fail the fake's check)
        ran_after = {f"test_bench.py::test_bench[{case}-{name}]" for case in executed(fake_project)[ran_before:]}
        # (a kill before the controller stored anything leaves no run: the resumed run is then run 1)
        (resumed_id,), = rows(fake_project, "SELECT max(id) FROM runs")
        assert len(outcomes(fake_project, resumed_id)) == MANY, where  # nothing lost: every case is accounted for
        assert committed & ran_after == set(), where  # nothing committed runs again
        if committed:
            assert f"evals-resume: {len(committed)} of {MANY} cases already done in run 1" in resumed.stdout, where


def test_resume_names_a_run_and_a_path_after_the_option_stays_a_path(project: pytest.Pytester) -> None:
    """--evals-resume RUN replays run RUN, not the newest; `--evals-resume suites/` keeps suites/ as the path
    to collect (the newest run); a run that is not there is one line."""
    interrupted = run(project, "-x", "test_bench.py", "--evals-limit=4")  # run 1: 4 cases, -x stops at the first wrong
    assert interrupted.returncode in (1, 2), interrupted.stdout
    whole = run(project, "test_bench.py")  # run 2: every case
    assert whole.returncode == 0, whole.stdout
    (project.path / "executed.log").unlink()
    first = rows(project, "SELECT count(*) FROM cases WHERE run_id = 1 AND outcome IN ('passed', 'failed')")[0][0]
    named = run(project, "--evals-resume", "1", "test_bench.py")
    assert named.returncode == 0, named.stdout + named.stderr
    assert f"evals-resume: {first} of {CASES} cases already done in run 1" in named.stdout
    assert len(executed(project)) == CASES - first
    (project.path / "executed.log").unlink()
    newest = run(project, "--evals-resume", str(project.path / "test_bench.py"))  # a path, not a run id
    assert newest.returncode == 0, newest.stdout + newest.stderr
    assert f"evals-resume: {CASES} of {CASES} cases already done in run 3" in newest.stdout
    assert executed(project) == []
    missing = run(project, "--evals-resume=9", "test_bench.py")
    assert missing.returncode == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --evals-resume 9: no run 9 in " in missing.stderr
