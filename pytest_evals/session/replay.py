"""``--evals-resume`` on the controller: the stored run it replays from, read once.

At start-up the newest run's finished cases (passed or failed) are indexed by key: their id, nodeid,
outcome, error and duration, not their rows (``store.reads.finished_index``); this process replays them
from the run's state, workers from their ``workerinput`` (``session.xdist``). When a replayed case's record
arrives, the stored case and its rows are read (``store.reads.case_rows``) and copied into this run. The
line that says how much will be replayed is printed once the cases are collected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from ..store.database import Store
from ..store.reads import case_rows, finished_index
from ..store.rows import CallRow, CaseRecord, CaseRow, ToolCallRow, TurnRow
from .resume import ResumeState


class ReplaySource:
    """The stored run whose finished cases this run replays."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_id: int | None = None
        self.note: str | None = None  # why there is nothing to resume, for the header
        self.store: Store | None = None  # the database the stored run is in
        self.stored: dict[str, int] = {}  # key -> the stored case's id
        self.nodeids: set[str] = set()  # the stored cases' nodeids
        self.replayed = 0  # cases copied into this run
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
        index = finished_index(store, run_id)
        self.store, self.run_id = store, run_id
        self.stored = {key: entry[0] for key, entry in index.items()}
        self.nodeids = {entry[1] for entry in index.values()}
        finished = {key: {"outcome": outcome, "error": error, "duration_s": duration}
                    for key, (_, _, outcome, error, duration) in index.items()}
        return ResumeState(run_id, finished)

    def say(self, done: int, total: int) -> None:
        """How many of the collected cases are already done (once)."""
        self._said = True
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"evals-resume: {done} of {total} cases already done in run {self.run_id} "
                                "(use --evals-fresh to start over)")

    def say_for_nodeids(self, ids: list[str]) -> None:
        """Under xdist: the workers compute the keys; here the finished nodeids give the count."""
        if self.run_id is None or self._said:
            return
        self.say(sum(i in self.nodeids for i in ids), len(ids))

    def copied(self, case: CaseRow) -> CaseRecord | None:
        """The stored case and rows a replayed case stands for, copied into this run; None if not one."""
        if case.resumed_from is None or case.case_key not in self.stored or self.store is None:
            return None
        found = case_rows(self.store, self.stored[case.case_key])
        if found is None:  # (deleted since start-up: the replayed report's own record stands)
            return None
        self.replayed += 1
        row, rows = found
        fields = {k: row[k] for k in CaseRow.__dataclass_fields__ if k in row}
        fields.update(nodeid=case.nodeid, benchmark=case.benchmark, model=case.model, worker=case.worker,
                      resumed_from=row["resumed_from"] or case.resumed_from, case_key=case.case_key)
        fields["scores"] = json.loads(row["scores"]) if row["scores"] else None
        return CaseRecord(CaseRow(**fields), *(
            [kind(**{k: r[k] for k in kind.__dataclass_fields__}) for r in rows[table]]
            for table, kind in (("calls", CallRow), ("turns", TurnRow), ("tool_calls", ToolCallRow))))
