"""One stored run's cases, read case by case (``pytest-evals cases``) or exported (``pytest-evals export``).

Both take the same filters: outcomes, a pytest ``-k`` expression over the nodeid, models, benchmarks.
``cases`` prints one block per case: its nodeid, model, outcome, duration, calls, scores, input, output
and error, and the transcript of its conversations (turns, and the tools run with their arguments and
results). ``export`` writes one row per case (JSON Lines or CSV) with its calls' totals. A total is
empty (null) when a call it needs lacks the figure: unknown is never written as 0.

No pytest import here: ``-k`` imports pytest's expression parser only when it is given.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

from .._pytest_internals import keyword_expression
from ..store.database import Store
from ..store.reads import iter_case_rows, iter_cases, rows_of

OUTCOMES = ("passed", "failed", "error", "skipped")  # as stored
WRONG = "wrong"  # what a person reads for a stored ``failed`` (a wrong answer), as the terminal labels it


def outcome_label(outcome: str) -> str:
    """An outcome as people read it: a wrong answer is ``wrong`` (stored and exported as ``failed``)."""
    return WRONG if outcome == "failed" else outcome
FORMATS = ("jsonl", "csv")
INDENT = "    "


class BrowseError(ValueError):
    """Bad input to ``cases`` or ``export``: one line that names the problem and the fix."""


@dataclass(frozen=True)
class CaseFilter:
    outcomes: frozenset[str] = frozenset()
    keyword: Callable[[str], bool] | None = None  # the compiled -k expression, on a nodeid
    models: frozenset[str] = frozenset()
    benchmarks: frozenset[str] = frozenset()

    def __call__(self, case: dict[str, Any]) -> bool:
        benchmark = case["benchmark"] or ""
        return ((not self.outcomes or case["outcome"] in self.outcomes)
                and (not self.models or case["model"] in self.models)
                and (not self.benchmarks or benchmark in self.benchmarks
                     or benchmark.rsplit("::", 1)[-1] in self.benchmarks)
                and (self.keyword is None or self.keyword(case["nodeid"])))


def case_filter(outcomes: Sequence[str] | None = None, keyword: str | None = None,
                models: Sequence[str] | None = None, benchmarks: Sequence[str] | None = None) -> CaseFilter:
    """The filter the options ask for; ``outcomes`` may hold comma-separated lists."""
    wanted = {o.strip() for value in outcomes or () for o in value.split(",") if o.strip()}
    wanted = {"failed" if o == WRONG else o for o in wanted}  # (``failed``, as stored, is taken too)
    unknown = sorted(wanted - set(OUTCOMES))
    if unknown:
        raise BrowseError(f"--outcome {unknown[0]}: not an outcome; pick from {', '.join(map(outcome_label, OUTCOMES))} "
                          "(repeat --outcome or separate them with commas)")
    return CaseFilter(frozenset(wanted), keyword_matcher(keyword) if keyword and keyword.strip() else None,
                      frozenset(models or ()), frozenset(benchmarks or ()))


def keyword_matcher(expr: str) -> Callable[[str], bool]:
    """pytest's ``-k`` on a nodeid: each name in ``expr`` matches where it is a substring of the nodeid
    (case-insensitive), combined with ``and``, ``or``, ``not`` and parentheses."""
    try:
        evaluate = keyword_expression(expr)
    except ValueError as exc:
        raise BrowseError(f"-k {expr!r}: {exc}; write an expression as for pytest -k, "
                          "e.g. 'c1 or (bench and not slow)'") from None

    def matches(nodeid: str) -> bool:
        text = nodeid.lower()

        def name(sub: str, /, **kwargs: Any) -> bool:
            if kwargs:
                raise BrowseError(f"-k {expr!r}: names take no arguments here; write plain names, "
                                  "e.g. 'c1 or bench'")
            return sub.lower() in text

        return evaluate(name)

    matches("")  # arguments to a name (`c1(x=1)`) are refused now, before any case is read
    return matches


# --- the calls' totals --------------------------------------------------------------------------

TOTALS = ("calls", "prompt_tokens", "completion_tokens", "latency_s", "cost_usd")


def call_totals(calls: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A case's calls (every attempt, the judge's too) added up. A call the call cache answered
    processed no tokens in this run and cost $0. A failed attempt adds the figures it has. Where a call
    that succeeded lacks a figure (a backend that does not count tokens, a model with no price), that
    total is None: unknown, never 0. The latency total is None where any call lacks its latency."""
    totals: dict[str, Any] = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0,
                              "cost_usd": 0.0}
    for call in calls:
        totals["calls"] += 1
        for total, column in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens"),
                              ("latency_s", "latency_s"), ("cost_usd", "cost_usd")):
            value = call[column]
            if value is None and call["cached"] and total.endswith("_tokens"):
                value = 0  # answered from the call cache: no tokens processed in this run
            if value is None:
                if call["error"] is None or total == "latency_s":
                    totals[total] = None
            elif totals[total] is not None:
                totals[total] += value
    return totals


# --- pytest-evals cases --------------------------------------------------------------------------

def show_cases(store: Store, run_id: int, keep: CaseFilter) -> Iterator[str]:
    """The readable blocks of the run's cases that ``keep`` keeps, line by line as the cases are read (one
    case in memory at a time), and a last line with the count."""
    total, shown = 0, 0
    models: dict[str, None] = {}
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for case in iter_case_rows(store, run_id, ["*"]):
        total += 1
        models[case["model"]] = None
        outcomes[case["outcome"]] = outcomes.get(case["outcome"], 0) + 1
        if not keep(case):
            continue
        shown += 1
        rows = rows_of(store, case["id"])
        yield from _case_block(case, rows["calls"], rows["turns"], rows["tool_calls"])
        yield ""
    if not shown:
        held = ", ".join(f"{n} {outcome_label(o)}" for o, n in outcomes.items() if n and o in OUTCOMES) or "none"
        yield (f"no cases match in run {run_id} (0 of {total} cases shown; its cases: {held}; "
               f"its models: {', '.join(sorted(models)) or 'none'})")
        return
    yield f"{shown} of {total} cases of run {run_id} shown"


def _case_block(case: dict[str, Any], calls: list[dict[str, Any]], turns: list[dict[str, Any]],
                tools: list[dict[str, Any]]) -> list[str]:
    duration = "-" if case["duration_s"] is None else f"{case['duration_s']:.3f} s"
    head = f"  model {case['model']}, {outcome_label(case['outcome'])} in {duration}"
    if case.get("sample"):
        head += f", sample {case['sample']} of {case['samples']}"
    if case.get("resumed_from"):
        head += f", replayed from run {case['resumed_from']}"
    if case.get("served_by") and case["served_by"] != case["model"]:
        head += f", served by {case['served_by']}"
    lines = [case["nodeid"], head, "  " + _describe_totals(call_totals(calls))]
    scores = json.loads(case["scores"]) if case["scores"] else {}
    if scores:
        lines.append("  scores: " + ", ".join(f"{name}={_number(value)}" for name, value in scores.items()))
    if turns:  # the conversations' calls are in the transcript; input and output here are the other calls'
        others = [c for c in calls if c["conversation"] is None]
        input_text = _joined(c["input_text"] for c in others)
        output_text = _joined(c["output_text"] for c in others if c["error"] is None)
    else:
        input_text, output_text = case["input_text"], case["output_text"]
    for label, text in (("input", input_text), ("output", output_text), ("error", case["error"])):
        if text:
            lines += [f"  {label}:", *_indented(text, INDENT)]
    if turns:
        lines += _transcript(turns, tools)
    return lines


def _describe_totals(totals: dict[str, Any]) -> str:
    n = totals["calls"]
    if not n:
        return "no model calls"
    parts = [f"{n} model call{'s' * (n != 1)}",
             f"{_or(totals['prompt_tokens'])} prompt + {_or(totals['completion_tokens'])} completion tokens",
             "latency " + ("?" if totals["latency_s"] is None else f"{totals['latency_s']:.3f} s"),
             "cost " + ("unknown" if totals["cost_usd"] is None else f"${totals['cost_usd']:.4f}")]
    return ", ".join(parts)


def _transcript(turns: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[str]:
    """Each conversation's messages in order; an assistant turn's tool runs under it, with their arguments
    and results (the tool messages that carried those results back are not repeated)."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for tool in tools:
        runs.setdefault((tool["conversation"], tool["position"]), []).append(tool)
    lines: list[str] = []
    conversation = None
    pending: list[dict[str, Any]] = []  # tool runs whose result message is still to come
    for turn in sorted(turns, key=lambda t: (t["conversation"], t["position"])):
        if turn["conversation"] != conversation:
            conversation, pending = turn["conversation"], []
            lines.append(f"  conversation {conversation}:")
        if turn["role"] == "tool" and pending and pending[0]["call_id"] == turn["tool_call_id"]:
            pending.pop(0)
            continue
        role = turn["role"] + (f" {turn['name']}" if turn["role"] == "tool" and turn["name"] else "")
        if turn["dropped"]:
            role += " (trimmed from the context later)"
        text = turn["content"] or ""
        ran = runs.get((turn["conversation"], turn["position"]), [])
        if not text and (ran or turn["tool_calls"]):
            text = "(calls tools)"
        lines += _indented(f"{role}: {text}", INDENT, "  " + INDENT)
        for tool in ran:
            outcome = f"failed: {tool['error']}" if tool["error"] is not None else f"returned {tool['result']}"
            timing = "" if tool["duration_s"] is None else f" ({tool['duration_s'] * 1000:.1f} ms)"
            lines += _indented(f"-> {tool['name']}({tool['arguments'] or ''}) {outcome}{timing}",
                               INDENT + "  ", INDENT + "    ")
        if not ran and turn["tool_calls"]:  # asked for in a history the test passed in: no run recorded
            for call in json.loads(turn["tool_calls"]):
                function = call.get("function", {})
                lines.append(f"{INDENT}  -> {function.get('name')}({function.get('arguments')})")
        pending = list(ran)
    return lines


def _indented(text: str, first: str, rest: str | None = None) -> list[str]:
    rest = first if rest is None else rest
    return [(first if i == 0 else rest) + line for i, line in enumerate(text.splitlines() or [""])]


def _joined(parts: Iterable[str | None]) -> str | None:
    texts = [p for p in parts if p]
    return "\n\n".join(texts) if texts else None


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _or(value: Any) -> str:
    return "?" if value is None else str(value)


# --- pytest-evals export -------------------------------------------------------------------------

CASE_COLUMNS = (("run_id", "run_id"), ("nodeid", "nodeid"), ("benchmark", "benchmark"), ("model", "model"),
                ("outcome", "outcome"), ("duration_s", "duration_s"), ("input", "input_text"),
                ("output", "output_text"), ("error", "error"), ("case_key", "case_key"),
                ("resumed_from", "resumed_from"), ("served_by", "served_by"))
SAMPLE_COLUMNS = ("sample", "samples", "repeat_of")  # only for runs with repeated cases (--evals-repeat)


def export_header(store: Store, run_id: int, keep: CaseFilter) -> tuple[list[str], int]:
    """The export's columns, from a first pass over the kept cases' scores and samples (only those columns
    are read): its case columns, its calls' totals, each score as ``score.NAME``; and how many cases it holds."""
    names: dict[str, None] = {}
    repeated, count = False, 0
    for case in iter_case_rows(store, run_id, ["nodeid", "benchmark", "model", "outcome", "scores", "sample"]):
        if keep(case):
            count += 1
            names.update(dict.fromkeys(json.loads(case["scores"]) if case["scores"] else ()))
            repeated = repeated or case["sample"] is not None
    header = [name for name, _ in CASE_COLUMNS] + list(SAMPLE_COLUMNS) * repeated + list(TOTALS) + [
        f"score.{name}" for name in names]
    return header, count


def export_rows(store: Store, run_id: int, keep: CaseFilter, header: list[str]) -> Iterator[dict[str, Any]]:
    """One row per kept case, as ``header`` names them, read case by case with its calls."""
    names = [column[len("score."):] for column in header if column.startswith("score.")]
    repeated = SAMPLE_COLUMNS[0] in header
    for case, rows in iter_cases(store, run_id, ("calls",)):
        if not keep(case):
            continue
        scores = json.loads(case["scores"]) if case["scores"] else {}
        row = {name: case[column] for name, column in CASE_COLUMNS}
        row.update({name: case[name] for name in SAMPLE_COLUMNS if repeated})
        row.update(call_totals(rows["calls"]))
        row.update({f"score.{name}": scores.get(name) for name in names})
        yield row


def write_export(store: Store, run_id: int, keep: CaseFilter, fmt: str, out: TextIO) -> int:
    """The export in ``fmt`` (``jsonl`` or ``csv``) written to ``out`` row by row; how many cases it holds."""
    if fmt not in FORMATS:
        raise BrowseError(f"--format {fmt}: not an export format; pass --format jsonl or --format csv")
    header, count = export_header(store, run_id, keep)
    rows = export_rows(store, run_id, keep, header)
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return count
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return count


def export_text(store: Store, run_id: int, keep: CaseFilter, fmt: str) -> tuple[str, int]:
    """The whole export as one text (small runs, tests), and how many cases it holds."""
    out = io.StringIO()
    count = write_export(store, run_id, keep, fmt, out)
    return out.getvalue(), count


def export_format(fmt: str | None, output: str | None) -> str:
    """``--format``, or where it is not given, the one ``-o FILE``'s suffix names."""
    if fmt is not None:
        return fmt
    suffix = (output or "").rsplit(".", 1)[-1].lower() if output and "." in output else ""
    if suffix in FORMATS:
        return suffix
    raise BrowseError("export needs a format: pass --format jsonl or --format csv")
