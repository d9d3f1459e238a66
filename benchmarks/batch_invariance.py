"""Batch invariance: every example suite at batch size 1 and at the default windows, answer by answer.

    python benchmarks/batch_invariance.py [--suites all] [--tolerance 1e-4] [--db PATH] [--model smollm2]
                                          [--limit N]

Runs the example suites (``example_suites/``; HumanEval through its default subset, the judged suite with
its judge) twice on the same model, as a user runs them, into one database (two runs, so that
``pytest-evals compare`` can pair them):

- run 1, one request at a time: ``--evals-batch-size 1 -o evals_batch=false`` (no batching across cases,
  every call its own forward pass; the shared-prefix KV cache still serves a call's own prefix);
- run 2, the defaults: windows of cases whose calls share batches of up to 32 rows, over the prompts'
  shared prefix (``backends/hf_prefix.py``), left-padded prompts, continuations of kept batches.

Then it compares the two runs case by case and call by call (the ``calls`` table, in each case's order):
generated and chat texts (tool calls included) must be equal, a multiple-choice call must pick the same
option, and every stored log-probability (6 decimals) must agree within ``--tolerance``. It prints the
cases and calls compared, every difference, the largest log-probability difference seen, the outcome
flips, and ``pytest-evals compare`` of the two runs (the flip rate where the guarantee cannot hold).
Exit status 1 when anything differs.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL = ["arithmetic", "multiple_choice", "multi_turn", "tool_use", "humaneval", "judged"]
ONE_AT_A_TIME = ("--evals-batch-size", "1", "-o", "evals_batch=false")
NUMBER = re.compile(r"-?(?:\d+\.\d+|inf)|nan")


def run_suites(paths: list[str], db: Path, model: str, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               f"--model={model}", f"--evals-db={db}", *paths, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def log_probabilities(kind: str, text: str) -> list[float]:
    """The log-probabilities a call's stored output holds (loglikelihood: the numbers; choose: its second line)."""
    if kind == "choose":
        text = text.partition("\nlog-probabilities: ")[2]
    elif kind != "loglikelihood":
        return []
    return [float(x) for x in NUMBER.findall(text)]


@dataclass
class Comparison:
    cases: int = 0
    calls: int = 0
    texts: int = 0  # generate and chat calls compared by text
    choices: int = 0
    log_probabilities: int = 0
    largest: float = 0.0  # the largest log-probability difference seen
    differences: list[str] = field(default_factory=list)
    flips: list[str] = field(default_factory=list)


def case_calls(con: sqlite3.Connection, run_id: int) -> dict[str, tuple[str, list[tuple[str, str, str, str]]]]:
    cases = {}
    for case_id, nodeid, outcome in con.execute("SELECT id, nodeid, outcome FROM cases WHERE run_id = ?", [run_id]):
        calls = con.execute("SELECT kind, role, coalesce(input_text, ''), coalesce(output_text, '') FROM calls "
                            "WHERE case_id = ? ORDER BY id", [case_id]).fetchall()
        cases[nodeid] = (outcome, calls)
    return cases


def compare_runs(db: Path, alone: int, batched: int, tolerance: float) -> Comparison:
    con = sqlite3.connect(db)
    try:
        a, b = case_calls(con, alone), case_calls(con, batched)
    finally:
        con.close()
    found = Comparison()
    for nodeid in sorted(set(a) | set(b)):
        if nodeid not in a or nodeid not in b:
            found.differences.append(f"{nodeid}: only in run {alone if nodeid in a else batched}")
            continue
        found.cases += 1
        (outcome_a, calls_a), (outcome_b, calls_b) = a[nodeid], b[nodeid]
        if outcome_a != outcome_b:
            found.flips.append(f"{nodeid}: {outcome_a} at batch size 1, {outcome_b} batched")
        if len(calls_a) != len(calls_b):
            found.differences.append(f"{nodeid}: {len(calls_a)} calls at batch size 1, {len(calls_b)} batched")
        for n, (one, other) in enumerate(zip(calls_a, calls_b), 1):
            (kind, role, input_a, output_a), (_, _, input_b, output_b) = one, other
            found.calls += 1
            scored = kind in ("loglikelihood", "choose")
            numbers_a, numbers_b = log_probabilities(kind, output_a), log_probabilities(kind, output_b)
            found.log_probabilities += len(numbers_a)
            found.choices += kind == "choose"
            found.texts += not scored
            where = f"{nodeid} call {n} ({role} {kind})"
            if input_a != input_b:  # a later turn after a different earlier answer (that answer is a difference)
                found.differences.append(f"{where}: its input differs")
                continue
            if scored:
                if kind == "choose":
                    picked_a, picked_b = output_a.partition("\n")[0], output_b.partition("\n")[0]
                    if picked_a != picked_b:
                        found.differences.append(f"{where}: {picked_a!r} at batch size 1, {picked_b!r} batched")
                if len(numbers_a) != len(numbers_b):
                    found.differences.append(f"{where}: {len(numbers_a)} vs {len(numbers_b)} log-probabilities")
                    continue
                for x, y in zip(numbers_a, numbers_b):
                    gap = 0.0 if x == y else abs(x - y) if math.isfinite(x) and math.isfinite(y) else math.inf
                    found.largest = max(found.largest, gap)
                    if gap > tolerance:
                        found.differences.append(f"{where}: log-probability {x} at batch size 1, {y} batched")
            elif output_a != output_b:
                found.differences.append(f"{where}: {output_a[:60]!r} at batch size 1, {output_b[:60]!r} batched")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suites", default="all", help=f"comma-separated, of {','.join(ALL)} (default all)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest log-probability difference allowed")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--limit", default=None, help="--evals-limit N for both runs (default: each suite's own)")
    parser.add_argument("--db", type=Path, default=None, help="keep the two runs in this database (default: a temporary one)")
    args = parser.parse_args()
    suites = ALL if args.suites == "all" else args.suites.split(",")
    paths = [f"example_suites/test_{s}.py" for s in suites]
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "batch-invariance.sqlite"
        if db.exists():
            raise SystemExit(f"{db} exists; pass a new --db PATH (the two runs must be its first two)")
        limit = ("--evals-limit", args.limit) if args.limit else ()
        wall_alone = run_suites(paths, db, args.model, *ONE_AT_A_TIME, *limit)
        wall_batched = run_suites(paths, db, args.model, *limit)
        found = compare_runs(db, 1, 2, args.tolerance)
        compared = subprocess.run([sys.executable, "-m", "pytest_evals.cli", "--db", str(db), "compare", "1", "2"],
                                  cwd=ROOT, capture_output=True, text=True)
    print(f"suites: {', '.join(suites)}; --model {args.model}{' --evals-limit ' + args.limit if args.limit else ''}; run 1: {' '.join(ONE_AT_A_TIME)} ({wall_alone:.0f} s), "
          f"run 2: the defaults ({wall_batched:.0f} s)")
    print(f"compared: {found.cases} cases, {found.calls} calls ({found.texts} texts, {found.choices} choices, "
          f"{found.log_probabilities} log-probabilities)")
    print(f"largest log-probability difference: {found.largest:.2g} (tolerance {args.tolerance:g}; stored to 6 decimals)")
    print(f"differences found: {len(found.differences)}" + "".join(f"\n  {d}" for d in found.differences))
    print(f"outcome flips: {len(found.flips)} of {found.cases} cases ({len(found.flips) / max(found.cases, 1):.1%})"
          + "".join(f"\n  {f}" for f in found.flips))
    print("pytest-evals compare 1 2:\n" + (compared.stdout or compared.stderr).rstrip())
    sys.exit(1 if found.differences or found.flips else 0)


if __name__ == "__main__":
    main()
