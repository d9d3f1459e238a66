"""How many cases change shard when one case is added to a benchmark: ``--evals-shard``'s deal against
dealing the ranked cases round-robin (``rank mod N``), the other split that keeps sizes within one.

    python benchmarks/shard_moves.py [--trials 200]

For each benchmark size and N, each trial adds one case to a benchmark (a new name each trial, so the
digests differ) and counts the other cases whose shard changed; both splits are checked to keep the
shards' sizes within one case. Prints the mean and the largest count of each.
"""

from __future__ import annotations

import argparse
import statistics

from pytest_evals.session.limit import _rank
from pytest_evals.session.shards import deal


def round_robin(cases: list[str], count: int, seed: int, benchmark: str) -> dict[str, int]:
    ranked = sorted(cases, key=lambda case: _rank(seed, benchmark, case))
    return {case: position % count for position, case in enumerate(ranked)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    trials = parser.parse_args().trials
    print(f"{'split':12} {'cases':>6} {'N':>3} {'moved (mean)':>13} {'moved (max)':>12}")
    for size, count in ((40, 4), (100, 3), (1000, 4), (1000, 8)):
        for name, split in (("deal", deal), ("round-robin", round_robin)):
            moved = []
            for trial in range(trials):
                benchmark = f"test_suite.py::test_{trial}"
                cases = [f"i={k}" for k in range(size)]
                before = split(cases, count, 0, benchmark)
                after = split([*cases, f"i=new{trial}"], count, 0, benchmark)
                sizes = [list(after.values()).count(k) for k in range(count)]
                assert max(sizes) - min(sizes) <= 1, (name, sizes)
                moved.append(sum(before[case] != after[case] for case in cases))
            print(f"{name:12} {size:>6} {count:>3} {statistics.mean(moved):>13.2f} {max(moved):>12}")


if __name__ == "__main__":
    main()
