"""--evals-stop-early's error rates and savings, by simulation of the plugin's own stopping rule.

Each setting is a benchmark of N cases of which K pass (the full run's verdict: pass rate >= minimum);
each run draws the cases in a random order and applies ``pytest_evals.scoring.early.settle`` after every
case, as the plugin does. Printed side by side in one run:

- ``stop-early``: the plugin's rule (certain verdicts, and exact tests with alpha spent over fixed looks);
- ``naive peeking``: the same exact test at the full alpha after every case (what a user peeking at a
  plain test's p-value would do);
- ``wrong``: the share of runs whose early verdict differs from the full run's (false pass where the full
  run fails, false fail where it passes); a run that never settles runs every case and is right.

    python benchmarks/stop_early.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import math
import random

from pytest_evals.scoring.early import hypergeom_tail, settle

ALPHA = 0.05
SETTINGS = [  # (N, minimum, K): at the threshold from both sides, and away from it
    (60, 0.5, 29), (60, 0.5, 30), (60, 0.5, 36), (60, 0.5, 54), (60, 0.5, 12),
    (200, 0.7, 139), (200, 0.7, 140), (200, 0.7, 180), (1000, 0.6, 599), (1000, 0.6, 800),
]


def naive(passed: int, ran: int, total: int, minimum: float) -> str | None:
    need = math.ceil(minimum * total - 1e-9)
    if passed >= need:
        return "pass"
    if passed + total - ran < need:
        return "fail"
    if hypergeom_tail(passed, total, need - 1, ran, upper=True) <= ALPHA:
        return "pass"
    if hypergeom_tail(passed, total, need, ran, upper=False) <= ALPHA:
        return "fail"
    return None


def simulate(total: int, minimum: float, passes: int, runs: int, rng: random.Random) -> dict[str, tuple[float, float]]:
    need = math.ceil(minimum * total - 1e-9)
    truth = "pass" if passes >= need else "fail"
    found = {}
    for name in ("stop-early", "naive peeking"):
        wrong = ran_total = 0
        for _ in range(runs):
            order = [1] * passes + [0] * (total - passes)
            rng.shuffle(order)
            passed, verdict, ran = 0, None, total
            for n, outcome in enumerate(order, 1):
                passed += outcome
                if name == "stop-early":
                    settled = settle(passed, 0, n, total, minimum, ALPHA)
                    verdict = settled.verdict if settled else None
                else:
                    verdict = naive(passed, n, total, minimum)
                if verdict is not None:
                    ran = n
                    break
            wrong += verdict is not None and verdict != truth
            ran_total += ran
        found[name] = (wrong / runs, ran_total / runs / total)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    rng = random.Random(0)
    print(f"alpha {ALPHA}; {args.runs} random orders per setting; 'wrong' = early verdict differs from the full run's")
    print(f"{'N':>5} {'min':>4} {'K':>5} {'full run':>8}  {'stop-early wrong':>16} {'cases run':>9}  "
          f"{'naive wrong':>11} {'cases run':>9}")
    for total, minimum, passes in SETTINGS:
        runs = args.runs if total <= 200 else max(50, args.runs // 10)
        result = simulate(total, minimum, passes, runs, rng)
        truth = "PASS" if passes >= math.ceil(minimum * total - 1e-9) else "FAIL"
        (ours, ours_ran), (peek, peek_ran) = result["stop-early"], result["naive peeking"]
        print(f"{total:>5} {minimum:>4} {passes:>5} {truth:>8}  {ours:>16.4f} {ours_ran:>9.0%}  {peek:>11.4f} {peek_ran:>9.0%}")


if __name__ == "__main__":
    main()
