"""The run, on the one process that owns the database (xdist controller or lone pytest process).

It validates explicit ``--model`` specs and the baseline at start-up, opens the store, writes each
case as its report arrives, decides the gates and the exit status, ends the run row, and prints the
summary table. A session without eval cases never creates the database file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from . import __version__, markdown
from .context import CASE_ATTR, RECORD_ATTR, WRONG, WRONG_ATTR, RunContext, case_key_of, spec_of
from .errors import ConfigError
from .gates import Gates, Verdict
from .gpus import WORKER_KEY, worker_index
from .interruption import Completion, resume_command
from .metering import Usage
from .options import RESUME_WIRE_KEY, usage_error
from .progress import Progress
from .recorder import record_from_data
from .report import HEADER, format_table, reason_lines, verdict_rows
from .resume import ResumeState
from .routing import TASKS
from .scoring import BenchmarkScores, Threshold, scores_of
from .specs import ModelSpec
from .store import CallRow, CaseRecord, CaseRow, Store, StoreError, ToolCallRow, TurnRow, now


def git_revision(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def redact(arg: str) -> str:
    """Drop credentials from any URL in a command-line argument before it is stored."""
    return _URL_CREDENTIALS.sub(r"\1", arg)


def _process_alive(pid: int) -> bool:
    """Whether a process of this host with ``pid`` exists (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _check_creatable(path: "os.PathLike[str]") -> str | None:
    """Why a database could not be created at ``path``, or None. Leaves nothing behind."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    fix = "pass a writable --evals-db PATH"
    if not os.path.isdir(parent):
        return f"{path}: cannot create the database: {parent} is a file, not a folder; {fix}"
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        why = {
            errno.EACCES: f"no permission to create files in {parent}",
            errno.EPERM: f"no permission to create files in {parent}",
            errno.EROFS: f"{parent} is on a read-only file system",
            errno.ENOSPC: f"no space left on the device of {parent}",
            # the folder exists, yet creating a file in it says it does not: /proc, /sys and the like
            errno.ENOENT: f"{parent} does not take new files (a virtual file system such as /proc or /sys)",
        }.get(exc.errno or 0, f"{parent}: {exc.strerror or exc}")
        return f"{path}: cannot create the database: {why}; {fix}"
    return None


class SessionPlugin:
    def __init__(self, config: pytest.Config, run: RunContext) -> None:
        self.config = config
        self.run = run
        self.budget = run.budget
        self.spent = 0.0
        self.budget_stopped_at: int | None = None  # tests done when the budget stopped the run
        self.usage = Usage()
        self.resume = run.resume
        self.resume_cache: dict[str, tuple[dict, dict[str, list[dict]]]] = {}  # key -> stored case and its rows
        self.resume_run: int | None = None
        self.resumed = 0
        self.gates = run.gates
        self.baseline_ref = run.baseline
        self.baseline: dict[tuple[str, str], BenchmarkScores] | None = None
        self.baseline_id: int | None = None
        self.verdicts: list[Verdict] = []
        self.other_failures = 0  # failed tests that are not eval cases keep pytest's meaning
        self.store: Store | None = None
        self.run_id: int | None = None
        self.resume_note: str | None = None
        self.baseline_note: str | None = None  # where --evals-baseline latest passed over unfinished runs
        self._resume_said = False  # the start-of-resume line is printed once
        self.started_at = now()
        self.progress = Progress(config)
        # cases of a window end together: the time left is estimated once each process's first window ended
        workers = getattr(config.option, "numprocesses", None)
        self.progress.warmup = (run.planner.window if run.planner is not None else 1) * (
            workers if isinstance(workers, int) and workers > 0 else 1)
        self.session: pytest.Session | None = None
        self.write_error: str | None = None
        self.cases_stored = False  # the failed write came after every case was committed
        self.batched_calls = 0  # model calls served from a batch across cases
        self.model_calls = 0
        self.completion = Completion()  # which collected tests reported their end
        self.incomplete_reason: str | None = None  # why tests did not run, once the run ends without them
        self.limited: dict[str, tuple[int, int]] = {}  # --evals-limit: benchmark -> (cases kept, in all)
        self.markdown_notes: list[str] = []  # --evals-markdown: what was written, or why not
        self.eval_collected = False  # eval cases were collected here (without xdist): a run exists even if none ends

    # --- start-up ---------------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session
        pool = self.run.pool
        named = [*(self.run.specs if self.run.explicit_models else ()), *self.run.routes.table.values(),
                 *([self.run.judge] if self.run.judge else [])]
        for spec in named:  # what the user named must be servable; the implicit default is checked lazily
            problem = pool.availability_problem(spec)
            if problem:
                raise pytest.UsageError(problem)
        if self.run.cache is not None:
            try:
                self.run.cache.open()  # a missing file to replay, or an unusable one, is reported now
            except ConfigError as exc:
                raise usage_error(exc) from None
        path = self.run.db_path
        if path.exists():
            self._open()  # an unusable existing file is reported now, before any case runs
        else:
            problem = _check_creatable(path)
            if problem:
                raise pytest.UsageError(problem)
        if self.baseline_ref:
            self._load_baseline()
        if self.resume:
            self._load_resume()

    def _load_resume(self) -> None:
        """Read the newest run's finished cases once; this process replays them from the run's state,
        workers from their workerinput."""
        if not self.run.db_path.exists():
            self.resume_note = f"evals-resume: nothing to resume, {self.run.db_path} does not exist yet"
            return
        store = self._open()
        run_id = store.latest_run_id(finished_only=False)
        if run_id is None:
            self.resume_note = f"evals-resume: nothing to resume, {self.run.db_path} holds no run"
            return
        self.resume_cache = store.finished_cases(run_id)
        self.resume_run = run_id
        finished = {key: {"outcome": row["outcome"], "error": row["error"], "duration_s": row["duration_s"]}
                    for key, (row, _) in self.resume_cache.items()}
        self.run.resume_state = ResumeState(run_id, finished)

    def _load_baseline(self) -> None:
        path, ref = self.run.db_path, self.baseline_ref
        if not path.exists():
            raise pytest.UsageError(f"--evals-baseline {ref}: there is no database at {path} yet; "
                                    "run once without --evals-baseline, or pass the right --evals-db")
        store = self._open()
        try:
            self.baseline_id = store.resolve_run(ref)
        except LookupError as exc:
            raise pytest.UsageError(f"--evals-baseline {ref}: {exc}") from None
        note = store.skipped_by_latest(ref, self.baseline_id)
        if note:
            self.baseline_note = f"evals-baseline: {note}"
        self.baseline = scores_of(store.cases(self.baseline_id))

    def _open(self) -> Store:
        if self.store is None:
            try:
                self.store = Store(self.run.db_path)
                self.store.settle_dead_runs(socket.gethostname(), _process_alive)
            except StoreError as exc:
                raise usage_error(exc) from None
            except sqlite3.Error as exc:
                raise usage_error(self.store.error(exc) if self.store else exc) from None
        return self.store

    def _run_id(self) -> int:
        """The id of this run's row, written when the first case is recorded."""
        if self.run_id is None:
            store = self._open()
            self.run_id = store.start_run(
                args=[redact(a) for a in self.config.invocation_params.args],
                rootdir=str(self.config.rootpath),
                git_revision=git_revision(str(self.config.rootpath)),
                models=[s.raw for s in self.run.specs],
                hostname=socket.gethostname(),
                plugin_version=__version__,
                started_at=self.started_at,
                pid=os.getpid(),
            )
        return self.run_id

    # --- cases --------------------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fires for local reports and, under xdist, for every worker's report: a case's teardown report
        carries its record, written here, one transaction per case."""
        if report.failed and not getattr(report, CASE_ATTR, False):
            self.other_failures += 1
        self.completion.note(report)
        if report.when == "teardown":
            data = getattr(report, RECORD_ATTR, None)
            if data:
                self.record(*record_from_data(data))
                # written: the terminal keeps every report to the end, so it keeps no copy of the record
                delattr(report, RECORD_ATTR)
            self.progress.finished(show=bool(self.gates.scores))  # only sessions with eval cases

    def pytest_runtest_logstart(self) -> None:
        self.progress.started()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self):
        return (yield from self.progress.phase())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self):
        return (yield from self.progress.phase())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self):
        return (yield from self.progress.phase())

    @pytest.hookimpl(trylast=True)  # after pytest wrote the test's result
    def pytest_runtest_logfinish(self) -> None:
        self.progress.due()

    def record(self, record: CaseRecord, marker: Threshold | None) -> None:
        if record.case.resumed_from is not None and record.case.case_key in self.resume_cache:
            record = self._replayed(record.case)
        case = record.case
        if record.limited is not None:
            self.limited[case.benchmark] = record.limited
        self.usage.add(case.model, record.calls)
        self.batched_calls += sum(1 for c in record.calls if c.batched)
        self.model_calls += sum(1 for c in record.calls if c.role == "model" and not c.cached)  # the cache's: no call
        if case.resumed_from is None and case.cost_usd is not None:  # a replayed case cost nothing now
            self._spend(case.cost_usd)
        self.gates.add(case.benchmark, case.model, case.nodeid, case.outcome, case.scores, marker, case.repeat_of,
                       None if case.sample is None else case.sample - 1, case.samples, record.usage_error)
        if self.write_error:
            return
        # If the database fails mid-run (disk full, a lock held too long), stop the session with one
        # line; every case recorded before stays committed.
        try:
            self._open().record_case(self._run_id(), record)
        except (StoreError, pytest.UsageError) as exc:
            self.write_error = str(exc)
        except sqlite3.Error as exc:
            self.write_error = str(self._open().error(exc))
        if self.write_error and self.session is not None:
            self.session.shouldfail = f"evals: cannot record cases: {self.write_error}"

    def _spend(self, cost: float) -> None:
        """The controller adds up what every worker reports and stops the session at the budget."""
        self.spent += cost
        self.progress.spent = self.spent
        if self.budget is not None and self.spent >= self.budget and self.budget_stopped_at is None:
            self.budget_stopped_at = self.progress.done + 1
            message = (f"evals budget of ${self.budget:g} spent (${self.spent:.4f}); "
                       "cases in flight finish, the rest are not run")
            if self.session is not None:
                self.session.shouldstop = message
            dsession = self.config.pluginmanager.getplugin("dsession")  # xdist's loop reads its own flag
            if dsession is not None:
                dsession.shouldstop = message

    def _replayed(self, case: CaseRow) -> CaseRecord:
        """The stored case and its rows a replayed case stands for, copied into this run."""
        self.resumed += 1
        row, rows = self.resume_cache[case.case_key]
        fields = {k: row[k] for k in CaseRow.__dataclass_fields__ if k in row}
        fields.update(nodeid=case.nodeid, benchmark=case.benchmark, model=case.model, worker=case.worker,
                      resumed_from=row["resumed_from"] or case.resumed_from, case_key=case.case_key)
        fields["scores"] = json.loads(row["scores"]) if row["scores"] else None
        return CaseRecord(CaseRow(**fields), *(
            [kind(**{k: r[k] for k in kind.__dataclass_fields__}) for r in rows[table]]
            for table, kind in (("calls", CallRow), ("turns", TurnRow), ("tool_calls", ToolCallRow))))

    # --- end ----------------------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> object:
        """Decide the gates and store the run before pytest's terminal summary and JUnit file are
        written; after them, an incomplete run's last lines say what did not run and how to resume."""
        self.progress.stop()
        missing = self.completion.missing
        if missing and self.run_id is None and self.eval_collected and not self.write_error:
            try:  # interrupted before its first case was recorded: the run is still stored, as interrupted
                self._run_id()
            except (pytest.UsageError, sqlite3.Error):
                pass
        if missing and self.run_id is not None:
            self.incomplete_reason = self._why_incomplete(session)
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.INTERRUPTED  # nothing else says the run is not whole
        if self.gates.scores:
            self._decide(session, self.completion.incomplete_benchmarks() if self.incomplete_reason else set())
        self._finish_run(session.exitstatus)
        if self.verdicts and not self.run.is_worker:
            self._write_markdown(int(session.exitstatus))
        try:
            return (yield)
        finally:
            self._say_incomplete(len(missing))

    def _write_markdown(self, exitstatus: int) -> None:
        """The Markdown summary for CI pages (--evals-markdown, $GITHUB_STEP_SUMMARY)."""
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY") or None
        if self.run.markdown is None and step_summary is None:
            return
        outcomes: dict[str, int] = {}
        for scores in self.gates.scores.values():
            for outcome in ("passed", "failed", "error", "skipped"):
                if scores.count(outcome):
                    outcomes[outcome] = outcomes.get(outcome, 0) + scores.count(outcome)
        facts = markdown.RunFacts(run_id=self.run_id, exit_status=exitstatus, outcomes=outcomes,
                                  baseline_id=self.baseline_id, incomplete=self.incomplete_reason,
                                  cost=self._spent_text() if self.usage.cost_unknown or self.spent else None)
        text = markdown.render(self.verdicts, facts)
        self.markdown_notes = markdown.write(text, str(self.run.markdown) if self.run.markdown else None,
                                             step_summary)
        if self.run.markdown is not None and not any("--evals-markdown" in n for n in self.markdown_notes):
            self.markdown_notes.append(f"evals-markdown: wrote {self.run.markdown}")

    def _spent_text(self) -> str:
        """Never $0 for costs nobody knows: "at least", or "an unknown amount"."""
        if self.usage.cost_unknown:
            return "an unknown amount" if not self.spent else f"at least ${self.spent:.4f}"
        return f"${self.spent:.4f}"

    def _why_incomplete(self, session: pytest.Session) -> str:
        if self.budget_stopped_at is not None:
            return "the budget was spent"
        for stop in (session.shouldfail, session.shouldstop):
            if isinstance(stop, str) and stop:
                return "interrupted" if "keyboard-interrupt" in stop else stop  # xdist: a worker's Ctrl-C
        if self.completion.crashed and session.exitstatus != pytest.ExitCode.INTERRUPTED:
            return f"a worker crashed in {len(self.completion.crashed)} test(s)"
        return "interrupted"

    def _say_incomplete(self, missing: int) -> None:
        """The last lines of an incomplete run (after pytest's own summary): what did not run, and how
        to run it."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or self.incomplete_reason is None:
            return
        total = len(self.completion.collected)
        reporter.write_line(f"evals: run {self.run_id} is incomplete ({self.incomplete_reason}): {missing} of "
                            f"{total} tests did not run; what ran is stored", red=True)
        args = [redact(a) for a in self.config.invocation_params.args]
        reporter.write_line(f"evals: resume with: {resume_command(args)}")

    def _decide(self, session: pytest.Session, incomplete: set[str]) -> None:
        self.verdicts = self.gates.verdicts(self.baseline, incomplete)
        # stored before the exit status is decided: a write that fails here fails the run too
        if self.store is not None and self.run_id is not None and not self.write_error:
            try:
                self.store.record_benchmarks(self.run_id, benchmark_rows(self.verdicts), repeated_rows(self.gates))
            except sqlite3.Error as exc:
                self.write_error = str(self.store.error(exc))
                self.cases_stored = True  # every case was committed; only the run's scores were not
        # A run cut short by -x/--maxfail keeps pytest's status: its gates saw only part of the cases.
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not session.shouldfail:
            if any(v.usage_errors for v in self.verdicts):
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
            elif self.other_failures or self.write_error or not all(v.holds for v in self.verdicts):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            else:
                session.exitstatus = pytest.ExitCode.OK
        self._junit_properties()

    def _junit_properties(self) -> None:
        from _pytest.junitxml import xml_key  # the stash key junitxml itself uses

        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        for v in self.verdicts:
            prefix = f"evals.{v.benchmark}[{v.model}]"
            xml.add_global_property(f"{prefix}.verdict", v.label)
            for metric, estimate in v.estimates.items():
                if estimate.value is not None:
                    xml.add_global_property(f"{prefix}.{metric}", f"{estimate.value:.6g}")
                    xml.add_global_property(f"{prefix}.{metric}.interval95",
                                            f"{estimate.low:.6g} {estimate.high:.6g}")

    def _finish_run(self, exitstatus: int) -> None:
        """The run's row: ``finished`` only when every collected test ended; else ``interrupted``."""
        if self.store is not None and self.run_id is not None:
            status = "interrupted" if self.incomplete_reason is not None else "finished"
            try:
                self.store.finish_run(self.run_id, exit_status=int(exitstatus), status=status,
                                      tests=len(self.completion.collected) or None,
                                      tests_not_run=len(self.completion.missing))
            except sqlite3.Error:
                pass  # already reported by record(); the cases written so far are committed

    def pytest_unconfigure(self) -> None:
        if self.store is not None:
            if self.run.signals.held and self.run_id is not None:  # a signal while the run was finishing
                try:
                    self.store.set_exit_status(self.run_id, int(pytest.ExitCode.INTERRUPTED))
                except sqlite3.Error:
                    pass
            self.store.close()

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        pool = self.run.pool
        # With routes, what a spec serves may be probed (one small request to a server); without, the
        # header shows what its backend declares and sends nothing.
        serves = pool.serves if self.run.routes.table else (lambda s: pool.registry.resolve(s.backend).capabilities)

        def described(spec: ModelSpec) -> str:
            try:
                tasks = sorted(serves(spec) & {*TASKS, "streaming"})
            except Exception:  # an unregistered prefix is reported at start-up, not here
                return spec.raw
            return f"{spec.raw} ({', '.join(tasks)})"

        models = ", ".join(described(s) for s in self.run.specs)
        lines = [f"evals: models {models}; database {self.run.db_path}"]
        if self.run.cache is not None:
            lines.append(f"evals: call cache {self.run.cache.path} ({self.run.cache.mode}"
                         + ("; no model is loaded)" if self.run.cache.mode == "replay" else ")"))
        if self.run.routes.table:
            lines.append("evals: routes " + "; ".join(
                f"{task} -> {described(spec)}" for task, spec in self.run.routes.table.items()))
        if self.run.judge:
            lines.append(f"evals: judge {described(self.run.judge)}")
        if self.run.gpu_plan is not None:
            lines.append(self.run.gpu_plan.note)
        if self.resume_note:
            lines.append(self.resume_note)
        if self.baseline_note:
            lines.append(self.baseline_note)
        return lines

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Without xdist: say how much a resumed run will replay, from the real case keys."""
        if session.config.option.collectonly:
            return  # `pytest --co`: nothing runs, so no run is stored and none is incomplete
        self.progress.total = len(session.items)
        self.completion.add_collected(item.nodeid for item in session.items)
        self.eval_collected = any(spec_of(item) is not None for item in session.items)
        state = self.run.resume_state
        if state is None or not session.items:
            return
        cases = [(item, spec) for item in session.items if (spec := spec_of(item)) is not None]
        done = sum(case_key_of(item, spec) in state.finished for item, spec in cases)
        self._say_resume(done, len(cases))

    def node_collected(self, ids: list[str]) -> None:
        """Under xdist: the workers compute the keys; here finished nodeids give the count. (xdist does not
        run under --co.)"""
        self.progress.total = max(self.progress.total, len(ids))
        self.completion.add_collected(ids)
        if self.resume_run is None or self._resume_said:
            return
        nodeids = {row["nodeid"] for row, _ in self.resume_cache.values()}
        self._say_resume(sum(i in nodeids for i in ids), len(ids))

    def _say_resume(self, done: int, total: int) -> None:
        self._resume_said = True
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"evals-resume: {done} of {total} cases already done in run {self.resume_run} "
                                "(use --evals-fresh to start over)")

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter):
        """After pytest's own sections and short summary: the wrong answers, one line each, then the evals
        summary and the gate verdicts, so the last lines before pytest's counts are the verdicts."""
        result = yield
        if self.verdicts:
            wrong_answers(terminalreporter)
            self._summary(terminalreporter)
        return result

    def _summary(self, tr: pytest.TerminalReporter) -> None:
        tr.write_sep("=", "evals summary")
        if self.usage.models:
            for line in format_table(Usage.HEADER, self.usage.rows(), name_columns=1):
                tr.write_line(line)
            for note in (self.usage.note(), self.usage.cost_note()):
                if note:
                    tr.write_line(note)
        for line in self.usage.cut_notes():
            tr.write_line(line, yellow=True)
        if self.run.cache is not None:
            path = self.run.cache.path
            shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
            line = self.usage.cache_line(shown, self.run.cache.mode, bool(self.run.prices.prices))
            tr.write_line(line, yellow=self.usage.cache_misses > 0)
        if self.model_calls and self.run.settings.batch_size > 1:
            tr.write_line(f"evals-batch: {self.batched_calls} of {self.model_calls} model calls served from batches "
                          f"across cases; {self.model_calls - self.batched_calls} one at a time")
        # never $0 for costs nobody knows: "at least", and how many calls the figure leaves out or estimates
        spent = self._spent_text()
        basis = "".join(f"; {n} calls {what}" for n, what in (
            (self.usage.cost_bases.get("estimated", 0), "priced from estimated prompt tokens"),
            (self.usage.cost_unknown, "of priced models with no cost (their token counts are unknown)")) if n)
        if self.budget_stopped_at is not None:
            not_run = max(self.progress.total - self.progress.done, 0)
            tr.write_line(f"evals-budget: the budget of ${self.budget:g} stopped the run: {spent} spent on "
                          f"{self.progress.done} tests; {not_run} tests not run (budget spent){basis}", red=True)
        elif self.budget is not None:
            tr.write_line(f"evals-budget: {spent} of ${self.budget:g} spent{basis}")
        if self.resumed:
            tr.write_line(f"evals-resume: {self.resumed} cases replayed from run {self.resume_run}, not run again")
        if self.baseline_id is not None:
            tr.write_line(f"baseline: run {self.baseline_id} (paired by case; alpha {self.gates.alpha:g}, "
                          f"margin {self.gates.margin:g})")
            if self.baseline_note:
                tr.write_line(self.baseline_note)
        for line in repeat_lines(self.gates):
            tr.write_line(line, yellow="flaky" in line)
        if self.limited:
            parts = [f"{benchmark} {kept} of {total}" for benchmark, (kept, total) in sorted(self.limited.items())]
            tr.write_line(f"evals-limit: a subset of cases (seed {self.run.seed}), cases run of cases in all: "
                          + "; ".join(parts), yellow=True)
        tr.write_line("")
        for line in format_table(HEADER, verdict_rows(self.verdicts)):
            tr.write_line(line)
        for line in reason_lines(self.verdicts):
            tr.write_line(line, red=line.startswith("FAIL"))
        wrong = sum(s.count("failed") for s in self.gates.scores.values())
        if (all(v.holds for v in self.verdicts) and not self.other_failures and not self.write_error
                and self.session is not None and self.session.exitstatus == pytest.ExitCode.OK):
            note = (f"; exit status 0: {'the' if wrong != 1 else 'its'} {wrong} wrong answer{'s' * (wrong != 1)} "
                    f"count{'s' * (wrong == 1)} in the scores, not as test failures" if wrong else "")
            tr.write_line(f"evals: all {len(self.verdicts)} gates hold{note}", green=True)
        if self.write_error:
            what = ("every case is stored, the run's scores and verdicts are not" if self.cases_stored
                    else "the cases after the first failed write are not stored")
            tr.write_line(f"evals: {what}: {self.write_error}", red=True)
        for note in self.markdown_notes:
            tr.write_line(note, yellow="cannot" in note)
        if self.run_id is not None:
            tr.write_line(f"run {self.run_id} stored in {self.run.db_path}")


def wrong_answers(tr: pytest.TerminalReporter) -> None:
    """Eval cases that failed their assertion: one line each (``nodeid: message``), or, where the user
    chose a ``--tb`` style (or ``--full-trace``), each one's traceback in that style."""
    reports = [r for r in tr.stats.get(WRONG, ()) if getattr(r, "when", None) == "call"]
    if not reports:
        return
    style = tr.config.getoption("tbstyle", "auto")
    tr.write_sep("=", f"wrong answers ({len(reports)}; scores, not test failures)")
    if style not in ("auto", "no", "line") or tr.config.getoption("fulltrace", False):
        for report in reports:
            tr.write_sep("_", report.head_line or report.nodeid)
            report.toterminal(tr._tw)
        return
    for report in reports:
        tr.write_line(f"{report.nodeid}: {getattr(report, WRONG_ATTR, '')}")


def repeated_rows(gates: Gates) -> list[dict]:
    """One row per repeated case: its samples taken together."""
    rows = []
    for (benchmark, model), scores in gates.scores.items():
        for nodeid, samples in scores.repeated.items():
            rows.append({"benchmark": benchmark, "model": model, "nodeid": nodeid, "samples": samples.count,
                         "scored": samples.scored, "passed": samples.passed, "errors": samples.errors,
                         "pass_rate": samples.pass_rate(),
                         "pass_at_k": json.dumps({str(k): v for k, v in samples.pass_at().items()}),
                         "flaky": int(samples.flaky)})
    return rows


def repeat_lines(gates: Gates) -> list[str]:
    """How many cases ran as samples, and which of them are flaky (their samples disagree)."""
    lines = []
    for (benchmark, model), scores in gates.scores.items():
        if not scores.repeated:
            continue
        counts = sorted({s.count for s in scores.repeated.values()})
        flaky = scores.flaky
        cases = len(scores.repeated)
        line = (f"evals-repeat: {benchmark} [{model}]: {cases} case{'s' * (cases != 1)} x {'/'.join(map(str, counts))} "
                f"samples; scores are means over cases, with intervals over cases")
        if flaky:
            shown = ", ".join(n.rsplit("::", 1)[-1] for n in flaky[:5]) + (f" and {len(flaky) - 5} more"
                                                                           if len(flaky) > 5 else "")
            line += f"; {len(flaky)} flaky (their samples disagree): {shown}"
        lines.append(line)
    return lines


def benchmark_rows(verdicts: list[Verdict]) -> list[dict]:
    rows = []
    for v in verdicts:
        minimums = dict(v.threshold.minimums)
        for position, (metric, estimate) in enumerate(v.estimates.items()):
            rows.append({
                "benchmark": v.benchmark, "model": v.model, "metric": metric, "n": estimate.n,
                "errors": v.errors, "value": estimate.value, "low": estimate.low, "high": estimate.high,
                "minimum": minimums.get(metric), "threshold_source": v.threshold.source,
                "verdict": v.row_label(metric, position == 0) or None,  # this row's own check
                "reason": "; ".join((*v.usage_errors, *v.reasons)) or None,
            })
    return rows


class XdistControllerPlugin:
    """The xdist hooks of the controller (registered only where xdist is loaded): hands every worker
    the finished cases of a resumed run and its GPUs, and learns how many tests the workers collected."""

    def __init__(self, config: pytest.Config, run: RunContext, session: SessionPlugin) -> None:
        self.config = config
        self.run = run
        self.session = session
        if run.budget is not None and getattr(config.option, "maxschedchunk", 0) is None:
            # Few tests queued per worker, so a spent budget stops the run within the cases in flight.
            config.option.maxschedchunk = 1

    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        self.session.node_collected(ids)

    def pytest_configure_node(self, node: object) -> None:
        workerinput = node.workerinput  # type: ignore[attr-defined]
        if self.run.resume_state is not None:
            workerinput[RESUME_WIRE_KEY] = self.run.resume_state.to_wire()
        gpu_plan = self.run.gpu_plan
        if gpu_plan is not None and gpu_plan.groups:
            workerinput[WORKER_KEY] = gpu_plan.for_worker(worker_index(workerinput["workerid"]))
