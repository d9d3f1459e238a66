"""One self-contained HTML page comparing two stored runs (``pytest-evals report BASE CAND --html FILE``).

Per benchmark, model and metric: both scores with their intervals, the candidate's change with its
interval and significance (``scoring.compare``, as ``pytest-evals compare`` prints it: an exact McNemar
test on pass/fail flips, a paired bootstrap on metrics), and the flipped cases side by side.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ...scoring.power import could_detect
from ...scoring.stats import PASS_RATE, Estimate, bootstrap_mean, compare, regressions, scores_of
from ...store.database import Store
from .cases import case_label
from .charts import difference_chart
from .page import clip, metric_label, page, run_meta, short_names, text_block


def comparison_rows(before: dict, after: dict, alpha: float, margin: float) -> tuple[list[dict[str, Any]], dict]:
    """Rows for the chart and table, and each benchmark's ``Comparison``, on the keys both runs have."""
    rows, results = [], {}
    for key in [k for k in after if k in before]:
        result = results[key] = compare(after[key], before[key], alpha)
        worse = {metric for metric, _ in regressions(result, alpha, margin)}
        paired = [n for n, o in after[key].outcomes.items()
                  if o in ("passed", "failed") and before[key].outcomes.get(n) in ("passed", "failed")]
        # the pass rate's change as a mean of paired differences, for an interval beside McNemar's p
        rate = bootstrap_mean([float(after[key].outcomes[n] == "passed") - float(before[key].outcomes[n] == "passed")
                               for n in paired], confidence=1 - alpha)
        better = result.rate_difference is not None and result.rate_difference > 0 and result.p_value < alpha
        rows.append({"benchmark": key[0], "model": key[1], "metric": PASS_RATE, "paired": result.paired,
                     "base": before[key].pass_rate(), "cand": after[key].pass_rate(), "diff": rate,
                     "verdict": "worse" if PASS_RATE in worse else "better" if better else None,
                     "significance": "; ".join(filter(None, (f"McNemar p={result.p_value:.3g}", could_detect(
                         result.paired, len(result.to_fail), len(result.to_pass), alpha, margin)))),
                     "note": f"p={result.p_value:.2g}, flips -{len(result.to_fail)} +{len(result.to_pass)}"})
        for name, diff in result.metric_differences.items():
            rows.append({"benchmark": key[0], "model": key[1], "metric": name, "paired": diff.n,
                         "base": before[key].metric(name), "cand": after[key].metric(name), "diff": diff,
                         "verdict": "worse" if name in worse else
                         "better" if diff.low is not None and diff.low > 0 else None,
                         "significance": "interval excludes 0" if diff.low is not None and (diff.low > 0 or diff.high < 0)
                         else "interval holds 0", "note": ""})
    return rows, results


def _change(metric: str, diff: Estimate) -> str:
    if diff.value is None:
        return "-"
    if metric == PASS_RATE:
        return f"{diff.value:+.1%} [{diff.low:+.1%}, {diff.high:+.1%}]"
    return f"{diff.value:+.3g} [{diff.low:+.3g}, {diff.high:+.3g}]"


def _table(rows: list[dict[str, Any]], base: str, cand: str) -> str:
    lines = []
    for r in rows:
        percent = r["metric"] == PASS_RATE
        verdict = r["verdict"] or ""
        cls = {"worse": "fail", "better": "pass"}.get(verdict, "")
        lines.append(f"<tr><td>{escape(r['benchmark'])}</td><td>{escape(r['model'])}</td>"
                     f"<td>{escape(metric_label(r['metric']))}</td><td class='num'>{r['paired']}</td>"
                     f"<td class='num'>{r['base'].format(percent)} {r['base'].format_interval(percent)}</td>"
                     f"<td class='num'>{r['cand'].format(percent)} {r['cand'].format_interval(percent)}</td>"
                     f"<td class='num'>{_change(r['metric'], r['diff'])}</td><td>{escape(r['significance'])}</td>"
                     f"<td class='{cls}'>{verdict.upper() or '-'}</td></tr>")
    return (f"<table><tr><th>benchmark</th><th>model</th><th>metric</th><th>paired</th><th>{escape(base)}</th>"
            f"<th>{escape(cand)}</th><th>change [interval]</th><th>significance</th><th>verdict</th></tr>"
            f"{''.join(lines)}</table>")


def _side(case: dict[str, Any] | None) -> str:
    if case is None:
        return '<td class="muted">-</td>'
    error = (f'<div class="muted">error</div><pre>{escape(clip(case["error"]))}</pre>' if case.get("error") else "")
    output = f"<pre>{escape(clip(case['output_text']))}</pre>" if case.get("output_text") else \
        '<span class="muted">no output</span>'
    return (f'<td class="side o-{escape(case["outcome"])}"><span class="outcome">{escape(case["outcome"])}</span>'
            f"{output}{error}</td>")


def flips_section(results: dict, base_cases: dict[str, dict], cand_cases: dict[str, dict],
                  base: str, cand: str, names: dict[str, str]) -> str:
    """Per benchmark, the cases whose outcome flipped: input, the base's output and the candidate's."""
    parts = []
    for (benchmark, model), result in results.items():
        flips = [("to-fail", n) for n in result.to_fail] + [("to-pass", n) for n in result.to_pass]
        if not flips:
            continue
        rows = []
        for kind, nodeid in flips:
            before, after = base_cases.get(nodeid), cand_cases.get(nodeid)
            shown = after or before or {"nodeid": nodeid, "model": model}
            arrow = "passed → failed" if kind == "to-fail" else "failed → passed"
            rows.append(f'<tr class="flip {kind}"><td title="{escape(nodeid)}">{escape(case_label(shown))}<br>'
                        f'<span class="{"fail" if kind == "to-fail" else "pass"}">{arrow}</span></td>'
                        f"<td>{text_block(shown.get('input_text'))}</td>{_side(before)}{_side(after)}</tr>")
        parts.append(f'<h3 title="{escape(benchmark)}">{escape(names.get(benchmark, benchmark))} [{escape(model)}]: '
                     f"{len(result.to_fail)} now fail, {len(result.to_pass)} now pass</h3>"
                     "<table class='flips'><colgroup><col style='width:12%'><col style='width:22%'>"
                     "<col style='width:33%'><col style='width:33%'></colgroup>"
                     f"<tr><th>case</th><th>input</th><th>{escape(base)}</th><th>{escape(cand)}</th></tr>"
                     f"{''.join(rows)}</table>")
    return "".join(parts) or '<p class="muted">no case changed between passed and failed</p>'


def render_comparison(store: Store, base_id: int, cand_id: int, alpha: float = 0.05, margin: float = 0.0) -> str:
    base_rows, cand_rows = store.cases(base_id), store.cases(cand_id)
    before, after = scores_of(base_rows), scores_of(cand_rows)
    base, cand = f"run {base_id}", f"run {cand_id}"
    rows, results = comparison_rows(before, after, alpha, margin)
    names = short_names([k[0] for k in (*before, *after)])
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    charts = "".join(f"<h3>{escape(metric_label(m))}</h3><div class='chart'>"
                     f"{difference_chart(rows, m, names, base, cand)}</div>" for m in metrics)
    only = [f"<li>{escape(b)} [{escape(m)}]: only in {base if (b, m) in before else cand}</li>"
            for b, m in sorted(set(before) ^ set(after))]
    only_part = (f"<h2>Benchmarks in one run only</h2><p class='muted'>Cases pair by node id, model included: "
                 f"runs of different models pair nothing.</p><ul>{''.join(only)}</ul>" if only else "")
    worse = sum(r["verdict"] == "worse" for r in rows)
    better = sum(r["verdict"] == "better" for r in rows)
    paired = sum(r["paired"] > 0 for r in rows)
    body = f"""<p>{paired} scores compared (benchmark × model × metric): {worse} significantly worse, {better} significantly
better, {paired - worse - better} without a significant change (alpha {alpha:g}{f", margin {margin:g}" if margin else ""}), on the cases both runs scored.</p>
<h2>Scores and changes</h2>
<p class="muted">Left: the score of {escape(base)} (grey) and {escape(cand)} (blue) with 95% intervals. Right: the
change on the paired cases with its {1 - alpha:.0%} interval (paired bootstrap); red: significantly worse, green:
significantly better (pass rate: exact McNemar test on the flips). Hover a row for its figures.</p>
{charts or '<p class="muted">no benchmark is in both runs</p>'}
<details><summary>the same figures as a table</summary>{_table(rows, base, cand)}</details>
<h2>Flipped cases</h2>
{flips_section(results, {c["nodeid"]: c for c in base_rows}, {c["nodeid"]: c for c in cand_rows}, base, cand, names)}
{only_part}"""
    meta = run_meta(store.run(base_id) or {}, base_id, "base: ") + run_meta(store.run(cand_id) or {}, cand_id, "candidate: ")
    return page(f"pytest-evals: run {cand_id} against run {base_id}", f"pytest-evals: run {cand_id} against run {base_id}",
                meta, body)
