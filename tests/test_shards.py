"""--evals-shard K/N, and one verdict from many shards: pytest-evals merge and pytest-evals gate.

The suites run on the fake backend (plugin logic); the store and the command are the real ones.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_BACKEND

from pytest_evals.cli import main
from pytest_evals.errors import ConfigError
from pytest_evals.scoring.stats import bootstrap_mean
from pytest_evals.session.shards import deal, parse_shard

SUITE = """
import os
import pytest

BAD = set(os.environ.get("EVALS_BAD", "").split(","))

@pytest.mark.evals_threshold(0.5, f1=0.3)
@pytest.mark.parametrize("i", range(20), ids=lambda i: f"c{i:02d}")
def test_bench(model, evals_score, i):
    model.generate(f"q{i}")
    evals_score(f1=(i * 7 % 10) / 10)
    assert i % 5 != 3 and not (i % 2 == 0 and "bench" in BAD)

@pytest.mark.parametrize("j", range(7))
def test_other(model, j):
    model.generate(f"o{j}")
    assert j != 4 or "other" not in BAD

def test_plain():
    pass
"""

KILLER = """
import os

KILL_AFTER = int(os.environ.get("EVALS_KILL_AFTER", "0"))
RECORDED = []


def pytest_runtest_logreport(report):
    # after pytest-evals recorded the case (its hook is registered first)
    if KILL_AFTER and report.when == "teardown" and "evals_case" in report.__dict__:
        RECORDED.append(report.nodeid)
        if len(RECORDED) == KILL_AFTER:
            os.killpg(os.getpgid(0), 9)
"""


# --- the split ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "environ", "expected"), [
    ("2/3", {}, (2, 3, "--evals-shard 2/3")),
    (" 1 / 1 ", {}, (1, 1, "--evals-shard 1/1")),
    ("auto", {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "4"}, (2, 4, "GitLab CI: CI_NODE_INDEX=2, CI_NODE_TOTAL=4")),
    ("auto", {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"},
     (3, 3, "SLURM: SLURM_ARRAY_TASK_ID=7, SLURM_ARRAY_TASK_MIN=5, SLURM_ARRAY_TASK_COUNT=3")),
    ("auto", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
              "SLURM_ARRAY_TASK_COUNT": "3"}, (3, 3, None)),
    ("auto/4", {"JOB_COMPLETION_INDEX": "0"}, (1, 4, "Kubernetes: JOB_COMPLETION_INDEX=0")),
    ("AUTO/3", {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "3"}, (3, 3, None)),
])
def test_shard_values_and_the_scheduler_they_came_from(text: str, environ: dict, expected: tuple) -> None:
    shard = parse_shard(text, environ)
    assert (shard.index, shard.count) == expected[:2]
    if expected[2] is not None:
        assert shard.source == expected[2]


@pytest.mark.parametrize(("text", "environ", "message"), [
    ("4/3", {}, "--evals-shard 4/3: K is 4, outside 1..3; shards count from 1 (1/3 to 3/3)"),
    ("0/3", {}, "K is 0, outside 1..3"),
    ("2/0", {}, "N is 0; there must be at least 1 part"),
    ("two/3", {}, "K 'two' is not a whole number; expected K/N"),
    ("3", {}, "--evals-shard 3: expected K/N (the K-th of N parts, from 1: 2/4), auto, or auto/N"),
    ("auto", {}, "no scheduler variables found (GitLab CI: CI_NODE_INDEX/CI_NODE_TOTAL; SLURM: SLURM_ARRAY_TASK_ID/"
                 "SLURM_ARRAY_TASK_COUNT; Kubernetes: JOB_COMPLETION_INDEX with auto/N); pass --evals-shard K/N"),
    ("auto", {"JOB_COMPLETION_INDEX": "1"}, "Kubernetes's JOB_COMPLETION_INDEX gives K but not N; pass "
                                            "--evals-shard auto/N"),
    ("auto/3", {"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "4"}, "CI_NODE_TOTAL=4 but N is 3"),
    ("auto/3", {"JOB_COMPLETION_INDEX": "3"}, "K is 4, outside 1..3"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"},
     "SLURM_ARRAY_TASK_ID=3 is not on the array's steps"),
])
def test_a_bad_shard_is_one_line_naming_the_fix(text: str, environ: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_shard(text, environ)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("size", [0, 1, 4, 17, 100])
def test_deal_puts_every_case_in_exactly_one_shard_with_sizes_within_one(count: int, size: int) -> None:
    cases = [f"case={k}" for k in range(size)]
    shard_of = deal(cases, count, 0, "test_x.py::test_y")
    assert sorted(shard_of) == sorted(cases) and set(shard_of.values()) <= set(range(count))
    sizes = [list(shard_of.values()).count(k) for k in range(count)]
    assert max(sizes) - min(sizes) <= 1
    shuffled = cases[:]
    random.Random(size).shuffle(shuffled)
    assert deal(shuffled, count, 0, "test_x.py::test_y") == shard_of  # the order of collection does not matter


def test_deal_moves_few_other_cases_when_one_is_added() -> None:
    """Dealt by rank (round-robin) about half the cases would move; here at most twice N (the bound: one
    case more shifts the surplus's places once in each of two lists of shards)."""
    count, moved = 4, []
    for trial in range(100):
        cases = [f"i={k}" for k in range(200)]
        before = deal(cases, count, 0, f"bench{trial}")
        after = deal([*cases, f"i=new{trial}"], count, 0, f"bench{trial}")
        moved.append(sum(before[c] != after[c] for c in cases))
    assert max(moved) <= 2 * count and sum(moved) / len(moved) < 3, moved


def test_a_metric_interval_does_not_depend_on_the_cases_order() -> None:
    rng = random.Random(5)
    values = [rng.random() for _ in range(30)]
    assert bootstrap_mean(values) == bootstrap_mean(sorted(values)) == bootstrap_mean(values[::-1])
    assert len({bootstrap_mean(values).low, bootstrap_mean(values).high, bootstrap_mean(values).value}) == 3


# --- shard runs --------------------------------------------------------------------------------------------
@pytest.fixture
def project(fake_project: pytest.Pytester) -> pytest.Pytester:
    fake_project.makeconftest(FAKE_BACKEND + KILLER)
    fake_project.makepyfile(test_suite=SUITE)
    return fake_project


def stored(db: Path, sql: str, *params: object) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def shard_runs(project: pytest.Pytester, count: int, *args: str) -> list[Path]:
    paths = []
    for k in range(1, count + 1):
        path = project.path / f"shard{k}.sqlite"
        result = project.runpytest("--model=fake:a", f"--evals-db={path}", f"--evals-shard={k}/{count}", *args)
        assert result.ret in (0, 1), result.stdout.str()[-2000:]  # (an empty shard too: it is part of a run)
        paths.append(path)
    return paths


def test_shards_partition_the_cases_models_and_samples_together(project: pytest.Pytester) -> None:
    paths = shard_runs(project, 3, "--model=fake:b", "--evals-repeat=2", "--evals-repeat-greedy")
    seen: dict[str, str] = {}
    for path in paths:
        shard = stored(path, "SELECT shard FROM runs")[0][0]
        for nodeid, in stored(path, "SELECT nodeid FROM cases"):
            assert nodeid not in seen, f"{nodeid} in {seen[nodeid]} and {shard}"
            seen[nodeid] = shard
    single = project.runpytest("--model=fake:a", "--model=fake:b", "--evals-repeat=2", "--evals-repeat-greedy",
                               "--evals-db=single.sqlite")
    assert sorted(seen) == sorted(n for n, in stored(project.path / "single.sqlite", "SELECT nodeid FROM cases"))
    assert len(seen) == (20 + 7) * 2 * 2 and single.ret in (0, 1)
    by_case: dict[tuple[str, str], set[str]] = {}  # a case's models and samples are in one shard
    for nodeid, shard in seen.items():
        benchmark, params = nodeid.split("[")
        by_case.setdefault((benchmark, params.split("-")[0]), set()).add(shard)
    assert all(len(shards) == 1 for shards in by_case.values())
    for benchmark, total in (("test_bench", 20), ("test_other", 7)):
        sizes = [sum(1 for (b, _), shards in by_case.items() if benchmark in b and f"{k}/3" in shards)
                 for k in (1, 2, 3)]
        assert sum(sizes) == total and max(sizes) - min(sizes) <= 1, sizes


def test_shard_auto_says_where_it_came_from_and_a_bad_value_is_one_line(
        project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_NODE_INDEX", "2")
    monkeypatch.setenv("CI_NODE_TOTAL", "3")
    result = project.runpytest("--model=fake:a", "--evals-shard=auto")
    result.stdout.fnmatch_lines(["evals: shard 2/3 (GitLab CI: CI_NODE_INDEX=2, CI_NODE_TOTAL=3): *",
                                 "evals-shard: shard 2/3 ran * of the suite's 27 eval tests *"])
    assert stored(project.path / ".evals" / "evals.sqlite", "SELECT shard FROM runs") == [("2/3",)]
    listed = project.runpytest("--model=fake:a", "--evals-shard=1/3", "--co", "--evals-db=co.sqlite")
    assert listed.ret == 0 and not (project.path / "co.sqlite").exists()  # --co stores nothing
    monkeypatch.delenv("CI_NODE_INDEX")
    project.makeini("[pytest]\nevals_shard = auto\n")
    bad = project.runpytest("--model=fake:a")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert bad.stderr.lines == ["ERROR: ini evals_shard = auto: no scheduler variables found (GitLab CI: "
                                "CI_NODE_INDEX/CI_NODE_TOTAL; SLURM: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT; "
                                "Kubernetes: JOB_COMPLETION_INDEX with auto/N); pass --evals-shard K/N", ""]


def test_a_shard_without_eval_cases_stores_its_run(project: pytest.Pytester) -> None:
    project.makepyfile(test_suite="""
        import pytest

        @pytest.mark.parametrize("i", range(2))
        def test_two(model, i):
            pass
    """)
    paths = shard_runs(project, 3)
    assert [stored(p, "SELECT shard, status, exit_status FROM runs") for p in paths] == [
        [("1/3", "finished", 0)], [("2/3", "finished", 0)], [("3/3", "finished", 0)]]
    assert sum(stored(p, "SELECT count(*) FROM cases")[0][0] for p in paths) == 2
    assert cli("merge", "--into", str(project.path / "all.sqlite"), *map(str, paths))[0] == 0
    assert cli("--db", str(project.path / "all.sqlite"), "gate", "latest")[0] == 0


# --- merge and gate ------------------------------------------------------------------------------------------
def cli(*args: str) -> tuple[int, str, str]:
    """The command in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


def verdict_rows(db: Path, run_id: int) -> list[tuple]:
    return sorted(stored(db, "SELECT benchmark, model, metric, n, errors, value, low, high, minimum, verdict, reason "
                             "FROM benchmarks WHERE run_id = ?", run_id))


def case_rows(db: Path, run_id: int) -> list[tuple]:
    return sorted(stored(db, "SELECT nodeid, model, outcome, scores, case_key FROM cases WHERE run_id = ?", run_id))


def test_merged_shards_are_the_single_run(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cases, scores, intervals, verdicts and exit status; the baseline gate and compare on the merged run."""
    base = project.path / "base.sqlite"
    assert project.runpytest("--model=fake:a", f"--evals-db={base}").ret == 0
    monkeypatch.setenv("EVALS_BAD", "bench")  # 8 cases flip to wrong: a regression against run 1
    single = project.path / "single.sqlite"
    shutil.copy(base, single)
    one = project.runpytest("--model=fake:a", f"--evals-db={single}", "--evals-baseline=latest")
    assert one.ret == 1
    paths = []
    for k in (1, 2, 3):
        paths.append(project.path / f"shard{k}.sqlite")
        shutil.copy(base, paths[-1])  # each shard gets the database that holds the baseline
        project.runpytest("--model=fake:a", f"--evals-db={paths[-1]}", f"--evals-shard={k}/3",
                          "--evals-baseline=latest", "-p", "xdist", "-n", "2" if k == 2 else "0")
    merged = project.path / "all.sqlite"
    shutil.copy(base, merged)
    status, out, err = cli("merge", "--into", str(merged), *map(str, paths))
    assert (status, err) == (0, ""), err
    assert out.splitlines() == [f"merged 3 shards into {merged} as run 2: 27 cases",
                                f"its verdict: pytest-evals --db {merged} gate 2 (exit status 1)"]
    assert case_rows(merged, 2) == case_rows(single, 2)
    assert verdict_rows(merged, 2) == verdict_rows(single, 2)
    assert [r for r in verdict_rows(merged, 2) if r[9] == "fail"] == [r for r in verdict_rows(single, 2)
                                                                      if r[9] == "fail"] != []
    assert stored(merged, "SELECT status, exit_status, tests, tests_not_run FROM runs WHERE id = 2") == [
        ("finished", 1, 27, 0)]
    status, out, _ = cli("--db", str(merged), "gate", "latest")
    assert status == one.ret == 1
    assert "regression against the baseline: pass rate fell 40.0% on 20 paired cases" in out
    assert "baseline: run 1 (paired by case; alpha 0.05, margin 0)" in out
    assert out.splitlines()[-1].startswith("evals: 1 of 2 gates fails (exit status 1): test_suite.py::test_bench")
    single_gate = cli("--db", str(single), "gate", "2")
    assert single_gate[0] == 1 and single_gate[1].splitlines()[1:] == out.splitlines()[1:]
    compared = [cli("--db", str(db), "compare", "1", "2")[1] for db in (merged, single)]
    assert compared[0] == compared[1] and "8 now fail" in compared[0]
    fresh = project.path / "fresh.sqlite"  # a database without the baseline: merge copies it in
    assert cli("merge", "--into", str(fresh), *map(str, paths))[0] == 0
    assert case_rows(fresh, 1) == case_rows(base, 1) and verdict_rows(fresh, 2) == verdict_rows(single, 2)
    assert cli("--db", str(fresh), "gate", "2")[1] == out


def test_merge_refuses_what_is_not_one_run_of_one_suite(project: pytest.Pytester) -> None:
    paths = shard_runs(project, 3)
    merged = str(project.path / "all.sqlite")

    def refused(*shards: Path) -> list[str]:
        status, out, err = cli("merge", "--into", merged, *map(str, shards))
        assert (status, out) == (2, "")
        return err.splitlines()

    assert refused(paths[0], paths[2]) == [
        f"pytest-evals: shard 2/3 is missing (given: 1/3 ({paths[0]}), 3/3 ({paths[2]})); pass every shard's "
        "database, or pass --force to merge anyway (the merged run then lacks their cases: gate exits 2)"]
    duplicate = refused(*paths, paths[1])
    twice = stored(paths[1], "SELECT count(*) FROM cases")[0][0]
    assert len(duplicate) == 1 and duplicate[0].startswith(f"pytest-evals: {twice} cases are in more than one shard: ")
    assert duplicate[0].endswith("merge each shard once, or pass --force to merge anyway (the lowest shard's "
                                 "result is kept)")
    con = sqlite3.connect(paths[1])
    con.execute("UPDATE runs SET git_revision = 'abcdef1234567890'")
    con.commit()
    con.close()
    assert refused(*paths) == [f"pytest-evals: the shards ran different git revisions (1/3 ({paths[0]}): none, "
                               f"2/3 ({paths[1]}): abcdef123456, 3/3 ({paths[2]}): none); merge shards of one commit, "
                               "or pass --force to merge anyway"]
    other = project.path / "other.sqlite"  # shard 2 of a smaller suite (-k)
    project.runpytest("--model=fake:a", f"--evals-db={other}", "--evals-shard=2/3", "-k", "test_bench")
    lines = refused(paths[0], other, paths[2])
    assert len(lines) == 1 and lines[0].startswith("pytest-evals: the shards collected different suites (")
    assert not (project.path / "all.sqlite").exists()  # nothing was written

    status, out, _ = cli("merge", "--into", merged, "--force", str(paths[0]), str(paths[2]))
    assert status == 0 and out.startswith("merged despite: shard 2/3 is missing")
    assert "as run 1: 17 cases (not every shard's: the run is stored as interrupted)" in out
    status, out, _ = cli("--db", merged, "gate", "latest")
    assert status == 2
    assert "INCOMPLETE test_suite.py::test_bench [fake:a]: not every test ran, so its gate is not decided" in out
    assert out.splitlines()[-1] == ("evals: run 1 (interrupted: 10 of 27 tests did not run) did not run every "
                                    "test: its gates are not decided (exit status 2)")
    status, _, err = cli("merge", "--into", merged, str(project.path / "nothing.sqlite"))
    assert (status, err) == (2, f"pytest-evals: {project.path / 'nothing.sqlite'}: no such database; pass each "
                                "shard's --evals-db file\n")


def test_gate_exits_as_the_run_would_have(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(test_suite=SUITE.replace("def test_other", "@pytest.mark.evals_threshold(0.9)\ndef test_other"))
    db = project.path / ".evals" / "evals.sqlite"
    assert project.runpytest("--model=fake:a").ret == 0
    monkeypatch.setenv("EVALS_BAD", "other")
    assert project.runpytest("--model=fake:a", "--evals-threshold", "*::test_other 0.5").ret == 1
    assert [cli("--db", str(db), "gate", run)[0] for run in ("1", "2", "latest")] == [0, 1, 1]
    status, out, _ = cli("--db", str(db), "gate", "1")
    assert out.splitlines()[-1] == "evals: all 2 gates hold (exit status 0)"
    status, out, _ = cli("--db", str(db), "gate", "2")  # the marker wins over --evals-threshold, as in the run
    assert "FAIL test_suite.py::test_other [fake:a]: pass_rate 85.7% < 90% (marker)" in out
    assert project.runpytest("--model=fake:a", "-x").ret == 1  # stopped at the first wrong answer: incomplete
    assert cli("--db", str(db), "gate", "latest")[0] == 2
    status, _, err = cli("--db", str(db), "gate", "9")
    assert (status, err) == (2, f"pytest-evals: no run 9 in {db}; `pytest-evals runs` lists them\n")


def test_a_shard_killed_and_resumed_merges_as_if_it_never_stopped(project: pytest.Pytester) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")} | env
        environment["EVALS_BAD"] = "other"  # test_other's gate fails: exit status 1
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model=fake:a", *args],
                              cwd=project.path, env=environment, capture_output=True, text=True, timeout=120,
                              start_new_session=True)

    single = run("--evals-db=single.sqlite")
    paths = [project.path / f"shard{k}.sqlite" for k in (1, 2, 3)]
    for k, path in enumerate(paths, 1):
        args = (f"--evals-db={path}", f"--evals-shard={k}/3")
        if k == 2:
            killed = run(*args, EVALS_KILL_AFTER="4")
            assert killed.returncode == -signal.SIGKILL
            resumed = run(*args, "--evals-resume")
            assert "evals-resume: 4 of 10 cases already done in run 1" in resumed.stdout, resumed.stdout[-2000:]
        else:
            run(*args)
    assert stored(paths[1], "SELECT id, shard, status FROM runs") == [(1, "2/3", "interrupted"),
                                                                        (2, "2/3", "finished")]
    merged = project.path / "all.sqlite"
    assert cli("merge", "--into", str(merged), *map(str, paths))[0] == 0
    assert case_rows(merged, 1) == case_rows(project.path / "single.sqlite", 1)
    assert verdict_rows(merged, 1) == verdict_rows(project.path / "single.sqlite", 1)
    assert stored(merged, "SELECT count(*) FROM cases WHERE resumed_from IS NOT NULL") == [(0,)]
    assert cli("--db", str(merged), "gate", "1")[0] == single.returncode == 1
