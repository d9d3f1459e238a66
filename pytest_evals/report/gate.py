"""A stored run's verdicts, decided again from its stored cases with the gate settings it ran with
(``runs.gates``): ``pytest-evals gate RUN``, and the run ``pytest-evals merge`` makes.

The same code decides them as at the end of a run: ``scoring.gates.Gates.verdicts`` on the stored cases
(``scoring.stats.scores_of``), against the baseline run's stored cases, and ``scoring.gates.exit_status``:
0 when every gate holds, 1 when one fails, 4 when a case ended on a usage error; 2 when the run lacks
cases (it did not finish, or a merged run lacks a shard's), as pytest exits for an interrupted run.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..scoring.gates import Gates, Verdict, exit_status
from ..scoring.stats import scores_of
from ..scoring.verdict_rows import benchmark_rows, repeated_rows
from ..store.database import Store, StoreError, describe_unfinished
from ..store.merge import Merged, MergeError, merge, open_shard, problems
from .tables import WHY_COLUMN, failing_line, format_table, reason_lines, verdict_table

INCOMPLETE = 2  # pytest.ExitCode.INTERRUPTED: the exit status of a run whose tests did not all run


class GateError(Exception):
    """A stored run that cannot be gated again, or shards that cannot be merged: one line a problem, each
    naming what to do."""


@dataclass
class StoredVerdicts:
    run: dict[str, Any]
    verdicts: list[Verdict]
    gates: Gates | None  # None: the run stored no gate settings (no eval case of it was decided)
    exit_status: int
    missing: str | None  # why the run lacks cases; None when it has them all


def decide(store: Store, run_id: int) -> StoredVerdicts:
    """A stored run's verdicts and exit status; the benchmarks its run left undecided stay so."""
    run = store.run(run_id)
    assert run is not None
    missing = None if run["status"] == "finished" else f"{describe_unfinished(run)} did not run every test"
    incomplete = {b["benchmark"] for b in store.benchmarks(run_id) if b["verdict"] == "incomplete"}
    has_cases = store.db.execute("SELECT 1 FROM cases WHERE run_id = ? LIMIT 1", [run_id]).fetchone() is not None
    if not run.get("gates") and not missing and has_cases:
        raise GateError(f"run {run_id} stored no gate settings (a pytest-evals older than schema 012_shards stored "
                        f"it); `pytest-evals show {run_id}` shows the verdicts it stored")
    return _decide(store, run, incomplete, missing)


def _decide(store: Store, run: dict[str, Any], incomplete: set[str], missing: str | None) -> StoredVerdicts:
    settings = json.loads(run["gates"]) if run.get("gates") else None
    if settings is None:
        return StoredVerdicts(run, [], None, INCOMPLETE if missing else 0, missing)
    baseline = None
    if settings.get("baseline") is not None:
        if store.run(settings["baseline"]) is None:
            raise GateError(f"run {run['id']} was gated against run {settings['baseline']}, which {store.path} no "
                            "longer holds; gate a run whose baseline is still stored")
        baseline = scores_of(store.cases(settings["baseline"]))
    gates = Gates.from_settings(settings, scores_of(store.cases(run["id"])))
    verdicts = gates.verdicts(baseline, incomplete)
    return StoredVerdicts(run, verdicts, gates, INCOMPLETE if missing else int(exit_status(verdicts)), missing)


def settle_merged(store: Store, merged: Merged) -> StoredVerdicts:
    """The verdicts of the run a merge made, stored with its end as the controller stores a run's."""
    run = store.run(merged.run_id)
    assert run is not None
    missing = None
    if not merged.complete:
        gap = (f"{merged.tests - merged.cases} of the suite's {merged.tests} eval tests are not in it"
               if merged.tests is not None and merged.tests > merged.cases else "a shard is missing or did not finish")
        missing = f"run {merged.run_id} was merged without every shard: {gap}"
    result = _decide(store, run, merged.incomplete, missing)
    if result.gates is not None:
        store.record_benchmarks(merged.run_id, benchmark_rows(result.verdicts), repeated_rows(result.gates))
    store.finish_run(merged.run_id, exit_status=result.exit_status,
                     status="finished" if merged.complete else "interrupted", tests=merged.tests,
                     tests_not_run=None if merged.tests is None else max(merged.tests - merged.cases, 0))
    result.run = store.run(merged.run_id) or run
    return result


def summary_lines(result: StoredVerdicts) -> list[str]:
    """The evals summary of a stored run, as its run ended with: the verdict table, the reasons, the verdict."""
    run, verdicts = result.run, result.verdicts
    lines = [f"run {run['id']}: {run['status']}, started {run['started_at']}"]
    if run.get("shard"):
        lines[0] += f", shard {run['shard']}"
    if run.get("merged_from"):
        parts = json.loads(run["merged_from"])
        lines[0] += f", merged from {len(parts)} shards (" + ", ".join(
            f"{p['shard']} run {p['run']} of {p['database']}" for p in parts) + ")"
    settings = json.loads(run["gates"]) if run.get("gates") else {}
    if settings.get("baseline") is not None:
        lines.append(f"baseline: run {settings['baseline']} (paired by case; alpha {settings['alpha']:g}, "
                     f"margin {settings['margin']:g})")
    if verdicts:
        lines += ["", *format_table(*verdict_table(verdicts), text_columns=(WHY_COLUMN,)), *reason_lines(verdicts)]
    if result.missing:
        lines.append(f"evals: {result.missing}: its gates are not decided (exit status {result.exit_status})")
    else:
        lines.append(failing_line(verdicts, result.exit_status) or
                     f"evals: all {len(verdicts)} gates hold (exit status {result.exit_status})")
    return lines


def merge_shards(into: Path, paths: list[Path], force: bool) -> list[str]:
    """``pytest-evals merge``: one run in ``into`` from the shards' databases, its verdicts decided and stored;
    what stands in the way is refused (:func:`store.merge.problems`) unless ``force``. Its lines for the user."""
    shards = []
    try:
        for path in paths:
            if path.resolve() == into.resolve():
                raise GateError(f"{path}: is the --into database; merge the shards into a file of its own")
            shards.append(open_shard(path))
        found = problems(shards)
        if found and not force:
            raise GateError("\n".join(found))
        try:
            target = Store(into)
        except StoreError as exc:
            raise GateError(str(exc).replace("--evals-db", "--into")) from None
        try:
            merged = merge(shards, target, socket.gethostname(), os.getpid())
            result = settle_merged(target, merged)
        finally:
            target.close()
    except MergeError as exc:
        raise GateError(str(exc)) from None
    finally:
        for shard in shards:
            shard.store.close()
    return [*(f"merged despite: {line}" for line in found),
            f"merged {len(shards)} shards into {into} as run {merged.run_id}: {merged.cases} cases"
            + ("" if merged.complete else " (not every shard's: the run is stored as interrupted)"),
            f"its verdict: pytest-evals --db {into} gate {merged.run_id} (exit status {result.exit_status})"]
