"""Reads of one run that keep memory flat however many cases it has: cursors, not lists.

- :func:`finished_index`: the finished cases of a run (passed or failed) by case key, with only what a
  replay needs up front (the case's id, nodeid, outcome, error, duration, scores and run), not their
  rows; with those of the runs it resumed (:func:`resumed_chain`) that it does not hold itself;
- :func:`rows_of`: one stored case's rows (calls, turns, tool calls), read when it is shown;
  :func:`calls_of`: the calls of several cases (a batch of replayed ones);
- :func:`iter_case_rows`: a run's cases in order, some of their columns (a first pass);
- :func:`iter_cases`: a run's cases in order, one at a time, each with the rows of the tables asked for
  (a merge of ordered cursors, one per table).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterator, Sequence

from .database import CASE_TABLES, Store


def _dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row))


Finished = tuple[int, str, str, "str | None", "float | None", "str | None", int]


def resumed_chain(store: Store, run_id: int) -> list[int]:
    """``run_id`` and, while the last one did not finish (interrupted, killed), the run it resumed
    (``runs.resumed_run``), if still stored: a finished run copied every case it replayed."""
    chain = [run_id]
    while True:
        found = store.db.conn.execute("SELECT status, resumed_run FROM runs WHERE id = ?", [chain[-1]]).fetchone()
        if not found or found[0] == "finished" or found[1] is None or found[1] in chain:
            return chain
        if store.db.conn.execute("SELECT 1 FROM runs WHERE id = ?", [found[1]]).fetchone() is None:
            return chain
        chain.append(found[1])


def finished_index(store: Store, run_id: int) -> dict[str, Finished]:
    """Case key -> (case id, nodeid, outcome, error, duration_s, scores as JSON, the run it ran in) of the run's
    finished cases, and of the runs it resumed (:func:`resumed_chain`) where no newer one has a case of that
    key: a resume killed before it copied every replayed case leaves them in the run it resumed."""
    index: dict[str, Finished] = {}
    seen: set[str] = set()  # keys of a newer run in the chain, any outcome: its record of the case stands
    for run in resumed_chain(store, run_id):
        cursor = store.db.conn.execute(
            "SELECT case_key, id, nodeid, outcome, error, duration_s, scores, coalesce(resumed_from, run_id) "
            "FROM cases WHERE run_id = ? AND case_key IS NOT NULL ORDER BY id", [run])
        newer = set(seen) if run != run_id else ()
        for row in cursor:
            if row[0] in newer:
                continue
            seen.add(row[0])
            if row[3] in ("passed", "failed"):
                index[row[0]] = row[1:]
    return index


def rows_of(store: Store, case_id: int, tables: Sequence[str] = CASE_TABLES) -> dict[str, list[dict[str, Any]]]:
    """One case's rows of ``tables``, each in the order written."""
    conn = store.db.conn
    return {table: list(_dicts(conn.execute(f"SELECT * FROM {table} WHERE case_id = ? ORDER BY id", [case_id])))
            for table in _known(tables)}


def calls_of(store: Store, case_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The calls of several stored cases (one query): case id -> its calls in the order written."""
    found: dict[int, list[dict[str, Any]]] = {case_id: [] for case_id in case_ids}
    cursor = store.db.conn.execute("SELECT * FROM calls WHERE case_id IN (SELECT value FROM json_each(?)) "
                                   "ORDER BY case_id, id", [json.dumps(list(case_ids))])
    for row in _dicts(cursor):
        found[row["case_id"]].append(row)
    return found


def _known(tables: Sequence[str]) -> Sequence[str]:
    unknown = set(tables) - set(CASE_TABLES)
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]!r} is not one of {', '.join(CASE_TABLES)}")
    return tables


def iter_case_rows(store: Store, run_id: int, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The run's cases in the order stored, only ``columns`` of each (a first pass that needs little)."""
    return _dicts(store.db.conn.execute(f"SELECT {', '.join(columns)} FROM cases WHERE run_id = ? ORDER BY id",
                                        [run_id]))


def iter_cases(store: Store, run_id: int, tables: Sequence[str] = ()) -> Iterator[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]:
    """The run's cases in the order they were stored, each with its rows of ``tables`` (of
    :data:`CASE_TABLES`), read through one cursor per table as they are consumed: memory holds one case."""
    conn = store.db.conn
    cases = _dicts(conn.execute("SELECT * FROM cases WHERE run_id = ? ORDER BY id", [run_id]))
    streams = {table: _dicts(conn.execute(
        f"SELECT t.* FROM {table} AS t JOIN cases AS c ON t.case_id = c.id WHERE c.run_id = ? "
        "ORDER BY t.case_id, t.id", [run_id])) for table in _known(tables)}
    ahead: dict[str, dict[str, Any] | None] = {table: next(stream, None) for table, stream in streams.items()}
    for case in cases:
        rows: dict[str, list[dict[str, Any]]] = {}
        for table, stream in streams.items():
            mine = rows[table] = []
            row = ahead[table]
            while row is not None and row["case_id"] < case["id"]:  # (a row whose case is gone: skipped)
                row = next(stream, None)
            while row is not None and row["case_id"] == case["id"]:
                mine.append(row)
                row = next(stream, None)
            ahead[table] = row
        yield case, rows
