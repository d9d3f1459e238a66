"""The plugin's options and ini keys, read and validated into the run's state.

``pytest_addoption`` declares them; :func:`read` turns the command line and the ini file into one
:class:`~pytest_evals.session.state.RunState` (command line first, then the ini key of the same name, then
the default). Domain modules raise a :class:`~pytest_evals.errors.ConfigError` for bad input;
:func:`usage_error` is the one place that turns it into ``pytest.UsageError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from .._pytest_internals import xdist_workers
from ..backends.base import DEFAULT_BATCH_SIZE, BackendSettings
from ..backends.registry import BackendRegistry
from ..backends.specs import parse_specs, spec_ids
from ..calls.cache import DEFAULT_CACHE, CallCache, parse_mode
from ..calls.ceiling import Ceiling, Ledger, asker
from ..calls.metering import Price, PriceTable, parse_price_line
from ..calls.planner import Planner, window_size
from ..calls.pool import BackendPool
from ..calls.reliability import NO_RETRY, policy_from_ini
from ..calls.routing import Routes, parse_judge
from ..errors import ConfigError
from ..scoring.gates import Gates
from ..store.database import DEFAULT_DB
from .gpus import WORKER_KEY, plan
from .limit import limit_value
from .paths import creatable_problem
from .repeats import repeat_from_option
from .resume import ResumeState
from .shards import parse_shard
from .state import RunState, worker_id

RESUME_WIRE_KEY = "evals_resume"  # workerinput key: the finished cases a worker replays


def resume_args(args: list[str]) -> None:
    """``--evals-resume`` takes an optional run id: a path after it (``pytest --evals-resume suites/``) is
    not one, so it is left to pytest as a path (``args`` is changed in place, before pytest parses it)."""
    for i, arg in enumerate(args[:-1]):
        if arg == "--":
            return
        following = args[i + 1]
        if arg == "--evals-resume" and not (following.isdigit() or following == "latest"):
            args[i] = "--evals-resume=latest"
CEILING_WIRE_KEY = "evals_ceiling"  # workerinput key: the worker's channel to the controller's budget ledger


def usage_error(exc: Exception) -> pytest.UsageError:
    """The one-line usage error for a problem a domain module found (its message names the fix)."""
    return pytest.UsageError(str(exc))


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
        help=f"most requests a local backend runs in one forward pass (default {DEFAULT_BATCH_SIZE}); cases run "
        "in windows of 2 batches (8 cases per --evals-concurrency request for HTTP); 1 runs every call alone. "
        "ini: evals_batch_size",
    )
    group.addoption(
        "--evals-concurrency", dest="evals_concurrency", metavar="N", type=int, default=None,
        help="most requests an HTTP backend has in flight at once on each server, per process (default 8; "
        "halves on HTTP 429 and grows back; openai:NAME@URL1,URL2 has N on each). ini: evals_concurrency",
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
        "--evals-resume", nargs="?", const="latest", dest="evals_resume", metavar="RUN", default=None,
        help="replay the cases a stored run finished (passed or failed) instead of running them again; errored, "
        "skipped and unfinished cases run. RUN is a run id (pytest-evals runs lists them); without it, the "
        "newest run. ini: evals_resume",
    )
    group.addoption(
        "--evals-fresh", action="store_true", dest="evals_fresh", default=False,
        help="run every case again even where --evals-resume (or ini evals_resume) is on",
    )
    group.addoption(
        "--evals-budget", dest="evals_budget", metavar="USD", type=float, default=None,
        help="a ceiling on what the run's model calls cost (prices from ini evals_prices): each call reserves "
             "its worst case (prompt bound and max_tokens) before it is sent; one that would pass the budget "
             "is not sent, its case is skipped and the run stops. ini: evals_budget",
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
    group.addoption(
        "--evals-cache", dest="evals_cache", metavar="MODE", default=None,
        help="the call cache: off (default); use: answer calls from it, store new ones; refresh: call the model "
        "and overwrite; replay: load no model, every call must be cached (a miss is an error). ini: evals_cache",
    )
    group.addoption(
        "--evals-cache-path", dest="evals_cache_path", metavar="PATH", default=None,
        help=f"the call cache's SQLite file (default: {DEFAULT_CACHE} under rootdir). ini: evals_cache_path",
    )
    group.addoption(
        "--evals-markdown", dest="evals_markdown", metavar="PATH", default=None,
        help="write the run's summary (scores, intervals, verdicts, flips) as Markdown to PATH; it is also "
        "appended to $GITHUB_STEP_SUMMARY when that is set. ini: evals_markdown",
    )
    group.addoption(
        "--evals-limit", dest="evals_limit", metavar="N", default=None,
        help="run a deterministic subset of N cases per benchmark (the same for every model); the summary "
        "says N of M. 'all' runs every case, also of tests whose evals_limit marker sets a default subset. "
        "ini: evals_limit",
    )
    group.addoption(
        "--evals-seed", dest="evals_seed", metavar="S", type=int, default=None,
        help="which subset --evals-limit takes, and the order --evals-stop-early runs cases in (default 0). "
        "ini: evals_seed",
    )
    group.addoption(
        "--evals-stop-early", action="store_true", dest="evals_stop_early", default=None,
        help="run each benchmark's cases in a seeded random order and skip the rest once its pass-rate gate is "
        "settled (for certain, or by an exact test that keeps the chance of a verdict the full run would not "
        "give within --evals-alpha); the summary says where each stopped and what that saved. "
        "ini: evals_stop_early",
    )
    group.addoption(
        "--evals-shard", dest="evals_shard", metavar="K/N|auto", default=None,
        help="run the K-th of N disjoint parts of the eval cases (after --evals-limit; sizes within one case per "
        "benchmark), e.g. one part per CI job; 'auto' takes K and N from GitLab CI_NODE_INDEX/CI_NODE_TOTAL or "
        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, 'auto/N' K from a Kubernetes JOB_COMPLETION_INDEX. "
        "pytest-evals merge joins the shards' databases. ini: evals_shard",
    )
    group.addoption(
        "--evals-repeat", dest="evals_repeat", metavar="N", type=int, default=None,
        help="run every eval case N times (N samples, each a test of its own); stores each case's pass rate over "
        "its samples and pass@k; a test's evals_repeat marker wins. ini: evals_repeat",
    )
    group.addoption(
        "--evals-repeat-greedy", action="store_true", dest="evals_repeat_greedy", default=False,
        help="repeated cases may call the model at temperature 0 (by default that is an error: every sample "
        "would be the same answer)",
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
    parser.addini("evals_batch", "trace eval cases so their first model calls are batched across cases "
                  "(true/false; default true); a test's evals_batch marker wins", type="bool", default=True)
    parser.addini("evals_thresholds", "benchmark gates, one 'GLOB MIN [METRIC=MIN ...]' per line",
                  type="linelist", default=[])
    parser.addini("evals_max_error_rate", "default --evals-max-error-rate", default="")
    parser.addini("evals_baseline", "default --evals-baseline", default="")
    parser.addini("evals_alpha", "default --evals-alpha", default="")
    parser.addini("evals_margin", "default --evals-margin", default="")
    parser.addini("evals_db", "default --evals-db path (relative to rootdir)", default="")
    parser.addini("evals_repeat", "default --evals-repeat", default="")
    parser.addini("evals_limit", "default --evals-limit", default="")
    parser.addini("evals_markdown", "default --evals-markdown path (relative to rootdir)", default="")
    parser.addini("evals_seed", "default --evals-seed", default="")
    parser.addini("evals_stop_early", "stop benchmarks early by default (true/false)", type="bool", default=False)
    parser.addini("evals_shard", "default --evals-shard: K/N, auto or auto/N", default="")
    parser.addini("evals_cache", "default --evals-cache mode: off, use, refresh or replay", default="")
    parser.addini("evals_cache_path", "default --evals-cache-path (relative to rootdir)", default="")
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
        raise ConfigError(f"ini {option} = {raw!r}: not a valid value") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _path(config: pytest.Config, option: str, default: str) -> Path:
    """A file option: relative to the current directory on the command line, to rootdir in the ini file."""
    text = _setting(config, option, str, None)
    path = Path(text) if text else Path(default)
    if not path.is_absolute():
        path = (Path.cwd() if config.getoption(option) else config.rootpath) / path
    return path


def gpus_per_worker(config: pytest.Config) -> int | None:
    """--evals-gpus-per-worker (or its ini key); None when not set."""
    try:
        value = _setting(config, "evals_gpus_per_worker", int, None)
    except ConfigError as exc:
        raise usage_error(exc) from None
    if value is not None and value < 1:
        raise usage_error(ConfigError(f"--evals-gpus-per-worker {value}: must be at least 1"))
    return value


def read(config: pytest.Config) -> RunState:
    """The run's state from the options and ini keys; bad input is a usage error naming the fix."""
    try:
        return _read(config)
    except ConfigError as exc:
        raise usage_error(exc) from None


def _read(config: pytest.Config) -> RunState:
    registry = BackendRegistry()
    config.hook.pytest_evals_register_backends(register=registry.register)

    from_command_line = config.getoption("evals_models")
    texts = from_command_line or config.getini("evals_models") or None
    try:
        specs = parse_specs(texts, registry)
    except ConfigError as exc:
        if texts and not from_command_line:
            raise ConfigError(str(exc).replace("--model", "ini evals_models:", 1)) from None
        raise

    db_path = _path(config, "evals_db", DEFAULT_DB)
    cache_mode = _setting(config, "evals_cache", str, "off")
    cache_mode = parse_mode(cache_mode, "--evals-cache" if config.getoption("evals_cache") else "ini evals_cache =")
    batch_size = _setting(config, "evals_batch_size", int, DEFAULT_BATCH_SIZE)
    _require(batch_size >= 1, f"--evals-batch-size {batch_size}: must be at least 1")
    concurrency = _setting(config, "evals_concurrency", int, 8)
    _require(concurrency >= 1, f"--evals-concurrency {concurrency}: must be at least 1")
    timeout = _setting(config, "evals_timeout", float, None)
    _require(timeout is None or timeout > 0, f"--evals-timeout {timeout}: must be a positive number of seconds")

    max_error_rate = _setting(config, "evals_max_error_rate", float, 0.0)
    alpha = _setting(config, "evals_alpha", float, 0.05)
    margin = _setting(config, "evals_margin", float, 0.0)
    _require(0 <= max_error_rate <= 1, f"--evals-max-error-rate {max_error_rate}: must be between 0 and 1")
    _require(0 < alpha < 1, f"--evals-alpha {alpha}: must be between 0 and 1")
    _require(margin >= 0, f"--evals-margin {margin}: must not be negative")
    gates = Gates(config.getoption("evals_threshold") or [], config.getini("evals_thresholds"),
                  max_error_rate, alpha, margin)

    retry = policy_from_ini(config.getini("evals_retry")) or NO_RETRY
    prices: list[Price] = []
    config.hook.pytest_evals_prices(register=lambda glob, **kw: prices.append(Price(glob, **kw)))
    prices += [parse_price_line(line) for line in config.getini("evals_prices") if line.strip()]
    budget = _setting(config, "evals_budget", float, None)
    _require(budget is None or budget > 0, f"--evals-budget {budget}: must be a positive number of USD")
    _require(budget is None or bool(prices), f"--evals-budget {budget}: no prices are set, so nothing would "
             "count against it; add ini evals_prices lines such as 'openai:gpt-4o-mini 0.15 0.60'")

    route_lines = config.getoption("evals_route")
    routes = Routes.parse(route_lines or config.getini("evals_route"), registry,
                          "--evals-route" if route_lines else "ini evals_route:")
    judge_text = _setting(config, "evals_judge", str, None)
    judge = parse_judge([judge_text], "--evals-judge", registry) if judge_text else None
    per_worker = gpus_per_worker(config)
    try:
        limit = _setting(config, "evals_limit", limit_value, None)
        limit = limit_value(limit) if isinstance(limit, str) else limit  # the command line's text
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    shard_text = _setting(config, "evals_shard", str, None)
    shard = parse_shard(shard_text, os.environ, "--evals-shard" if config.getoption("evals_shard") else
                        "ini evals_shard =") if shard_text else None

    markdown = _path(config, "evals_markdown", "") if _setting(config, "evals_markdown", str, None) else None
    if markdown is not None:
        _require(not markdown.is_dir(), f"--evals-markdown {markdown}: is a folder; pass a file path such as "
                 "evals-summary.md")
        problem = creatable_problem(markdown, "cannot write the Markdown summary", "pass another --evals-markdown PATH")
        _require(problem is None, f"--evals-markdown {problem}")

    settings = BackendSettings(timeout_s=timeout, batch_size=batch_size, concurrency=concurrency)
    pool = BackendPool(registry, settings, replay=cache_mode == "replay")
    state = RunState(
        specs=tuple(specs), names=dict(zip(specs, spec_ids(specs))), explicit_models=bool(texts), db_path=db_path,
        settings=settings, routes=routes, judge=judge, gates=gates,
        baseline=_setting(config, "evals_baseline", str, None),
        resume=bool(config.getoption("evals_resume") or config.getini("evals_resume"))
        and not config.getoption("evals_fresh"),
        resume_run=config.getoption("evals_resume") or "latest",
        budget=budget, batch_across_cases=bool(config.getini("evals_batch")), pool=pool, prices=PriceTable(prices), retry=retry,
        worker_id=worker_id(config),
        limit=limit, limit_given=config.getoption("evals_limit") is not None,
        seed=_setting(config, "evals_seed", int, 0),
        stop_early=bool(config.getoption("evals_stop_early") or config.getini("evals_stop_early")),
        repeat=repeat_from_option(_setting(config, "evals_repeat", int, None),
                                  bool(config.getoption("evals_repeat_greedy"))),
        markdown=markdown, shard=shard,
        cache=None if cache_mode == "off" else CallCache(_path(config, "evals_cache_path", DEFAULT_CACHE), cache_mode),
    )
    # no backend of the run gains from batches: no planner, whose plugin would cost every case for nothing
    batching = [s for s in [*specs, *routes.table.values()] if pool.batches_across_cases(s)]
    if batch_size > 1 and batching:
        local = any(not pool.submits(s) for s in batching)
        remote = any(pool.submits(s) for s in batching)
        # --evals-concurrency is per server: a spec naming several keeps that many times more in flight
        in_flight = concurrency * max(len(s.urls) or 1 for s in batching) if remote else None
        # a budget and --evals-stop-early stop within one batch's worth of cases
        narrow = budget is not None or state.stop_early
        state.planner = Planner(window=window_size(batch_size if local else None, in_flight, narrow),
                              # -x/--maxfail and a budget stop the run when a case is reported; reports wait for
                              # earlier cases, so a sliding window would go on starting cases past the stop
                              sliding=remote and not local and not narrow and not getattr(config.option, "maxfail", 0))
    if budget is not None:  # the controller's ledger grants every process's reservations
        state.ceiling = (Ceiling(ask=asker(config.workerinput[CEILING_WIRE_KEY]))  # type: ignore[attr-defined]
                         if state.is_worker else Ceiling(Ledger(budget)))
    if state.is_worker:
        workerinput = config.workerinput  # type: ignore[attr-defined]
        state.gpus = workerinput.get(WORKER_KEY) or None
        if RESUME_WIRE_KEY in workerinput:
            state.resume_state = ResumeState.from_wire(workerinput[RESUME_WIRE_KEY])
    elif per_worker:
        workers = xdist_workers(config)
        state.gpu_plan = plan(per_worker, workers)
        if workers is None and state.gpu_plan.groups:
            state.gpus = state.gpu_plan.for_worker(0)  # without xdist this process uses the first group
    return state
