"""What the run's verdicts become besides the terminal summary: the store's ``benchmarks`` and
``repeated_cases`` rows, JUnit XML properties, and the Markdown summary for CI pages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .._pytest_internals import junit_xml
from ..report import markdown
from ..scoring.gates import Gates, Verdict


def benchmark_rows(verdicts: list[Verdict]) -> list[dict]:
    rows = []
    for v in verdicts:
        minimums = dict(v.threshold.minimums)
        for position, (metric, estimate) in enumerate(v.estimates.items()):
            rows.append({
                "benchmark": v.benchmark, "model": v.model, "metric": metric, "n": estimate.n,
                "errors": v.errors, "value": estimate.value, "low": estimate.low, "high": estimate.high,
                "minimum": minimums.get(metric), "threshold_source": v.threshold.source,
                "verdict": v.row_label(metric, position == 0) or None,  # this row's own check
                "reason": "; ".join((*v.usage_errors, *v.reasons)) or None,
            })
    return rows


def repeated_rows(gates: Gates) -> list[dict]:
    """One row per repeated case: its samples taken together."""
    rows = []
    for (benchmark, model), scores in gates.scores.items():
        for nodeid, samples in scores.repeated.items():
            rows.append({"benchmark": benchmark, "model": model, "nodeid": nodeid, "samples": samples.count,
                         "scored": samples.scored, "passed": samples.passed, "errors": samples.errors,
                         "pass_rate": samples.pass_rate(),
                         "pass_at_k": json.dumps({str(k): v for k, v in samples.pass_at().items()}),
                         "flaky": int(samples.flaky)})
    return rows


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
