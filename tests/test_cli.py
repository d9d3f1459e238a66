"""The pytest-evals command, on runs stored by real pytest sessions (its HTML report: test_htmlreport.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

SUITE = """
import os
import pytest

WRONG = set(os.environ.get("EVALS_WRONG", "").split(","))

@pytest.mark.evals_threshold(0.5)
@pytest.mark.parametrize("i", range(8), ids=lambda i: f"c{i}")
def test_bench(model, evals_score, i):
    model.generate(f"question {i}")
    evals_score(f1=0.1 if f"c{i}" in WRONG else 0.8)
    assert f"c{i}" not in WRONG, "wrong <answer> & more"
"""


@pytest.fixture
def two_runs(fake_project: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    fake_project.makepyfile(test_bench=SUITE)
    monkeypatch.setenv("EVALS_WRONG", "c7")
    fake_project.runpytest("--model=fake:a")
    monkeypatch.setenv("EVALS_WRONG", "c0,c1,c2,c3,c4,c5")
    fake_project.runpytest("--model=fake:a")
    return fake_project


def cli(pytester: pytest.Pytester, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_evals.cli", *args], cwd=pytester.path,
                          capture_output=True, text=True, timeout=60)


def test_runs_show_compare(two_runs: pytest.Pytester) -> None:
    out = cli(two_runs, "runs")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert re.match(r"1 +\S+ \S+ +finished +0 +fake:a +8 +7 +1 +0", lines[2])
    assert re.match(r"2 +\S+ \S+ +finished +1 +fake:a +8 +2 +6 +0", lines[3])
    # how each was run (pytester adds --basetemp: a long command line is clipped)
    command = lines[2][lines[2].index("pytest "):]
    assert lines[0].split()[-1] == "command" and command.startswith("pytest --model=fake:a --basetemp=")
    assert command.endswith("...") and len(command) == 60

    out = cli(two_runs, "show", "latest")
    assert "run 2: finished, exit status 1" in out.stdout
    assert re.search(r"test_bench.py::test_bench +fake:a +pass_rate +8 +0 +25.0% +\[7.1%, 59.1%\] +>=50.0% +FAIL +"
                     r"interval spans it: 5 cases short of clearing\n", out.stdout)  # the terminal's strength
    assert "FAIL test_bench.py::test_bench [fake:a]: pass_rate 25.0% < 50% (marker)" in out.stdout

    out = cli(two_runs, "compare", "1", "2")
    assert out.returncode == 0
    # 6 flips to fail against 1 to pass: McNemar p = 0.125, not significant on 8 cases
    assert re.search(r"pass_rate +8 +87.5% +25.0% +-62.5% +0.125 +-6 \+1\n", out.stdout)
    assert re.search(r"f1 +8 +0.713 +0.275 +-0.438 +\[-0.\d+, -0.\d+\] +WORSE", out.stdout)
    assert "6 now fail: test_bench[c0-fake:a], test_bench[c1-fake:a]" in out.stdout
    assert "1 now pass: test_bench[c7-fake:a]" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "9"], "pytest-evals: no run 9 in .evals/evals.sqlite; `pytest-evals runs` lists them"),
        (["show", "first"], "pytest-evals: 'first': expected a run id or 'latest'"),
        (["--db", "nope.sqlite", "runs"], "pytest-evals: nope.sqlite: no such database; run pytest with eval "
                                          "cases first, or pass --db PATH"),
    ],
)
def test_bad_input_is_one_line(two_runs: pytest.Pytester, args: list[str], message: str) -> None:
    out = cli(two_runs, *args)
    assert out.returncode == 2 and out.stderr.strip() == message


def test_cache_lists_and_clears_the_converted_model_copies(tmp_path, monkeypatch) -> None:
    import json

    monkeypatch.setenv("PYTEST_EVALS_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "cache" / "dequantized" / "Smol-0123456789abcdef"
    copy.mkdir(parents=True)
    (copy / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    (copy / ".pytest-evals-complete").write_text(json.dumps({"source": "/envs/a/smol.gguf", "sha256": "0123456789abcdef" * 4}))
    (copy.parent / "Smol-half.1234").mkdir()  # a conversion that died half-way: not listed, but cleared

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest_evals.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path)

    listed = cli("cache", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[2].split() == ["Smol-0123456789abcdef", "3", "0123456789abcdef", "/envs/a/smol.gguf"]
    assert "1 converted model copies, 3 MiB" in listed.stdout  # no database needed
    cleared = cli("cache", "clear", "--copies")
    assert cleared.stdout.strip() == f"removed 2 converted model copies (3 MiB) from {copy.parent}"
    assert list(copy.parent.iterdir()) == []
    assert cli("cache", "list").stdout.strip() == f"{copy.parent}: no converted model copies"


def test_runs_delete_removes_runs_with_all_they_stored(two_runs: pytest.Pytester) -> None:
    import sqlite3

    def counts() -> dict[str, int]:
        con = sqlite3.connect(two_runs.path / ".evals" / "evals.sqlite")
        try:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("runs", "cases", "calls", "benchmarks")}
        finally:
            con.close()

    assert counts() == {"runs": 2, "cases": 16, "calls": 16, "benchmarks": 4}
    out = cli(two_runs, "runs", "delete", "1")
    assert (out.returncode, out.stdout.strip()) == (0, "deleted run 1 with 8 cases")
    assert counts() == {"runs": 1, "cases": 8, "calls": 8, "benchmarks": 2}
    assert re.match(r"2 +\S+ \S+ +finished", cli(two_runs, "runs").stdout.splitlines()[2])  # the other stays
    for words, message in ((["delete"], "expected 'runs' to list them or 'runs delete RUN [RUN ...]'"),
                           (["remove", "2"], "expected 'runs' to list them"),
                           (["delete", "1"], "no run 1 in")):
        out = cli(two_runs, "runs", *words)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert cli(two_runs, "runs", "delete", "latest").stdout.strip() == "deleted run 2 with 8 cases"
    assert counts() == {"runs": 0, "cases": 0, "calls": 0, "benchmarks": 0}
