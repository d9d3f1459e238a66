"""The ``pytest-evals`` command: list, show and compare stored runs; write an HTML report;
read or export one run's cases.

    pytest-evals runs
    pytest-evals show RUN
    pytest-evals compare RUN_A RUN_B [--alpha 0.05] [--margin 0]
    pytest-evals report RUN --html FILE
    pytest-evals report BASE CAND --html FILE [--alpha 0.05] [--margin 0]
    pytest-evals cache stats|prune|clear [--path .evals/cache.sqlite] [--older-than DAYS]
    pytest-evals cache list | clear --copies
    pytest-evals cases RUN [--outcome wrong,error] [-k EXPR] [--model SPEC] [--benchmark NAME]
    pytest-evals export RUN --format jsonl|csv [-o FILE] [the same filters as cases]
    pytest-evals plan threshold --expect 0.7 --threshold 0.6 [--power 0.8]
    pytest-evals plan metric --mean 0.62 --sd 0.2 --threshold 0.55 [--power 0.8]
    pytest-evals plan baseline --drop 0.05 --discordance 0.2 | --from RUN [--alpha 0.05] [--margin 0]
    pytest-evals merge --into ALL.sqlite SHARD.sqlite... [--force]
    pytest-evals gate RUN

``RUN`` is a run id or ``latest``. ``--db PATH`` picks the database (default ``.evals/evals.sqlite``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sqlite3
import sys
from pathlib import Path
from typing import Sequence

from .calls.cache import DEFAULT_CACHE
from .report.tables import format_table
from .scoring.power import stored_strength
from .scoring.stats import PASS_RATE, compare, regression_reasons, scores_of
from .store.database import DEFAULT_DB, Store, StoreError


class CommandError(Exception):
    """One line for the user; the command exits 2."""


def open_store(path: Path) -> Store:
    if not path.exists():
        raise CommandError(f"{path}: no such database; run pytest with eval cases first, or pass --db PATH")
    try:
        return Store(path, write=False)
    except StoreError as exc:  # its message names pytest's --evals-db; here the option is --db
        raise CommandError(str(exc).replace("--evals-db", "--db")) from None


def resolve_run(store: Store, ref: str) -> int:
    """The run ``ref`` names; where ``latest`` passed over newer unfinished runs, stderr says so."""
    try:
        run_id = store.resolve_run(ref)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    note = store.skipped_by_latest(ref, run_id)
    if note:
        print(f"pytest-evals: {note}", file=sys.stderr)
    return run_id


def cmd_runs(store: Store, args: argparse.Namespace) -> list[str]:
    if args.words:
        return _runs_verb(store, args.words)
    rows = []
    for run in store.runs():
        counts = dict(store.db.execute(
            "SELECT outcome, count(*) FROM cases WHERE run_id = ? GROUP BY outcome", [run["id"]]).fetchall())
        rows.append([str(run["id"]), run["started_at"][:19].replace("T", " "), run["status"] or "",
                     "" if run["exit_status"] is None else str(run["exit_status"]),
                     ", ".join(json.loads(run["models"] or "[]")),
                     str(sum(counts.values())), str(counts.get("passed", 0)), str(counts.get("failed", 0)),
                     str(counts.get("error", 0)), (run["git_revision"] or "")[:10], _command(run)])
    if not rows:
        return [f"{store.path}: no runs yet"]
    header = ["run", "started (UTC)", "status", "exit", "models", "cases", "passed", "wrong", "errors", "git",
              "command"]
    return format_table(header, rows, name_columns=5, text_columns=(len(header) - 1,))


def _command(run: dict, width: int = 60) -> str:
    """The run's command line, as typed (shell-quoted), clipped to ``width``: runs that look alike differ here."""
    text = "pytest " + shlex.join(json.loads(run["args"] or "[]"))
    return text if len(text) <= width else text[:width - 3] + "..."


def _runs_verb(store: Store, words: list[str]) -> list[str]:
    """``runs delete RUN...``: remove runs with their cases, calls, turns, tool calls and verdicts."""
    verb, refs = words[0], words[1:]
    if verb != "delete" or not refs:
        raise CommandError(f"runs {' '.join(words)}: expected 'runs' to list them or 'runs delete RUN [RUN ...]' "
                           "(run ids or 'latest')")
    run_ids = sorted({resolve_run(store, ref) for ref in refs})
    running = [r for r in run_ids if (store.run(r) or {}).get("status") == "running"]
    if running:
        raise CommandError(f"run {', '.join(map(str, running))} is still running (or was killed and no run on this "
                           "host has settled it yet); delete it once it has ended")
    try:
        cases = store.delete_runs(run_ids)
    except sqlite3.Error as exc:  # locked by a run in progress, read-only file
        raise CommandError(str(store.error(exc)).replace("--evals-db", "--db")) from None
    return [f"deleted run{'s' * (len(run_ids) != 1)} {', '.join(map(str, run_ids))} with {cases} cases"]


def cmd_show(store: Store, args: argparse.Namespace) -> list[str]:
    run_id = resolve_run(store, args.run)
    run = store.run(run_id)
    status = run["status"]
    if run.get("tests_not_run"):
        status += f" ({run['tests_not_run']} of {run['tests']} tests did not run; pytest --evals-resume runs them)"
    lines = [f"run {run_id}: {status}, exit status {run['exit_status']}, started {run['started_at']}",
             f"  models: {', '.join(json.loads(run['models'] or '[]'))}",
             f"  command: pytest {' '.join(json.loads(run['args'] or '[]'))}"]
    rows = []
    for b in store.benchmarks(run_id):
        percent = b["metric"] == PASS_RATE
        fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3g}")
        rows.append([b["benchmark"], b["model"], b["metric"], str(b["n"]), str(b["errors"]),
                     "-" if b["value"] is None else fmt(b["value"]),
                     "-" if b["low"] is None else f"[{fmt(b['low'])}, {fmt(b['high'])}]",
                     "-" if b["minimum"] is None else f">={fmt(b['minimum'])}", (b["verdict"] or "").upper(),
                     stored_strength(b)])
    if rows:
        header = ["benchmark", "model", "metric", "n", "errors", "score", "95% interval", "threshold", "verdict",
                  "strength"][:10 if any(row[-1] for row in rows) else 9]  # (the default gate has none to say)
        lines += ["", *format_table(header, [row[:len(header)] for row in rows])]
        lines += [f"FAIL {b['benchmark']} [{b['model']}]: {b['reason']}"
                  for b in store.benchmarks(run_id) if b["reason"] and b["metric"] == PASS_RATE]
    else:
        lines.append("  (no gate results stored: the run was interrupted before its end)")
    calls, cached = store.db.execute("SELECT count(*), coalesce(sum(cached), 0) FROM calls WHERE run_id = ?",
                                     [run_id]).fetchone()
    if cached:
        lines.append(f"  {cached} of {calls} model calls were answered from the call cache")
    for benchmark, model, cases, samples, flaky in store.db.execute(
            "SELECT benchmark, model, count(*), max(samples), sum(flaky) FROM repeated_cases WHERE run_id = ? "
            "GROUP BY benchmark, model", [run_id]).fetchall():
        lines.append(f"  {benchmark} [{model}]: {cases} cases x {samples} samples, {flaky} flaky")
    return lines


def cmd_compare(store: Store, args: argparse.Namespace) -> list[str]:
    run_a, run_b = resolve_run(store, args.run_a), resolve_run(store, args.run_b)
    before, after = scores_of(store.cases(run_a)), scores_of(store.cases(run_b))
    rows, notes = [], []
    for key in [k for k in after if k in before]:
        result = compare(after[key], before[key], args.alpha)
        a_rate, b_rate = before[key].pass_rate(), after[key].pass_rate()
        worse = regression_reasons(result, args.alpha, args.margin)
        rows.append([key[0], key[1], PASS_RATE, str(result.paired), a_rate.format(True), b_rate.format(True),
                     "-" if result.rate_difference is None else f"{result.rate_difference:+.1%}",
                     f"{result.p_value:.3g}", f"-{len(result.to_fail)} +{len(result.to_pass)}",
                     "WORSE" if any(r.startswith("pass rate") for r in worse) else ""])
        for name, diff in result.metric_differences.items():
            rows.append(["", "", name, str(diff.n), before[key].metric(name).format(False),
                         after[key].metric(name).format(False), f"{diff.value:+.3g}",
                         f"[{diff.low:+.3g}, {diff.high:+.3g}]", "",
                         "WORSE" if any(r.startswith(f"{name} ") for r in worse) else ""])
        for label, flips in (("now fail", result.to_fail), ("now pass", result.to_pass)):
            if flips:
                notes.append(f"{key[0]} [{key[1]}]: {len(flips)} {label}: "
                             + ", ".join(n.rsplit("::", 1)[-1] for n in flips[:5])
                             + (f" and {len(flips) - 5} more" if len(flips) > 5 else ""))
    only = sorted(set(before) ^ set(after))
    lines = [f"run {run_b} compared with run {run_a} on the cases both have "
             f"(McNemar exact test on pass/fail; paired bootstrap on metrics; alpha {args.alpha:g})"]
    if rows:
        header = ["benchmark", "model", "metric", "paired", f"run {run_a}", f"run {run_b}", "change",
                  "p / interval", "flips", "verdict"]
        lines += format_table(header, rows) + notes
    lines += [f"only in one run: {b} [{m}]" for b, m in only]
    return lines


def cmd_report(store: Store, args: argparse.Namespace) -> list[str]:
    """One run's page, or with two runs (BASE CAND) the page comparing them."""
    if len(args.runs) > 2:
        raise CommandError(f"report takes one run, or two to compare (BASE CAND), not {len(args.runs)}: "
                           f"{' '.join(args.runs)}")
    ids = [resolve_run(store, ref) for ref in args.runs]
    if len(ids) == 2:
        from .report.html.compare import render_comparison

        page = render_comparison(store, ids[0], ids[1], args.alpha, args.margin)
    else:  # over PAGE_CASES cases: a summary page, and pages of cases in the folder beside it
        from .report.html.pages import write_html
    try:
        if len(ids) == 2:
            Path(args.html).write_text(page, encoding="utf-8")
        note = "" if len(ids) == 2 else write_html(store, ids[0], Path(args.html))
    except OSError as exc:
        raise CommandError(f"{args.html}: cannot write the report ({exc.strerror or exc}); "
                           "create its folder or pass another --html FILE") from None
    return [f"wrote {args.html} (run {ids[-1]}" + (f" against run {ids[0]})" if len(ids) == 2 else ")") + note]


def cmd_cases(store: Store, args: argparse.Namespace) -> None:
    from .report.browse import BrowseError, case_filter, show_cases

    run_id = resolve_run(store, args.run)
    try:  # printed as the cases are read: memory holds one case, however big the run
        for line in show_cases(store, run_id, case_filter(args.outcome, args.keyword, args.model, args.benchmark)):
            print(line)
    except BrowseError as exc:
        raise CommandError(str(exc)) from None


def cmd_export(store: Store, args: argparse.Namespace) -> list[str] | None:
    from .report.browse import BrowseError, case_filter, export_format, write_export

    try:  # written row by row as the cases are read: memory holds one case
        fmt = export_format(args.format, args.output)
        keep = case_filter(args.outcome, args.keyword, args.model, args.benchmark)
        run_id = resolve_run(store, args.run)
        if args.output is None:
            write_export(store, run_id, keep, fmt, sys.stdout)
            return None
        with open(args.output, "w", encoding="utf-8", newline="") as handle:
            count = write_export(store, run_id, keep, fmt, handle)
    except BrowseError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        if args.output is None:
            raise
        raise CommandError(f"{args.output}: cannot write the export ({exc.strerror or exc}); "
                           "create its folder or pass another -o FILE") from None
    return [f"wrote {count} cases of run {run_id} to {args.output} ({fmt})"]


def cmd_cache(args: argparse.Namespace) -> list[str]:
    """The call cache (stats, prune, clear) and the converted model copies (list, clear --copies)."""
    from .backends.gguf_copies import clear_copies, copies_root, list_copies
    from .calls import cache as callcache

    if args.action == "list" or (args.action == "clear" and args.copies):
        if args.action == "clear":
            removed, freed = clear_copies()
            return [f"removed {removed} converted model copies ({freed / 2**20:.0f} MiB) from {copies_root()}"]
        copies = list_copies()
        if not copies:
            return [f"{copies_root()}: no converted model copies"]
        rows = [[c["folder"].name, f"{c['bytes'] / 2**20:.0f}", (c["sha256"] or "-")[:16], c["source"] or "-"]
                for c in copies]
        total = sum(c["bytes"] for c in copies) / 2**20
        return [*format_table(["copy", "MiB", "sha256", "converted from"], rows, name_columns=1),
                f"{len(copies)} converted model copies, {total:.0f} MiB, in {copies_root()}; "
                "`pytest-evals cache clear --copies` removes them (the next load converts again, ~20 s for SmolLM2)"]
    path = Path(args.path)
    try:
        if args.action == "clear":
            return [f"removed {path} ({callcache.clear(path)} stored answers)"]
        if args.action == "prune":
            removed = callcache.prune(path, args.older_than)
            return [f"removed {removed} answers not used for {args.older_than:g} days from {path} "
                    f"({path.stat().st_size / 2**20:.1f} MiB left)"]
        data = callcache.stats(path)
    except callcache.CacheError as exc:
        raise CommandError(str(exc)) from None
    rows = [[backend, model, method, str(n), str(hits)] for backend, model, method, n, hits in data["groups"]]
    lines = format_table(["backend", "model", "method", "answers", "served"], rows, name_columns=3) if rows else []
    return [*lines, f"{path}: {data['answers']} answers, {data['bytes'] / 2**20:.1f} MiB, served {data['hits']} times; "
            f"first stored {data['first'] or '-'}, last used {data['last_used'] or '-'}"]


def cmd_gate(store: Store, args: argparse.Namespace) -> tuple[list[str], int]:
    """A stored run's evals summary; the exit status is the run's (0 gates hold, 1 one fails, 2 cases missing)."""
    from .report.gate import GateError, decide, summary_lines

    # latest: the newest run, finished or not (one that lacks cases exits 2)
    run_id = store.latest_run_id(finished_only=False) if args.run == "latest" else resolve_run(store, args.run)
    if run_id is None:
        raise CommandError(f"{store.path} holds no run yet; run the evals once first")
    try:
        result = decide(store, run_id)
    except GateError as exc:
        raise CommandError(str(exc)) from None
    return summary_lines(result), result.exit_status


def cmd_merge(args: argparse.Namespace) -> list[str]:
    """One run in --into from the runs of the shards' databases; refused (one line a problem) unless --force."""
    from .report.gate import GateError, merge_shards

    try:
        return merge_shards(Path(args.into), [Path(p) for p in args.shards], args.force)
    except GateError as exc:
        raise CommandError("\npytest-evals: ".join(str(exc).splitlines())) from None


PLAN_NEEDS = {"threshold": ("expect", "threshold"), "metric": ("mean", "sd", "threshold"), "baseline": ("drop",)}
PLAN_EXAMPLES = {"threshold": "plan threshold --expect 0.7 --threshold 0.6",
                 "metric": "plan metric --mean 0.62 --sd 0.2 --threshold 0.55",
                 "baseline": "plan baseline --drop 0.05 --discordance 0.2 (or --from RUN)"}


def cmd_plan(args: argparse.Namespace) -> list[str]:
    """The cases a gate needs (``scoring.power``): a pass-rate threshold, a metric's, or the baseline gate."""
    from .report import plan
    from .scoring.power import PlanError

    flags = {"expect": "--expect", "threshold": "--threshold", "mean": "--mean", "sd": "--sd", "drop": "--drop",
             "discordance": "--discordance", "from_run": "--from"}
    kind = PLAN_NEEDS[args.gate]
    allowed = (*kind, "discordance", "from_run") if args.gate == "baseline" else kind
    missing = [flags[n] for n in kind if getattr(args, n) is None]
    stray = [flags[n] for n in flags if n not in allowed and getattr(args, n) is not None]
    if missing or stray:
        what = f"needs {' '.join(missing)}" if missing else f"does not take {' '.join(stray)}"
        raise CommandError(f"plan {args.gate} {what}: e.g. pytest-evals {PLAN_EXAMPLES[args.gate]}")
    try:
        if args.gate == "threshold":
            return plan.threshold_lines(args.expect, args.threshold, args.power)
        if args.gate == "metric":
            return plan.metric_lines(args.mean, args.sd, args.threshold, args.power)
        if (args.discordance is None) == (args.from_run is None):
            raise CommandError("plan baseline takes --discordance D (the share of cases on which two runs disagree) "
                               "or --from RUN (a stored run's cases give it), one of the two")
        if args.from_run is None:
            return plan.baseline_lines(args.drop, args.discordance, args.power, args.alpha, args.margin)
        store = open_store(args.db)
        try:
            run_id = resolve_run(store, args.from_run)
            scores = {key: found for key, found in scores_of(store.cases(run_id)).items()
                      if (not args.benchmark or any(key[0] == b or key[0].endswith(f"::{b}") for b in args.benchmark))
                      and (not args.model or key[1] in args.model)}
        finally:
            store.close()
        if not scores:
            raise CommandError(f"run {run_id} has no cases" + (" of that --benchmark/--model; `pytest-evals show "
                               f"{run_id}` lists its benchmarks" if args.benchmark or args.model else ""))
        return plan.baseline_from_run_lines(run_id, scores, args.drop, args.power, args.alpha, args.margin)
    except PlanError as exc:
        raise CommandError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-evals", description="Read the runs that pytest-evals stored.")
    db_help = f"database (default {DEFAULT_DB}); before or after the command"
    parser.add_argument("--db", type=Path, default=Path(DEFAULT_DB), help=db_help)
    after = argparse.ArgumentParser(add_help=False)  # --db after the command too; given, it wins
    after.add_argument("--db", type=Path, default=argparse.SUPPRESS, help=db_help)
    sub = parser.add_subparsers(dest="command", required=True)
    runs = sub.add_parser("runs", parents=[after], help="list the stored runs; 'runs delete RUN...' removes runs "
                          "with all they stored")
    runs.add_argument("words", nargs="*", metavar="delete RUN", help="delete, then run ids or 'latest'")
    runs.set_defaults(func=cmd_runs)
    show = sub.add_parser("show", parents=[after], help="one run: its benchmarks, scores, intervals and verdicts")
    show.add_argument("run", help="run id or 'latest'")
    show.set_defaults(func=cmd_show)
    comp = sub.add_parser("compare", parents=[after], help="paired comparison of two runs on the cases both have")
    comp.add_argument("run_a", help="the earlier run (id or 'latest')")
    comp.add_argument("run_b", help="the later run (id or 'latest')")
    comp.add_argument("--alpha", type=float, default=0.05)
    comp.add_argument("--margin", type=float, default=0.0)
    comp.set_defaults(func=cmd_compare)
    report = sub.add_parser("report", parents=[after], help="a self-contained HTML report of one run, or of two "
                            "compared (BASE CAND)")
    report.add_argument("runs", nargs="+", metavar="RUN", help="run id or 'latest'; two: BASE CAND")
    report.add_argument("--alpha", type=float, default=0.05, help="two runs: significance level (default 0.05)")
    report.add_argument("--margin", type=float, default=0.0, help="two runs: a drop within it is not worse")
    report.add_argument("--html", required=True, metavar="FILE")
    report.set_defaults(func=cmd_report)
    cache = sub.add_parser("cache", help="the call cache (stats, prune, clear) and the converted model copies "
                           "(list, clear --copies)")
    cache.add_argument("action", choices=["stats", "prune", "clear", "list"],
                       help="stats: what the call cache holds; prune: drop answers unused for --older-than days; "
                       "clear: remove the call cache (with --copies: the converted model copies); list: the copies")
    cache.add_argument("--path", default=DEFAULT_CACHE, help=f"the call cache (default {DEFAULT_CACHE})")
    cache.add_argument("--older-than", type=float, default=30.0, metavar="DAYS", help="prune: default 30")
    cache.add_argument("--copies", action="store_true", help="clear: the converted model copies instead")
    cache.set_defaults(func=cmd_cache, needs_store=False)
    filters = argparse.ArgumentParser(add_help=False)  # which cases: for cases and export
    filters.add_argument("--outcome", action="append", metavar="OUTCOME",
                         help="passed, failed, error or skipped; repeat it or separate with commas")
    filters.add_argument("-k", dest="keyword", metavar="EXPR",
                         help="as pytest -k: names that are case-insensitive substrings of the nodeid, "
                         "with and, or, not and parentheses")
    filters.add_argument("--model", action="append", metavar="SPEC", help="a model of the run (repeatable)")
    filters.add_argument("--benchmark", action="append", metavar="NAME",
                         help="a benchmark, as file::test or the test's name (repeatable)")
    cases = sub.add_parser("cases", parents=[after, filters],
                           help="one run's cases: outcome, scores, input, output, error, conversations")
    cases.add_argument("run", help="run id or 'latest'")
    cases.set_defaults(func=cmd_cases)
    export = sub.add_parser("export", parents=[after, filters],
                            help="one run's cases with their calls' totals, as JSON Lines or CSV")
    export.add_argument("run", help="run id or 'latest'")
    export.add_argument("--format", metavar="jsonl|csv", help="jsonl or csv (default: -o FILE's suffix)")
    export.add_argument("-o", "--output", metavar="FILE", help="write there (default: stdout)")
    export.set_defaults(func=cmd_export)
    plan = sub.add_parser("plan", parents=[after], help="the cases a gate needs to hold (or to detect a drop) "
                          "with the power asked; exact figures from the gate's own decision")
    plan.add_argument("gate", choices=list(PLAN_NEEDS), help="threshold: a pass-rate gate; metric: a named metric's "
                      "minimum; baseline: the regression gate against --evals-baseline")
    plan.add_argument("--expect", type=float, metavar="RATE", help="threshold: the pass rate you expect, e.g. 0.7")
    plan.add_argument("--threshold", type=float, metavar="MIN", help="threshold, metric: the gate's minimum")
    plan.add_argument("--mean", type=float, help="metric: the mean you expect of the cases' values")
    plan.add_argument("--sd", type=float, help="metric: the spread (standard deviation) of the cases' values")
    plan.add_argument("--drop", type=float, metavar="SHARE", help="baseline: the fall in pass rate to detect, "
                      "e.g. 0.05 for 5 points")
    plan.add_argument("--discordance", type=float, metavar="SHARE", help="baseline: the share of cases on which "
                      "the two runs disagree (at least the drop)")
    plan.add_argument("--from", dest="from_run", metavar="RUN", help="baseline: a stored run (id or 'latest') "
                      "whose cases' pass rates, resampled, give the discordance; one plan per benchmark and model")
    plan.add_argument("--benchmark", action="append", metavar="NAME", help="--from: only this benchmark "
                      "(file::test or the test's name; repeatable)")
    plan.add_argument("--model", action="append", metavar="SPEC", help="--from: only this model (repeatable)")
    plan.add_argument("--power", type=float, default=0.8, help="the chance the gate holds (threshold, metric) or "
                      "catches the drop (baseline); default 0.8")
    plan.add_argument("--alpha", type=float, default=0.05, help="baseline: as --evals-alpha (default 0.05)")
    plan.add_argument("--margin", type=float, default=0.0, help="baseline: as --evals-margin (default 0)")
    plan.set_defaults(func=cmd_plan, needs_store=False)
    merge = sub.add_parser("merge", help="one run from shards' databases (pytest --evals-shard K/N); refused where a "
                           "case is in two shards, a shard is missing or they differ, unless --force")
    merge.add_argument("--into", required=True, metavar="ALL.sqlite", help="the database the run goes to")
    merge.add_argument("shards", nargs="+", metavar="SHARD.sqlite", help="each shard's --evals-db file")
    merge.add_argument("--force", action="store_true", help="merge despite the problems found")
    merge.set_defaults(func=cmd_merge, needs_store=False)
    gate = sub.add_parser("gate", parents=[after], help="a stored run's evals summary; exits as the run would have: "
                          "0 gates hold, 1 one fails, 2 cases missing")
    gate.add_argument("run", help="run id, or 'latest' (here: the newest run, finished or not)")
    gate.set_defaults(func=cmd_gate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not getattr(args, "needs_store", True):
            lines = args.func(args)
        else:
            store = open_store(args.db)
            try:
                lines = args.func(store, args)
            finally:
                store.close()
    except CommandError as exc:
        print(f"pytest-evals: {exc}", file=sys.stderr)
        return 2
    lines, status = lines if isinstance(lines, tuple) else (lines, 0)  # gate: the run's exit status
    if lines is not None:  # (None: the command printed its own output as it went: cases, export)
        print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
