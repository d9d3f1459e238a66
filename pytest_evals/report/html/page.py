"""The frame the HTML reports share: the page, its stylesheet, and small text helpers.

Every page is one file that opens anywhere: no script, no external stylesheet, font or image (charts
are inline SVG; filters are CSS on hidden inputs).
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any, Iterable

from ...scoring.stats import PASS_RATE

TEXT_LIMIT = 4000  # characters of one text kept in a page (inputs, outputs, errors, messages)
PREVIEW = 90  # characters of a collapsed text's first line

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px auto;padding:0 20px;
color:#1f2328;max-width:1400px;font-size:14px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #d0d7de;
padding-bottom:4px} h3{font-size:15px;margin:16px 0 4px}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border:1px solid #d0d7de;padding:3px 6px;
vertical-align:top;text-align:left;overflow-wrap:anywhere} th{background:#f6f8fa}
code{font-size:12px;background:#f6f8fa;padding:0 3px;border-radius:3px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:2px 0 0;font-size:12px;max-height:320px;overflow:auto;
background:#f6f8fa;padding:4px;border-radius:4px}
details>summary{cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
details[open]>summary{white-space:normal}
.muted{color:#656d76} .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass,.o-passed .outcome,.o-passed>.outcome,td.o-passed>details>summary,td.o-passed{color:#1a7f37;font-weight:600}
.fail,.o-failed .outcome,td.o-failed>details>summary,td.o-failed{color:#cf222e;font-weight:600}
.o-error .outcome,td.o-error>details>summary,td.o-error{color:#9a6700;font-weight:600}
.o-skipped .outcome,td.o-skipped{color:#656d76}
td.o-passed{background:#dafbe1} td.o-failed{background:#ffebe9} td.o-error{background:#fff8c5}
td.o-skipped{background:#f6f8fa} td.o-mixed{background:#fbefff;color:#8250df;font-weight:600}
td.o-missing{background:#fff;color:#8c959f;font-weight:400} td pre{color:#1f2328;font-weight:400}
td.name{white-space:nowrap;overflow:hidden;text-overflow:ellipsis} .took{font-size:11px;font-weight:400;color:#656d76}
table.flips{table-layout:fixed}
.chart{overflow-x:auto;margin:4px 0 12px} svg text{font-size:11px;fill:#1f2328} svg .axis{fill:#656d76}
.charts{display:flex;flex-wrap:wrap;gap:8px 32px}
.f{position:absolute;opacity:0;pointer-events:none}
.filters{margin:6px 0;display:flex;flex-wrap:wrap;gap:4px;align-items:center}
.filters b{font-weight:600;margin-right:4px;min-width:80px}
.filters label{border:1px solid #d0d7de;border-radius:12px;padding:1px 10px;cursor:pointer;background:#fff;
font-size:12px;max-width:320px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.shown{margin:4px 0;color:#656d76} .cases table,.matrix table{table-layout:fixed}
.turn{border-left:3px solid #d0d7de;padding:2px 8px;margin:4px 0} .turn .role{font-weight:600}
.turn.assistant{border-color:#2f81f7} .turn.user{border-color:#8250df} .turn.tool{border-color:#bf8700}
.turn.system{border-color:#8c959f} .turn.dropped{opacity:.6}
.toolcall{margin:4px 0 4px 12px;font-size:12px}
"""


def page(title: str, heading: str, meta: str, body: str, css: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{STYLE}{css}</style></head><body>
<h1>{escape(heading)}</h1>
{meta}
{body}
</body></html>
"""


def metric_label(metric: str) -> str:
    return "pass rate" if metric == PASS_RATE else metric


def number(value: float | None) -> str:
    return "-" if value is None else format(value, ".4g")


def score_text(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if metric == PASS_RATE else f"{value:.3g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


def text_block(text: str | None, preview: int = PREVIEW, summary: str | None = None) -> str:
    """A text as it fits in a table cell: short single lines as they are, longer ones collapsed in a
    ``<details>`` whose summary is their first line (or ``summary``'s: the part a person looks for)."""
    if not text:
        return '<span class="muted">-</span>'
    first = (summary or text).strip().split("\n", 1)[0]
    if "\n" not in text.strip() and len(text) <= preview // 2:
        return f"<pre>{escape(text)}</pre>" if "  " in text else escape(text)
    shown = first if len(first) <= preview else first[:preview] + "…"
    return f"<details><summary>{escape(shown)}</summary><pre>{escape(clip(text))}</pre></details>"


def json_text(value: str | None) -> str:
    """A stored JSON value, indented for reading (as it is where it does not parse)."""
    if not value:
        return ""
    try:
        return json.dumps(json.loads(value), indent=1, ensure_ascii=False)
    except ValueError:
        return value


def scores_text(scores: str | None) -> str:
    if not scores:
        return '<span class="muted">-</span>'
    try:
        values = json.loads(scores)
    except ValueError:
        return escape(scores)
    return "<br>".join(f"{escape(str(k))}={escape(number(v) if isinstance(v, (int, float)) else str(v))}"
                       for k, v in values.items())


def run_meta(run: dict[str, Any], run_id: int, label: str = "") -> str:
    models = ", ".join(json.loads(run.get("models") or "[]"))
    incomplete = (f" ({run['tests_not_run']} of {run['tests']} tests did not run)"
                  if run.get("tests_not_run") else "")
    return (f'<p class="muted">{escape(label)}run {run_id}: {escape(run.get("started_at") or "")} – '
            f'{escape(run.get("ended_at") or "not finished")} · status {escape(str(run.get("status")))}{incomplete} '
            f'· exit {escape(str(run.get("exit_status")))} · models {escape(models)} '
            f'· git {escape((run.get("git_revision") or "-")[:12])}</p>')


def ellipsize(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut in the middle (both ends of a name tell the most)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def short_names(names: Iterable[str]) -> dict[str, str]:
    """Each benchmark's shortest tail (split at ``::`` and ``/``) that no other benchmark shares:
    ``test_arithmetic`` rather than ``example_suites/test_arithmetic.py::test_arithmetic``."""
    names = list(dict.fromkeys(names))
    tails = {n: [n[m.end():] for m in re.finditer(r"::|/", n)][::-1] + [n] for n in names}
    found = {}
    for name in names:
        found[name] = next(t for t in tails[name]
                           if not any(other != name and (other == t or other.endswith(("::" + t, "/" + t)))
                                      for other in names))
    return found
