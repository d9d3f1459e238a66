"""The cases of a run as HTML: every case with its texts and conversation, filterable without script,
and the matrix of cases against models.

Filtering is CSS: hidden radio inputs come before the table, each case is a ``<tbody>`` with a class per
outcome, benchmark and model, and ``#fo-failed:checked ~ .rows tbody:not(.o-failed)`` hides the others.
A CSS counter, which hidden rows do not increment, says how many cases are shown.
"""

from __future__ import annotations

import json
import os
from html import escape
from typing import Any

from ..browse import outcome_label
from .page import clip, duration, ellipsize, json_text, plural, scores_text, short_names, text_block

OUTCOMES = ("passed", "failed", "error", "skipped")
ACTIVE = "{background:#0969da;color:#fff;border-color:#0969da}"


def case_label(case: dict[str, Any]) -> str:
    """The case without its model: ``c3`` for ``test_x.py::test_x[c3-fake:a]`` (a repeated sample: its case,
    ``repeat_of``, so the samples share a label). The function's name where there are no parameters."""
    nodeid = case.get("repeat_of") or case["nodeid"]
    if not nodeid.endswith("]") or "[" not in nodeid:
        return nodeid.rsplit("::", 1)[-1]
    params = "-" + nodeid[nodeid.index("[") + 1:-1] + "-"
    token = f"-{case['model']}-"
    at = params.rfind(token)  # the plugin's model id comes after the test's own parameters
    if at >= 0:
        params = params[:at] + params[at + len(token) - 1:]
    return params[1:-1] or nodeid[:nodeid.index("[")].rsplit("::", 1)[-1]


def own_inputs(cases: list[dict[str, Any]], shared: dict[str, str] | None = None) -> dict[int, str]:
    """Each case's own input, as the input column's summary: a conversation's last user message (not its
    system prompt); a prompt without what it shares with the other cases of its benchmark (the few-shot
    examples before the question), cut at a line's start; a prompt alone in its benchmark, its last paragraph.
    ``shared``: where ``cases`` are a page of a bigger run, what each benchmark's inputs share over all its
    cases (a benchmark named there has several)."""
    texts: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        if case.get("input_text"):
            texts.setdefault(case["benchmark"], []).append(case)
    found = {}
    for benchmark, group in texts.items():
        several = len(group) > 1 or benchmark in (shared or {})
        common = (shared or {}).get(benchmark)
        if common is None:
            common = os.path.commonprefix([c["input_text"] for c in group]) if len(group) > 1 else ""
        cut = common.rfind("\n") + 1  # back to a line's start: "Q: " shared does not cut a question
        for case in group:
            text = case["input_text"]
            own = _last_user_message(text) or (text[cut:] if several else _last_paragraph(text))
            found[case["id"]] = own.strip() or text
    return found


def _last_user_message(text: str) -> str | None:
    """A chat's last ``user: `` message (as calls record messages, one ``role: content`` each), up to the
    next message; None for a plain prompt."""
    at = text.rfind("\nuser: ")
    if at < 0 and not text.startswith("user: "):
        return None
    message = text[at + 1:]  # (at -1: the text starts with the message)
    ends = [i for i in (message.find(f"\n{role}: ") for role in ("assistant", "tool", "system", "user")) if i > 0]
    return message[:min(ends)] if ends else message


def _last_reply(turns: list[dict[str, Any]]) -> str | None:
    """A conversation's last answer, the output column's summary beside its last user message."""
    replies = [t["content"] for t in turns if t["role"] == "assistant" and t.get("content")]
    return replies[-1] if replies else None


def _last_paragraph(text: str) -> str:
    paragraphs = [p for p in text.strip().split("\n\n") if p.strip()]
    return paragraphs[-1] if paragraphs else text


def _ids(values: list[str], prefix: str) -> dict[str, str]:
    return {v: f"{prefix}{i}" for i, v in enumerate(values)}


def _filter_group(name: str, title: str, options: list[tuple[str, str, str, int]]) -> tuple[str, str, str]:
    """Radio inputs, their labels and their CSS for one filter: options are (class, label, tooltip, count)."""
    inputs = [f'<input type="radio" class="f" name="{name}" id="{name}-all" checked>']
    labels = [f'<b>{escape(title)}</b><label for="{name}-all">all</label>']
    css = [f"#{name}-all:checked~.filters label[for={name}-all]{ACTIVE}"]
    for cls, label, tooltip, count in options:
        inputs.append(f'<input type="radio" class="f" name="{name}" id="{name}-{cls}">')
        labels.append(f'<label for="{name}-{cls}" title="{escape(tooltip)}">{escape(label)} ({count})</label>')
        css.append(f"#{name}-{cls}:checked~.rows tbody:not(.{cls}){{display:none}}"
                   f"#{name}-{cls}:checked~.filters label[for={name}-{cls}]{ACTIVE}")
    return "".join(inputs), f'<div class="filters">{"".join(labels)}</div>', "".join(css)


def transcript(turns: list[dict[str, Any]], tool_calls: list[dict[str, Any]]) -> str:
    """A case's conversations: each message with its role, the tools it asked for with their arguments
    and results. A tool message answering a recorded call is shown with that call, not twice."""
    asked: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for call in tool_calls:
        asked.setdefault((call["conversation"], call["position"]), []).append(call)
    shown_with_call = {c["call_id"] for c in tool_calls if c["call_id"]}
    conversations = list(dict.fromkeys(t["conversation"] for t in turns))
    parts = []
    for number in conversations:
        if len(conversations) > 1:
            parts.append(f"<h4>conversation {number}</h4>")
        for turn in (t for t in turns if t["conversation"] == number):
            if turn["role"] == "tool" and turn["tool_call_id"] in shown_with_call:
                continue
            role = escape(turn["role"] or "?") + (f" {escape(turn['name'])}" if turn.get("name") else "")
            dropped = ' <span class="muted">(trimmed from the context later)</span>' if turn.get("dropped") else ""
            content = f"<pre>{escape(clip(turn['content']))}</pre>" if turn.get("content") else ""
            calls = asked.get((number, turn["position"])) or _requested(turn.get("tool_calls"))
            parts.append(f'<div class="turn {escape(turn["role"] or "")}{" dropped" if turn.get("dropped") else ""}">'
                         f'<span class="role">{role}</span>{dropped}{content}{"".join(_tool_call(c) for c in calls)}</div>')
    return "".join(parts)


def _requested(raw: str | None) -> list[dict[str, Any]]:
    """Tool calls an assistant message asked for that the plugin did not run (the test handled them)."""
    try:
        calls = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [{"name": c.get("function", {}).get("name"), "arguments": c.get("function", {}).get("arguments"),
             "result": None, "error": None, "duration_s": None, "not_run": True} for c in calls if isinstance(c, dict)]


def _short(text: str) -> str:
    """A short single line as inline code, anything longer as a block."""
    if len(text) < 80 and "\n" not in text.strip():
        return f"<code>{escape(text)}</code>"
    return f"<pre>{escape(clip(text))}</pre>"


def _tool_call(call: dict[str, Any]) -> str:
    arguments = call.get("arguments") or "{}"
    try:  # one line where it is short, indented where it is not
        parsed = json.loads(arguments)
        arguments = json.dumps(parsed, ensure_ascii=False)
        if len(arguments) >= 80:
            arguments = json_text(arguments)
    except ValueError:
        pass
    if call.get("error"):
        outcome = f' <span class="fail">error</span> {_short(call["error"])}'
    elif call.get("not_run"):
        outcome = ' <span class="muted">(not run by pytest-evals)</span>'
    else:
        outcome = f" result {_short(call.get('result') or '')}"
    took = f' <span class="took">{duration(call["duration_s"])}</span>' if call.get("duration_s") is not None else ""
    return (f'<div class="toolcall">→ tool <b>{escape(call.get("name") or "?")}</b>{took} arguments '
            f"{_short(arguments)}{outcome}</div>")


def case_section(cases: list[dict[str, Any]], turns: list[dict[str, Any]],
                 tool_calls: list[dict[str, Any]], shared: dict[str, str] | None = None) -> tuple[str, str]:
    """Every case of a run in one table, filterable by outcome, benchmark and (several models) model:
    (its CSS, its HTML). ``shared``: as for :func:`own_inputs`, where ``cases`` are one page of a run."""
    if not cases:
        return "", '<p class="muted">no cases recorded</p>'
    by_case: dict[int, tuple[list, list]] = {}
    for turn in turns:
        by_case.setdefault(turn["case_id"], ([], []))[0].append(turn)
    for call in tool_calls:
        by_case.setdefault(call["case_id"], ([], []))[1].append(call)
    benchmarks = list(dict.fromkeys(c["benchmark"] for c in cases))
    models = list(dict.fromkeys(c["model"] for c in cases))
    names = short_names(benchmarks)
    bench_cls, model_cls = _ids(benchmarks, "b-"), _ids(models, "m-")
    outcomes = [o for o in OUTCOMES if any(c["outcome"] == o for c in cases)]
    outcomes += sorted({c["outcome"] for c in cases} - set(OUTCOMES))

    def count(key: str, value: str) -> int:
        return sum(1 for c in cases if c[key] == value)

    groups = [_filter_group("fo", "outcome", [(f"o-{o}", outcome_label(o), outcome_label(o), count("outcome", o)) for o in outcomes]),
              _filter_group("fb", "benchmark", [(bench_cls[b], ellipsize(names[b], 48), b, count("benchmark", b))
                                                for b in benchmarks])]
    if len(models) > 1:
        groups.append(_filter_group("fm", "model", [(model_cls[m], ellipsize(m, 40), m, count("model", m))
                                                    for m in models]))
    rows = []
    own = own_inputs(cases, shared)
    for case in cases:
        conversation, calls = by_case.get(case["id"], ([], []))
        sample = f' <span class="muted">sample {case["sample"]}/{case["samples"]}</span>' if case.get("sample") else ""
        took = f' <span class="took">{duration(case["duration_s"])}</span>' if case.get("duration_s") is not None else ""
        rows.append(
            f'<tbody class="case o-{escape(case["outcome"])} {bench_cls[case["benchmark"]]} {model_cls[case["model"]]}">'
            f'<tr><td class="name" title="{escape(case["benchmark"])}">{escape(ellipsize(names[case["benchmark"]], 20))}</td>'
            f'<td class="name" title="{escape(case["nodeid"])}">{escape(ellipsize(case_label(case), 13))}{sample}</td>'
            f'<td class="name" title="{escape(case["model"])}">{escape(case["model"])}</td><td class="outcome">{escape(outcome_label(case["outcome"]))}{took}</td>'
            f'<td>{scores_text(case.get("scores"))}</td><td>{text_block(case.get("input_text"), summary=own.get(case["id"]))}</td>'
            f'<td>{text_block(case.get("output_text"), summary=_last_reply(conversation))}</td>'
            f'<td>{text_block(case.get("error"))}</td></tr>')
        if conversation:
            messages = sum(1 for t in conversation if t["role"] != "tool")
            summary = f"conversation: {plural(messages, 'message')}" + (f", {plural(len(calls), 'tool call')}" if calls else "")
            rows.append(f'<tr class="transcript"><td colspan="8"><details><summary>{summary}</summary>'
                        f"{transcript(conversation, calls)}</details></td></tr>")
        rows.append("</tbody>")
    inputs = "".join(g[0] for g in groups)
    filters = "".join(g[1] for g in groups)
    css = "".join(g[2] for g in groups) + (
        ".cases{counter-reset:shown} .cases tbody.case{counter-increment:shown}"
        f".rows{{display:flex;flex-direction:column}} .rows .shown{{order:-1}}"
        f'.shown::before{{content:counter(shown) " of {len(cases)} cases shown"}}')
    head = ("<colgroup><col style='width:12%'><col style='width:8%'><col style='width:7%'><col style='width:9%'>"
            "<col style='width:7%'><col style='width:20%'><col style='width:20%'><col style='width:17%'></colgroup>"
            "<thead><tr><th>benchmark</th><th>case</th><th>model</th><th>outcome</th><th>scores</th><th>input</th>"
            "<th>output</th><th>error</th></tr></thead>")
    return css, (f"<section class=\"cases\">{inputs}{filters}<div class=\"rows\">"
            f"<table>{head}{''.join(rows)}</table><p class=\"shown\"></p></div></section>")


def _cell(found: list[dict[str, Any]]) -> str:
    """One case of one model in the matrix: its outcome, coloured; its output on hover and in details."""
    if not found:
        return '<td class="o-missing" title="not run for this model">–</td>'
    outcomes = [c["outcome"] for c in found]
    if len(found) == 1:
        outcome, shown = outcomes[0], outcome_label(outcomes[0])
    else:  # the samples of a repeated case
        passed = outcomes.count("passed")
        outcome = outcomes[0] if len(set(outcomes)) == 1 else "mixed"
        shown = f"{passed}/{len(outcomes)} passed"
    texts = [c.get("output_text") or c.get("error") or "" for c in found]
    if len(found) > 1:
        texts = [f"sample {c.get('sample') or i + 1} ({outcome_label(c['outcome'])}): {t}" for i, (c, t) in enumerate(zip(found, texts))]
    text = "\n".join(t for t in texts if t)
    hover = escape(clip(text, 600)) if text else "no output"
    inner = (f"<details><summary>{escape(shown)}</summary><pre>{escape(clip(text))}</pre></details>" if text
             else escape(shown))
    return f'<td class="o-{escape(outcome)}" title="{hover}">{inner}</td>'


def matrix_section(cases: list[dict[str, Any]]) -> tuple[str, str]:
    """Cases against models: a row per case (its id without the model), a column per model. Empty for
    one model. A checkbox keeps only the rows where the models' outcomes differ. (its CSS, its HTML)"""
    models = list(dict.fromkeys(c["model"] for c in cases))
    if len(models) < 2:
        return "", ""
    grid: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for case in cases:
        grid.setdefault((case["benchmark"], case_label(case)), {}).setdefault(case["model"], []).append(case)
    names = short_names(b for b, _ in grid)
    rows, differ = [], 0
    for (benchmark, label), cells in grid.items():
        seen = {tuple(sorted(c["outcome"] for c in cells.get(m, []))) for m in models}
        same = len(seen) == 1
        differ += not same
        rows.append(f'<tr class="{"same" if same else "differ"}"><td class="name" title="{escape(benchmark)}">'
                    f'{escape(ellipsize(names[benchmark], 40))}</td><td>{escape(label)}</td>'
                    + "".join(_cell(cells.get(m, [])) for m in models) + "</tr>")
    totals = "".join(
        f'<td class="num">{sum(c["outcome"] == "passed" for c in cases if c["model"] == m)} / '
        f'{sum(1 for c in cases if c["model"] == m)} passed</td>' for m in models)
    width = max(8, 62 // len(models))
    cols = f"<colgroup><col style='width:{max(14, 86 - width * len(models))}%'><col style='width:14%'>" + \
        "".join(f"<col style='width:{width}%'>" for _ in models) + "</colgroup>"
    head = ("<thead><tr><th>benchmark</th><th>case</th>"
            + "".join(f'<th title="{escape(m)}">{escape(ellipsize(m, 40))}</th>' for m in models)
            + f"</tr><tr><th colspan='2'>all cases</th>{totals}</tr></thead>")
    css = f"#mx-differ:checked~table tr.same{{display:none}}#mx-differ:checked~.filters label[for=mx-differ]{ACTIVE}"
    return css, (f"<section class=\"matrix\"><input type=\"checkbox\" class=\"f\" id=\"mx-differ\">"
            f'<div class="filters"><label for="mx-differ">only the {differ} cases where the models differ</label>'
            f'<span class="muted">hover a cell for its output; click it to open</span></div>'
            f"<table>{cols}{head}<tbody>{''.join(rows)}</tbody></table></section>")
