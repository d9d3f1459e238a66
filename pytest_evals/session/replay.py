"""``--evals-resume`` on the controller: the stored run it replays from, read once, and the copies of the
cases it replays.

At start-up the run's finished cases (passed or failed) are indexed by key: their id, nodeid, outcome,
error, duration, scores and the run they are stored in, not their rows (``store.reads.finished_index``,
which also takes the finished cases of the runs an interrupted resume resumed); this process replays them
from the run's state, workers from their ``workerinput`` (``session.xdist``). The line that says how much
will be replayed is printed once the cases are collected.

A replayed case's record is counted in the gates as it arrives, with its stored scores, and queued; the
queue is copied into this run in one transaction (``store.copies``: inside SQLite, no row read into
Python) when it holds :attr:`ReplaySource.BATCH` cases or has waited :attr:`ReplaySource.WAIT_S`, before
any case that ran is written (the run's cases stay in the order they ended) and when the session ends.
Only then are the copied cases counted as ended. A resume killed before a copy loses nothing: this run
names the run it resumed (``runs.resumed_run``), and the next resume takes the cases from there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ..store.copies import Copy
from ..store.database import Store
from ..store.reads import Finished, calls_of, finished_index, resumed_chain
from ..store.rows import CALL_FIELDS, CallRow, CaseRecord, CaseRow
from .interruption import SignalGuard
from .resume import ResumeState
from .storage import RunStorage


class ReplaySource:
    """The stored run whose finished cases this run replays, and the replayed cases not yet copied."""

    BATCH = 500  # replayed cases copied in one transaction
    WAIT_S = 1.0  # the longest a replayed case waits to be copied while cases keep arriving

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_id: int | None = None
        self.chain: list[int] = []  # the run, and the interrupted resumes it continues (store.reads.resumed_chain)
        self.note: str | None = None  # why there is nothing to resume, for the header
        self.store: Store | None = None  # the database the stored run is in
        self.index: dict[str, Finished] = {}  # key -> the stored case (store.reads.finished_index)
        self.nodeids: set[str] = set()  # the stored cases' nodeids
        self.replayed = 0  # cases copied into this run
        self.pending: list[CaseRow] = []  # replayed cases counted in the gates, not copied yet
        self._first_pending = 0.0
        self._said = False

    def load(self, path: Path, open_store: Callable[[], Store], ref: str = "latest") -> ResumeState | None:
        """The finished cases of run ``ref`` (``latest``: the newest run, finished or not), as the state the
        processes that run tests replay from. A named run that is not there is a usage error."""
        if ref != "latest":
            named = open_store() if path.exists() else None
            run_id = int(ref) if ref.isdigit() else None
            if named is None or run_id is None or named.run(run_id) is None:
                raise pytest.UsageError(f"--evals-resume {ref}: no run {ref} in {path}; `pytest-evals runs` lists "
                                        "the stored runs (pass --evals-db for another database)")
            return self._finished(named, run_id)
        if not path.exists():
            self.note = f"evals-resume: nothing to resume, {path} does not exist yet"
            return None
        store = open_store()
        run_id = store.latest_run_id(finished_only=False)
        if run_id is None:
            self.note = f"evals-resume: nothing to resume, {path} holds no run"
            return None
        return self._finished(store, run_id)

    def _finished(self, store: Store, run_id: int) -> ResumeState:
        self.index = finished_index(store, run_id)
        self.store, self.run_id, self.chain = store, run_id, resumed_chain(store, run_id)
        self.nodeids = {entry[1] for entry in self.index.values()}
        finished = {key: {"outcome": outcome, "error": error, "duration_s": duration, "run": run}
                    for key, (_, _, outcome, error, duration, _, run) in self.index.items()}
        return ResumeState(run_id, finished)

    def say(self, done: int, total: int) -> None:
        """How many of the collected cases are already done (once)."""
        self._said = True
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"evals-resume: {done} of {total} cases already done in {self.runs_text()} "
                                "(use --evals-fresh to start over)")

    def runs_text(self) -> str:
        """``run 8``, or ``run 8 (with run 7, which it resumed)`` where an interrupted resume is continued."""
        behind = self.chain[1:]
        if not behind:
            return f"run {self.run_id}"
        runs = f"run{'s' if len(behind) > 1 else ''} {', '.join(map(str, behind))}"
        return f"run {self.run_id} (with {runs}, which it resumed)"

    def say_for_nodeids(self, ids: list[str]) -> None:
        """Under xdist: the workers compute the keys; here the finished nodeids give the count."""
        if self.run_id is None or self._said:
            return
        self.say(sum(i in self.nodeids for i in ids), len(ids))

    # --- copies ---------------------------------------------------------------------------------------
    def stands_for(self, case: CaseRow) -> bool:
        """Whether a record is a replayed case whose stored case this run copies."""
        return case.resumed_from is not None and case.case_key in self.index

    def stored_scores(self, case: CaseRow) -> dict[str, Any] | None:
        scores = self.index[case.case_key][5]  # type: ignore[index]
        return json.loads(scores) if scores else None

    def queue(self, case: CaseRow) -> bool:
        """Queue a replayed case to copy; whether the queue is due to be copied now."""
        if not self.pending:
            self._first_pending = time.monotonic()
        self.pending.append(case)
        return len(self.pending) >= self.BATCH or time.monotonic() - self._first_pending >= self.WAIT_S

    def copy(self, storage: RunStorage, models: list[str], signals: SignalGuard,
             ended: Callable[[str], None]) -> list[tuple[str, list[CallRow]]]:
        """Copy the queued cases into the run (one transaction) and tell ``ended`` each nodeid, both with
        stopping signals deferred; a stored case gone since start-up is written as its replayed record.
        Returns each copied case's model and stored calls, for the usage. The queue is emptied; after a
        failed write (``storage.write_error``) nothing is copied or counted as ended."""
        cases, self.pending = self.pending, []
        if storage.write_error:
            return []
        copies = [Copy(self.index[c.case_key][0], c.nodeid, c.benchmark, c.model, c.worker)  # type: ignore[index]
                  for c in cases]
        with signals.deferred():  # committed and counted as ended, or neither
            made = storage.copy_cases(copies, models)
            if storage.write_error:
                return []
            for case, case_id in zip(cases, made):
                if case_id is None:
                    storage.write_case(CaseRecord(case, []), models)
                if not storage.write_error:
                    ended(case.nodeid)
            self.replayed += sum(case_id is not None for case_id in made)
            stored = calls_of(self.store, [c.case_id for c in copies])  # type: ignore[arg-type]
            return [(case.model, [CallRow(**{k: row[k] for k in CALL_FIELDS}) for row in stored[copy.case_id]])
                    for case, copy, case_id in zip(cases, copies, made) if case_id is not None]
