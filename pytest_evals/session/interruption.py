"""Interrupted runs: what a signal does, and how a run that did not record every test is told apart.

- **SIGTERM** (what CI runners and ``timeout`` send) ends a run as Ctrl-C does: pytest's interrupt path,
  so the cases in flight are dropped, the run is stored and summarised, and the exit status is 2.
- **Once the run is finishing** (the first interrupt seen, or the session's end), further SIGINT and
  SIGTERM wait until the record is written, the summary printed and the plugins unconfigured (the exit
  status is then 2); a third one held back stops the process at once.
- **A run is complete** only when every collected test reported its end (a teardown report, or xdist's
  report for a crashed worker's test) and, for an eval case, its record was committed: the controller
  commits a case and counts it as ended with stopping signals deferred (``SignalGuard.deferred``), so a
  signal never leaves a case counted that the store rolled back. The session plugin stores an incomplete run as ``interrupted``,
  marks the gates of its incomplete benchmarks ``INCOMPLETE`` (never PASS), and its last lines say how
  many tests did not run and the command that resumes them.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from typing import Any, Iterable, Iterator

import pytest

from .recorder import benchmark_of

STOPPING = (signal.SIGINT, signal.SIGTERM)
ESCAPE_AFTER = 2  # signals held back while finishing; the next one stops the process at once


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SignalGuard:
    """SIGTERM as Ctrl-C; while the run finishes, stopping signals are held back and counted."""

    def __init__(self) -> None:
        self.held: list[int] = []  # signals held back while finishing
        self.signalled = False  # a SIGTERM interrupted the run
        self._original: Any = None  # SIGTERM's handler before install()
        self._before_hold: dict[int, Any] = {}

    def install(self) -> None:
        """SIGTERM raises KeyboardInterrupt, where nobody else handles it (CI runners send it on timeout)."""
        if _main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._original = signal.SIG_DFL
            signal.signal(signal.SIGTERM, self._interrupt)

    def uninstall(self) -> None:
        """SIGTERM's handler back as it was; but once a stopping signal has come, the run is exiting with
        status 2 and everything is recorded: a second SIGTERM (a CI runner sends more than one) is ignored
        until the process exits, so that it cannot turn the exit status into a kill."""
        self.release()
        if self._original is not None and _main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN if self.signalled or self.held else self._original)
            self._original = None

    def hold(self) -> None:
        """From now until :meth:`release`, a stopping signal is held back instead of interrupting."""
        if self._before_hold or not _main_thread():
            return
        for signum in STOPPING:
            self._before_hold[signum] = signal.getsignal(signum)
            signal.signal(signum, self._hold)

    def release(self) -> None:
        if not _main_thread():
            return
        for signum, handler in self._before_hold.items():
            signal.signal(signum, handler)
        self._before_hold.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stopping signal that comes inside is delivered when the block has ended, never in the middle of
        it: committing a case and counting it as ended happen both or neither. (Inside :meth:`hold` a signal
        is held anyway; off the main thread no handler can be set.)"""
        if self._before_hold or not _main_thread():
            yield
            return
        came: list[int] = []
        before = {signum: signal.getsignal(signum) for signum in STOPPING}
        for signum in STOPPING:
            signal.signal(signum, lambda signum, frame: came.append(signum))
        try:
            yield
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)
            for signum in dict.fromkeys(came):
                signal.raise_signal(signum)  # to the handler it would have met: Ctrl-C's KeyboardInterrupt

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.signalled = True
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def _hold(self, signum: int, frame: Any) -> None:
        self.held.append(signum)
        if len(self.held) > ESCAPE_AFTER:  # asked again and again: stop now, whatever is unwritten
            self.release()
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class Completion:
    """Which collected tests reported their end (the controller sees every report, xdist's included).

    A test ends with its teardown report. A test a worker crashed in (xdist's ``???`` report) did not
    end: it has no record, so the run is incomplete and a resume runs it again.
    """

    def __init__(self) -> None:
        self.collected: set[str] = set()
        self.ended: set[str] = set()
        self.crashed: set[str] = set()

    def add_collected(self, nodeids: Iterable[str]) -> None:
        self.collected.update(nodeids)

    def note(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.ended.add(report.nodeid)
        elif report.when == "???":  # xdist's report for the test a worker crashed in
            self.crashed.add(report.nodeid)

    @property
    def missing(self) -> set[str]:
        return self.collected - self.ended

    def incomplete_benchmarks(self) -> set[str]:
        return {benchmark_of(nodeid) for nodeid in self.missing}


def resume_command(args: Iterable[str]) -> str:
    """The command line that runs what an incomplete run left: the same arguments, with --evals-resume."""
    args = [a for a in args if a != "--evals-fresh"]
    if not any(a == "--evals-resume" or a.startswith("--evals-resume=") for a in args):
        args.append("--evals-resume")
    return shlex.join(["pytest", *args])


class SignalPlugin:
    """Every process: SIGTERM as Ctrl-C; stopping signals held back from the session's end (or the first
    interrupt) until the plugins are unconfigured, and the exit status says a held one came."""

    def __init__(self, guard: SignalGuard) -> None:
        self.guard = guard
        self.session: pytest.Session | None = None
        guard.install()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self) -> None:
        self.guard.hold()  # the interrupt is being handled: another Ctrl-C must not cut the record short

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # registered last: before every other plugin's finish
    def pytest_sessionfinish(self) -> Any:
        self.guard.hold()
        return (yield)

    @pytest.hookimpl(trylast=True)  # after every other plugin has written and closed what it holds
    def pytest_unconfigure(self) -> None:
        self.guard.uninstall()
        if self.guard.held and self.session is not None:
            self.session.exitstatus = pytest.ExitCode.INTERRUPTED  # read by pytest after unconfigure
