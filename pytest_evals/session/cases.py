"""The item hooks of eval cases, in every process that runs tests: markers, case keys, replay, setup,
status and the record on the report.

- At collection, each case's markers (``evals_threshold``, ``evals_retry``, ``evals_task``,
  ``evals_judge``) are parsed into its stash; a case whose model cannot serve its task goes to its
  route or is skipped with the reason.
- Before a case runs it gets its key; with ``--evals-resume`` a finished case is replayed: its reports
  are rebuilt from the stored outcome and fired through the usual hooks, so the terminal, ``--lf``,
  JUnit, the gates and the exit status count it as an uninterrupted run would.
- While it runs, a :class:`~pytest_evals.recorder.CaseLog` gathers its calls; its teardown report
  carries the record to the process that owns the database.
"""

from __future__ import annotations

import difflib
import gc
from typing import Any

import pytest

from .._pytest_internals import teardown_until
from ..backends.base import BackendError
from ..calls.ceiling import REFUSED_STOP, BudgetRefused
from ..calls.reliability import MARKER as RETRY_MARKER
from ..calls.reliability import policy_from_marker
from ..calls.routing import JUDGE_MARKER, TASK_MARKER, TASKS, parse_judge, parse_task
from ..calls.sampling import GreedyOnce
from ..errors import ConfigError, DataError
from ..scoring.gates import MARKER as THRESHOLD_MARKER
from ..scoring.gates import threshold_from_marker
from .limit import MARKER as LIMIT_MARKER
from .limit import choose, limit_from_marker
from .options import usage_error
from .recorder import CaseLog, benchmark_of
from .repeats import MARKER as REPEAT_MARKER
from .repeats import case_of
from .state import (
    CASE_ATTR,
    ERROR_ATTR,
    RECORD_ATTR,
    RESUMED_ATTR,
    WRONG,
    WRONG_ATTR,
    RunState,
    batch_key,
    case_key_of,
    case_log_key,
    judge_key,
    limit_key,
    marker_problem_key,
    model_name,
    retry_key,
    sample_of,
    served_key,
    spec_of,
    task_key,
    threshold_key,
)

BATCH_MARKER = "evals_batch"
MARKERS = (
    f"{THRESHOLD_MARKER}(min_pass_rate=None, **metric_minimums): the benchmark's gate: the session exits 0 "
    "while its pass rate and the means of named metrics (evals_score) reach these minimums, even if single "
    "cases fail. Without one, every case must pass.",
    f"{RETRY_MARKER}(attempts=3, wait_s=1.0, max_wait_s=60, on=('rate_limit', 'timeout', 'server', "
    "'connection')): retry this case's model calls on transient faults, with exponential backoff and "
    "jitter up to max_wait_s; a server's Retry-After is honoured. ini evals_retry sets the default.",
    f"{TASK_MARKER}(task): what the case needs: {', '.join(TASKS)}. A case whose model cannot serve it "
    "goes to the spec --evals-route TASK=SPEC names, or is skipped with the reason.",
    f"{JUDGE_MARKER}(spec): the model behind this case's judge fixture (e.g. an LLM-as-judge); its calls "
    "are recorded with role judge and priced as that spec. Default: --evals-judge / ini evals_judge.",
    f"{REPEAT_MARKER}(count, greedy=False): run each case of this test count times, each sample a test of its "
    "own; the case's pass rate over its samples, pass@k and whether its samples disagree are stored. A call at "
    "temperature 0 is an error unless greedy=True. Default: --evals-repeat / ini evals_repeat.",
    f"{LIMIT_MARKER}(n): run a seeded subset of n cases of this test by default (a long suite's quick "
    "look); the summary says so. --evals-limit N on the command line sets it for every test; --evals-limit all "
    "runs every case.",
    f"{BATCH_MARKER}(enabled=True): False keeps this test's cases out of batching across cases: each body runs "
    "once and its model calls go one at a time. Default: ini evals_batch.",
)



KNOWN_MARKERS = tuple(line.split("(", 1)[0] for line in MARKERS)
PREFIX = "evals_"


def unknown_marker(item: pytest.Item, known: tuple[str, ...] = KNOWN_MARKERS) -> str | None:
    """The line for an ``evals_*`` marker the plugin does not know (a misspelt one would otherwise be only a
    pytest warning, and the gate it meant silently the default)."""
    for mark in item.iter_markers():
        if mark.name.startswith(PREFIX) and mark.name not in known:
            close = difflib.get_close_matches(mark.name, known, n=1)
            hint = f"did you mean @pytest.mark.{close[0]}?" if close else f"the markers are {', '.join(known)}"
            return f"{item.nodeid.split('[')[0]}: unknown marker @pytest.mark.{mark.name}; {hint}"
    return None


def parse_batch(mark: pytest.Mark, where: str) -> bool:
    """``evals_batch(False)`` / ``evals_batch(enabled=True)``."""
    values = list(mark.args) + ([mark.kwargs["enabled"]] if "enabled" in mark.kwargs else [])
    if len(values) != 1 or set(mark.kwargs) - {"enabled"} or not isinstance(values[0], bool):
        raise ConfigError(f"{where}: @pytest.mark.{BATCH_MARKER} takes True or False, e.g. "
                          f"@pytest.mark.{BATCH_MARKER}(False)")
    return values[0]


def add_marker_lines(config: pytest.Config) -> None:
    """Register the markers (``--strict-markers``) with the lines ``pytest --markers`` shows."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)


class CasePlugin:
    """The hooks every eval case passes through, wherever it runs."""

    def __init__(self, config: pytest.Config, state: RunState) -> None:
        self.config = config
        self.state = state
        self.marker_limits: dict[str, int] = {}  # benchmark -> its evals_limit marker's N
        self.frozen = False  # the collected items are out of the garbage collector's sight (gc.freeze)
        config.add_cleanup(self._thaw)  # (added before pytest's own cleanups: run after them)

    # --- collection ---------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector):
        """A data file that cannot be read as cases fails its module's collection with the one line that
        names the file, the line and the fix, not a traceback through the loader (``--tb`` styles and
        ``--full-trace`` keep the traceback)."""
        report = yield
        line = data_error_line(report) if self.config.getoption("tbstyle", "auto") == "auto" else None
        if line is not None and not self.config.getoption("fulltrace", False):
            report.longrepr = line
        return report

    # --- markers ------------------------------------------------------------------------
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Read each eval case's markers (bad use is a usage error); check the implicit default model
        only once we know eval cases will run."""
        parsed: dict[int, object] = {}  # one mark object is shared by a function's cases: parsed once
        for item in items:
            spec = spec_of(item)
            try:
                problem = unknown_marker(item)
                if problem:
                    raise ConfigError(problem)
                if spec is None:
                    continue
                self._read_markers(item, spec, parsed)
            except ConfigError as exc:
                if not self.state.is_worker:
                    raise usage_error(exc) from None
                # Under xdist only workers collect: fail each such case at setup with the one line.
                item.stash[marker_problem_key] = str(exc)
        if self.state.limit is not None or self.marker_limits:
            self._limit(items)
        if self.state.explicit_models or not any(spec_of(item) for item in items):
            return
        problem = self.state.pool.availability_problem(self.state.specs[0])
        if problem is not None and not self.state.is_worker:
            raise pytest.UsageError(problem)
        # Under xdist the controller does not collect; each eval case fails at setup with the one line.

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """The collected items live to the session's end: frozen (``gc.freeze``), the garbage collector's
        full passes do not walk them, pytest's five at exit (``unraisableexception``) included: on 10,000
        cases a resume took 5.2 CPU s instead of 5.8, a run 9.0 instead of 9.6 (``benchmarks/scale.py``). They
        are given back to the collector after pytest's cleanups (:meth:`_thaw`), so a session run inside
        another process (pytester) keeps nothing from it. A process that froze objects itself is left as it is."""
        if not self.frozen and not gc.get_freeze_count() and any(spec_of(item) is not None for item in session.items):
            gc.freeze()
            self.frozen = True

    def _thaw(self) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = False

    def _limit(self, items: list[pytest.Item]) -> None:
        """--evals-limit, or a test's evals_limit marker: keep N cases per benchmark; each kept case carries
        its benchmark's size (and whether its marker chose it)."""
        state, markers = self.state, self.marker_limits

        def limit_of(benchmark: str) -> int | None:
            if benchmark in markers and not state.limit_given:
                return markers[benchmark]
            return state.limit

        kept, dropped, totals = choose(items, limit_of, state.seed, lambda i: spec_of(i) is not None)
        if dropped:
            self.config.hook.pytest_deselected(items=dropped)
            items[:] = kept
        for item in kept:
            benchmark = benchmark_of(item.nodeid)
            if spec_of(item) is not None and benchmark in totals:
                by_marker = int(benchmark in markers and not state.limit_given)
                item.stash[limit_key] = (*totals[benchmark], by_marker)

    def _read_markers(self, item: pytest.Item, spec: Any, parsed: dict[int, object]) -> None:
        where = item.nodeid.split("[")[0]

        def once(mark: pytest.Mark, parse: Any) -> Any:
            if id(mark) not in parsed:
                parsed[id(mark)] = parse(mark)
            return parsed[id(mark)]

        mark = item.get_closest_marker(THRESHOLD_MARKER)
        if mark is not None:
            item.stash[threshold_key] = once(mark, lambda m: threshold_from_marker(m, where))
        mark = item.get_closest_marker(RETRY_MARKER)
        if mark is not None:
            item.stash[retry_key] = once(mark, lambda m: policy_from_marker(m, where))
        mark = item.get_closest_marker(TASK_MARKER)
        if mark is not None:
            task = item.stash[task_key] = parse_task(mark.args, mark.kwargs, where)
            # the case's model cannot serve the task: its route serves the case, or it is skipped
            served, reason = self.state.routes.route(spec, task, self.state.pool.serves)
            if served is None:
                item.add_marker(pytest.mark.skip(reason=reason))
            else:
                item.stash[served_key] = served
        mark = item.get_closest_marker(JUDGE_MARKER)
        if mark is not None:
            item.stash[judge_key] = once(mark, lambda m: parse_judge(m.args, where, self.state.pool.registry))
        mark = item.get_closest_marker(BATCH_MARKER)
        if mark is not None:
            item.stash[batch_key] = once(mark, lambda m: parse_batch(m, where))
        mark = item.get_closest_marker(LIMIT_MARKER)
        if mark is not None:
            self.marker_limits[benchmark_of(item.nodeid)] = once(mark, lambda m: limit_from_marker(m, where))

    # --- running: key, replay, setup ------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """Key every eval case; with --evals-resume, replay a finished one instead of running it."""
        spec = spec_of(item)
        if spec is None:
            return None
        key = case_key_of(item, spec)
        resume = self.state.resume_state
        finished = resume.finished.get(key) if resume is not None else None
        if finished is None:
            return None
        log = CaseLog(model=model_name(item, spec), threshold=item.stash.get(threshold_key, None),
                      case_key=key, outcome=finished["outcome"], error=finished.get("error"),
                      duration_s=finished.get("duration_s") or 0.0, resumed_from=finished.get("run", resume.run_id),
                      **_sample(item))
        replay(item, nextitem, finished, log.resumed_from, log.to_record(item.nodeid, self.state.worker_id))
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        spec = spec_of(item)
        if spec is not None:
            item.stash[case_log_key] = CaseLog(
                model=model_name(item, spec),
                threshold=item.stash.get(threshold_key, None),
                case_key=case_key_of(item, spec),  # (a window sets up cases before their own protocol)
                gpus=self.state.gpus,
                limited=item.stash.get(limit_key, None),
                **_sample(item),
            )
        if marker_problem_key in item.stash:
            pytest.fail(item.stash[marker_problem_key], pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        """A call the budget refused was never sent: its case is skipped, not failed (a later run with
        --evals-resume runs it), and this process starts no more cases (``session.shouldstop``; under
        xdist the worker's stop reaches the controller, which also stops as soon as it sees a refusal)."""
        try:
            return (yield)
        except BudgetRefused as refused:
            if spec_of(item) is None:
                raise
            if not item.session.shouldstop:
                item.session.shouldstop = f"evals budget: {REFUSED_STOP}"
            raise pytest.skip.Exception(str(refused), _use_item_location=True) from None
        except GreedyOnce as once:  # a later sample of a greedy case under --evals-repeat: the case ran once
            log = item.stash.get(case_log_key, None)
            if log is not None:
                log.greedy_once = True
            raise pytest.skip.Exception(str(once), _use_item_location=True) from None

    # --- reports ------------------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]):
        """Follow each eval case's phases; its teardown report carries its record."""
        report = yield
        log = item.stash.get(case_log_key, None)
        if log is not None:
            setattr(report, CASE_ATTR, True)
            log.note_phase(report, call)
            if report.when == "call" and log.outcome == "error":
                setattr(report, ERROR_ATTR, True)
                _shorten_backend_error(item, call, report)
                if log.usage_error is not None and _default_traceback(item):
                    report.longrepr = log.usage_error  # a usage error (greedy samples): its one line, each case
            elif report.when == "call" and report.failed and log.outcome == "failed" and call.excinfo is not None:
                setattr(report, WRONG_ATTR, one_line(call.excinfo.value))
            if report.when == "teardown":
                setattr(report, RECORD_ATTR, log.to_record(item.nodeid, self.state.worker_id))
                del item.stash[case_log_key]  # the record has it all; a long run keeps no per-case logs
                # JUnit XML writes the teardown report's properties on the test case
                report.user_properties.append(("evals.outcome", log.outcome))
                report.user_properties.extend((f"evals.score.{k}", v) for k, v in log.scores.items())
        return report

    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, Any] | None:
        """An infrastructure fault in a test body shows as ERROR; a wrong answer as WRONG (``w``), a
        category of its own in pytest's counts: it is a score, and the gates decide the exit status
        (the report stays ``failed``, so ``--lf``, ``-x`` and JUnit treat it as pytest does). A replayed
        case says (resumed)."""
        if report.when != "call":
            return None
        if report.failed and getattr(report, ERROR_ATTR, False):
            return "error", "E", ("ERROR", {"red": True})
        resumed = " (resumed)" if getattr(report, RESUMED_ATTR, None) is not None else ""
        if report.failed and getattr(report, WRONG_ATTR, None) is not None:
            return WRONG, "w", (f"WRONG{resumed}", {"yellow": True})
        if not resumed:
            return None
        if report.passed:
            return "passed", ".", "PASSED (resumed)"
        return "failed", "F", "FAILED (resumed)"


def data_error_line(report: pytest.CollectReport) -> str | None:
    """The message of the DataError a failed collection raised, or None (another failure, or none)."""
    crash = getattr(report.longrepr, "reprcrash", None) if report.failed else None
    message = getattr(crash, "message", None) or ""
    prefix = f"{DataError.__module__}.{DataError.__qualname__}: "
    return message[len(prefix):] if message.startswith(prefix) else None


def _sample(item: pytest.Item) -> dict[str, Any]:
    """A repeated case's sample and the nodeid of its case, for its log."""
    sample = sample_of(item)
    if sample is None:
        return {}
    return {"sample": sample, "repeat_of": case_of(item.nodeid, sample.index, sample.count)}


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
        if failed:
            setattr(report, WRONG_ATTR, (error or "failed").splitlines()[0].removeprefix("AssertionError: "))
        if when == "teardown":
            report.user_properties.append(("evals.outcome", outcome))
            report.user_properties.append(("evals.resumed_from_run", run_id))
            setattr(report, RECORD_ATTR, record)
        ihook.pytest_runtest_logreport(report=report)
    # Tear down what the previous item left set up, as the skipped teardown phase would have.
    teardown_until(item, nextitem)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def one_line(exc: BaseException) -> str:
    """A wrong answer's message: the assertion's own message (``assert x, "expected 16, got 12"``), else
    the first line pytest's assertion rewriting wrote (``assert '12' == '16'``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else f"{type(exc).__name__} (no message)"


def _shorten_backend_error(item: pytest.Item, call: pytest.CallInfo[Any], report: pytest.TestReport) -> None:
    """A backend fault shows as the test's line and the one-line reason, not the client's internals.

    Only with the default ``--tb=auto``; any explicit ``--tb`` style shows everything.
    """
    excinfo = call.excinfo
    if excinfo is None or not excinfo.errisinstance(BackendError):
        return
    if not _default_traceback(item):
        return
    in_test_file = excinfo.traceback.filter(lambda entry: str(entry.path) == str(item.path))
    if len(in_test_file):
        excinfo.traceback = in_test_file
    report.longrepr = excinfo.getrepr(style="short", chain=False)


def _default_traceback(item: pytest.Item) -> bool:
    """pytest's default ``--tb=auto`` (an explicit style, or ``--full-trace``, shows everything)."""
    return item.config.getoption("tbstyle", "auto") == "auto" and not item.config.getoption("fulltrace", False)
