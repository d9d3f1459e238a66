"""Reads of one run that keep memory flat however many cases it has: cursors, not lists.

- :func:`finished_index`: the finished cases of a run (passed or failed) by case key, with only what a
  replay needs up front (the case's id, nodeid, outcome, error and duration), not their rows;
- :func:`case_rows` and :func:`rows_of`: one stored case and its rows (calls, turns, tool calls), read when
  it is replayed or shown;
- :func:`iter_case_rows`: a run's cases in order, some of their columns (a first pass);
- :func:`iter_cases`: a run's cases in order, one at a time, each with the rows of the tables asked for
  (a merge of ordered cursors, one per table).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterator, Sequence

from .database import CASE_TABLES, Store


def _dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield dict(zip(names, row))


def finished_index(store: Store, run_id: int) -> dict[str, tuple[int, str, str, str | None, float | None]]:
    """Case key -> (case id, nodeid, outcome, error, duration_s) of the run's finished cases."""
    cursor = store.db.conn.execute(
        "SELECT case_key, id, nodeid, outcome, error, duration_s FROM cases WHERE run_id = ? "
        "AND case_key IS NOT NULL AND outcome IN ('passed', 'failed') ORDER BY id", [run_id])
    return {key: (case_id, nodeid, outcome, error, duration) for key, case_id, nodeid, outcome, error, duration
            in cursor}


def case_rows(store: Store, case_id: int) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]] | None:
    """One stored case and its rows (``{"calls": [...], "turns": [...], "tool_calls": [...]}``, each in the
    order written), or None where there is no such case."""
    found = list(_dicts(store.db.conn.execute("SELECT * FROM cases WHERE id = ?", [case_id])))
    return (found[0], rows_of(store, case_id)) if found else None


def rows_of(store: Store, case_id: int, tables: Sequence[str] = CASE_TABLES) -> dict[str, list[dict[str, Any]]]:
    """One case's rows of ``tables``, each in the order written."""
    conn = store.db.conn
    return {table: list(_dicts(conn.execute(f"SELECT * FROM {table} WHERE case_id = ? ORDER BY id", [case_id])))
            for table in _known(tables)}


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
