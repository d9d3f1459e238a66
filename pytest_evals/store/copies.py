"""Stored cases copied into another run of the same database, inside SQLite (``INSERT ... SELECT``): the
cases ``--evals-resume`` replays, a batch of them in one transaction. No pytest import.

A copy keeps everything the case recorded (outcome, texts, scores, cost, its calls, turns and tool calls)
and takes this run's nodeid, benchmark, model name and worker; its ``resumed_from`` names the run the case
really ran in (the stored case's own ``resumed_from``, else its run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .database import CASE_TABLES, Store

_OWN = ("nodeid", "benchmark", "model", "worker")  # a copy's columns that come from this run


@dataclass(frozen=True)
class Copy:
    """One stored case to copy, and what this run says of it."""

    case_id: int  # the stored case
    nodeid: str
    benchmark: str
    model: str
    worker: str | None


def _columns(store: Store, table: str) -> list[str]:
    return [row[1] for row in store.db.conn.execute(f"PRAGMA table_info({table})")]


def _statements(store: Store) -> dict[str, str]:
    """The INSERT ... SELECT of a case and of each of its tables, built once per store."""
    built = {table: store._statements.get(("copy", 0, (table,))) for table in ("cases", *CASE_TABLES)}
    if None in built.values():
        rest = [c for c in _columns(store, "cases") if c not in ("id", "run_id", "resumed_from", *_OWN)]
        built = {"cases": (f"INSERT INTO cases (run_id, {', '.join(_OWN)}, resumed_from, {', '.join(rest)}) "
                           f"SELECT ?, {', '.join('?' for _ in _OWN)}, coalesce(resumed_from, run_id), "
                           f"{', '.join(rest)} FROM cases WHERE id = ?")}
        for table in CASE_TABLES:
            rest = [c for c in _columns(store, table) if c not in ("id", "run_id", "case_id")]
            built[table] = (f"INSERT INTO {table} (run_id, case_id, {', '.join(rest)}) SELECT ?, ?, {', '.join(rest)} "
                            f"FROM {table} WHERE case_id = ? ORDER BY id")
        store._statements.update({("copy", 0, (table,)): text for table, text in built.items()})
    return built  # type: ignore[return-value]


def copy_cases(store: Store, run_id: int, copies: Sequence[Copy]) -> list[int | None]:
    """Each stored case with its rows into ``run_id``, all in one transaction; the new case ids, None for a
    stored case that is gone. A nodeid this store already wrote in the run is replaced, as
    ``Store.record_case`` replaces it."""
    sql = _statements(store)
    conn = store.db.conn
    made: list[int | None] = []
    with store.transaction():
        for copy in copies:
            store.drop_written(run_id, copy.nodeid)
            cursor = conn.execute(sql["cases"], [run_id, copy.nodeid, copy.benchmark, copy.model, copy.worker,
                                                 copy.case_id])
            if cursor.rowcount != 1:
                made.append(None)
                continue
            case_id = int(cursor.lastrowid)
            for table in CASE_TABLES:
                conn.execute(sql[table], [run_id, case_id, copy.case_id])
            store.wrote(run_id, copy.nodeid)  # (now: the same nodeid later in the batch replaces it)
            made.append(case_id)
    return made
