"""Per-case records: what a case gathers where it runs, as the plain dicts that ride on its report.

xdist re-fires every worker report through ``pytest_runtest_logreport`` on the controller, and the
report's ``__dict__`` travels with it; the item stash does not. So the process that runs a case puts
its record (``CaseLog.to_record``: plain dicts) on the teardown report (``session.cases``), and the one
process that owns the database (the controller, or the lone pytest process) reads it back with
:func:`record_from_data` and writes it, one transaction per case (``session.controller``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..calls.conversation import Transcript
from ..calls.sampling import GreedyRepeat, Sample
from ..scoring.stats import Threshold
from ..store.rows import CallRow, CaseRecord, CaseRow, ToolCallRow, TurnRow, now

_PARAMS = re.compile(r"\[.*\]$", re.S)


def benchmark_of(nodeid: str) -> str:
    """The benchmark a case belongs to: its nodeid without the ``[...]`` part."""
    return _PARAMS.sub("", nodeid)


@dataclass
class CaseLog:
    """What one eval case gathers while it runs (where it runs)."""

    model: str
    threshold: Threshold | None = None  # from the case's evals_threshold marker
    calls: list[CallRow] = field(default_factory=list)
    transcript: Transcript = field(default_factory=Transcript)  # conversation turns and tool runs
    scores: dict[str, float] = field(default_factory=dict)
    started_at: str = field(default_factory=now)
    outcome: str = "passed"
    error: str | None = None
    duration_s: float = 0.0
    case_key: str | None = None
    resumed_from: int | None = None  # set when the case is replayed from an earlier run
    gpus: str | None = None  # the GPUs this process is pinned to
    sample: Sample | None = None  # which sample of a repeated case (--evals-repeat)
    repeat_of: str | None = None  # a sample's case: its nodeid without the sample id
    usage_error: str | None = None  # the case ended on a usage error (the run exits with status 4)
    limited: tuple[int, int, int] | None = None  # --evals-limit: (kept, in all, 1 if by its marker) of its benchmark
    greedy_once: bool = False  # a later sample of a greedy case under --evals-repeat, skipped: its case ran once

    def note_phase(self, report: pytest.TestReport, call: pytest.CallInfo[Any]) -> None:
        self.duration_s += report.duration
        if report.when == "setup":
            if report.failed:
                self._end("error", call)
            elif report.skipped:
                self._end("skipped", call)
        elif report.when == "call":
            if report.failed:
                wrong = call.excinfo is not None and call.excinfo.errisinstance(AssertionError)
                self._end("failed" if wrong else "error", call)
            elif report.skipped:
                self._end("failed" if hasattr(report, "wasxfail") else "skipped", call)
        elif report.when == "teardown" and report.failed and self.outcome == "passed":
            self._end("error", call)

    def _end(self, outcome: str, call: pytest.CallInfo[Any]) -> None:
        self.outcome = outcome
        if call.excinfo is not None:
            self.error = call.excinfo.exconly().strip()[:2000]
            if call.excinfo.errisinstance(GreedyRepeat):
                self.usage_error = str(call.excinfo.value)

    def to_record(self, nodeid: str, worker: str | None) -> dict[str, Any]:
        ok_calls = [c for c in self.calls if c.error is None]
        costs = [c.cost_usd for c in self.calls if c.cost_usd is not None]
        case = CaseRow(
            nodeid=nodeid,
            benchmark=benchmark_of(nodeid),
            model=self.model,
            outcome=self.outcome,
            duration_s=round(self.duration_s, 6),
            input_text=_join(c.input_text for c in self.calls),
            output_text=_join(c.output_text for c in ok_calls),
            error=self.error,
            scores=dict(self.scores) or None,
            worker=worker,
            started_at=self.started_at,
            ended_at=now(),
            case_key=self.case_key,
            resumed_from=self.resumed_from,
            cost_usd=sum(costs) if costs else None,
            served_by=", ".join(sorted({c.spec for c in self.calls if c.spec})) or None,
            gpus=self.gpus,
            sample=self.sample.index + 1 if self.sample else None,
            samples=self.sample.count if self.sample else None,
            repeat_of=self.repeat_of,
        )
        return {  # plain dicts of scalars (shallow: dataclasses.asdict deep-copies, and is slow)
            "case": dict(vars(case)),
            "calls": [dict(vars(c)) for c in self.calls],
            "turns": [dict(vars(t)) for t in self.transcript.turns],
            "tool_calls": [dict(vars(t)) for t in self.transcript.tool_calls],
            "threshold": [list(self.threshold.minimums), self.threshold.source] if self.threshold else None,
            "usage_error": self.usage_error,
            "limited": list(self.limited) if self.limited else None,
            "greedy_once": self.greedy_once,
        }


def _join(parts: Any) -> str | None:
    texts = [p for p in parts if p]
    return "\n\n".join(texts) if texts else None


def record_from_data(data: dict[str, Any]) -> tuple[CaseRecord, Threshold | None]:
    """A record as ``CaseLog.to_record`` wrote it, and the threshold marker it carried."""
    threshold = data.get("threshold")
    marker = Threshold(tuple((n, float(v)) for n, v in threshold[0]), threshold[1]) if threshold else None
    record = CaseRecord(CaseRow(**data["case"]), [CallRow(**c) for c in data["calls"]],
                        [TurnRow(**t) for t in data.get("turns", ())],
                        [ToolCallRow(**t) for t in data.get("tool_calls", ())], usage_error=data.get("usage_error"),
                        limited=tuple(data["limited"]) if data.get("limited") else None,
                        greedy_once=bool(data.get("greedy_once")))
    return record, marker
