"""The HTML report of a run too big for one page: a summary page and, beside it, pages of cases.

A run of at most :data:`PAGE_CASES` cases stays one self-contained page (``run.render``). A bigger one
(``pytest-evals report RUN --html FILE``) is written as FILE, the summary (scores and their chart, the
verdicts, each benchmark's outcomes with links to its pages, the latency histograms), and a folder named
after FILE's stem holding, per benchmark, its cases in pages of :data:`PAGE_CASES` (each with its texts,
conversations and filters, and the matrix of cases against models where there are several) and the same
for only its cases that did not pass. Pages link back to the summary and to their neighbours; no script,
no CDN. Each page is read from the database with a cursor: the writer holds one page of cases at a time.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any, Iterator

from ...store.database import Store
from ..browse import outcome_label
from .cases import OUTCOMES, case_section, matrix_section
from .page import ellipsize, page, plural, run_meta, short_names
from .run import latency_section, render, score_rows, scores_section

PAGE_CASES = 2000  # cases on one page; a run with more is split into a summary and pages of cases
KINDS = (("all", "all cases", ""), ("open", "not passed", " AND outcome != 'passed'"))  # (file part, label, SQL)
CALL_COLUMNS = "model, latency_s, cached, cached_latency_s, error, batched"  # what the latency section reads


def write_report(store: Store, run_id: int, path: Path, per_page: int = PAGE_CASES) -> list[Path]:
    """Write the report of ``run_id`` to ``path`` (and, for a run of more than ``per_page`` cases, its pages
    of cases in the folder beside it); the files written, the summary first."""
    (count,), = store.db.conn.execute("SELECT count(*) FROM cases WHERE run_id = ?", [run_id]).fetchall()
    if count <= per_page:
        path.write_text(render(store, run_id), encoding="utf-8")
        return [path]
    folder = path.with_suffix("") if path.suffix else path.with_name(path.name + "-cases")
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("b*-*-*.html"):  # an earlier report's pages (this one may have fewer)
        stale.unlink()
    groups = _groups(store, run_id)
    names = short_names(groups)
    links: dict[str, dict[str, list[str]]] = {}
    written = [path]
    for number, benchmark in enumerate(groups):
        shared = _shared_input(store, run_id, benchmark)
        links[benchmark] = {}
        for kind, label, where in KINDS:
            held = sum(n for o, n in groups[benchmark].items() if kind == "all" or o != "passed")
            files = [f"b{number}-{kind}-{i + 1}.html" for i in range(-(-held // per_page))]
            links[benchmark][kind] = [f"{folder.name}/{name}" for name in files]
            for index, cases in enumerate(_pages(store, run_id, benchmark, where, per_page)):
                name, nav = files[index], _nav(path.name, files, index)
                heading = f"{names[benchmark]}: {label}, page {index + 1} of {len(files)}"
                text = _case_page(store, run_id, benchmark, heading, nav, cases, shared)
                (folder / name).write_text(text, encoding="utf-8")
                written.append(folder / name)
    path.write_text(_summary(store, run_id, groups, names, links, count, folder.name, per_page), encoding="utf-8")
    return written


def write_html(store: Store, run_id: int, path: Path) -> str:
    """:func:`write_report`, and what the line that says so adds for a split report (else nothing)."""
    written = write_report(store, run_id, path)
    if len(written) == 1:
        return ""
    (count,), = store.db.conn.execute("SELECT count(*) FROM cases WHERE run_id = ?", [run_id]).fetchall()
    return f"; its {count} cases on {len(written) - 1} pages in {written[1].parent}/, linked from it"


def _groups(store: Store, run_id: int) -> dict[str, dict[str, int]]:
    """Benchmark -> outcome -> cases, in the order the benchmarks were first stored."""
    groups: dict[str, dict[str, int]] = {}
    first: dict[str, int] = {}
    for benchmark, outcome, n, earliest in store.db.conn.execute(
            "SELECT benchmark, outcome, count(*), min(id) FROM cases WHERE run_id = ? GROUP BY benchmark, outcome",
            [run_id]):
        groups.setdefault(benchmark, {})[outcome] = n
        first[benchmark] = min(first.get(benchmark, earliest), earliest)
    return dict(sorted(groups.items(), key=lambda item: first[item[0]]))


def _shared_input(store: Store, run_id: int, benchmark: str) -> dict[str, str]:
    """What the inputs of a benchmark's cases share (over all its cases, read one at a time), where it has
    several: the input column's summaries of each page then match a one-page report's."""
    common: str | None = None
    n = 0
    for (text,) in store.db.conn.execute(
            "SELECT input_text FROM cases WHERE run_id = ? AND benchmark = ? AND input_text IS NOT NULL "
            "AND input_text != ''", [run_id, benchmark]):
        n += 1
        common = text if common is None else os.path.commonprefix([common, text])
    return {benchmark: common or ""} if n > 1 else {}


def _pages(store: Store, run_id: int, benchmark: str, where: str, per_page: int) -> Iterator[list[dict[str, Any]]]:
    cursor = store.db.conn.execute(
        f"SELECT * FROM cases WHERE run_id = ? AND benchmark = ?{where} ORDER BY id", [run_id, benchmark])
    columns = [d[0] for d in cursor.description]
    while True:
        rows = cursor.fetchmany(per_page)
        if not rows:
            return
        yield [dict(zip(columns, row)) for row in rows]


def _rows_of(store: Store, table: str, case_ids: list[int]) -> list[dict[str, Any]]:
    cursor = store.db.conn.execute(
        f"SELECT * FROM {table} WHERE case_id IN ({', '.join('?' * len(case_ids))}) ORDER BY id", case_ids)
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row)) for row in cursor]


def _nav(summary: str, files: list[str], index: int) -> str:
    """Back to the summary, the previous and next pages, and every page of the list by number."""
    parts = [f'<a href="../{escape(summary)}">summary</a>']
    if index > 0:
        parts.append(f'<a href="{files[index - 1]}">previous</a>')
    if index + 1 < len(files):
        parts.append(f'<a href="{files[index + 1]}">next</a>')
    numbers = " ".join(f"<b>{i + 1}</b>" if i == index else f'<a href="{f}">{i + 1}</a>' for i, f in enumerate(files))
    return f'<p class="muted">{" · ".join(parts)} · pages: {numbers}</p>'


def _case_page(store: Store, run_id: int, benchmark: str, heading: str, nav: str, cases: list[dict[str, Any]],
               shared: dict[str, str]) -> str:
    ids = [c["id"] for c in cases]
    css, table = case_section(cases, _rows_of(store, "turns", ids), _rows_of(store, "tool_calls", ids), shared)
    matrix_css, matrix = matrix_section(cases)
    first, last = cases[0], cases[-1]
    body = (f"{nav}<p class='muted' title='{escape(benchmark)}'>{escape(benchmark)}: cases "
            f"{escape(first['nodeid'])} … {escape(last['nodeid'])}</p>"
            + (f"<h2>Cases × models</h2>{matrix}" if matrix else "")
            + f"<h2>Cases ({len(cases)})</h2>{table}{nav}")
    return page(f"pytest-evals run {run_id}: {heading}", heading, "", body, css + matrix_css)


def _summary(store: Store, run_id: int, groups: dict[str, dict[str, int]], names: dict[str, str],
             links: dict[str, dict[str, list[str]]], count: int, folder: str, per_page: int) -> str:
    run = store.run(run_id) or {}
    rows = score_rows(store, run_id)
    scores = scores_section(rows, short_names([r["benchmark"] for r in rows] + list(groups)))
    outcomes = [o for o in OUTCOMES if any(o in g for g in groups.values())]
    outcomes += sorted({o for g in groups.values() for o in g} - set(OUTCOMES))
    totals = {o: sum(g.get(o, 0) for g in groups.values()) for o in outcomes}
    tally = ", ".join(f"{n} {outcome_label(o)}" for o, n in totals.items() if n)
    case_rows = []
    for benchmark, counts in groups.items():
        cells = "".join(f"<td class='num'>{counts.get(o, 0)}</td>" for o in outcomes)
        pages = "".join(
            f"<td>{_page_links(links[benchmark][kind])}</td>" for kind, _, _ in KINDS)
        case_rows.append(f"<tr><td class='name' title='{escape(benchmark)}'>{escape(ellipsize(names[benchmark], 60))}"
                         f"</td><td class='num'>{sum(counts.values())}</td>{cells}{pages}</tr>")
    heads = "".join(f"<th>{escape(outcome_label(o))}</th>" for o in outcomes)
    calls = store.db.conn.execute(f"SELECT {CALL_COLUMNS} FROM calls WHERE run_id = ?", [run_id])
    columns = [d[0] for d in calls.description]
    latency = latency_section([dict(zip(columns, row)) for row in calls])
    body = f"""{scores}
<h2>Cases ({count}{": " + tally if tally else ""})</h2>
<p class="muted">{plural(count, "case")}, more than one page holds ({per_page}): each benchmark's cases are on pages
of {per_page} in the folder {escape(folder)}/ beside this file, with their texts, conversations and filters (and
the matrix of cases against models, where there are several), and again only those that did not pass.</p>
<table><tr><th>benchmark</th><th>cases</th>{heads}<th>all cases, by page</th><th>not passed, by page</th></tr>
{"".join(case_rows)}</table>
<h2>Latency of model calls</h2>
{latency}"""
    return page(f"pytest-evals run {run_id}", f"pytest-evals run {run_id}", run_meta(run, run_id), body)


def _page_links(files: list[str]) -> str:
    if not files:
        return '<span class="muted">-</span>'
    return " ".join(f'<a href="{escape(f)}">{i + 1}</a>' for i, f in enumerate(files))
