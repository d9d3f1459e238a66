"""Replay from the call cache vs bare pytest: example_suites/ recorded once, then replayed with no model.

    python benchmarks/cache.py [--repeats 3] [--model SPEC]

(``test_humaneval.py`` is left out: its 164 long generations would be most of the live run.)

1. "live": the suites on the model (default: the embedded SmolLM2) with ``--evals-cache=use``, which
   records every call in a fresh cache file.
2. "replay": the same suites with ``--evals-cache=replay`` (the plugin on: recording, gates, summary,
   the SQLite store), checked to give every case the outcome it had live and to import no torch,
   transformers or HTTP client.
3. "bare": plain pytest (``-p no:evals``) on the same suites, with a ``model`` fixture that answers
   from a dict in memory (the cache's answers, read once) through the same ``Model`` class, so only
   collection, the test bodies and pytest's reporting remain.

Replay and bare alternate ``--repeats`` times; the table shows the median wall time of each and the
ratio replay / bare (the goal: at most 1.5), the live run's wall time and the cache file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "example_suites"

PROBE = '''
import os
import sys


def pytest_unconfigure(config):
    heavy = [m for m in ("torch", "transformers", "httpx", "llama_cpp") if m in sys.modules]
    with open(os.environ["PROBE_OUT"], "w") as handle:
        handle.write(" ".join(heavy))
'''

# The bare run: pytest without the plugin; the same Model class, its backend a dict of the cache's answers.
MEMORY = '''
import os
import sqlite3

import pytest

from pytest_evals.backends.base import Backend, BackendSettings
from pytest_evals.backends.registry import BackendRegistry
from pytest_evals.calls.cache import call_key, load_result
from pytest_evals.calls.model import Model
from pytest_evals.calls.pool import BackendPool
from pytest_evals.backends.specs import parse_spec

SPEC = parse_spec(os.environ["MEMORY_SPEC"])
IDENTITY = BackendPool(BackendRegistry(), BackendSettings()).model_and_weights(SPEC)[0]
con = sqlite3.connect(os.environ["MEMORY_CACHE"])
ANSWERS = {key: load_result(result) for key, result in con.execute("SELECT key, result FROM answers")}
con.close()


class Memory(Backend):
    capabilities = frozenset({"generate", "chat", "loglikelihood", "tools"})

    def _answer(self, method, requests):
        return [ANSWERS[call_key(SPEC.backend, IDENTITY, method, r)] for r in requests]

    def generate(self, requests):
        return self._answer("generate", requests)

    def chat(self, requests):
        return self._answer("chat", requests)

    def loglikelihood(self, requests):
        return self._answer("loglikelihood", requests)


BACKEND = Memory(SPEC, BackendSettings())


@pytest.fixture
def model():
    return Model(BACKEND, [])


@pytest.fixture
def evals_score():
    return lambda **scores: None
'''


def pytest_run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, out


def outcomes(db: Path, run_id: int) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT nodeid, outcome FROM cases WHERE run_id = ?", [run_id]).fetchall())
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root_name:
        root = Path(root_name)
        (root / "evals_probe.py").write_text(PROBE)
        (root / "evals_memory.py").write_text(MEMORY)
        cache, db = root / "cache.sqlite", root / "evals.sqlite"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
        env.update(PYTHONPATH=os.pathsep.join([str(root), env.get("PYTHONPATH", "")]), PROBE_OUT=str(root / "probe"),
                   MEMORY_SPEC=args.model, MEMORY_CACHE=str(cache))
        # HumanEval's 164 long generations would be most of the live run; its replay is the same mechanism
        plugin_args = [str(SUITES), "--ignore", str(SUITES / "test_humaneval.py"), f"--model={args.model}", f"--evals-cache-path={cache}", f"--evals-db={db}",
                       "-p", "evals_probe", "-o", "evals_max_error_rate=1", "-o", "evals_thresholds="]
        live, out = pytest_run([*plugin_args, "--evals-cache=use"], root, env)
        if out.returncode not in (0, 1):
            raise SystemExit(f"the live run failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
        calls = sqlite3.connect(cache).execute("SELECT count(*) FROM answers").fetchone()[0]
        times: dict[str, list[float]] = {"replay": [], "bare": []}
        same, heavy = True, set()
        for repeat in range(args.repeats):
            wall, out = pytest_run([*plugin_args, "--evals-cache=replay"], root, env)
            times["replay"].append(wall)
            heavy |= set((root / "probe").read_text().split())
            same &= outcomes(db, repeat + 2) == outcomes(db, 1)
            if "evals-cache (replay)" not in out.stdout or "none was missing" not in out.stdout:
                raise SystemExit(f"replay missed calls:\n{out.stdout[-3000:]}")
            wall, out = pytest_run([str(SUITES), "--ignore", str(SUITES / "test_humaneval.py"), "-p", "no:evals", "-p",
                                    "evals_memory", "-W", "ignore"], root, env)
            if out.returncode not in (0, 1):
                raise SystemExit(f"the bare run failed:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}")
            times["bare"].append(wall)
        cases = len(outcomes(db, 1))
        replay, bare = statistics.median(times["replay"]), statistics.median(times["bare"])
        print(f"example_suites/: {cases} cases, {calls} stored answers; cache file {cache.stat().st_size / 1024:.0f} KiB")
        print(f"{'run':<8} {'wall s':>8} {'spread':>14}")
        print(f"{'live':<8} {live:8.2f} {'(once)':>14}")
        for name, values in times.items():
            print(f"{name:<8} {statistics.median(values):8.2f} {min(values):6.2f}-{max(values):6.2f}")
        print(f"replay / bare: {replay / bare:.2f} (goal: at most 1.5); replay / live: {replay / live:.3f}")
        print(f"replay gave every case its live outcome: {'yes' if same else 'NO'}; modules the replay imported: "
              f"{', '.join(sorted(heavy)) or 'none of torch, transformers, httpx, llama_cpp'}")
        print(json.dumps({"live_s": round(live, 2), "replay_s": round(replay, 2), "bare_s": round(bare, 2),
                          "ratio": round(replay / bare, 3), "cache_kib": round(cache.stat().st_size / 1024),
                          "same_outcomes": same, "heavy_imports": sorted(heavy)}))


if __name__ == "__main__":
    main()
