"""The run's summary as Markdown, for a CI page: ``--evals-markdown PATH`` (overwritten) and, when set,
``$GITHUB_STEP_SUMMARY`` (appended, as GitHub Actions expects). Scores with their intervals, the gate
verdicts and their reasons, the cases that flipped against the baseline, and the command that lists
the wrong answers. No pytest import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .tables import NAME_COLUMNS, TEXT_HEADERS, verdict_table

if TYPE_CHECKING:
    from ..scoring.gates import Verdict

FLIPS_LISTED = 25  # per benchmark and direction; the rest are counted


@dataclass
class RunFacts:
    """What the summary says of the run besides its verdicts."""

    run_id: int | None
    exit_status: int
    outcomes: dict[str, int] = field(default_factory=dict)  # case outcome -> count
    baseline_id: int | None = None
    incomplete: str | None = None  # why not every test ran
    cost: str | None = None  # e.g. "$0.0123" or "at least $0.01"


def cell(text: str) -> str:
    """A table cell: pipes and newlines would end the cell or the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"``{text}``"


def render(verdicts: list["Verdict"], facts: RunFacts) -> str:
    failing = [v for v in verdicts if not v.holds and not v.incomplete]
    incomplete = [v for v in verdicts if v.incomplete]
    if failing:
        headline = f"{len(failing)} of {len(verdicts)} gates fail"
    elif incomplete:
        headline = f"{len(incomplete)} of {len(verdicts)} gates undecided (not every test ran)"
    else:
        headline = f"all {len(verdicts)} gates hold"
    title = f"run {facts.run_id}" if facts.run_id is not None else "run (not stored)"
    lines = [f"## pytest-evals {title}: {headline}", ""]
    counts = ", ".join(f"{n} {'wrong' if outcome == 'failed' else outcome}"
                       for outcome, n in sorted(facts.outcomes.items(), key=lambda kv: -kv[1]))
    total = sum(facts.outcomes.values())
    lines.append(f"{total} cases: {counts or 'none'}; exit status {facts.exit_status}"
                 + (f"; cost {facts.cost}" if facts.cost else "") + ".")
    if facts.incomplete:
        lines.append(f"\n**Incomplete:** {facts.incomplete}")
    header, rows = verdict_table(verdicts)
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" if i < NAME_COLUMNS or name in TEXT_HEADERS
                                                                   else "---:" for i, name in enumerate(header)) + "|"]
    verdict = header.index("verdict")
    for row in rows:
        cells = [code(row[0]) if row[0] else "", *row[1:]]
        cells[verdict] = f"**{cells[verdict]}**" if cells[verdict] == "FAIL" else cells[verdict]
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    reasons = [f"- **FAIL** {code(v.benchmark)} [{cell(v.model)}]: {r}"
               for v in verdicts for r in (*v.usage_errors, *v.reasons)]
    if reasons:
        lines += ["", *reasons]
    flips = _flip_lines(verdicts, facts.baseline_id)
    if flips:
        lines += ["", *flips]
    if facts.run_id is not None and (facts.outcomes.get("failed") or facts.outcomes.get("error")):
        lines += ["", f"Browse the cases: {code(f'pytest-evals cases {facts.run_id} --outcome wrong,error')}"]
    return "\n".join(lines) + "\n"


def write(text: str, path: str | None, step_summary: str | None) -> list[str]:
    """Write the summary to ``path`` (overwritten) and append it to ``step_summary``; what went wrong,
    one line each (the run and its record stand: a summary that cannot be written is only reported)."""
    import os

    problems = []
    for target, mode in ((path, "w"), (step_summary, "a")):
        if not target:
            continue
        try:
            parent = os.path.dirname(os.path.abspath(target))
            os.makedirs(parent, exist_ok=True)
            with open(target, mode, encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            what = "--evals-markdown" if mode == "w" else "$GITHUB_STEP_SUMMARY"
            problems.append(f"evals-markdown: cannot write {what} {target}: {exc.strerror or exc}")
    return problems


def _flip_lines(verdicts: list["Verdict"], baseline_id: int | None) -> list[str]:
    lines = []
    for v in verdicts:
        c = v.comparison
        if c is None or not (c.to_fail or c.to_pass):
            continue
        against = f"run {baseline_id}" if baseline_id is not None else "the baseline"
        lines.append(f"<details><summary>{code(v.benchmark)} [{cell(v.model)}] against {against}: "
                     f"{len(c.to_fail)} now fail, {len(c.to_pass)} now pass</summary>\n")
        for label, names in (("now fail", c.to_fail), ("now pass", c.to_pass)):
            if not names:
                continue
            shown = ", ".join(code(n.rsplit("::", 1)[-1]) for n in names[:FLIPS_LISTED])
            more = f" and {len(names) - FLIPS_LISTED} more" if len(names) > FLIPS_LISTED else ""
            lines.append(f"- {label}: {shown}{more}")
        lines.append("\n</details>")
    return lines
