"""The run's state, in one place: one object under one stash key, the per-item keys and accessors, and
the names of the attributes that ride on reports.

A leaf for the plugin modules (``options``, ``cases``, ``controller``, ``batching.windows``, ``plugin``):
they all import it, and it imports none of them, so no module reaches back into the entry module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..backends.base import BackendSettings
from ..backends.specs import ModelSpec
from ..calls.cache import CallCache
from ..calls.ceiling import Ceiling
from ..calls.metering import PriceTable
from ..calls.planner import Planner
from ..calls.pool import BackendPool
from ..calls.reliability import RetryPolicy
from ..calls.routing import Routes
from ..calls.sampling import Sample
from ..scoring.gates import Gates
from ..scoring.stats import Threshold
from .gpus import GpuPlan
from .interruption import SignalGuard
from .recorder import CaseLog
from .repeats import SAMPLE_PARAM, Repeat
from .resume import ResumeState, case_key
from .shards import Shard

# --- attributes on test reports (they travel from xdist workers to the controller) -------------------
RECORD_ATTR = "evals_record"  # on a case's teardown report: its record (CaseLog.to_record)
CASE_ATTR = "evals_case"  # on every report of an eval case
ERROR_ATTR = "evals_error"  # on a call report whose failure is an infrastructure fault
RESUMED_ATTR = "evals_resumed"  # on replayed reports: the run the outcome came from
WRONG_ATTR = "evals_wrong"  # on a call report whose failure is a wrong answer: the assertion's message, one line
WRONG = "wrong"  # the terminal's category (and count) of eval cases that failed their assertion


@dataclass
class RunState:
    """The run's configuration (validated by ``options.read``) and the objects its cases share.

    One per process: the controller's also holds the GPU plan; a worker's gets the resume state and
    its GPUs from ``workerinput``.
    """

    # configuration
    specs: tuple[ModelSpec, ...]
    names: dict[ModelSpec, str]  # what ids, records and the summary call each model
    explicit_models: bool  # the user named --model (else the embedded default serves)
    db_path: Path
    settings: BackendSettings
    routes: Routes
    judge: ModelSpec | None  # the default judge (--evals-judge or ini evals_judge)
    gates: Gates
    baseline: str | None  # --evals-baseline RUN_ID|latest
    resume: bool  # --evals-resume, and not --evals-fresh
    budget: float | None  # USD
    batch_across_cases: bool  # ini evals_batch: run eval cases in windows (a marker evals_batch wins)
    # shared objects
    pool: BackendPool  # loaded backends, one per spec per process
    prices: PriceTable
    retry: RetryPolicy  # the default retry policy (ini evals_retry); a case's marker wins
    worker_id: str | None = None  # the xdist worker this process is; None on the controller or alone
    planner: Planner | None = None  # batching across cases, where a backend of the run gains from it
    gpu_plan: GpuPlan | None = None  # the controller's plan for its workers (--evals-gpus-per-worker)
    gpus: str | None = None  # the GPUs this process is pinned to
    resume_state: ResumeState | None = None  # the finished cases to replay (--evals-resume)
    resume_run: str = "latest"  # --evals-resume RUN: the run to replay from (latest: the newest)
    signals: SignalGuard = field(default_factory=SignalGuard)  # SIGTERM as Ctrl-C; signals held while finishing
    cache: CallCache | None = None  # --evals-cache (None: off); each process opens the file itself
    repeat: Repeat | None = None  # --evals-repeat: samples of every eval case (a test's marker wins)
    limit: int | None = None  # --evals-limit (or ini evals_limit): cases per benchmark; 0: all (limit.EVERY)
    limit_given: bool = False  # on the command line: it wins over evals_limit markers, which win over ini
    seed: int = 0  # --evals-seed: which subset --evals-limit takes (and --evals-stop-early's order)
    stop_early: bool = False  # --evals-stop-early
    markdown: Path | None = None  # --evals-markdown: where the run's Markdown summary goes
    ceiling: Ceiling | None = None  # --evals-budget: this process's side of the run's ledger (calls reserve)
    shard: Shard | None = None  # --evals-shard: which part of the eval cases this run is

    @property
    def is_worker(self) -> bool:
        return self.worker_id is not None


state_key = pytest.StashKey[RunState]()


def state_of(config: pytest.Config) -> RunState:
    return config.stash[state_key]


# --- per item ------------------------------------------------------------------------------------------
threshold_key = pytest.StashKey[Threshold]()  # the case's evals_threshold marker
retry_key = pytest.StashKey[RetryPolicy]()  # the case's evals_retry marker
task_key = pytest.StashKey[str]()  # the case's evals_task
judge_key = pytest.StashKey[ModelSpec]()  # the case's evals_judge
batch_key = pytest.StashKey[bool]()  # the case's evals_batch
served_key = pytest.StashKey[ModelSpec]()  # the spec --evals-route sends the case to
marker_problem_key = pytest.StashKey[str]()  # a bad marker seen on a worker: the case fails with it
case_key_key = pytest.StashKey[str]()
case_log_key = pytest.StashKey[CaseLog]()  # what the case gathers while it runs
limit_key = pytest.StashKey[tuple[int, int, int]]()  # --evals-limit: (cases kept, cases in all, 1 if by its marker) of its benchmark


def spec_of(item: pytest.Item) -> ModelSpec | None:
    """The --model spec an eval case runs with; None for a test that is not an eval case."""
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("model") if callspec is not None else None
    return spec if isinstance(spec, ModelSpec) else None


def sample_of(item: pytest.Item) -> Sample | None:
    """Which sample of its case an item is, under --evals-repeat / evals_repeat; None: not repeated."""
    callspec = getattr(item, "callspec", None)
    sample = callspec.params.get(SAMPLE_PARAM) if callspec is not None else None
    return sample if isinstance(sample, Sample) else None


def served_spec(item: pytest.Item, spec: ModelSpec) -> ModelSpec:
    """The spec whose backend answers the case: its own, or where --evals-route sends it."""
    return item.stash.get(served_key, spec)


def case_key_of(item: pytest.Item, spec: ModelSpec) -> str:
    """The case's key, computed once per item (the start-of-resume count and the run share it)."""
    if case_key_key not in item.stash:
        item.stash[case_key_key] = case_key(item, state_of(item.config).pool.identity(spec))
    return item.stash[case_key_key]


def model_name(item: pytest.Item, spec: ModelSpec) -> str:
    """What records and the summary call the case's model."""
    return state_of(item.config).names.get(spec, spec.label)


def worker_id(config: pytest.Config) -> str | None:
    """The xdist worker id of this process; None on the controller or without xdist."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput is not None else None
