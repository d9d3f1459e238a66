"""The SQLite store: opening (and migrating) the file, writes and queries. No pytest import.

Tables (columns say their unit):

- ``runs``: one row per pytest session: arguments, git revision, models, start/end, status, cost; a shard's
  ``K/N`` (``--evals-shard``), the suite it collected, the gate settings its verdicts came from, for a
  run ``pytest-evals merge`` made, the shards it came from, and for a resumed run, the run it resumed.
- ``cases``: one row per case per model: outcome, duration, input/output text, error, scores, case key,
  the run it was resumed from, cost, the spec that served it, its GPUs.
- ``calls``: one row per model call (every attempt): kind, role, spec, latency, TTFT, TPOT, tokens, cost,
  GPU memory, error, whether a batch across cases served it, its conversation.
- ``turns`` and ``tool_calls``: the messages of a case's conversations and the tool runs they asked for.
- ``benchmarks``: one row per benchmark, model and metric of a run: estimate, interval, threshold, verdict.
- ``repeated_cases``: one row per case run as several samples (--evals-repeat): pass rate, pass@k, flaky.
- ``_evals_migrations``: the migrations applied (the schema version).

Only one process writes (the xdist controller, or the lone pytest process). Each case is committed
with its calls in one transaction as soon as it ends, in WAL mode, so a killed run loses at most the
cases in flight and never leaves a half-written case. (Cases replayed by ``--evals-resume`` are copied
in batches, ``store.copies``: a killed resume leaves their originals where the next resume finds them.)
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .migrations import MIGRATIONS, MIGRATIONS_TABLE
from .rows import CaseRecord, now

DEFAULT_DB = ".evals/evals.sqlite"  # under rootdir for pytest; in the current directory for the CLI
CASE_TABLES = ("calls", "turns", "tool_calls")  # rows that belong to one case
RUN_TABLES = (*CASE_TABLES, "cases", "benchmarks", "repeated_cases")  # every table with a run_id
RUN_FACTS = {"gates", "suite"}  # runs columns written with the verdicts


def _import_sqlite_utils() -> Any:
    """sqlite-utils, imported here (not at module import: only the process that writes needs it),
    without pandas and numpy: sqlite-utils imports them when they are installed, only to insert
    DataFrames and numpy scalars, which the store never does (it writes with plain sqlite3), and those
    imports would be most of a run's start-up. Both stay importable; one already imported is used."""
    import sys

    if "sqlite_utils" in sys.modules:
        import sqlite_utils

        return sqlite_utils
    blocked = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import NAME` fail, for now
    try:
        import sqlite_utils
    finally:
        for name in blocked:
            del sys.modules[name]
    return sqlite_utils


class StoreError(RuntimeError):
    """The database cannot be used; the message names the file and the fix."""


def describe_unfinished(run: dict[str, Any]) -> str:
    """``run 7 (interrupted: 14 of 22 tests did not run)``, from a ``runs`` row."""
    detail = run["status"] or "unknown"
    if run.get("tests") and run.get("tests_not_run"):
        detail += f": {run['tests_not_run']} of {run['tests']} tests did not run"
    return f"run {run['id']} ({detail})"


class Store:
    BUSY_TIMEOUT_MS = 30_000  # mid-run, how long a write waits for another connection's lock

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path = Path(path)
        self._written: set[tuple[int, str]] = set()
        self._statements: dict[tuple[str, int, tuple[str, ...]], str] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sqlite_utils = _import_sqlite_utils()

            conn = sqlite3.connect(str(self.path), timeout=2.0)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            self.db.enable_wal()
            # In WAL mode NORMAL still survives a killed process (only power loss can drop the last
            # commits) and spares an fsync per case.
            self.db.execute("PRAGMA synchronous = NORMAL")
            # Take the write lock once now, so a database held by another session is reported at
            # start-up rather than when the first case ends. Readers (the CLI) skip this.
            if write:
                with self.transaction():
                    pass
            conn.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT_MS)}")
        except StoreError:
            raise
        except sqlite3.Error as exc:
            raise self.error(exc) from None
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot create the database ({exc.strerror or exc}); pass a writable --evals-db PATH"
            ) from None

    def error(self, exc: BaseException) -> StoreError:
        """One line naming what went wrong with the file and what to do."""
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StoreError(f"{self.path}: database is locked by another running session; "
                              "wait for it to end or pass another --evals-db PATH")
        if "readonly" in text or "unable to open" in text or "disk I/O" in text:
            return StoreError(f"{self.path}: cannot write the database ({text}); "
                              "check the file's permissions or pass another --evals-db PATH")
        return StoreError(f"{self.path}: not a usable SQLite database ({text}); "
                          "move it aside or pass another --evals-db PATH")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all (sqlite-utils joins an open one)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        table = self.db[MIGRATIONS_TABLE]
        if not table.exists():
            self.db[MIGRATIONS_TABLE].create({"name": str, "applied_at": str}, pk="name")
        applied = {row["name"] for row in self.db[MIGRATIONS_TABLE].rows}
        known = {name for name, _ in MIGRATIONS}
        unknown = sorted(applied - known)
        if unknown:
            raise StoreError(
                f"{self.path}: written by a newer pytest-evals (schema {unknown[-1]}); "
                "upgrade pytest-evals or pass another --evals-db PATH"
            )
        for name, migration in MIGRATIONS:
            if name in applied:
                continue
            with self.transaction():
                migration(self.db)
                self.db[MIGRATIONS_TABLE].insert({"name": name, "applied_at": now()})

    @property
    def schema_version(self) -> int:
        return self.db[MIGRATIONS_TABLE].count

    # --- writes (the controller only) -------------------------------------------------------------
    def start_run(self, *, args: list[str], rootdir: str, git_revision: str | None, models: list[str],
                  hostname: str, plugin_version: str, started_at: str | None = None, pid: int | None = None,
                  shard: str | None = None, resumed_run: int | None = None) -> int:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO runs (started_at, status, args, rootdir, git_revision, models, hostname, plugin_version,"
                " pid, shard, resumed_run) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [started_at or now(), json.dumps(args), rootdir, git_revision, json.dumps(models), hostname,
                 plugin_version, pid, shard, resumed_run],
            )
        return int(cursor.lastrowid)

    def settle_dead_runs(self, hostname: str, alive: Callable[[int], bool]) -> list[int]:
        """Runs still marked ``running`` whose process on this host is gone (``kill -9``, a crash) become
        ``interrupted``; how many of their tests did not run stays unknown (NULL). Returns their ids."""
        dead = [row[0] for row in self.db.execute(
            "SELECT id, pid FROM runs WHERE status = 'running' AND hostname = ? AND pid IS NOT NULL", [hostname])
            if not alive(row[1])]
        if dead:
            with self.transaction():
                self.db.conn.executemany("UPDATE runs SET status = 'interrupted' WHERE id = ?", [[i] for i in dead])
        return dead

    def finish_run(self, run_id: int, *, exit_status: int, status: str = "finished", tests: int | None = None,
                   tests_not_run: int | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET ended_at = ?, status = ?, exit_status = ?, tests = ?, tests_not_run = ?, "
                "cost_usd = (SELECT sum(cost_usd) FROM cases WHERE run_id = ?) WHERE id = ?",
                [now(), status, exit_status, tests, tests_not_run, run_id, run_id],
            )

    def set_exit_status(self, run_id: int, exit_status: int) -> None:
        """A run's exit status changed after it was stored (a signal while it was finishing)."""
        with self.transaction():
            self.db.execute("UPDATE runs SET exit_status = ? WHERE id = ?", [exit_status, run_id])

    def record_case(self, run_id: int, record: CaseRecord) -> int:
        """Insert one finished case and its rows in one transaction; a case seen again replaces it."""
        row = dict(record.case.__dict__)
        row["scores"] = json.dumps(record.case.scores) if record.case.scores else None
        with self.transaction():
            self.drop_written(run_id, record.case.nodeid)
            case_id = self._insert("cases", (run_id,), row)
            for table, rows in (("calls", record.calls), ("turns", record.turns), ("tool_calls", record.tool_calls)):
                for item in rows:
                    self._insert(table, (run_id, case_id), item.__dict__)
        self.wrote(run_id, record.case.nodeid)
        return case_id

    def drop_written(self, run_id: int, nodeid: str) -> None:
        """(Inside a transaction.) The case of ``nodeid`` this store wrote in the run before, with its rows:
        a case seen again replaces it (only a nodeid written here can have an old row)."""
        if (run_id, nodeid) not in self._written:
            return
        conn = self.db.conn
        old = conn.execute("SELECT id FROM cases WHERE run_id = ? AND nodeid = ?", [run_id, nodeid]).fetchone()
        if old:
            for table in CASE_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE case_id = ?", [old[0]])
            conn.execute("DELETE FROM cases WHERE id = ?", [old[0]])

    def wrote(self, run_id: int, nodeid: str) -> None:
        """A case of ``nodeid`` is in the run now (or once the transaction it was written in commits)."""
        self._written.add((run_id, nodeid))

    def _insert(self, table: str, ids: tuple[int, ...], row: dict[str, Any]) -> int:
        """INSERT of ``row`` after its ids (run_id, then case_id where there is one); the statement
        text is built once per table and set of columns."""
        key = (table, len(ids), tuple(row))
        sql = self._statements.get(key)
        if sql is None:
            columns = ("run_id", "case_id")[:len(ids)] + key[2]
            sql = self._statements[key] = (f"INSERT INTO {table} ({', '.join(columns)}) "
                                           f"VALUES ({', '.join('?' for _ in columns)})")
        return int(self.db.conn.execute(sql, (*ids, *row.values())).lastrowid)

    def record_benchmarks(self, run_id: int, rows: list[dict[str, Any]],
                          repeated: Sequence[dict[str, Any]] = (), facts: dict[str, str | None] | None = None) -> None:
        write_verdicts(self, run_id, rows, repeated, facts or {})

    # --- queries --------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM runs ORDER BY id"))

    def run(self, run_id: int) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        return rows[0] if rows else None

    def latest_run_id(self, finished_only: bool = True) -> int | None:
        """The newest run; by default the newest that ran to its end."""
        sql = "SELECT max(id) FROM runs" + (" WHERE status = 'finished'" if finished_only else "")
        (value,) = self.db.execute(sql).fetchone()
        return value

    def unfinished_after(self, run_id: int) -> list[dict[str, Any]]:
        """Runs newer than ``run_id`` that did not finish (interrupted, or still running), newest first:
        what ``latest`` passed over."""
        return list(self.db.query("SELECT * FROM runs WHERE id > ? AND status != 'finished' ORDER BY id DESC", [run_id]))

    def skipped_by_latest(self, ref: str, run_id: int) -> str | None:
        """Where ``latest`` resolved to ``run_id`` and passed over newer runs that did not finish, the line
        that says so; None otherwise."""
        if ref != "latest":
            return None
        skipped = self.unfinished_after(run_id)
        if not skipped:
            return None
        shown = "; ".join(describe_unfinished(run) for run in skipped)
        return f"latest is run {run_id}, the newest finished run; newer runs that did not finish are skipped: {shown}"

    def resolve_run(self, ref: str) -> int:
        """A run id from ``RUN_ID`` or ``latest`` (the newest finished run); LookupError says why not."""
        if ref == "latest":
            run_id = self.latest_run_id()
            if run_id is None:
                unfinished = self.unfinished_after(0)
                seen = (" (" + "; ".join(describe_unfinished(r) for r in unfinished[:3])
                        + "; pytest --evals-resume completes the newest)") if unfinished else ""
                raise LookupError(f"{self.path} holds no finished run yet{seen}; run the evals once first")
            return run_id
        try:
            run_id = int(ref)
        except ValueError:
            raise LookupError(f"{ref!r}: expected a run id or 'latest'") from None
        if self.run(run_id) is None:
            raise LookupError(f"no run {run_id} in {self.path}; `pytest-evals runs` lists them")
        return run_id

    def benchmarks(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM benchmarks WHERE run_id = ? ORDER BY id", [run_id]))

    def cases(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM cases WHERE run_id = ? ORDER BY id", [run_id]))

    def calls(self, run_id: int) -> list[dict[str, Any]]:
        return self.rows("calls", run_id)

    def rows(self, table: str, run_id: int) -> list[dict[str, Any]]:
        """A run's rows of one per-case table (``calls``, ``turns``, ``tool_calls``), in order."""
        if table not in CASE_TABLES:
            raise ValueError(f"{table!r} is not one of {', '.join(CASE_TABLES)}")
        return list(self.db.query(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY id", [run_id]))

    def delete_runs(self, run_ids: list[int]) -> int:
        """Remove runs with everything stored under them, in one transaction; how many cases went with them.
        (A later run's cases replayed from one keep their rows; their ``resumed_from`` names a run gone.)"""
        marks = ", ".join("?" * len(run_ids))
        with self.transaction():
            (cases,), = self.db.execute(f"SELECT count(*) FROM cases WHERE run_id IN ({marks})", run_ids).fetchall()
            for table in (*RUN_TABLES, "runs"):
                column = "id" if table == "runs" else "run_id"
                self.db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", run_ids)
        return cases

    def close(self) -> None:
        self.db.conn.close()


def write_verdicts(store: Store, run_id: int, rows: list[dict[str, Any]], repeated: Sequence[dict[str, Any]],
                   facts: dict[str, str | None]) -> None:
    """A run's verdicts (``benchmarks`` and ``repeated_cases`` rows, replacing any) in one transaction, with
    ``facts``: the columns of its ``runs`` row that say what they came from (:data:`RUN_FACTS`)."""
    unknown = set(facts) - RUN_FACTS
    if unknown:
        raise ValueError(f"not a column written with the verdicts: {', '.join(sorted(unknown))}")
    with store.transaction():
        for column, value in facts.items():
            store.db.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", [value, run_id])
        store.db.execute("DELETE FROM benchmarks WHERE run_id = ?", [run_id])
        store.db.execute("DELETE FROM repeated_cases WHERE run_id = ?", [run_id])
        for row in rows:
            store._insert("benchmarks", (run_id,), row)
        for row in repeated:
            store._insert("repeated_cases", (run_id,), row)
