"""What the plugin adds per case: N trivial eval cases with recording on vs the same tests in bare pytest.

    python benchmarks/overhead.py [--cases 5000] [--repeats 3]

Both runs are the same test file of N parametrized cases that each make one model call to an instant
in-process backend. "bare" is plain pytest (the plugin off, `-p no:evals`) with a `model` fixture that
returns the same instant answer; "plugin" is pytest-evals with its recording, gates, summary and the
SQLite store (plus, batching on, the trace of each window). The runs alternate; the table shows the
median wall time of each and the difference per case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKEND = '''
from pytest_evals.backends.base import Backend, Reply


class Instant(Backend):
    capabilities = frozenset({"generate"})

    def generate(self, requests):
        return [Reply(text=r.prompt, prompt_tokens=1, completion_tokens=1) for r in requests]


def pytest_evals_register_backends(register):
    register("instant", Instant)
'''

BARE_FIXTURE = '''
import types

import pytest


@pytest.fixture
def model():
    return types.SimpleNamespace(generate=lambda prompt: types.SimpleNamespace(text=prompt))
'''

SUITE = '''
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_case(model, i):
    assert model.generate(f"q{{i}}").text == f"q{{i}}"
'''


def run(folder: Path, args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=folder,
                         env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"pytest {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        plugin, bare = Path(root, "plugin"), Path(root, "bare")
        for folder, conftest in ((plugin, BACKEND), (bare, BARE_FIXTURE)):
            folder.mkdir()
            (folder / "conftest.py").write_text(conftest)
            (folder / "test_trivial.py").write_text(SUITE.format(n=args.cases))
        modes = {
            "bare pytest": (bare, ["-p", "no:evals"]),
            "plugin": (plugin, ["--model=instant:m"]),
            "plugin, batch size 1": (plugin, ["--model=instant:m", "--evals-batch-size=1"]),
        }
        times: dict[str, list[float]] = {m: [] for m in modes}
        for repeat in range(args.repeats):
            for mode, (folder, extra) in modes.items():
                db = folder / f"run{repeat}.sqlite"
                times[mode].append(run(folder, [*extra, *([f"--evals-db={db}"] if mode != "bare pytest" else [])]))
    base = statistics.median(times["bare pytest"])
    print(f"{args.cases} trivial cases, {args.repeats} runs each (median; min-max)")
    print(f"{'mode':<22} {'wall s':>8} {'spread':>14} {'ms per case over bare':>22}")
    for mode, values in times.items():
        wall = statistics.median(values)
        extra = (wall - base) / args.cases * 1000
        print(f"{mode:<22} {wall:8.2f} {min(values):6.2f}-{max(values):6.2f} {extra:22.3f}")


if __name__ == "__main__":
    main()
