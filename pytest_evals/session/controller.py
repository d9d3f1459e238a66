"""The run, on the one process that owns the database (xdist controller or lone pytest process).

At start-up it checks what the user named (specs, routes, judge), the call cache and the database,
loads the baseline and, with ``--evals-resume``, the stored run to replay. As each case's report
arrives it records the case (one transaction), adds its cost against the budget and its outcome to
the gates. At the end it decides the gates and the exit status and closes the run's row: ``finished``
only when every collected test ended, else ``interrupted``. What the terminal shows of all this is
``session.terminal``; the xdist hooks are ``session.xdist``.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from .._pytest_internals import planned_workers, stop_xdist
from ..errors import ConfigError
from ..report.markdown import RunFacts
from ..report.usage import Usage
from ..scoring.gates import Verdict, exit_status
from ..scoring.stats import BenchmarkScores, Threshold, scores_of
from ..scoring.verdict_rows import benchmark_rows, repeated_rows
from ..store.rows import CaseRecord
from .budget import Spending
from .interruption import Completion
from .options import usage_error
from .progress import Progress
from .recorder import record_from_data
from .replay import ReplaySource
from .state import CASE_ATTR, RECORD_ATTR, RunState, case_key_of, spec_of
from .storage import RunStorage
from .verdicts import add_junit_properties, write_markdown


class Controller:
    def __init__(self, config: pytest.Config, state: RunState) -> None:
        self.config = config
        self.state = state
        self.gates = state.gates
        self.storage = RunStorage(config, state.db_path, state.shard.label if state.shard else None)
        self.spending = Spending(state.budget, state.ceiling.ledger if state.ceiling is not None else None)
        self.usage = Usage()
        self.replay = ReplaySource(config) if state.resume else None
        self.baseline: dict[tuple[str, str], BenchmarkScores] | None = None
        self.baseline_id: int | None = None
        self.baseline_note: str | None = None  # where --evals-baseline latest passed over unfinished runs
        self.verdicts: list[Verdict] = []
        self.other_failures = 0  # failed tests that are not eval cases keep pytest's meaning
        self.progress = Progress(config)
        state.pool.announce = self.progress.say  # a long model load says so as it starts (this process's loads)
        # cases of a window end together: the time left is estimated once each process's first window ended
        self.progress.warmup = (state.planner.window if state.planner is not None else 1) * (planned_workers(config) or 1)
        self.session: pytest.Session | None = None
        self.completion = Completion()  # which collected tests reported their end
        self.incomplete_reason: str | None = None  # why tests did not run, once the run ends without them
        self.limited: dict[str, tuple[int, int, int]] = {}  # --evals-limit: benchmark -> (kept, in all, by marker)
        self.stopped_early: dict = {}  # --evals-stop-early: (benchmark, model) -> where it stopped (stop_early.Stop)
        self.greedy_once: dict[tuple[str, str], set[str]] = {}  # (benchmark, model) -> cases that ran once
        self.markdown_notes: list[str] = []  # --evals-markdown: what was written, or why not
        self.eval_collected = False  # eval cases were collected here (without xdist): a run exists even if none ends

    @property
    def run_id(self) -> int | None:
        return self.storage.run_id

    @property
    def models(self) -> list[str]:
        return [s.raw for s in self.state.specs]

    # --- start-up ---------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session
        pool = self.state.pool
        named = [*((s, "--model") for s in (self.state.specs if self.state.explicit_models else ())),
                 *((s, f"--evals-route {task}=") for task, s in self.state.routes.table.items()),
                 *([(self.state.judge, "--evals-judge")] if self.state.judge else [])]
        for spec, option in named:  # what the user named must be servable; the implicit default is checked lazily
            problem = pool.availability_problem(spec)
            if problem:  # the backends name --model; say the option that named the spec
                gap = "" if option.endswith("=") else " "
                raise pytest.UsageError(problem.replace(f"--model {spec.raw}", f"{option}{gap}{spec.raw}", 1))
        if self.state.cache is not None:
            try:
                self.state.cache.open()  # a missing file to replay, or an unusable one, is reported now
            except ConfigError as exc:
                raise usage_error(exc) from None
        self.storage.check()  # an unusable existing file is reported now, before any case runs
        if self.state.baseline:
            self._load_baseline(self.state.baseline)
        if self.replay is not None:
            self.state.resume_state = self.replay.load(self.state.db_path, self.storage.open, self.state.resume_run)
            self.storage.resumed_run = self.replay.run_id

    def _load_baseline(self, ref: str) -> None:
        path = self.state.db_path
        if not path.exists():
            raise pytest.UsageError(f"--evals-baseline {ref}: there is no database at {path} yet; "
                                    "run once without --evals-baseline, or pass the right --evals-db")
        store = self.storage.open()
        try:
            self.baseline_id = store.resolve_run(ref)
        except LookupError as exc:
            raise pytest.UsageError(f"--evals-baseline {ref}: {exc}") from None
        note = store.skipped_by_latest(ref, self.baseline_id)
        if note:
            self.baseline_note = f"evals-baseline: {note}"
        self.baseline = scores_of(store.cases(self.baseline_id))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Without xdist: what will run, and how much a resumed run will replay (from the real case keys)."""
        if session.config.option.collectonly:
            return  # `pytest --co`: nothing runs, so no run is stored and none is incomplete
        self.progress.total = len(session.items)
        self.completion.add_collected(item.nodeid for item in session.items)
        self.eval_collected = any(spec_of(item) is not None for item in session.items)
        self.progress.show = self.eval_collected  # (status lines from the first model load on)
        self.progress.watch()
        resume = self.state.resume_state
        if resume is None or self.replay is None or not session.items:
            return
        cases = [(item, spec) for item in session.items if (spec := spec_of(item)) is not None]
        self.replay.say(sum(case_key_of(item, spec) in resume.finished for item, spec in cases), len(cases))

    def node_collected(self, ids: list[str]) -> None:
        """Under xdist: what a worker collected. (xdist does not run under --co.)"""
        self.progress.total = max(self.progress.total, len(ids))
        # an eval case's id ends with its model's (a worker's first model load may take a while: lines then)
        ends = tuple(f"{sep}{name}]" for name in self.state.names.values() for sep in "[-")
        self.progress.show = self.progress.show or any(i.endswith(ends) for i in ids)
        self.progress.watch()
        self.completion.add_collected(ids)
        if self.replay is not None:
            self.replay.say_for_nodeids(ids)

    # --- cases --------------------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fires for local reports and, under xdist, for every worker's report: a case's teardown report
        carries its record, written here, one transaction per case."""
        if report.failed and not getattr(report, CASE_ATTR, False):
            self.other_failures += 1
        data = getattr(report, RECORD_ATTR, None) if report.when == "teardown" else None
        if not data:
            self.completion.note(report)
        else:
            record, marker = record_from_data(data)
            if self.replay is not None and self.replay.stands_for(record.case):
                self._replayed(record, marker)  # counted as ended once its copy is committed
            else:
                self.copy_replayed()  # the run's cases stay in the order they ended
                with self.state.signals.deferred():  # committed and counted as ended, or neither
                    if self.record(record, marker):
                        self.completion.note(report)
            # written: the terminal keeps every report to the end, so it keeps no copy of the record
            delattr(report, RECORD_ATTR)
        if report.when == "teardown":
            self.progress.finished(show=bool(self.gates.scores))  # only sessions with eval cases

    def record(self, record: CaseRecord, marker: Threshold | None) -> bool:
        """Count a case in the usage, budget and gates, and commit it; whether it was committed."""
        case = record.case
        self.usage.add(case.model, record.calls)
        if case.resumed_from is None and case.cost_usd is not None:  # a replayed case cost nothing now
            self._spend(case.cost_usd)
        self._count(record, marker)
        if self.storage.write_error:
            return False
        # If the database fails mid-run (disk full, a lock held too long), stop the session with one
        # line; every case recorded before stays committed.
        self.storage.write_case(record, self.models)
        if self.storage.write_error and self.session is not None:
            self.session.shouldfail = f"evals: cannot record cases: {self.storage.write_error}"
        return not self.storage.write_error

    def _count(self, record: CaseRecord, marker: Threshold | None) -> None:
        """A case in the gates (and what --evals-limit and --evals-repeat say of it)."""
        case = record.case
        if record.limited is not None:
            self.limited[case.benchmark] = record.limited
        if record.greedy_once:
            self.greedy_once.setdefault((case.benchmark, case.model), set()).add(case.repeat_of or case.nodeid)
        self._stop(self.spending.refusals(self.progress.done))  # a call refused (any worker's): no more cases
        self.gates.add(case.benchmark, case.model, case.nodeid, case.outcome, case.scores, marker, case.repeat_of,
                       None if case.sample is None else case.sample - 1, case.samples, record.usage_error)

    def _replayed(self, record: CaseRecord, marker: Threshold | None) -> None:
        """A replayed case: in the gates now with its stored scores, copied with its batch (``session.replay``)."""
        assert self.replay is not None
        record.case.scores = self.replay.stored_scores(record.case)
        # in the gates before it is queued: a signal in between leaves a case in the gates that is not
        # counted as ended (its benchmark is INCOMPLETE), never one counted as ended that the gates lack
        self._count(record, marker)
        if self.replay.queue(record.case):
            self.copy_replayed()

    def copy_replayed(self) -> None:
        """Copy the queued replayed cases into this run, count them as ended, their stored calls in the usage."""
        if self.replay is None or not self.replay.pending:
            return
        copied = self.replay.copy(self.storage, self.models, self.state.signals, self.completion.ended.add)
        if self.storage.write_error and self.session is not None:
            self.session.shouldfail = f"evals: cannot record cases: {self.storage.write_error}"
        for model, calls in copied:
            self.usage.add(model, calls)

    def _spend(self, cost: float) -> None:
        """The controller adds up what every worker reports and stops the session at the budget."""
        self._stop(self.spending.add(cost, self.progress.done))
        self.progress.spent = self.spending.spent

    def _stop(self, stop: str | None) -> None:
        if stop is not None:
            if self.session is not None:
                self.session.shouldstop = stop
            stop_xdist(self.config, stop)

    def spent_text(self) -> str:
        return self.spending.text(self.usage.cost_unknown)

    # --- end ----------------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> object:
        """Decide the gates and store the run before pytest's terminal summary and JUnit file are written."""
        self.progress.stop()
        self.copy_replayed()
        if session.exitstatus == pytest.ExitCode.USAGE_ERROR and self.run_id is None:
            return (yield)  # a usage error (a bad marker, option or spec) before any case: no run, no resume advice
        missing = self.completion.missing
        # a shard stores its run even with no eval case of its own (more shards than cases): merge needs each one's
        shard = (self.state.shard is not None and self.state.shard.suite is not None
                 and not session.config.option.collectonly)
        if (missing and self.eval_collected or shard) and self.run_id is None and not self.storage.write_error:
            try:  # interrupted before its first case was recorded: the run is still stored, as interrupted
                self.storage.ensure_run(self.models)
            except (pytest.UsageError, sqlite3.Error):
                pass
        if missing and self.run_id is not None:
            self.incomplete_reason = self._why_incomplete(session)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.INTERRUPTED  # nothing else says the run is not whole
        if self.gates.scores or (shard and self.run_id is not None):
            self._decide(session, self.completion.incomplete_benchmarks() if self.incomplete_reason else set())
        status = "interrupted" if self.incomplete_reason is not None else "finished"
        self.storage.finish(int(session.exitstatus), status, len(self.completion.collected) or None, len(missing))
        if self.storage.finish_error and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the record does not say what happened
        if self.verdicts and not self.state.is_worker:
            facts = RunFacts(run_id=self.run_id, exit_status=int(session.exitstatus), baseline_id=self.baseline_id,
                             incomplete=self.incomplete_reason,
                             cost=self.spent_text() if self.usage.cost_unknown or self.spending.spent else None)
            self.markdown_notes = write_markdown(self.state.markdown, self.verdicts, self.gates, facts)
        return (yield)

    def _why_incomplete(self, session: pytest.Session) -> str:
        if self.spending.stopped_at is not None:
            return "the budget was spent"
        for stop in (session.shouldfail, session.shouldstop):
            if isinstance(stop, str) and stop:
                return "interrupted" if "keyboard-interrupt" in stop else stop  # xdist: a worker's Ctrl-C
        if self.completion.crashed and session.exitstatus != pytest.ExitCode.INTERRUPTED:
            return f"a worker crashed in {len(self.completion.crashed)} test(s)"
        return "interrupted"

    def _decide(self, session: pytest.Session, incomplete: set[str]) -> None:
        self.verdicts = self.gates.verdicts(self.baseline, incomplete)
        # stored before the exit status is decided: a write that fails here fails the run too
        # with what decided them, so `pytest-evals gate` and `merge` decide them again from the stored cases
        shard = self.state.shard
        facts = {"gates": json.dumps(self.gates.settings(self.baseline_id)),
                 **({"suite": json.dumps(shard.suite)} if shard is not None and shard.suite else {})}
        self.storage.write_benchmarks(benchmark_rows(self.verdicts), repeated_rows(self.gates), facts)
        # A run cut short by -x/--maxfail keeps pytest's status: its gates saw only part of the cases. A shard
        # that got no test is a part of a run, not a run of no tests.
        decided = [pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED]
        if shard is not None:
            decided.append(pytest.ExitCode.NO_TESTS_COLLECTED)
        if session.exitstatus in decided and not session.shouldfail:
            session.exitstatus = exit_status(self.verdicts, self.other_failures, bool(self.storage.write_error))
        add_junit_properties(self.config, self.verdicts)

    def pytest_unconfigure(self) -> None:
        self.storage.close(interrupted=bool(self.state.signals.held))  # a signal while the run was finishing
