"""The example suites on the embedded default: this tree vs an earlier commit, and batched vs one at a time.

    python benchmarks/example_suites.py [--base 8439e03] [--suites arithmetic,multiple_choice,multi_turn,tool_use]
                                        [--repeats 1] [--profile]

Each mode is a whole `pytest example_suites/test_<suite>.py ... --model smollm2` process, as a user runs it
(interpreter, imports, model load, pytest's summary), timed side by side in one run:

- this tree: every call of a case batched (turns, tool rounds, forced calls side by side);
- base: the same suites in a git worktree of ``--base`` (default 8439e03, the main before every turn
  was batched: first calls only), run from that folder so that its package is the one imported;
- for the multi-turn and tool-use suites, each alone with this tree and with ``--evals-batch-size 1``.

The default suites are the four that made up ``example_suites/`` when the goal was set (168 cases); the
HumanEval and judge suites came later (``--suites all`` adds them). Every mode must end with the same
outcomes per case (temperature 0); the script says where they differ. ``--profile`` runs this tree's
suites once more under cProfile and prints where the time went.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL = ["arithmetic", "multiple_choice", "multi_turn", "tool_use", "humaneval", "judged"]


def run(paths: list[str], db: Path, tree: Path | None, *extra: str, profile: Path | None = None) -> float:
    """``tree``: run in that checkout (``python -m`` puts the working folder first on sys.path, so its
    package is the one imported), else in this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "pytest",
               "-q", "-p", "no:cacheprovider", "--model=smollm2", f"--evals-db={db}", *paths, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree or ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def outcomes(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT nodeid, outcome FROM cases WHERE run_id = (SELECT max(id) FROM runs)"))
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="8439e03")
    parser.add_argument("--suites", default="arithmetic,multiple_choice,multi_turn,tool_use")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    suites = ALL if args.suites == "all" else args.suites.split(",")
    paths = [f"example_suites/test_{s}.py" for s in suites]
    times: dict[str, list[float]] = {}
    differ: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True)
        try:
            modes: list[tuple[str, list[str], Path | None, tuple[str, ...]]] = [
                ("this tree", paths, None, ()), (f"base {args.base}", paths, base, ())]
            for suite in ("multi_turn", "tool_use"):
                if suite in suites:
                    one = [f"example_suites/test_{suite}.py"]
                    modes += [(f"{suite}: batched", one, None, ()),
                              (f"{suite}: --evals-batch-size 1", one, None, ("--evals-batch-size", "1"))]
            seen: dict[str, tuple[str, str]] = {}  # nodeid -> (the first mode that ran it, its outcome)
            for repeat in range(args.repeats):
                for n, (name, where, pythonpath, extra) in enumerate(modes):
                    db = work / f"{n}-{repeat}.sqlite"
                    times.setdefault(name, []).append(run(where, db, pythonpath, *extra))
                    for nodeid, outcome in outcomes(db).items():
                        first = seen.setdefault(nodeid, (name, outcome))
                        if first[1] != outcome:
                            differ.append(f"{nodeid}: {outcome} ({name}), {first[1]} ({first[0]})")
            if args.profile:
                run(paths, work / "profile.sqlite", None, profile=work / "profile.out")
                import pstats

                print("profile of this tree's run (cumulative time, top 25):")
                pstats.Stats(str(work / "profile.out")).sort_stats("cumulative").print_stats(25)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"suites: {', '.join(suites)}; embedded default (SmolLM2-135M-Instruct), whole processes; "
          f"median, min-max over {args.repeats} run(s)")
    print(f"{'mode':<36} {'wall s':>8} {'spread':>16}")
    for mode, values in times.items():
        print(f"{mode:<36} {med[mode]:8.1f} {min(values):7.1f}-{max(values):7.1f}")
    print(f"base {args.base} / this tree: {med[f'base {args.base}'] / med['this tree']:.2f}x (goal >= 3x)")
    for suite in ("multi_turn", "tool_use"):
        if f"{suite}: batched" in med:
            print(f"{suite}: --evals-batch-size 1 / batched: "
                  f"{med[f'{suite}: --evals-batch-size 1'] / med[f'{suite}: batched']:.2f}x (goal >= 3x)")
    print("outcomes: " + ("the same in every mode" if not differ else f"{len(differ)} differ:\n  " + "\n  ".join(differ)))


if __name__ == "__main__":
    main()
