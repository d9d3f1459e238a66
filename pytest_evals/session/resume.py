"""Case identity and the finished set of ``--evals-resume``.

A case's key is versioned and covers what decides its answer: the nodeid and parameters, the
resolved model (``calls.pool.model_identity``: the spec without the options its backend declares as
transport, plus a fingerprint of its weights or revision), and the test function's source. Timeouts,
batch sizes, concurrency and the number of workers do not enter it.

With ``--evals-resume`` the controller reads the newest run once (with the runs an interrupted resume
resumed) and hands the finished cases (passed or failed) to the processes that run tests as a
:class:`ResumeState` (through ``workerinput`` under xdist: workers never open the database, so remote
``--tx`` workers work too). A case whose key is finished is replayed (``session.cases``) and the
controller copies the stored case into the new run (``session.replay``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Any

import pytest

KEY_VERSION = 1


@dataclass(frozen=True)
class ResumeState:
    """What a process that runs tests needs to replay: the run, and its finished cases by key."""

    run_id: int
    finished: dict[str, dict[str, Any]]  # key -> {"outcome", "error", "duration_s", "run": the run it ran in}

    def to_wire(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "finished": self.finished}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "ResumeState":
        return cls(int(data["run_id"]), dict(data["finished"]))


def _stable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


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
