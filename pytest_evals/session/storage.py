"""This run's row and cases in the store, on the one process that owns the database.

The database is checked at start-up (an unusable file, or a folder where none can be created, is a
usage error before any case runs), opened once, and the run's row is written when the first case is
recorded (a session without eval cases never creates the file). A write that fails mid-run is kept as
``write_error``: the session stops with one line, and every case recorded before stays committed.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from .. import __version__
from ..store.copies import Copy, copy_cases
from ..store.database import Store, StoreError
from ..store.rows import CaseRecord, now
from .options import usage_error
from .paths import creatable_problem

T = TypeVar("T")


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


def _process_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RunStorage:
    """The store of this run: opened once, its row written with the first case, closed at the end."""

    def __init__(self, config: pytest.Config, path: Path, shard: str | None = None) -> None:
        self.config = config
        self.path = path
        self.shard = shard  # --evals-shard's K/N, stored with the run's row
        self.store: Store | None = None
        self.run_id: int | None = None
        self.started_at = now()
        self.write_error: str | None = None  # the first write that failed; later cases are not written
        self.cases_stored = False  # the failed write came after every case was committed
        self.finish_error: str | None = None  # the run's row could not be closed (it still says 'running')
        self.resumed_run: int | None = None  # --evals-resume: the run it resumes, stored with the run's row

    @property
    def args(self) -> list[str]:
        """The command line as stored (credentials in URLs removed)."""
        return [redact(a) for a in self.config.invocation_params.args]

    def check(self) -> None:
        """At start-up: an existing file must open, a new one must be creatable (a usage error if not)."""
        if self.path.exists():
            self.open()
            return
        problem = creatable_problem(self.path, "cannot create the database", "pass a writable --evals-db PATH")
        if problem:
            raise pytest.UsageError(problem)

    def open(self) -> Store:
        """The store, opened once; runs of this host whose process died are settled as interrupted."""
        if self.store is None:
            try:
                self.store = Store(self.path)
                self.store.settle_dead_runs(socket.gethostname(), _process_alive)
            except StoreError as exc:
                raise usage_error(exc) from None
            except sqlite3.Error as exc:
                raise usage_error(self.store.error(exc) if self.store else exc) from None
        return self.store

    def ensure_run(self, models: list[str]) -> int:
        """The id of this run's row, written the first time it is asked for."""
        if self.run_id is None:
            self.run_id = self.open().start_run(
                args=self.args,
                rootdir=str(self.config.rootpath),
                git_revision=git_revision(str(self.config.rootpath)),
                models=models,
                hostname=socket.gethostname(),
                plugin_version=__version__,
                started_at=self.started_at,
                pid=os.getpid(),
                shard=self.shard,
                resumed_run=self.resumed_run,
            )
        return self.run_id

    def write_case(self, record: CaseRecord, models: list[str]) -> None:
        """One case in one transaction; a failure is kept as ``write_error`` (nothing later is written)."""
        self._write(lambda store: store.record_case(self.ensure_run(models), record))

    def copy_cases(self, copies: list[Copy], models: list[str]) -> list[int | None]:
        """Stored cases copied into this run in one transaction (``store.copies``): their new ids (None: the
        stored case is gone). A failure is kept as ``write_error``, and nothing of the batch is written."""
        made = self._write(lambda store: copy_cases(store, self.ensure_run(models), copies))
        return made if made is not None else [None] * len(copies)

    def _write(self, write: Callable[[Store], T]) -> T | None:
        """``write`` on the store unless a write failed before; a failure is kept as ``write_error``."""
        if self.write_error:
            return None
        try:
            return write(self.open())
        except (StoreError, pytest.UsageError) as exc:
            self.write_error = str(exc)
        except sqlite3.Error as exc:
            self.write_error = str(self.open().error(exc))
        return None

    def write_benchmarks(self, rows: list[dict], repeated: list[dict], facts: dict[str, str | None]) -> None:
        """The run's scores and verdicts, and what they came from (``facts``: the gate settings, a shard's
        suite); a failure is kept (every case was committed before it)."""
        if self.store is None or self.run_id is None or self.write_error:
            return
        try:
            self.store.record_benchmarks(self.run_id, rows, repeated, facts)
        except sqlite3.Error as exc:
            self.write_error = str(self.store.error(exc))
            self.cases_stored = True

    def finish(self, exit_status: int, status: str, tests: int | None, tests_not_run: int) -> None:
        """The run's row: its end, status and counts."""
        if self.store is not None and self.run_id is not None:
            try:
                self.store.finish_run(self.run_id, exit_status=exit_status, status=status, tests=tests,
                                      tests_not_run=tests_not_run)
            except sqlite3.Error as exc:  # the cases written so far stay committed
                self.finish_error = str(self.store.error(exc))

    def close(self, interrupted: bool) -> None:
        """``interrupted``: a signal came while the run was finishing, so its exit status is 2."""
        if self.store is None:
            return
        if interrupted and self.run_id is not None:
            try:
                self.store.set_exit_status(self.run_id, int(pytest.ExitCode.INTERRUPTED))
            except sqlite3.Error:
                pass
        self.store.close()
