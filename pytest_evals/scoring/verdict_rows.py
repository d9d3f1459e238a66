"""A run's verdicts as the store keeps them: its ``benchmarks`` and ``repeated_cases`` rows (written by the
controller at the end of a run, and by ``pytest-evals merge`` for the run it makes)."""

from __future__ import annotations

import json

from .gates import Gates, Verdict


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
