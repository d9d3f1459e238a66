"""What the run tells a person: the per-benchmark summary table in the terminal."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

OUTCOMES = ("passed", "failed", "error", "skipped")


@dataclass
class BenchmarkTally:
    counts: Counter = field(default_factory=Counter)

    @property
    def cases(self) -> int:
        return sum(self.counts.values())

    @property
    def pass_rate(self) -> float | None:
        """passed / (passed + failed): errors and skips are not answers, so they are not scored."""
        scored = self.counts["passed"] + self.counts["failed"]
        return self.counts["passed"] / scored if scored else None


class Summary:
    """Outcome counts per (benchmark, model), in the order benchmarks were first seen."""

    def __init__(self) -> None:
        self.tallies: dict[tuple[str, str], BenchmarkTally] = {}

    def add(self, benchmark: str, model: str, outcome: str) -> None:
        self.tallies.setdefault((benchmark, model), BenchmarkTally()).counts[outcome] += 1

    def __bool__(self) -> bool:
        return bool(self.tallies)

    def rows(self) -> list[list[str]]:
        rows = []
        for (benchmark, model), tally in self.tallies.items():
            rate = tally.pass_rate
            rows.append([
                benchmark, model, str(tally.cases),
                *(str(tally.counts[o]) for o in OUTCOMES[:3]),
                "-" if rate is None else f"{rate:.1%}",
            ])
        return rows


HEADER = ["benchmark", "model", "cases", "passed", "failed", "errors", "pass rate"]


def format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # First two columns are names (left-aligned); the rest are numbers (right-aligned).
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
