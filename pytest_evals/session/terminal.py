"""What the terminal shows of a run, on the controller: the header's ``evals:`` lines, the wrong answers
and the evals summary after pytest's own sections (so the last lines before pytest's counts are the
verdicts), and, after pytest's summary, what an incomplete run did not run and how to resume it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .._pytest_internals import terminal_writer
from ..backends.specs import ModelSpec
from ..calls.routing import TASKS
from ..report.tables import WHY_COLUMN, failing_line, format_table, reason_lines, verdict_table
from ..report.usage import Usage
from ..scoring.gates import Gates
from .controller import Controller
from .interruption import resume_command
from .state import WRONG, WRONG_ATTR, RunState
from .stop_early import saving_lines


class TerminalPlugin:
    def __init__(self, config: pytest.Config, state: RunState, controller: Controller) -> None:
        self.config = config
        self.state = state
        self.controller = controller

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        pool = self.state.pool
        # With routes, what a spec serves may be probed (one small request to a server); without, the
        # header shows what its backend declares and sends nothing.
        serves = pool.serves if self.state.routes.table else (lambda s: pool.registry.resolve(s.backend).capabilities)

        def described(spec: ModelSpec) -> str:
            try:
                tasks = sorted(serves(spec) & {*TASKS, "streaming"})
            except Exception:  # an unregistered prefix is reported at start-up, not here
                return spec.raw
            return f"{spec.raw} ({', '.join(tasks)})"

        models = ", ".join(described(s) for s in self.state.specs)
        lines = [f"evals: models {models}; database {self.state.db_path}"]
        if self.state.cache is not None:
            lines.append(f"evals: call cache {self.state.cache.path} ({self.state.cache.mode}"
                         + ("; no model is loaded)" if self.state.cache.mode == "replay" else ")"))
        if self.state.routes.table:
            lines.append("evals: routes " + "; ".join(
                f"{task} -> {described(spec)}" for task, spec in self.state.routes.table.items()))
        if self.state.judge:
            lines.append(f"evals: judge {described(self.state.judge)}")
        if self.state.gpu_plan is not None:
            lines.append(self.state.gpu_plan.note)
        replay = self.controller.replay
        if replay is not None and replay.note:
            lines.append(replay.note)
        if self.controller.baseline_note:
            lines.append(self.controller.baseline_note)
        return lines

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter):
        """After pytest's own sections and short summary: the wrong answers, one line each, then the evals
        summary and the gate verdicts."""
        result = yield
        if self.controller.verdicts:
            wrong_answers(terminalreporter)
            self._summary(terminalreporter)
        return result

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # registered after the controller: its finish is inside
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        """After pytest's own summary: the last lines of an incomplete run say what did not run, and how
        to run it; of a run whose gates fail, which fail (pytest's own last line is yellow when the wrong
        answers are only scores: the verdict is the headline)."""
        try:
            return (yield)
        finally:
            self._say_incomplete()
            self._say_failing(session)

    def _say_failing(self, session: pytest.Session) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        line = failing_line(self.controller.verdicts, int(session.exitstatus))
        if reporter is not None and line is not None:
            reporter.write_line(line, red=True, bold=True)

    def _say_incomplete(self) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        controller = self.controller
        if reporter is None or controller.incomplete_reason is None:
            return
        total = len(controller.completion.collected)
        reporter.write_line(f"evals: run {controller.run_id} is incomplete ({controller.incomplete_reason}): "
                            f"{len(controller.completion.missing)} of {total} tests did not run; what ran is stored",
                            red=True)
        reporter.write_line(f"evals: resume with: {resume_command(controller.storage.args)}")

    def _summary(self, tr: pytest.TerminalReporter) -> None:
        c = self.controller
        usage = c.usage
        tr.write_sep("=", "evals summary")
        if usage.models:
            for line in format_table(Usage.HEADER, usage.rows(), name_columns=1):
                tr.write_line(line)
            for note in (usage.note(), usage.cost_note()):
                if note:
                    tr.write_line(note)
        for line in usage.cut_notes():
            tr.write_line(line, yellow=True)
        if self.state.cache is not None:
            path = self.state.cache.path
            shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
            line = usage.cache_line(shown, self.state.cache.mode, bool(self.state.prices.prices))
            tr.write_line(line, yellow=usage.cache_misses > 0)
        made, shared = usage.model_calls, usage.shared_calls
        if made and self.state.settings.batch_size > 1:
            tr.write_line(f"evals-batch: {shared} of {made} model calls served from batches "
                          f"across cases; {made - shared} one at a time")
        self._spending(tr)
        if c.replay is not None and c.replay.replayed:
            tr.write_line(f"evals-resume: {c.replay.replayed} cases replayed from {c.replay.runs_text()}, "
                          "not run again")
        if c.baseline_id is not None:
            tr.write_line(f"baseline: run {c.baseline_id} (paired by case; alpha {c.gates.alpha:g}, "
                          f"margin {c.gates.margin:g})")
            if c.baseline_note:
                tr.write_line(c.baseline_note)
        for line in repeat_lines(c.gates, c.greedy_once):
            tr.write_line(line, yellow="flaky" in line)
        for (benchmark, model), cases in sorted(c.greedy_once.items()):
            tr.write_line(f"evals-repeat: {benchmark} [{model}]: {len(cases)} case{'s' * (len(cases) != 1)} ran once, "
                          "not repeated: greedy calls (temperature 0) give every sample the same answer; "
                          "--evals-repeat-greedy repeats them anyway", yellow=True)
        if c.limited:
            tr.write_line(limit_line(c.limited, self.state.seed), yellow=True)
        for line in skipped_files(tr):
            tr.write_line(line, yellow=True)
        for line in saving_lines(c.stopped_early):
            tr.write_line(line)
        tr.write_line("")
        for line in format_table(*verdict_table(c.verdicts), text_columns=(WHY_COLUMN,)):
            tr.write_line(line)
        for line in reason_lines(c.verdicts):
            tr.write_line(line, red=line.startswith("FAIL"))
        self._ending(tr)

    def _spending(self, tr: pytest.TerminalReporter) -> None:
        """The budget's line: what was spent, and whether the budget stopped the run."""
        c, spending = self.controller, self.controller.spending
        # never $0 for costs nobody knows: "at least", and how many calls the figure leaves out or estimates
        spent = c.spent_text()
        basis = "".join(f"; {n} calls {what}" for n, what in (
            (c.usage.cost_bases.get("estimated", 0), "priced from estimated prompt tokens"),
            (c.usage.cost_unknown, "of priced models with no cost (their token counts are unknown)")) if n)
        if spending.ledger is not None and spending.ledger.granted + spending.ledger.refused:
            basis += "; " + spending.ledger.summary()
        if spending.stopped_at is not None:
            not_run = max(c.progress.total - c.progress.done, 0)
            tr.write_line(f"evals-budget: the budget of ${spending.budget:g} stopped the run: {spent} spent on "
                          f"{c.progress.done} tests; {not_run} tests not run (budget spent){basis}", red=True)
        elif spending.budget is not None:
            tr.write_line(f"evals-budget: {spent} of ${spending.budget:g} spent{basis}")

    def _ending(self, tr: pytest.TerminalReporter) -> None:
        """The summary's last lines: all gates hold, what was not stored, where the run is."""
        c = self.controller
        wrong = sum(s.count("failed") for s in c.gates.scores.values())
        if (all(v.holds for v in c.verdicts) and not c.other_failures and not c.storage.write_error
                and c.session is not None and c.session.exitstatus == pytest.ExitCode.OK):
            note = (f"; exit status 0: {'the' if wrong != 1 else 'its'} {wrong} wrong answer{'s' * (wrong != 1)} "
                    f"count{'s' * (wrong == 1)} in the scores, not as test failures" if wrong else "")
            tr.write_line(f"evals: all {len(c.verdicts)} gates hold{note}", green=True)
        if c.storage.write_error:
            what = ("every case is stored, the run's scores and verdicts are not" if c.storage.cases_stored
                    else "the cases after the first failed write are not stored")
            tr.write_line(f"evals: {what}: {c.storage.write_error}", red=True)
        if c.storage.finish_error and not c.storage.write_error:  # (a failed write was said: one line a cause)
            tr.write_line(f"evals: the run's row could not be closed, so it still says 'running' (a later run on "
                          f"this host marks it interrupted): {c.storage.finish_error}", red=True)
        for note in c.markdown_notes:
            tr.write_line(note, yellow="cannot" in note)
        if c.run_id is not None:
            tr.write_line(f"run {c.run_id} stored in {self.state.db_path}")


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
            report.toterminal(terminal_writer(tr))
        return
    for report in reports:
        tr.write_line(f"{report.nodeid}: {getattr(report, WRONG_ATTR, '')}")


def skipped_files(tr: pytest.TerminalReporter) -> list[str]:
    """Whole files skipped at collection (a suite whose data or package is missing), with their reasons:
    pytest shows them only as an ``s`` and, with ``-rs``, in its short summary."""
    lines = []
    for report in tr.stats.get("skipped", []):
        if isinstance(report, pytest.CollectReport) and isinstance(report.longrepr, tuple):
            lines.append(f"skipped: {report.nodeid}: {report.longrepr[2].removeprefix('Skipped: ')}")
    return lines


def limit_line(limited: dict[str, tuple[int, int, int]], seed: int) -> str:
    """Which benchmarks ran a subset, and how to run all of a subset its marker chose."""
    parts = [f"{benchmark} {kept} of {total}" + (" (its evals_limit marker)" if by_marker else "")
             for benchmark, (kept, total, by_marker) in sorted(limited.items())]
    line = f"evals-limit: a subset of cases (seed {seed}), cases run of cases in all: " + "; ".join(parts)
    if any(by_marker for _, _, by_marker in limited.values()):
        line += "; --evals-limit all runs every case"
    return line


def repeat_lines(gates: Gates, ran_once: dict[tuple[str, str], set[str]]) -> list[str]:
    """How many cases ran as samples, and which of them are flaky (their samples disagree); a benchmark whose
    cases all ran once (greedy, under --evals-repeat) has its own line."""
    lines = []
    for (benchmark, model), scores in gates.scores.items():
        if not scores.repeated or set(scores.repeated) <= ran_once.get((benchmark, model), set()):
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

