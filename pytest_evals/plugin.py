"""pytest11 entry point: wiring only. No module imports this one. (The folders are drawn in
``docs/architecture.md``.)

- ``session.options``: the options and ini keys, read into the run's state (``session.state.RunState``).
- ``session.cases.CasePlugin``: the item hooks of eval cases (markers, keys, replay, setup, status, records).
- ``batching.windows.WindowPlugin``: windows of cases run together, their model calls batched across
  cases, where a backend of the run gains from it.
- on the one process that owns the database: ``session.controller.Controller`` (the store, budget, gates
  and exit status), ``session.progress.ProgressPlugin`` (status lines), ``session.terminal.TerminalPlugin``
  (header and summary) and, under xdist, ``session.xdist.XdistControllerPlugin``.
- ``session.sharding.ShardPlugin``: with ``--evals-shard``, this shard's part of the eval cases.
- ``session.interruption.SignalPlugin``: SIGTERM as Ctrl-C, and signals held back while the run finishes.
- here: parametrization by model, and the ``model``, ``judge`` and ``evals_score`` fixtures.
"""

from __future__ import annotations

from typing import Callable

import pytest

from .backends.base import BackendError
from .backends.specs import ModelSpec
from .batching.windows import WindowPlugin
from .calls.model import Model
from .calls.routing import JUDGE_MARKER
from .calls.sampling import Sample
from .errors import ConfigError
from .session import hookspecs, options
from .session.case_model import build_model, judge_spec
from .session.cases import CasePlugin, add_marker_lines
from .session.gpus import pin, plan
from .session.interruption import SignalPlugin
from .session.options import pytest_addoption  # noqa: F401 - a hook: the options live in their own module
from .session.repeats import MARKER as REPEAT_MARKER
from .session.repeats import SAMPLE_PARAM, repeat_from_marker
from .session.sharding import ShardPlugin
from .session.state import RunState, case_log_key, state_key, state_of


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    options.resume_args(args)  # `--evals-resume PATH`: the path stays a path


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # first-result: xdist's own answer must not come first
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` with --evals-gpus-per-worker: one worker per group of GPUs, even over xdist's
    PYTEST_XDIST_AUTO_NUM_WORKERS (xdist's default without groups). xdist asks in its
    pytest_cmdline_main, before pytest_configure: the GPUs are counted here, on the controller."""
    per_worker = options.gpus_per_worker(config)
    return (len(plan(per_worker, None).groups) or None) if per_worker else None


@pytest.hookimpl(tryfirst=True)  # before any plugin can initialise CUDA, this process is pinned to its GPUs
def pytest_configure(config: pytest.Config) -> None:
    add_marker_lines(config)
    state = config.stash[state_key] = options.read(config)
    if state.gpus:
        pin(state.gpus)
    manager = config.pluginmanager
    manager.register(CasePlugin(config, state), "evals-cases")
    if state.planner is not None:
        manager.register(WindowPlugin(config, state, state.planner), "evals-windows")
    if state.shard is not None:
        manager.register(ShardPlugin(config, state, state.shard), "evals-shard")
    if not state.is_worker:
        _register_controller(config, state)  # only the controller owns the store
    manager.register(SignalPlugin(state.signals), "evals-signals")  # last: its finish encloses the others'


def _register_controller(config: pytest.Config, state: RunState) -> None:
    """The controller, its status lines, the terminal, and the xdist hooks where xdist is loaded (in this
    order: the terminal's finish encloses the controller's)."""
    from .session.controller import Controller
    from .session.progress import ProgressPlugin
    from .session.terminal import TerminalPlugin

    manager = config.pluginmanager
    controller = Controller(config, state)
    manager.register(controller, "evals-controller")
    manager.register(ProgressPlugin(controller.progress), "evals-progress")
    manager.register(TerminalPlugin(config, state, controller), "evals-terminal")
    if state.stop_early:
        from .session.stop_early import StopEarlyPlugin, usage_problem

        problem = usage_problem(config, state)
        if problem:
            raise pytest.UsageError(problem)
        manager.register(StopEarlyPlugin(config, state, controller), "evals-stop-early")
    if manager.hasplugin("xdist"):
        from .session.xdist import XdistControllerPlugin

        manager.register(XdistControllerPlugin(config, state, controller), "evals-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is not None:
        state.pool.close()
        if state.cache is not None:
            state.cache.close()


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``model`` once per --model spec; the id carries the model."""
    if "model" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", "")
        if "model" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return  # the user parametrizes it themselves
    state = state_of(metafunc.config)
    metafunc.parametrize("model", list(state.specs), ids=[state.names[s] for s in state.specs], indirect=True)
    mark = metafunc.definition.get_closest_marker(REPEAT_MARKER)
    try:
        repeat = repeat_from_marker(mark, metafunc.definition.nodeid) if mark is not None else state.repeat
    except ConfigError as exc:  # reported as this file's collection error: the one line, no traceback
        raise pytest.Collector.CollectError(str(exc)) from None
    if repeat is not None and repeat.count > 1:  # each sample a test of its own; the id names it last
        samples = [Sample(i, repeat.count, repeat.greedy, repeat.from_option) for i in range(repeat.count)]
        if SAMPLE_PARAM not in metafunc.fixturenames:
            metafunc.fixturenames.append(SAMPLE_PARAM)
        metafunc.parametrize(SAMPLE_PARAM, samples, ids=[s.id for s in samples], indirect=True)


@pytest.fixture
def evals_sample(request: pytest.FixtureRequest) -> Sample:
    """Which sample of its case this test is (``index`` from 0, of ``count``); 0 of 1 when not repeated."""
    param = getattr(request, "param", None)
    return param if isinstance(param, Sample) else Sample(0, 1)


@pytest.fixture
def model(request: pytest.FixtureRequest) -> Model:
    """The model under evaluation (one per --model spec): generate, chat, loglikelihood, choose."""
    if not isinstance(getattr(request, "param", None), ModelSpec):
        pytest.fail("the model fixture is parametrized by pytest-evals; do not request it indirectly "
                    "with your own parameters", pytrace=False)
    try:
        return build_model(request.node)
    except BackendError as exc:  # one line per case, no traceback: the message names the fix
        problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside the except: pytest would print the reason twice, chained


@pytest.fixture
def judge(request: pytest.FixtureRequest) -> Model:
    """A second model for grading answers (LLM-as-judge): the spec of the case's evals_judge marker, else
    --evals-judge / ini evals_judge. Its calls are recorded with role judge and priced as its own spec."""
    if judge_spec(request.node) is None:
        pytest.fail(f"the judge fixture needs a model: mark the test @pytest.mark.{JUDGE_MARKER}('SPEC') "
                    "or pass --evals-judge SPEC (ini evals_judge)", pytrace=False)
    try:
        return build_model(request.node, role="judge")
    except BackendError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


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
