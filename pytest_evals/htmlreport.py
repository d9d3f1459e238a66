"""One self-contained HTML page for a stored run: no script, no CDN, charts as inline SVG.

- scores per benchmark and model: bars with their 95% interval and the threshold;
- latency histogram of the model calls, per model;
- the failed and errored cases with their input, output and error.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from .scoring import PASS_RATE, scores_of
from .store import Store

BAR_WIDTH, BAR_GAP, CHART_HEIGHT, LABEL_WIDTH = 26, 14, 220, 60
HISTOGRAM_BINS = 20
TEXT_LIMIT = 1500

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border:1px solid #d0d7de;padding:4px 6px;
vertical-align:top;text-align:left} th{background:#f6f8fa} pre{white-space:pre-wrap;margin:0;font-size:12px;
max-height:200px;overflow:auto} .pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:600}
.muted{color:#656d76} svg text{font-size:11px;fill:#1f2328} .chart{overflow-x:auto}
"""


def _metric_label(metric: str) -> str:
    return "pass rate" if metric == PASS_RATE else metric


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


def bar_chart(rows: list[dict[str, Any]], metric: str) -> str:
    """Bars of one metric (pass rate on 0..1, others on their own scale) with interval whiskers."""
    rows = [r for r in rows if r["metric"] == metric and r["value"] is not None]
    if not rows:
        return ""
    top = 1.0 if metric == PASS_RATE else max(max(r["high"] or r["value"], r["minimum"] or 0) for r in rows) or 1.0
    width = LABEL_WIDTH + len(rows) * (BAR_WIDTH + BAR_GAP) + 260  # room for the slanted labels
    height = CHART_HEIGHT + 190

    def y(value: float) -> float:
        return 10 + CHART_HEIGHT * (1 - max(0.0, min(value / top, 1.0)))

    parts = [f'<svg class="bars" data-metric="{escape(metric)}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(_metric_label(metric))}">']
    for tick in range(5):
        value = top * tick / 4
        label = f"{value:.0%}" if metric == PASS_RATE else f"{value:.3g}"
        parts.append(f'<line x1="{LABEL_WIDTH - 4}" x2="{width}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'stroke="#eaeef2"/><text x="{LABEL_WIDTH - 8}" y="{y(value) + 4:.1f}" '
                     f'text-anchor="end">{label}</text>')
    for i, r in enumerate(rows):
        x = LABEL_WIDTH + i * (BAR_WIDTH + BAR_GAP)
        colour = "#cf222e" if r.get("verdict") == "fail" else "#2f81f7"
        value_text = f"{r['value']:.1%}" if metric == PASS_RATE else f"{r['value']:.3g}"
        title = escape(f"{r['benchmark']} [{r['model']}] {_metric_label(metric)} {value_text} (n={r['n']})")
        parts.append(f'<rect class="bar" x="{x}" y="{y(r["value"]):.1f}" width="{BAR_WIDTH}" '
                     f'height="{CHART_HEIGHT + 10 - y(r["value"]):.1f}" fill="{colour}"><title>{title}</title></rect>')
        if r["low"] is not None and r["high"] is not None:
            cx = x + BAR_WIDTH / 2
            parts.append(f'<g class="interval" stroke="#1f2328"><line x1="{cx}" x2="{cx}" y1="{y(r["low"]):.1f}" '
                         f'y2="{y(r["high"]):.1f}"/><line x1="{cx - 6}" x2="{cx + 6}" y1="{y(r["low"]):.1f}" '
                         f'y2="{y(r["low"]):.1f}"/><line x1="{cx - 6}" x2="{cx + 6}" y1="{y(r["high"]):.1f}" '
                         f'y2="{y(r["high"]):.1f}"/></g>')
        if r.get("minimum") is not None:
            parts.append(f'<line class="threshold" x1="{x - 4}" x2="{x + BAR_WIDTH + 4}" y1="{y(r["minimum"]):.1f}" '
                         f'y2="{y(r["minimum"]):.1f}" stroke="#bf8700" stroke-width="3" stroke-dasharray="4 2"/>')
        label = escape(f"{r['benchmark'].rsplit('::', 1)[-1]} [{r['model']}]")
        parts.append(f'<text transform="translate({x + BAR_WIDTH / 2},{CHART_HEIGHT + 18}) rotate(40)">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(values: list[float], label: str) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1e-9
    counts = [0] * HISTOGRAM_BINS
    for v in values:
        counts[min(int((v - low) / span * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    width, height, bar = 40 + HISTOGRAM_BINS * 18, 150, 16
    peak = max(counts)
    parts = [f'<svg class="histogram" data-model="{escape(label)}" width="{width}" height="{height + 40}" '
             f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="latency of {escape(label)}">']
    for i, count in enumerate(counts):
        h = height * count / peak
        start = low + span * i / HISTOGRAM_BINS
        parts.append(f'<rect class="bin" x="{40 + i * 18}" y="{height - h:.1f}" width="{bar}" height="{h:.1f}" '
                     f'fill="#8250df"><title>{count} calls from {start:.3f} s</title></rect>')
    parts.append(f'<text x="40" y="{height + 16}">{low:.3f} s</text>'
                 f'<text x="{width - 4}" y="{height + 16}" text-anchor="end">{high:.3f} s</text>'
                 f'<text x="{width / 2}" y="{height + 34}" text-anchor="middle">{escape(label)}: '
                 f'{len(values)} calls, latency</text></svg>')
    return "".join(parts)


def _cell(text: str | None) -> str:
    if not text:
        return '<td class="muted">-</td>'
    shown = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"\n… ({len(text) - TEXT_LIMIT} more characters)"
    return f"<td><pre>{escape(shown)}</pre></td>"


def _number(value: float | None) -> str:
    return "-" if value is None else format(value, ".4g")


def _score_row(r: dict[str, Any]) -> str:
    interval = "-" if r["low"] is None else f"{_number(r['low'])} – {_number(r['high'])}"
    minimum = "-" if r.get("minimum") is None else format(r["minimum"], "g")
    verdict = r.get("verdict") or ""
    return (f"<tr><td>{escape(r['benchmark'])}</td><td>{escape(r['model'])}</td>"
            f"<td>{escape(_metric_label(r['metric']))}</td><td>{r['n']}</td><td>{_number(r['value'])}</td>"
            f"<td>{interval}</td><td>{minimum}</td><td class='{verdict}'>{(verdict or '-').upper()}</td></tr>")


def render(store: Store, run_id: int) -> str:
    run = store.run(run_id) or {}
    rows = score_rows(store, run_id)
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    charts = "".join(f"<h3>{escape(_metric_label(m))}</h3><div class='chart'>{bar_chart(rows, m)}</div>"
                     for m in metrics)
    table = "".join(_score_row(r) for r in rows)
    latencies: dict[str, list[float]] = {}
    calls = store.calls(run_id)
    batched = sum(1 for call in calls if call.get("batched"))
    cached = sum(1 for call in calls if call.get("cached"))
    for call in calls:
        # a call the call cache answered: the recorded call's latency (this run's is the lookup's)
        latency = call.get("cached_latency_s") if call.get("cached") else call["latency_s"]
        if latency is not None and call["error"] is None:
            latencies.setdefault(call["model"], []).append(latency)
    histograms = "".join(histogram(v, m) for m, v in latencies.items())
    cache_note = (f"; {cached} calls were answered from the call cache and show the latency recorded there"
                  if cached else "")
    failed = [c for c in store.cases(run_id) if c["outcome"] in ("failed", "error")]
    failed_rows = "".join(
        f"<tr><td>{escape(c['nodeid'])}</td><td>{escape(c['model'])}</td><td class='fail'>{c['outcome']}</td>"
        f"{_cell(c['input_text'])}{_cell(c['output_text'])}{_cell(c['error'])}</tr>" for c in failed)
    models = ", ".join(json.loads(run.get("models") or "[]"))
    incomplete = (f" ({run['tests_not_run']} of {run['tests']} tests did not run)"
                  if run.get("tests_not_run") else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pytest-evals run {run_id}</title>
<style>{STYLE}</style></head><body>
<h1>pytest-evals run {run_id}</h1>
<p class="muted">{escape(run.get('started_at') or '')} – {escape(run.get('ended_at') or 'not finished')}
· status {escape(str(run.get('status')))}{incomplete} · exit {escape(str(run.get('exit_status')))} · models {escape(models)}
· git {escape((run.get('git_revision') or '-')[:12])}</p>
<h2>Scores with 95% intervals</h2>
<p class="muted">Bars: score; whiskers: 95% interval (Wilson for pass rates, bootstrap for means);
dashed line: threshold. Red bars failed their gate.</p>
{charts}
<table><tr><th>benchmark</th><th>model</th><th>metric</th><th>n</th><th>score</th><th>95% interval</th>
<th>threshold</th><th>verdict</th></tr>{table}</table>
<h2>Latency of model calls</h2>
<p class="muted">Each call's own time, batched calls too: a generation until its own last token (in a batch,
from its sub-batch's start), a loglikelihood until its forward pass's end; {batched} calls came from
batches across cases, whose wall times are in the calls table's batch_s{cache_note}.</p>
<div class="chart">{histograms or '<p class="muted">no calls recorded</p>'}</div>
<h2>Failed and errored cases ({len(failed)})</h2>
<table><tr><th>case</th><th>model</th><th>outcome</th><th>input</th><th>output</th><th>error</th></tr>
{failed_rows}</table>
</body></html>
"""
