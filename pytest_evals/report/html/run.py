"""One self-contained HTML page for a stored run: no script, no CDN, charts as inline SVG.

- scores per benchmark and model: a compact bar chart per metric, with 95% intervals and thresholds,
  and the table of the same figures;
- the matrix of cases against models, where the run had several models;
- every case with its input, output, error, scores and conversation, filterable by outcome, benchmark
  and model (CSS only);
- latency histograms of the model calls, per model.

Two runs compared on one page: ``htmlcompare``.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from ...scoring.power import could_detect, stored_strength
from ...scoring.stats import PASS_RATE, compare, scores_of
from ...store.database import Store
from ..browse import outcome_label
from .cases import case_section, matrix_section
from .charts import histogram, score_chart
from .page import metric_label, number, page, run_meta, short_names


def score_rows(store: Store, run_id: int) -> list[dict[str, Any]]:
    """Stored gate results; for a run that ended before its gates, pass rates from its cases."""
    rows = store.benchmarks(run_id)
    if rows:
        return rows
    result = []
    for (benchmark, model), scores in scores_of(store.cases(run_id)).items():
        estimate = scores.pass_rate()
        result.append({"benchmark": benchmark, "model": model, "metric": PASS_RATE, "n": estimate.n,
                       "value": estimate.value, "low": estimate.low, "high": estimate.high,
                       "minimum": None, "verdict": None})
    return result


def detect_notes(store: Store, run: dict[str, Any], cases: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Against the baseline the run was gated on (its stored gate settings, ``runs.gates``), the drop each
    benchmark's comparison had 80% power to detect, as the terminal's strength column says it. ``cases``:
    the run's, as already read."""
    try:
        settings = json.loads(run.get("gates") or "null") or {}
    except ValueError:
        return {}
    base = settings.get("baseline")
    if not base or store.run(base) is None:
        return {}
    before, after = scores_of(store.cases(base)), scores_of(cases)
    notes = {}
    for key in after.keys() & before.keys():
        comparison = compare(after[key], before[key], settings["alpha"])
        text = could_detect(comparison.paired, len(comparison.to_fail), len(comparison.to_pass), settings["alpha"],
                            settings["margin"])
        if text:
            notes[key] = text
    return notes


def _score_row(r: dict[str, Any], notes: dict[tuple[str, str], str] | None = None) -> str:
    interval = "-" if r["low"] is None else f"{number(r['low'])} – {number(r['high'])}"
    minimum = "-" if r.get("minimum") is None else format(r["minimum"], "g")
    verdict = r.get("verdict") or ""
    return (f"<tr><td>{escape(r['benchmark'])}</td><td>{escape(r['model'])}</td>"
            f"<td>{escape(metric_label(r['metric']))}</td><td class='num'>{r['n']}</td>"
            f"<td class='num'>{number(r['value'])}</td><td class='num'>{interval}</td><td class='num'>{minimum}</td>"
            f"<td class='{verdict}'>{(verdict or '-').upper()}</td><td>{escape(_strength_text(r, notes))}</td></tr>")


def _strength_text(r: dict[str, Any], notes: dict[tuple[str, str], str] | None) -> str:
    detect = (notes or {}).get((r["benchmark"], r["model"])) if r["metric"] == PASS_RATE else None
    return "; ".join(filter(None, (stored_strength(r), detect)))


def latency_section(calls: list[dict[str, Any]]) -> str:
    latencies: dict[str, list[float]] = {}
    for call in calls:
        # a call the call cache answered: the recorded call's latency (this run's is the lookup's)
        latency = call.get("cached_latency_s") if call.get("cached") else call["latency_s"]
        if latency is not None and call["error"] is None:
            latencies.setdefault(call["model"], []).append(latency)
    batched = sum(1 for call in calls if call.get("batched"))
    cached = sum(1 for call in calls if call.get("cached"))
    cache_note = (f"; {cached} calls were answered from the call cache and show the latency recorded there"
                  if cached else "")
    histograms = "".join(histogram(v, m) for m, v in latencies.items())
    return (f'<p class="muted">Each call\'s own time, batched calls too: a generation until its own last token (in a '
            f"batch, from its sub-batch's start), a loglikelihood until its forward pass's end; {batched} calls came "
            f"from batches across cases, whose wall times are in the calls table's batch_s{cache_note}.</p>"
            f'<div class="charts">{histograms or "<p class=muted>no calls recorded</p>"}</div>')


def scores_section(rows: list[dict[str, Any]], names: dict[str, str],
                   notes: dict[tuple[str, str], str] | None = None) -> str:
    """The run's scores: a chart per metric, and the same figures (with each gate's strength) as a table."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    charts = "".join(f"<h3>{escape(metric_label(m))}</h3><div class='chart'>{score_chart(rows, m, names)}</div>"
                     for m in metrics)
    table = "".join(_score_row(r, notes) for r in rows)
    return f"""<h2>Scores with 95% intervals</h2>
<p class="muted">Bars: score (green: gate held, red: gate failed, blue: no gate); whiskers: 95% interval (Wilson
for pass rates, bootstrap for means); amber tick: threshold. Hover a row for its figures and full name.</p>
{charts}
<details><summary>the same figures as a table</summary>
<table><tr><th>benchmark</th><th>model</th><th>metric</th><th>n</th><th>score</th><th>95% interval</th>
<th>threshold</th><th>verdict</th><th>strength</th></tr>{table}</table></details>"""


def render(store: Store, run_id: int) -> str:
    run = store.run(run_id) or {}
    rows = score_rows(store, run_id)
    cases = store.cases(run_id)
    names = short_names([r["benchmark"] for r in rows] + [c["benchmark"] for c in cases])
    notes = detect_notes(store, run, cases) if run else {}
    matrix_css, matrix = matrix_section(cases)
    cases_css, case_table = case_section(cases, store.rows("turns", run_id), store.rows("tool_calls", run_id))
    counts = {o: sum(c["outcome"] == o for c in cases) for o in dict.fromkeys(c["outcome"] for c in cases)}
    tally = ", ".join(f"{n} {outcome_label(o)}" for o, n in counts.items())
    matrix_part = (f"<h2>Cases × models</h2>{matrix}" if matrix else "")
    body = f"""{scores_section(rows, names, notes)}
{matrix_part}
<h2>Cases ({len(cases)}{": " + tally if tally else ""})</h2>
{case_table}
<h2>Latency of model calls</h2>
{latency_section(store.calls(run_id))}"""
    return page(f"pytest-evals run {run_id}", f"pytest-evals run {run_id}", run_meta(run, run_id), body,
                matrix_css + cases_css)
