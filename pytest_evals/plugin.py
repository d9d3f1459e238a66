"""pytest11 entry point: options, fixtures, parametrization by model, and wiring of the feature plugins.

The modules this file wires do the work: ``specs`` (parsing), ``backends`` (serving), ``model`` (the
fixture's object), ``recorder`` (records on reports), ``session`` (the store and the run, controller
only), ``report`` (the summary table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from . import hookspecs
from .backends.base import BackendError, BackendRegistry, BackendSettings
from .gates import MARKER, Gates, threshold_from_marker
from .metering import Price, PriceTable, parse_price_line
from .model import Model
from .reliability import MARKER as RETRY_MARKER
from .reliability import NO_RETRY, RetryPolicy, policy_from_ini, policy_from_marker
from .pool import BackendPool
from .recorder import ERROR_ATTR, CaseLog, RecorderPlugin, case_log_key
from .resume import ResumeState, case_key, case_key_key, replay, resume_state_key, resumed_status
from .routing import JUDGE_MARKER, TASK_MARKER, TASKS, Routes, RoutingError, parse_judge, parse_task
from .scoring import Threshold
from .specs import ModelSpec, SpecError, parse_specs, spec_ids
from .store import DEFAULT_DB

if TYPE_CHECKING:
    from .batching import Planner
    from .gpus import GpuPlan



@dataclass(frozen=True)
class EvalsConfig:
    specs: tuple[ModelSpec, ...]
    names: dict[ModelSpec, str]  # what ids, records and the summary call each model
    explicit_models: bool  # the user named --model (else the embedded default serves)
    db_path: Path
    settings: BackendSettings
    routes: Routes
    judge: ModelSpec | None  # the default judge (--evals-judge or ini evals_judge)
    gpus_per_worker: int | None = None


evals_config_key = pytest.StashKey[EvalsConfig]()
pool_key = pytest.StashKey[BackendPool]()
threshold_key = pytest.StashKey[Threshold]()
retry_key = pytest.StashKey[RetryPolicy]()
retry_default_key = pytest.StashKey[RetryPolicy]()
prices_key = pytest.StashKey[PriceTable]()
marker_problem_key = pytest.StashKey[str]()
task_key = pytest.StashKey[str]()  # the case's evals_task
judge_key = pytest.StashKey[ModelSpec]()  # the case's evals_judge
served_key = pytest.StashKey[ModelSpec]()  # the spec that serves the case's model fixture
planner_key = pytest.StashKey["Planner"]()  # batching across cases, where the batch size is above 1
gpus_key = pytest.StashKey[str]()  # the GPUs this process is pinned to
gpu_plan_key = pytest.StashKey["GpuPlan"]()  # the controller's plan for its workers


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("evals", "LLM evaluations (pytest-evals)")
    group.addoption(
        "--model", action="append", dest="evals_models", metavar="SPEC", default=None,
        help="model to evaluate (repeatable; every eval case runs once per model): smollm2 (default), "
        "hf:ORG/NAME, hf:/dir, hf:/file.gguf, vllm:ORG/NAME, openai:MODEL[@http://HOST:PORT/v1]; "
        "options after '?', e.g. hf:NAME?dtype=bfloat16&device=cuda. ini: evals_models",
    )
    group.addoption(
        "--evals-db", dest="evals_db", metavar="PATH", default=None,
        help=f"SQLite database for runs, cases and calls (default: {DEFAULT_DB} under rootdir). ini: evals_db",
    )
    group.addoption(
        "--evals-timeout", dest="evals_timeout", metavar="S", type=float, default=None,
        help="deadline in seconds for one model call (HTTP read timeout; generation time limit for "
        "local backends). ini: evals_timeout",
    )
    group.addoption(
        "--evals-batch-size", dest="evals_batch_size", metavar="N", type=int, default=None,
        help="most requests a local backend runs in one forward pass (default 8); cases are batched across "
        "in windows of 8 batches; 1 runs every call alone. ini: evals_batch_size",
    )
    group.addoption(
        "--evals-concurrency", dest="evals_concurrency", metavar="N", type=int, default=None,
        help="most requests an HTTP backend has in flight at once, per process (default 8; halves on HTTP "
        "429 and grows back). ini: evals_concurrency",
    )
    group.addoption(
        "--evals-threshold", action="append", dest="evals_threshold", metavar="'GLOB MIN [METRIC=MIN ...]'",
        default=None,
        help="gate for benchmarks whose nodeid matches GLOB, e.g. '*::test_arithmetic 0.6 f1=0.5' "
        "(repeatable; an evals_threshold marker wins over it, and it wins over ini evals_thresholds)",
    )
    group.addoption(
        "--evals-max-error-rate", dest="evals_max_error_rate", metavar="RATE", type=float, default=None,
        help="share of a benchmark's cases that may end in error (infrastructure) before its gate fails "
        "(default 0). ini: evals_max_error_rate",
    )
    group.addoption(
        "--evals-baseline", dest="evals_baseline", metavar="RUN_ID|latest", default=None,
        help="fail a benchmark that is significantly worse than this stored run on the cases both have. "
        "ini: evals_baseline",
    )
    group.addoption(
        "--evals-alpha", dest="evals_alpha", metavar="A", type=float, default=None,
        help="significance level of the baseline gate (default 0.05). ini: evals_alpha",
    )
    group.addoption(
        "--evals-margin", dest="evals_margin", metavar="M", type=float, default=None,
        help="a drop no larger than this is not a regression (default 0). ini: evals_margin",
    )
    group.addoption(
        "--evals-resume", action="store_true", dest="evals_resume", default=None,
        help="replay the cases the newest stored run finished (passed or failed) instead of running "
        "them again; errored, skipped and unfinished cases run. ini: evals_resume",
    )
    group.addoption(
        "--evals-fresh", action="store_true", dest="evals_fresh", default=False,
        help="run every case again even where --evals-resume (or ini evals_resume) is on",
    )
    group.addoption(
        "--evals-budget", dest="evals_budget", metavar="USD", type=float, default=None,
        help="stop the run once its model calls cost this much (prices from ini evals_prices); cases in "
        "flight finish and are recorded. ini: evals_budget",
    )
    group.addoption(
        "--evals-route", action="append", dest="evals_route", metavar="TASK=SPEC", default=None,
        help="send cases marked evals_task(TASK) whose model cannot serve TASK (generate, chat, loglikelihood, "
        "tools) to SPEC instead of skipping them (repeatable). ini: evals_route",
    )
    group.addoption(
        "--evals-judge", dest="evals_judge", metavar="SPEC", default=None,
        help="the model behind the judge fixture where no evals_judge marker names one. ini: evals_judge",
    )
    group.addoption(
        "--evals-gpus-per-worker", dest="evals_gpus_per_worker", metavar="N", type=int, default=None,
        help="pin each xdist worker to its own N GPUs (CUDA_VISIBLE_DEVICES); -n auto starts one worker per "
        "group of N GPUs. ini: evals_gpus_per_worker",
    )
    parser.addini("evals_models", "default --model specs, one per line", type="linelist", default=[])
    parser.addini("evals_route", "default --evals-route lines, TASK=SPEC, one per line", type="linelist", default=[])
    parser.addini("evals_judge", "default --evals-judge spec", default="")
    parser.addini("evals_gpus_per_worker", "default --evals-gpus-per-worker", default="")
    parser.addini("evals_prices", "prices, one 'MODEL_GLOB IN_USD_PER_M OUT_USD_PER_M' or "
                  "'MODEL_GLOB gpu_hour=USD' per line", type="linelist", default=[])
    parser.addini("evals_budget", "default --evals-budget in USD", default="")
    parser.addini("evals_retry", "default retry policy of every eval case, as the marker's keywords: "
                  "attempts=8 wait_s=0.5 max_wait_s=30 on=rate_limit,server", default="")
    parser.addini("evals_resume", "resume by default (true/false)", type="bool", default=False)
    parser.addini("evals_thresholds", "benchmark gates, one 'GLOB MIN [METRIC=MIN ...]' per line",
                  type="linelist", default=[])
    parser.addini("evals_max_error_rate", "default --evals-max-error-rate", default="")
    parser.addini("evals_baseline", "default --evals-baseline", default="")
    parser.addini("evals_alpha", "default --evals-alpha", default="")
    parser.addini("evals_margin", "default --evals-margin", default="")
    parser.addini("evals_db", "default --evals-db path (relative to rootdir)", default="")
    parser.addini("evals_timeout", "default --evals-timeout in seconds", default="")
    parser.addini("evals_batch_size", "default --evals-batch-size", default="")
    parser.addini("evals_concurrency", "default --evals-concurrency", default="")


def _setting(config: pytest.Config, option: str, cast: Callable[[str], Any], default: Any) -> Any:
    """Command line first, then the ini key of the same name, then the default."""
    value = config.getoption(option)
    if value is not None:
        return value
    raw = config.getini(option)
    if raw in ("", None, []):
        return default
    try:
        return cast(raw)
    except ValueError:
        raise pytest.UsageError(f"ini {option} = {raw!r}: not a valid value") from None


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` with --evals-gpus-per-worker: one worker per group of GPUs (xdist's default without)."""
    per_worker = _setting(config, "evals_gpus_per_worker", int, None)
    if not per_worker:
        return None
    from .gpus import plan

    return len(plan(per_worker, None).groups) or None


def _xdist_workers(config: pytest.Config) -> int | None:
    """How many xdist workers this controller starts; None when the run does not distribute."""
    if not config.pluginmanager.hasplugin("xdist") or getattr(config.option, "dist", "no") == "no":
        return None
    numprocesses = getattr(config.option, "numprocesses", None)
    if isinstance(numprocesses, int):
        return numprocesses or None
    return len(getattr(config.option, "tx", None) or []) or None


@pytest.hookimpl(tryfirst=True)  # before any plugin can initialise CUDA, a worker is pinned to its GPUs
def pytest_configure(config: pytest.Config) -> None:
    from .gpus import WORKER_KEY, pin

    if is_worker(config) and config.workerinput.get(WORKER_KEY):
        pin(config.workerinput[WORKER_KEY])
        config.stash[gpus_key] = config.workerinput[WORKER_KEY]
    config.addinivalue_line(
        "markers",
        f"{MARKER}(min_pass_rate=None, **metric_minimums): the benchmark's gate: the session exits 0 while "
        "its pass rate and the means of named metrics (evals_score) reach these minimums, even if single "
        "cases fail. Without one, every case must pass.",
    )
    config.addinivalue_line(
        "markers",
        f"{RETRY_MARKER}(attempts=3, wait_s=1.0, max_wait_s=60, on=('rate_limit', 'timeout', 'server', "
        "'connection')): retry this case's model calls on transient faults, with exponential backoff and "
        "jitter up to max_wait_s; a server's Retry-After is honoured. ini evals_retry sets the default.",
    )
    config.addinivalue_line(
        "markers",
        f"{TASK_MARKER}(task): what the case needs: {', '.join(TASKS)}. A case whose model cannot serve it "
        "goes to the spec --evals-route TASK=SPEC names, or is skipped with the reason.",
    )
    config.addinivalue_line(
        "markers",
        f"{JUDGE_MARKER}(spec): the model behind this case's judge fixture (e.g. an LLM-as-judge); its calls "
        "are recorded with role judge and priced as that spec. Default: --evals-judge / ini evals_judge.",
    )
    registry = BackendRegistry()
    config.hook.pytest_evals_register_backends(register=registry.register)

    from_command_line = config.getoption("evals_models")
    texts = from_command_line or config.getini("evals_models") or None
    try:
        specs = parse_specs(texts, registry.prefixes)
    except SpecError as exc:
        message = str(exc)
        if texts and not from_command_line:
            message = message.replace("--model", "ini evals_models:", 1)
        raise pytest.UsageError(message) from None

    db_option = _setting(config, "evals_db", str, None)
    db_path = Path(db_option) if db_option else Path(DEFAULT_DB)
    if not db_path.is_absolute():
        base = Path.cwd() if config.getoption("evals_db") else config.rootpath
        db_path = base / db_path
    batch_size = _setting(config, "evals_batch_size", int, 8)
    timeout = _setting(config, "evals_timeout", float, None)
    if batch_size < 1:
        raise pytest.UsageError(f"--evals-batch-size {batch_size}: must be at least 1")
    concurrency = _setting(config, "evals_concurrency", int, 8)
    if concurrency < 1:
        raise pytest.UsageError(f"--evals-concurrency {concurrency}: must be at least 1")
    if timeout is not None and timeout <= 0:
        raise pytest.UsageError(f"--evals-timeout {timeout}: must be a positive number of seconds")

    max_error_rate = _setting(config, "evals_max_error_rate", float, 0.0)
    alpha = _setting(config, "evals_alpha", float, 0.05)
    margin = _setting(config, "evals_margin", float, 0.0)
    if not 0 <= max_error_rate <= 1:
        raise pytest.UsageError(f"--evals-max-error-rate {max_error_rate}: must be between 0 and 1")
    if not 0 < alpha < 1:
        raise pytest.UsageError(f"--evals-alpha {alpha}: must be between 0 and 1")
    if margin < 0:
        raise pytest.UsageError(f"--evals-margin {margin}: must not be negative")
    gates = Gates(config.getoption("evals_threshold") or [], config.getini("evals_thresholds"),
                  max_error_rate, alpha, margin)

    config.stash[retry_default_key] = policy_from_ini(config.getini("evals_retry")) or NO_RETRY
    prices: list[Price] = []
    config.hook.pytest_evals_prices(register=lambda glob, **kw: prices.append(Price(glob, **kw)))
    prices += [parse_price_line(line) for line in config.getini("evals_prices") if line.strip()]
    config.stash[prices_key] = PriceTable(prices)
    budget = _setting(config, "evals_budget", float, None)
    if budget is not None and budget <= 0:
        raise pytest.UsageError(f"--evals-budget {budget}: must be a positive number of USD")
    if budget is not None and not prices:
        raise pytest.UsageError(f"--evals-budget {budget}: no prices are set, so nothing would count against "
                                "it; add ini evals_prices lines such as 'openai:gpt-4o-mini 0.15 0.60'")

    route_lines = config.getoption("evals_route")
    judge_text = _setting(config, "evals_judge", str, None)
    try:
        routes = Routes.parse(route_lines or config.getini("evals_route"), registry,
                              "--evals-route" if route_lines else "ini evals_route:")
        judge = parse_judge([judge_text], "--evals-judge", registry.prefixes) if judge_text else None
    except RoutingError as exc:
        raise pytest.UsageError(str(exc)) from None
    gpus_per_worker = _setting(config, "evals_gpus_per_worker", int, None)
    if gpus_per_worker is not None and gpus_per_worker < 1:
        raise pytest.UsageError(f"--evals-gpus-per-worker {gpus_per_worker}: must be at least 1")

    evals = EvalsConfig(
        specs=tuple(specs),
        names=dict(zip(specs, spec_ids(specs))),
        explicit_models=bool(texts),
        db_path=db_path,
        settings=BackendSettings(timeout_s=timeout, batch_size=batch_size, concurrency=concurrency),
        routes=routes,
        judge=judge,
        gpus_per_worker=gpus_per_worker,
    )
    config.stash[evals_config_key] = evals
    config.stash[pool_key] = BackendPool(registry, evals.settings)
    from .batching import WINDOW_PER_BATCH, BatchPlugin, Planner, batches_across_cases

    # no backend of the run gains from batches: no plugin, whose hooks would cost every case for nothing
    if batch_size > 1 and any(batches_across_cases(registry, s) for s in [*specs, *routes.table.values()]):
        planner = Planner(window=WINDOW_PER_BATCH * max(batch_size, concurrency))  # whole rounds for HTTP too
        config.stash[planner_key] = planner
        config.pluginmanager.register(BatchPlugin(config, planner), "evals-batching")

    worker_id = config.workerinput["workerid"] if is_worker(config) else None
    resume = bool(config.getoption("evals_resume") or config.getini("evals_resume")) and not config.getoption(
        "evals_fresh")
    session_plugin = None
    if not is_worker(config):
        from .session import SessionPlugin

        session_plugin = SessionPlugin(config, evals, gates, _setting(config, "evals_baseline", str, None), resume,
                                       budget)
        if gpus_per_worker:
            from .gpus import pin, plan

            workers = _xdist_workers(config)
            gpu_plan = plan(gpus_per_worker, workers)
            config.stash[gpu_plan_key] = gpu_plan
            session_plugin.gpu_note = gpu_plan.note
            if workers is None and gpu_plan.groups:
                pin(gpu_plan.for_worker(0) or "")
                config.stash[gpus_key] = gpu_plan.for_worker(0) or ""
        config.pluginmanager.register(session_plugin, "evals-session")
        if config.pluginmanager.hasplugin("xdist"):
            from .session import XdistControllerPlugin

            if budget is not None and getattr(config.option, "maxschedchunk", 0) is None:
                # Few tests queued per worker, so a spent budget stops the run within the cases in flight.
                config.option.maxschedchunk = 1
            config.pluginmanager.register(XdistControllerPlugin(config, session_plugin), "evals-xdist")
    elif "evals_resume" in config.workerinput:
        config.stash[resume_state_key] = ResumeState.from_wire(config.workerinput["evals_resume"])
    config.pluginmanager.register(RecorderPlugin(worker_id), "evals-recorder")


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = config.stash.get(pool_key, None)
    if pool is not None:
        pool.close()


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``model`` once per --model spec; the id carries the model."""
    if "model" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "model" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return  # the user parametrizes it themselves
    evals = metafunc.config.stash[evals_config_key]
    metafunc.parametrize("model", list(evals.specs), ids=[evals.names[s] for s in evals.specs], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Read each eval case's threshold marker (bad use is a usage error); check the implicit default
    model only once we know eval cases will run."""
    evals = config.stash[evals_config_key]
    pool = config.stash[pool_key]
    registry = pool.registry
    seen: dict[object, object] = {}
    for item in items:
        if not _spec_of(item):
            continue
        where = item.nodeid.split("[")[0]
        try:
            mark = item.get_closest_marker(MARKER)
            if mark is not None:
                if id(mark) not in seen:
                    seen[id(mark)] = threshold_from_marker(mark, where)
                item.stash[threshold_key] = seen[id(mark)]
            retry = item.get_closest_marker(RETRY_MARKER)
            if retry is not None:
                if id(retry) not in seen:
                    seen[id(retry)] = policy_from_marker(retry, where)
                item.stash[retry_key] = seen[id(retry)]
            task = item.get_closest_marker(TASK_MARKER)
            if task is not None:
                item.stash[task_key] = parse_task(task.args, task.kwargs, where)
                # the case's model cannot serve the task: its route serves the case, or it is skipped
                served, reason = evals.routes.serve(_spec_of(item), item.stash[task_key], pool.serves)
                if served is None:
                    item.add_marker(pytest.mark.skip(reason=reason))
                else:
                    item.stash[served_key] = served
            judge = item.get_closest_marker(JUDGE_MARKER)
            if judge is not None:
                if id(judge) not in seen:
                    seen[id(judge)] = parse_judge(judge.args, where, registry.prefixes)
                item.stash[judge_key] = seen[id(judge)]
        except RoutingError as exc:
            if not is_worker(config):
                raise pytest.UsageError(str(exc)) from None
            item.stash[marker_problem_key] = str(exc)
        except pytest.UsageError as exc:
            if not is_worker(config):
                raise
            # Under xdist only workers collect: fail each such case at setup with the one line.
            item.stash[marker_problem_key] = str(exc)
    if evals.explicit_models or not any(_spec_of(item) for item in items):
        return
    problem = pool.availability_problem(evals.specs[0])
    if problem is None:
        return
    if not is_worker(config):
        raise pytest.UsageError(problem)
    # Under xdist the controller does not collect; each eval case fails at setup with the one line.


def key_of(item: pytest.Item, spec: ModelSpec) -> str:
    """The case's key, computed once per item (the start-of-resume count and the run share it)."""
    if case_key_key not in item.stash:
        item.stash[case_key_key] = case_key(item, item.config.stash[pool_key].identity(spec))
    return item.stash[case_key_key]


def _spec_of(item: pytest.Item) -> ModelSpec | None:
    callspec = getattr(item, "callspec", None)
    spec = callspec.params.get("model") if callspec is not None else None
    return spec if isinstance(spec, ModelSpec) else None


def _model_name(item: pytest.Item, spec: ModelSpec) -> str:
    return item.config.stash[evals_config_key].names.get(spec, spec.label)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Key every eval case; with --evals-resume, replay a finished one instead of running it."""
    spec = _spec_of(item)
    if spec is None:
        return None
    key = key_of(item, spec)
    state = item.config.stash.get(resume_state_key, None)
    finished = state.finished.get(key) if state is not None else None
    if finished is None:
        return None
    log = CaseLog(model=_model_name(item, spec), threshold=item.stash.get(threshold_key, None),
                  case_key=key, outcome=finished["outcome"], error=finished.get("error"),
                  duration_s=finished.get("duration_s") or 0.0, resumed_from=state.run_id)
    worker = item.config.workerinput["workerid"] if is_worker(item.config) else None
    replay(item, nextitem, finished, state.run_id, log.to_record(item.nodeid, worker))
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    spec = _spec_of(item)
    if spec is not None:
        item.stash[case_log_key] = CaseLog(
            model=_model_name(item, spec),
            threshold=item.stash.get(threshold_key, None),
            case_key=item.stash.get(case_key_key, None),
            gpus=item.config.stash.get(gpus_key, None),
        )
        if marker_problem_key in item.stash:
            pytest.fail(item.stash[marker_problem_key], pytrace=False)


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, Any] | None:
    """An infrastructure fault in a test body shows as ERROR, not as a wrong answer (FAILED);
    a replayed case shows as PASSED/FAILED (resumed)."""
    if report.when == "call" and report.failed and getattr(report, ERROR_ATTR, False):
        return "error", "E", ("ERROR", {"red": True})
    return resumed_status(report)


@pytest.fixture
def model(request: pytest.FixtureRequest) -> Model:
    """The model under evaluation (one per --model spec): generate, chat, loglikelihood, choose."""
    spec = getattr(request, "param", None)
    if not isinstance(spec, ModelSpec):
        pytest.fail("the model fixture is parametrized by pytest-evals; do not request it indirectly "
                    "with your own parameters", pytrace=False)
    served = request.node.stash.get(served_key, spec)  # another spec where --evals-route sends this case
    try:
        backend = request.config.stash[pool_key].get(served)
    except BackendError as exc:  # one line per case, no traceback: the message names the fix
        pytest.fail(str(exc), pytrace=False)
    # (a case traced for batching runs without pytest's setup hooks: its log is a throwaway)
    log = request.node.stash.get(case_log_key, None) or CaseLog(model=_model_name(request.node, spec))
    policy = request.node.stash.get(retry_key, None) or request.config.stash[retry_default_key]
    pool, prices = request.config.stash[pool_key], request.config.stash[prices_key]
    name = log.model if served == spec else served.label
    return Model(backend, log.calls, name, policy, pool.breaker(served, name),
                 _fallback_model(pool, prices, served.fallback, log, policy) if served.fallback else None,
                 prices.find(served.raw, name), log.transcript,
                 planner=request.config.stash.get(planner_key, None) if backend.batches_across_cases else None)


@pytest.fixture
def judge(request: pytest.FixtureRequest) -> Model:
    """A second model for grading answers (LLM-as-judge): the spec of the case's evals_judge marker, else
    --evals-judge / ini evals_judge. Its calls are recorded with role judge and priced as its own spec."""
    spec = request.node.stash.get(judge_key, None) or request.config.stash[evals_config_key].judge
    if spec is None:
        pytest.fail(f"the judge fixture needs a model: mark the test @pytest.mark.{JUDGE_MARKER}('SPEC') "
                    "or pass --evals-judge SPEC (ini evals_judge)", pytrace=False)
    pool, prices = request.config.stash[pool_key], request.config.stash[prices_key]
    try:
        backend = pool.get(spec)
    except BackendError as exc:
        pytest.fail(str(exc), pytrace=False)
    log = request.node.stash.get(case_log_key, None) or CaseLog(model=spec.label)  # a test without `model`
    policy = request.node.stash.get(retry_key, None) or request.config.stash[retry_default_key]
    return Model(backend, log.calls, spec.label, policy, pool.breaker(spec, spec.label), None,
                 prices.find(spec.raw, spec.label), log.transcript, role="judge")


def _fallback_model(pool: BackendPool, prices: PriceTable, spec: ModelSpec, log: CaseLog,
                    policy: RetryPolicy) -> Callable[[], Model]:
    """The fallback's Model, loaded only when the primary fails; its calls are recorded under its name."""
    def build() -> Model:
        return Model(pool.get(spec), log.calls, spec.label, policy, pool.breaker(spec, spec.label),
                     _fallback_model(pool, prices, spec.fallback, log, policy) if spec.fallback else None,
                     prices.find(spec.raw, spec.label), log.transcript)

    return build


@pytest.fixture
def evals_score(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record named metrics for this case: ``evals_score(f1=0.8, rouge_l=0.4)``."""
    log = request.node.stash.get(case_log_key, None)

    def record(**metrics: float) -> None:
        if log is None:
            raise RuntimeError("evals_score records metrics of eval cases: use it in a test that uses `model`")
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"evals_score({name}=...): expected a number, got {value!r}")
            log.scores[name] = float(value)

    return record
