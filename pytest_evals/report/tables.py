"""What the run tells a person: the per-benchmark summary table, gate reasons and flipped cases."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..scoring.stats import PASS_RATE
from ..scoring.stats import percent as percent_text

if TYPE_CHECKING:
    from ..scoring.gates import Verdict

HEADER = ["benchmark", "model", "metric", "n", "errors", "score", "95% interval", "threshold", "verdict", "why",
          "strength"]
NAME_COLUMNS = 3  # left-aligned; the rest are numbers
WHY_COLUMN = HEADER.index("why")  # text: left-aligned
STRENGTH_COLUMN = HEADER.index("strength")  # text: what the gate could tell (``power.gate_strength``)
TEXT_HEADERS = ("why", "strength")  # format_table left-aligns columns of these names wherever they land
FLIPS_SHOWN = 5


def verdict_rows(verdicts: list["Verdict"]) -> list[list[str]]:
    rows = []
    for v in verdicts:
        minimums = dict(v.threshold.minimums)
        for position, (metric, estimate) in enumerate(v.estimates.items()):
            if metric != PASS_RATE and metric not in minimums and estimate.value is None:
                continue
            percent = metric == PASS_RATE
            minimum = minimums.get(metric)
            rows.append([
                v.benchmark if position == 0 else "",
                v.model if position == 0 else "",
                metric,
                str(estimate.n),
                str(v.errors) if position == 0 else "",
                estimate.format(percent),
                estimate.format_interval(percent),
                "-" if minimum is None else (f">={percent_text(minimum)}" if percent else f">={minimum:g}"),
                v.row_label(metric, position == 0).upper(),
                "; ".join(text for name, text in v.why if name == metric) if not v.incomplete else "",
                dict(v.strength).get(metric, "") if not v.incomplete else "",
            ])
    return rows


def verdict_table(verdicts: list["Verdict"]) -> tuple[list[str], list[list[str]]]:
    """The verdict table's header and rows; the ``why`` column only where a row fails, the ``strength``
    column only where a gate has a minimum to be measured against."""
    rows = verdict_rows(verdicts)
    keep = [i for i in range(len(HEADER)) if i not in (WHY_COLUMN, STRENGTH_COLUMN) or any(r[i] for r in rows)]
    return [HEADER[i] for i in keep], [[r[i] for i in keep] for r in rows]


def reason_lines(verdicts: list["Verdict"]) -> list[str]:
    lines = []
    for v in verdicts:
        if v.incomplete:
            lines.append(f"INCOMPLETE {v.benchmark} [{v.model}]: not every test ran, so its gate is not decided")
            continue
        for reason in (*v.usage_errors, *v.reasons):
            lines.append(f"FAIL {v.benchmark} [{v.model}]: {reason}")
        c = v.comparison
        if c is not None and (c.to_fail or c.to_pass):
            for label, flips in (("now fail", c.to_fail), ("now pass", c.to_pass)):
                if flips:
                    shown = ", ".join(n.rsplit("::", 1)[-1] for n in flips[:FLIPS_SHOWN])
                    more = f" and {len(flips) - FLIPS_SHOWN} more" if len(flips) > FLIPS_SHOWN else ""
                    lines.append(f"  {v.benchmark} [{v.model}] vs baseline: {len(flips)} {label}: {shown}{more}")
    return lines


def failing_line(verdicts: list["Verdict"], exit_status: int) -> str | None:
    """The headline of a run whose gates fail (the last line of its output), naming them; None when none fails."""
    failing = [v for v in verdicts if not v.holds and not v.incomplete]
    if not failing:
        return None
    shown = "; ".join(f"{v.benchmark} [{v.model}]: {(v.usage_errors + v.reasons)[0]}" for v in failing[:3])
    more = f"; and {len(failing) - 3} more" if len(failing) > 3 else ""
    return (f"evals: {len(failing)} of {len(verdicts)} gate{'s' * (len(verdicts) != 1)} fail{'s' * (len(failing) == 1)} "
            f"(exit status {exit_status}): {shown}{more}")


def format_table(header: list[str], rows: list[list[str]], name_columns: int = NAME_COLUMNS,
                 text_columns: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < name_columns or i in text_columns or header[i] in TEXT_HEADERS
                         else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
