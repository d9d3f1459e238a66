"""``--evals-resume`` on the controller: the stored run it replays from, read once.

At start-up the newest run's finished cases (passed or failed) are read with their rows; this process
replays them from the run's state, workers from their ``workerinput`` (``session.xdist``). When a
replayed case's record arrives, the stored case and its rows are copied into this run. The line
that says how much will be replayed is printed once the cases are collected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from ..store.database import Store
from ..store.rows import CallRow, CaseRecord, CaseRow, ToolCallRow, TurnRow
from .resume import ResumeState


class ReplaySource:
    """The stored run whose finished cases this run replays."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_id: int | None = None
        self.note: str | None = None  # why there is nothing to resume, for the header
        self.stored: dict[str, tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = {}  # key -> case, rows
        self.replayed = 0  # cases copied into this run
        self._said = False

    def load(self, path: Path, open_store: Callable[[], Store]) -> ResumeState | None:
        """The newest run's finished cases, as the state the processes that run tests replay from."""
        if not path.exists():
            self.note = f"evals-resume: nothing to resume, {path} does not exist yet"
            return None
        store = open_store()
        run_id = store.latest_run_id(finished_only=False)
        if run_id is None:
            self.note = f"evals-resume: nothing to resume, {path} holds no run"
            return None
        self.stored = store.finished_cases(run_id)
        self.run_id = run_id
        finished = {key: {"outcome": row["outcome"], "error": row["error"], "duration_s": row["duration_s"]}
                    for key, (row, _) in self.stored.items()}
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
        nodeids = {row["nodeid"] for row, _ in self.stored.values()}
        self.say(sum(i in nodeids for i in ids), len(ids))

    def copied(self, case: CaseRow) -> CaseRecord | None:
        """The stored case and rows a replayed case stands for, copied into this run; None if not one."""
        if case.resumed_from is None or case.case_key not in self.stored:
            return None
        self.replayed += 1
        row, rows = self.stored[case.case_key]
        fields = {k: row[k] for k in CaseRow.__dataclass_fields__ if k in row}
        fields.update(nodeid=case.nodeid, benchmark=case.benchmark, model=case.model, worker=case.worker,
                      resumed_from=row["resumed_from"] or case.resumed_from, case_key=case.case_key)
        fields["scores"] = json.loads(row["scores"]) if row["scores"] else None
        return CaseRecord(CaseRow(**fields), *(
            [kind(**{k: r[k] for k in kind.__dataclass_fields__}) for r in rows[table]]
            for table, kind in (("calls", CallRow), ("turns", TurnRow), ("tool_calls", ToolCallRow))))
