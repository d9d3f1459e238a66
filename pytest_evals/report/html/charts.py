"""Inline SVG charts for the HTML reports, sized to their data: a row per benchmark and model.

- ``score_chart``: one metric's scores as horizontal bars with 95% interval whiskers and threshold ticks;
- ``difference_chart``: two runs' scores of one metric and their difference with its interval;
- ``histogram``: the latency of a model's calls.

Long benchmark names are cut in the middle to fit their column; each row's ``<title>`` (a tooltip)
holds the full name and figures.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from ...scoring.stats import PASS_RATE, percent
from .page import ellipsize, metric_label, score_text

ROW = 20  # px per row
TOP = 22  # px above the first row, for the axis labels
BENCH_W, MODEL_W, PLOT_W, VALUE_W = 220, 120, 360, 210
CHAR_W = 6.3  # px per character at the charts' 11px font, to know how many characters a column holds
HISTOGRAM_BINS = 20
COLOURS = {"pass": "#2da44e", "fail": "#cf222e", None: "#54aeff"}
SVG = 'xmlns="http://www.w3.org/2000/svg" role="img"'


def _fits(width: float) -> int:
    return max(4, int((width - 10) / CHAR_W))


def _grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with those of one benchmark together, in the order benchmarks first appear."""
    order = {b: i for i, b in enumerate(dict.fromkeys(r["benchmark"] for r in rows))}
    return sorted(rows, key=lambda r: order[r["benchmark"]])


def _scale_top(metric: str, highs: list[float]) -> float:
    """The axis' end: 1 for pass rates and for metrics that stay within [0, 1], else a round number above."""
    peak = max(highs, default=0.0)
    if metric == PASS_RATE or peak <= 1:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(peak))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= peak)


def _names(benchmark: str, model: str, names: dict[str, str], y: float, first: bool) -> str:
    """The row's labels: the benchmark on its group's first row only, the model on each."""
    text = f'<text x="4" y="{y}">{escape(ellipsize(names.get(benchmark, benchmark), _fits(BENCH_W)))}</text>' if first else ""
    return text + f'<text x="{BENCH_W + 4}" y="{y}">{escape(ellipsize(model, _fits(MODEL_W)))}</text>'


def _axis(x0: float, width: float, lo: float, hi: float, metric: str, height: float, signed: bool = False) -> list[str]:
    parts = []
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        x = x0 + width * i / 4
        label = _signed(metric, value) if signed else percent(value) if metric == PASS_RATE else f"{value:.3g}"
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        colour = "#8c959f" if signed and abs(value) < 1e-12 else "#eaeef2"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 4}" y2="{height}" stroke="{colour}"/>'
                     f'<text class="axis" x="{x:.1f}" y="{TOP - 8}" text-anchor="{anchor}">{label}</text>')
    return parts


def _signed(metric: str, value: float) -> str:
    if abs(value) < 1e-12:
        return "0"
    return f"{value:+.1%}".replace(".0%", "%") if metric == PASS_RATE else f"{value:+.3g}"


def _whisker(x_low: float, x_high: float, cy: float, half: float = 4) -> str:
    return (f'<g class="interval" stroke="#1f2328"><line x1="{x_low:.1f}" x2="{x_high:.1f}" y1="{cy}" y2="{cy}"/>'
            f'<line x1="{x_low:.1f}" x2="{x_low:.1f}" y1="{cy - half}" y2="{cy + half}"/>'
            f'<line x1="{x_high:.1f}" x2="{x_high:.1f}" y1="{cy - half}" y2="{cy + half}"/></g>')


def score_chart(rows: list[dict[str, Any]], metric: str, names: dict[str, str]) -> str:
    """One metric's scores: a bar per benchmark and model, its interval, and its threshold as a tick."""
    rows = _grouped([r for r in rows if r["metric"] == metric and r["value"] is not None])
    if not rows:
        return ""
    top = _scale_top(metric, [max(r["high"] or r["value"], r.get("minimum") or 0) for r in rows])
    x0 = BENCH_W + MODEL_W
    width, height = x0 + PLOT_W + VALUE_W, TOP + len(rows) * ROW + 4

    def x(value: float) -> float:
        return x0 + PLOT_W * max(0.0, min(value / top, 1.0))

    stripes, body = [], []
    for r, y, first in striped(rows, width, ROW, stripes):
        value_text = score_text(metric, r["value"])
        interval = "" if r["low"] is None else f" [{score_text(metric, r['low'])}, {score_text(metric, r['high'])}]"
        threshold = "" if r.get("minimum") is None else f", threshold {score_text(metric, r['minimum'])}"
        verdict = f": {r['verdict'].upper()}" if r.get("verdict") else ""
        title = (f"{r['benchmark']} [{r['model']}]\n{metric_label(metric)} {value_text}{interval}, "
                 f"n={r['n']}{threshold}{verdict}")
        body.append(f'<g class="row"><title>{escape(title)}</title>{_names(r["benchmark"], r["model"], names, y + 14, first)}'
                    f'<rect class="bar" x="{x0}" y="{y + 4}" width="{x(r["value"]) - x0:.1f}" height="{ROW - 8}" '
                    f'fill="{COLOURS.get(r.get("verdict"), COLOURS[None])}"/>')
        if r["low"] is not None and r["high"] is not None:
            body.append(_whisker(x(r["low"]), x(r["high"]), y + ROW / 2))
        if r.get("minimum") is not None:
            body.append(f'<line class="threshold" x1="{x(r["minimum"]):.1f}" x2="{x(r["minimum"]):.1f}" y1="{y + 1}" '
                        f'y2="{y + ROW - 1}" stroke="#bf8700" stroke-width="3"/>')
        body.append(f'<text x="{x0 + PLOT_W + 8}" y="{y + 14}">{escape(value_text + interval)} '
                    f'<tspan class="axis">n={r["n"]}</tspan></text></g>')
    return "".join([f'<svg class="bars" data-metric="{escape(metric)}" width="{width}" height="{height}" {SVG} '
                    f'aria-label="{escape(metric_label(metric))} per benchmark and model">', *stripes,
                    *_axis(x0, PLOT_W, 0.0, top, metric, height), *body, "</svg>"])


def _nice_span(values: list[float], metric: str) -> float:
    """The half-width of a difference axis centred on 0: a round number above every value."""
    peak = max((abs(v) for v in values), default=0.0)
    floor = 0.05 if metric == PASS_RATE else 1e-3
    peak = max(peak, floor)
    magnitude = 10 ** math.floor(math.log10(peak))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= peak)


def difference_chart(rows: list[dict[str, Any]], metric: str, names: dict[str, str], base: str, cand: str) -> str:
    """Two runs on one metric: per benchmark and model, both scores (base grey above, candidate blue below)
    and the candidate's change with its interval, red where significantly worse, green where better.

    ``rows``: benchmark, model, metric, base / cand / diff (Estimate), verdict (worse | better | None), note."""
    rows = _grouped([r for r in rows if r["metric"] == metric and r["diff"].value is not None])
    if not rows:
        return ""
    row_h = ROW + 4
    score_w, diff_w, gap, value_w = 260, 280, 48, 300
    x0 = BENCH_W + MODEL_W
    d0 = x0 + score_w + gap
    highs = [e.high if e.high is not None else e.value for r in rows for e in (r["base"], r["cand"]) if e.value is not None]
    top = _scale_top(metric, highs)
    span = _nice_span([v for r in rows for v in (r["diff"].low, r["diff"].high, r["diff"].value) if v is not None], metric)
    width, height = d0 + diff_w + value_w, TOP + len(rows) * row_h + 4

    def xs(value: float) -> float:
        return x0 + score_w * max(0.0, min(value / top, 1.0))

    def xd(value: float) -> float:
        return d0 + diff_w * (max(-span, min(value, span)) + span) / (2 * span)

    stripes, body = [], []
    for r, y, first in striped(rows, width, row_h, stripes):
        diff = r["diff"]
        verdict = r.get("verdict")
        colour = {"worse": "#cf222e", "better": "#1a7f37"}.get(verdict, "#6e7781")
        change = "-" if diff.value is None else _signed(metric, diff.value)
        interval = "" if diff.low is None else f" [{_signed(metric, diff.low)}, {_signed(metric, diff.high)}]"
        title = (f"{r['benchmark']} [{r['model']}]\n{metric_label(metric)}: {base} {r['base'].format(metric == PASS_RATE)}"
                 f", {cand} {r['cand'].format(metric == PASS_RATE)}; change {change}{interval}"
                 f"{' ' + r['note'] if r.get('note') else ''}{': ' + verdict.upper() if verdict else ''}")
        body.append(f'<g class="diff" data-verdict="{verdict or "same"}"><title>{escape(title)}</title>')
        body.append(_names(r["benchmark"], r["model"], names, y + 16, first))
        for estimate, offset, fill in ((r["base"], 3, "#afb8c1"), (r["cand"], 13, "#2f81f7")):
            if estimate.value is not None:
                body.append(f'<rect class="bar" x="{x0}" y="{y + offset}" width="{xs(estimate.value) - x0:.1f}" '
                            f'height="8" fill="{fill}"/>')
                if estimate.low is not None:
                    body.append(_whisker(xs(estimate.low), xs(estimate.high), y + offset + 4, 3))
        if diff.value is not None:
            if diff.low is not None:
                body.append(f'<line x1="{xd(diff.low):.1f}" x2="{xd(diff.high):.1f}" y1="{y + row_h / 2}" '
                            f'y2="{y + row_h / 2}" stroke="{colour}" stroke-width="2"/>')
            body.append(f'<circle cx="{xd(diff.value):.1f}" cy="{y + row_h / 2}" r="4" fill="{colour}"/>')
        body.append(f'<text x="{d0 + diff_w + 8}" y="{y + 16}" fill="{colour}">{escape(change + interval)}'
                    f'{" " + escape(r["note"]) if r.get("note") else ""}</text></g>')
    parts = [f'<svg class="comparison" data-metric="{escape(metric)}" width="{width}" height="{height}" {SVG} '
             f'aria-label="{escape(metric_label(metric))}: {escape(base)} against {escape(cand)}">', *stripes]
    parts += _axis(x0, score_w, 0.0, top, metric, height) + _axis(d0, diff_w, -span, span, metric, height, True)
    parts += body + ["</svg>"]
    return "".join(parts)


def histogram(values: list[float], label: str) -> str:
    """Latency of one model's calls: 20 bins between the fastest and the slowest."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1e-9
    counts = [0] * HISTOGRAM_BINS
    for v in values:
        counts[min(int((v - low) / span * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    step, plot_h, left = 14, 70, 30
    width, peak = left + HISTOGRAM_BINS * step + 10, max(counts)
    parts = [f'<svg class="histogram" data-model="{escape(label)}" width="{width}" height="{plot_h + 40}" {SVG} '
             f'aria-label="latency of {escape(label)}">',
             f'<text x="{left}" y="12">{escape(ellipsize(label, 40))}: {len(values)} calls</text>',
             f'<text class="axis" x="{left - 4}" y="24" text-anchor="end">{peak}</text>']
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        start = low + span * i / HISTOGRAM_BINS
        parts.append(f'<rect class="bin" x="{left + i * step}" y="{18 + plot_h - h:.1f}" width="{step - 2}" '
                     f'height="{h:.1f}" fill="#8250df"><title>{count} calls from {start:.3f} s</title></rect>')
    parts.append(f'<text class="axis" x="{left}" y="{plot_h + 32}">{low:.3f} s</text>'
                 f'<text class="axis" x="{width - 10}" y="{plot_h + 32}" text-anchor="end">{high:.3f} s</text></svg>')
    return "".join(parts)


def striped(rows: list[dict[str, Any]], width: float, row_h: float, stripes: list[str]):
    """Each row with its top and whether it starts a benchmark's group; every other group gets a
    background stripe (appended to ``stripes``)."""
    group, stripe = None, True
    for i, r in enumerate(rows):
        y = TOP + i * row_h
        first = r["benchmark"] != group
        if first:
            group, stripe = r["benchmark"], not stripe
        if stripe:
            stripes.append(f'<rect x="0" y="{y}" width="{width}" height="{row_h}" fill="#f6f8fa"/>')
        yield r, y, first
