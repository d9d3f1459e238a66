"""The run, on the one process that owns the database (xdist controller or lone pytest process).

It validates explicit ``--model`` specs at start-up, opens the store, writes each case as its report
arrives, ends the run row, and prints the summary table. A session without eval cases never
creates the database file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from . import __version__
from .report import HEADER, Summary, format_table
from .store import CallRow, CaseRow, Store, StoreError

if TYPE_CHECKING:
    from .plugin import EvalsConfig


def git_revision(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _check_writable(path: "os.PathLike[str]") -> str | None:
    """Why a database could not be created at ``path`` (without creating anything), or None."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: cannot create the database ({parent} is not a writable directory); pass a writable --evals-db PATH"
    return None


class SessionPlugin:
    def __init__(self, config: pytest.Config, evals: "EvalsConfig") -> None:
        self.config = config
        self.evals = evals
        self.store: Store | None = None
        self.run_id: int | None = None
        self.summary = Summary()
        self.started = time.time()

    # --- start-up ---------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        from .plugin import pool_key

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
            problem = _check_writable(path)
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
                args=list(self.config.invocation_params.args),
                rootdir=str(self.config.rootpath),
                git_revision=git_revision(str(self.config.rootpath)),
                models=[s.raw for s in self.evals.specs],
                hostname=socket.gethostname(),
                plugin_version=__version__,
            )
        return self.run_id

    # --- cases --------------------------------------------------------------------------------------
    def record(self, case: CaseRow, calls: list[CallRow]) -> None:
        self._open().record_case(self._run(), case, calls)
        self.summary.add(case.benchmark, case.model, case.outcome)

    # --- end ----------------------------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.store is not None and self.run_id is not None:
            status = "interrupted" if exitstatus == pytest.ExitCode.INTERRUPTED else "finished"
            self.store.finish_run(self.run_id, exit_status=int(exitstatus), status=status)

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
        tr.write_line(f"run {self.run_id} stored in {self.evals.db_path}")
