"""The run, on the one process that owns the database (xdist controller or lone pytest process).

It validates explicit ``--model`` specs at start-up, opens the store, writes each case as its report
arrives, ends the run row, and prints the summary table. A session without eval cases never
creates the database file.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import tempfile
from typing import TYPE_CHECKING

import pytest

from . import __version__
from .report import HEADER, Summary, format_table
from .store import CallRow, CaseRow, Store, StoreError, now

if TYPE_CHECKING:
    from .plugin import EvalsConfig


def git_revision(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def redact(arg: str) -> str:
    """Drop credentials from any URL in a command-line argument before it is stored."""
    return _URL_CREDENTIALS.sub(r"\1", arg)


def _check_creatable(path: "os.PathLike[str]") -> str | None:
    """Why a database could not be created at ``path``, or None. Leaves nothing behind."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        return (f"{path}: cannot create the database ({parent}: {exc.strerror or exc}); "
                "pass a writable --evals-db PATH")
    return None


class SessionPlugin:
    def __init__(self, config: pytest.Config, evals: "EvalsConfig") -> None:
        self.config = config
        self.evals = evals
        self.store: Store | None = None
        self.run_id: int | None = None
        self.summary = Summary()
        self.started_at = now()
        self.session: pytest.Session | None = None
        self.write_error: str | None = None

    # --- start-up ---------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from .plugin import pool_key

        self.session = session
        if self.evals.explicit_models:
            pool = self.config.stash[pool_key]
            for spec in self.evals.specs:
                problem = pool.availability_problem(spec)
                if problem:
                    raise pytest.UsageError(problem)
        path = self.evals.db_path
        if path.exists():
            self._open()  # an unusable existing file is reported now, before any case runs
        else:
            problem = _check_creatable(path)
            if problem:
                raise pytest.UsageError(problem)

    def _open(self) -> Store:
        if self.store is None:
            try:
                self.store = Store(self.evals.db_path)
            except StoreError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self.store

    def _run(self) -> int:
        if self.run_id is None:
            store = self._open()
            self.run_id = store.start_run(
                args=[redact(a) for a in self.config.invocation_params.args],
                rootdir=str(self.config.rootpath),
                git_revision=git_revision(str(self.config.rootpath)),
                models=[s.raw for s in self.evals.specs],
                hostname=socket.gethostname(),
                plugin_version=__version__,
                started_at=self.started_at,
            )
        return self.run_id

    # --- cases --------------------------------------------------------------------------------------
    def record(self, case: CaseRow, calls: list[CallRow]) -> None:
        self.summary.add(case.benchmark, case.model, case.outcome)
        if self.write_error:
            return
        # If the database fails mid-run (disk full, a lock held too long), stop the session with one
        # line; every case recorded before stays committed.
        try:
            self._open().record_case(self._run(), case, calls)
        except (StoreError, pytest.UsageError) as exc:
            self.write_error = str(exc)
        except sqlite3.Error as exc:
            self.write_error = str(self._open().error(exc))
        if self.write_error and self.session is not None:
            self.session.shouldfail = f"evals: cannot record cases: {self.write_error}"

    # --- end ----------------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.store is not None and self.run_id is not None:
            status = "interrupted" if exitstatus == pytest.ExitCode.INTERRUPTED else "finished"
            try:
                self.store.finish_run(self.run_id, exit_status=int(exitstatus), status=status)
            except sqlite3.Error:
                pass  # already reported by record(); the cases written so far are committed

    def pytest_unconfigure(self) -> None:
        if self.store is not None:
            self.store.close()

    def pytest_report_header(self, config: pytest.Config) -> str:
        models = ", ".join(s.raw for s in self.evals.specs)
        return f"evals: models {models}; database {self.evals.db_path}"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.summary:
            return
        tr = terminalreporter
        tr.write_sep("=", "evals summary")
        for line in format_table(HEADER, self.summary.rows()):
            tr.write_line(line)
        if self.write_error:
            tr.write_line(f"evals: the cases after the first failed write are not stored: {self.write_error}", red=True)
        if self.run_id is not None:
            tr.write_line(f"run {self.run_id} stored in {self.evals.db_path}")
