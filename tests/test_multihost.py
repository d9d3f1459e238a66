"""Runs spread over hosts with xdist's own remote workers: ``-d --tx``. Each ``popen//chdir=DIR`` worker
here stands for a host (``ssh=user@host//chdir=DIR`` takes the same path through xdist): the suite is
rsynced to its own directory and run there, and only the controller writes the database."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FAKE_BACKEND, rows

SUITE = '''
import pytest

@pytest.mark.parametrize("i", range(12))
def test_case(model, i):
    assert model.generate(f"q{i}").text
'''


def remote_run(project: pytest.Pytester, *args: str) -> subprocess.CompletedProcess:
    hosts = []
    for name in ("host1", "host2"):
        (project.path.parent / f"{project.path.name}-{name}").mkdir(exist_ok=True)
        hosts += ["--tx", f"popen//chdir={project.path.parent / f'{project.path.name}-{name}'}//python={sys.executable}"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:m", "-d", *hosts,
         "--rsyncdir", str(project.path), "-W", "ignore::DeprecationWarning", *args, str(project.path / "test_remote.py")],
        cwd=project.path, env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAKE_BACKEND)
    pytester.makepyfile(test_remote=SUITE)
    return pytester


def test_records_from_remote_workers_reach_the_controllers_database(project: pytest.Pytester) -> None:
    result = remote_run(project)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    per_worker = dict(rows(project, "SELECT worker, count(*) FROM cases GROUP BY worker"))
    assert set(per_worker) == {"gw0", "gw1"} and sum(per_worker.values()) == 12
    assert rows(project, "SELECT count(*) FROM calls") == [(12,)]
    # the workers ran in their own directories and wrote no database of their own
    assert not list(project.path.parent.glob(f"{project.path.name}-host*/**/evals.sqlite"))


def test_resume_holds_across_remote_workers(project: pytest.Pytester) -> None:
    assert remote_run(project).returncode == 0
    again = remote_run(project, "--evals-resume")
    assert again.returncode == 0, again.stdout[-2000:]
    assert "evals-resume: 12 of 12 cases already done in run 1" in again.stdout
    assert "evals-resume: 12 cases replayed from run 1, not run again" in again.stdout
    assert rows(project, "SELECT count(*) FROM cases WHERE run_id = 2 AND resumed_from = 1") == [(12,)]


def test_the_budget_holds_across_remote_workers(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nevals_prices =\n    fake:* 1000000 1000000\n")  # $1 a token: q{i} + 3 tokens
    project.makepyfile(test_remote=SUITE.replace('model.generate(f"q{i}")', 'model.generate(f"q{i}", max_tokens=3)'))
    result = remote_run(project, "--evals-budget=60")
    assert result.returncode == 2, result.stdout[-2000:]  # as any interrupted run
    assert "evals-budget: the budget of $60 stopped the run" in result.stdout
    spent, done = rows(project, "SELECT sum(cost_usd), count(*) FROM cases WHERE outcome = 'passed'")[0]
    # One budget for both hosts: each call reserves its worst case ($37: a bound of 34 prompt tokens and 3
    # answered) from the controller's ledger, over the workers' own channels, before it is sent. The run
    # never passes $60 and stops only where a call would pass it with nothing reserved: more than $23 spent.
    # A budget per worker would let each host spend up to $60 of its own.
    assert 60 - 37 < spent <= 60 and spent == 5 * done, (spent, done)
