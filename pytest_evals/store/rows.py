"""The rows a case's record holds, as they are written to the store: plain dataclasses, no I/O.

A case's process fills them while it runs (``calls.model``, ``calls.conversation``), the record rides on
the case's report as plain dicts (``session.recorder``), and the one process that owns the database
writes them (``store.database``). Each field is a column of the table of the same name; columns say
their unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")



@dataclass
class CallRow:
    kind: str
    model: str
    input_text: str | None = None
    output_text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    cost_usd: float | None = None
    attempt: int = 1
    error: str | None = None
    started_at: str | None = None
    gpu_peak_mib: float | None = None
    conversation: int | None = None
    dropped_messages: int | None = None
    role: str = "model"
    spec: str | None = None
    batched: int | None = None
    batch_s: float | None = None  # batched calls: the wall time of the batch that served it
    input_tokens_estimated: int | None = None  # 1: input_tokens is an estimate
    cost_basis: str | None = None  # counted | estimated | gpu_time | unknown | cached; None: no price applies
    stream_cuts: int | None = None  # times the server cut its stream before it came whole (sent again)
    cached: int | None = None  # 1: answered from the call cache (its recorded figures in the cached_* fields)
    cached_latency_s: float | None = None
    cached_ttft_s: float | None = None
    cached_tpot_s: float | None = None
    cached_input_tokens: int | None = None
    cached_output_tokens: int | None = None
    cached_cost_usd: float | None = None  # what the recorded call would cost at this run's price
    server: str | None = None  # the URL of the server that answered (HTTP backends; one of a fleet's)


CALL_FIELDS = tuple(CallRow.__dataclass_fields__)  # a stored calls row's columns that make a CallRow


@dataclass
class TurnRow:
    conversation: int
    position: int
    role: str
    content: str | None = None
    tool_calls: str | None = None
    tool_call_id: str | None = None
    name: str | None = None
    dropped: int = 0
    started_at: str | None = None


@dataclass
class ToolCallRow:
    conversation: int
    position: int
    name: str
    call_id: str | None = None
    arguments: str | None = None
    result: str | None = None
    error: str | None = None
    duration_s: float | None = None
    started_at: str | None = None


@dataclass
class CaseRecord:
    """One finished case and everything recorded under it."""

    case: CaseRow
    calls: list[CallRow] = field(default_factory=list)
    turns: list[TurnRow] = field(default_factory=list)
    tool_calls: list[ToolCallRow] = field(default_factory=list)
    usage_error: str | None = None  # not stored: the case ended on a usage error (exit status 4)
    limited: tuple[int, int, int] | None = None  # not stored: --evals-limit's (kept, in all, 1 if by marker)
    greedy_once: bool = False  # not stored: a greedy sample under --evals-repeat, skipped (its case ran once)


@dataclass
class CaseRow:
    nodeid: str
    benchmark: str
    model: str
    outcome: str
    duration_s: float | None = None
    input_text: str | None = None
    output_text: str | None = None
    error: str | None = None
    scores: dict[str, float] | None = None
    worker: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    case_key: str | None = None
    resumed_from: int | None = None
    cost_usd: float | None = None
    served_by: str | None = None
    gpus: str | None = None
    sample: int | None = None  # repeated cases: which sample (from 1) of how many
    samples: int | None = None
    repeat_of: str | None = None  # the sample's case: its nodeid without the sample id
