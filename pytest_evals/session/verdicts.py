"""What the run's verdicts become besides the terminal summary and the store's rows
(``scoring.verdict_rows``): JUnit XML properties, and the Markdown summary for CI pages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .._pytest_internals import junit_xml
from ..report import markdown
from ..scoring.gates import Gates, Verdict


def add_junit_properties(config: pytest.Config, verdicts: list[Verdict]) -> None:
    """Each gate's verdict and estimates as properties of the JUnit XML file, where one is written."""
    xml = junit_xml(config)
    if xml is None:
        return
    for v in verdicts:
        prefix = f"evals.{v.benchmark}[{v.model}]"
        xml.add_global_property(f"{prefix}.verdict", v.label)
        for metric, estimate in v.estimates.items():
            if estimate.value is not None:
                xml.add_global_property(f"{prefix}.{metric}", f"{estimate.value:.6g}")
                xml.add_global_property(f"{prefix}.{metric}.interval95", f"{estimate.low:.6g} {estimate.high:.6g}")


def write_markdown(path: Path | None, verdicts: list[Verdict], gates: Gates, facts: markdown.RunFacts) -> list[str]:
    """The Markdown summary (--evals-markdown, $GITHUB_STEP_SUMMARY): what was written, or why not."""
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY") or None
    if path is None and step_summary is None:
        return []
    for scores in gates.scores.values():
        for outcome in ("passed", "failed", "error", "skipped"):
            if scores.count(outcome):
                facts.outcomes[outcome] = facts.outcomes.get(outcome, 0) + scores.count(outcome)
    notes = markdown.write(markdown.render(verdicts, facts), str(path) if path else None, step_summary)
    if path is not None and not any("--evals-markdown" in n for n in notes):
        notes.append(f"evals-markdown: wrote {path}")
    return notes
