"""Case identity and ``--evals-resume``: finished cases are replayed from the store, not run again.

A case's key is versioned and covers what decides its answer: the nodeid and parameters, the
resolved model (spec without transport options, plus a fingerprint of its weights or revision), and
the test function's source. Timeouts, batch sizes, concurrency and the number of workers do not
enter it.

With ``--evals-resume`` the controller reads the newest run once and hands the finished cases
(passed or failed) to the processes that run tests (through ``workerinput`` under xdist: workers
never open the database, so remote ``--tx`` workers work too). A case whose key is finished is
replayed: its reports are rebuilt from the stored outcome and fired through the usual hooks, so the
terminal, ``--lf``, JUnit, the gates and the exit status count it as an uninterrupted run would, and
the controller copies its stored row and calls into the new run, marked as resumed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any

import pytest

from .recorder import CASE_ATTR, RECORD_ATTR
from .specs import ModelSpec

KEY_VERSION = 1
# Spec options that change how a model runs, not what it answers.
TRANSPORT_OPTIONS = frozenset({"batch_size", "device", "tensor_parallel_size", "gpu_memory_utilization",
                               "max_num_seqs"})
RESUMED_ATTR = "evals_resumed"  # on replayed reports: the run the outcome came from

case_key_key = pytest.StashKey[str]()


@dataclass(frozen=True)
class ResumeState:
    """What a process that runs tests needs to replay: the run, and its finished cases by key."""

    run_id: int
    finished: dict[str, dict[str, Any]]  # key -> {"outcome", "error", "duration_s"}

    def to_wire(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "finished": self.finished}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "ResumeState":
        return cls(int(data["run_id"]), dict(data["finished"]))


resume_state_key = pytest.StashKey[ResumeState]()


def _stable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def model_identity(spec: ModelSpec, fingerprint: str | None) -> str:
    options = sorted((k, v) for k, v in spec.options if k not in TRANSPORT_OPTIONS)
    base = spec.raw.partition("?")[0]
    return _stable([base, options, fingerprint])


_SOURCES: dict[Any, str] = {}  # code object -> its source as a JSON string; the cases of one function share it


def source_of(item: pytest.Item) -> str:
    """The source of the case's test function as a JSON string (the nodeid where there is none)."""
    function = getattr(item, "function", None)
    code = getattr(function, "__code__", None)
    if code is not None and code in _SOURCES:
        return _SOURCES[code]
    try:
        source = json.dumps(inspect.getsource(function) if function is not None else item.nodeid)
    except (OSError, TypeError):
        return json.dumps(item.nodeid)
    if code is not None:
        _SOURCES[code] = source
    return source


def case_key(item: pytest.Item, model: str) -> str:
    """``v1:`` and the SHA-256 of ``_stable([KEY_VERSION, nodeid, _stable(params), model, source])``,
    written out here so that the function's encoded source is shared by its cases."""
    callspec = getattr(item, "callspec", None)
    params = {k: v for k, v in (callspec.params.items() if callspec else []) if k != "model"}
    payload = (f"[{KEY_VERSION}, {json.dumps(item.nodeid)}, {json.dumps(_stable(params))}, {json.dumps(model)}, "
               f"{source_of(item)}]")
    return f"v{KEY_VERSION}:" + hashlib.sha256(payload.encode()).hexdigest()[:40]


# --- replay --------------------------------------------------------------------------------------

def replay(item: pytest.Item, nextitem: pytest.Item | None, finished: dict[str, Any], run_id: int,
           record: dict[str, Any]) -> None:
    """Fire setup/call/teardown reports for a finished case without running it."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    outcome, error, duration = finished["outcome"], finished.get("error"), finished.get("duration_s") or 0.0
    common = dict(nodeid=item.nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
                  sections=(), user_properties=list(item.user_properties))
    for when in ("setup", "call", "teardown"):
        failed = when == "call" and outcome == "failed"
        report = pytest.TestReport(
            outcome="failed" if failed else "passed",
            longrepr=(f"{error or 'failed'}\n(resumed from run {run_id}; the case was not run again)"
                      if failed else None),
            when=when, duration=duration if when == "call" else 0.0, **common,
        )
        setattr(report, RESUMED_ATTR, run_id)
        setattr(report, CASE_ATTR, True)
        if when == "teardown":
            report.user_properties.append(("evals.outcome", outcome))
            report.user_properties.append(("evals.resumed_from_run", run_id))
            setattr(report, RECORD_ATTR, record)
        ihook.pytest_runtest_logreport(report=report)
    # Tear down what the previous item left set up, as the skipped teardown phase would have.
    item.session._setupstate.teardown_exact(nextitem)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def resumed_status(report: pytest.TestReport) -> tuple[str, str, str] | None:
    run_id = getattr(report, RESUMED_ATTR, None)
    if run_id is None or report.when != "call":
        return None
    if report.passed:
        return "passed", ".", "PASSED (resumed)"
    return "failed", "F", "FAILED (resumed)"
