"""The controller's status lines for long runs: tests done of total, rate, time left, money spent.

They fit pytest's own output: a status line never lands inside a line of progress dots (it ends that
line first, and pytest starts the next one with its file's name again), and in ``-v`` mode it goes
between two test lines. The time left is estimated only once a first window of batched cases has
finished (cases of a batch end together: the first case's time is the whole batch's), from the
average time per test since the first one started (not from the last few: a batch's cases end in a
burst, which would promise the run in seconds); the rate is shown from then on too. While nothing has
been written for ``QUIET_S`` (no test ended, no line), a line says so, whatever runs: a batch across
cases, a model load, a slow case. Where pytest captures output, a line goes to the terminal through the
stream its capture saved, never into a test's captured output.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from .._pytest_internals import capture_stream, write_between_lines


class Progress:
    """Status lines on the controller. ``started``/``finished`` are called per test; ``due`` writes."""

    FIRST_AFTER_S = 5.0  # no status line for runs shorter than this
    EVERY_S = 15.0  # at most one status line this often
    QUIET_S = 25.0  # a line when nothing was written for this long (checked each second: never 30 s silent)

    def __init__(self, config: pytest.Config, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.config = config
        self.start = clock()
        self.next = self.start + self.FIRST_AFTER_S
        self.total = 0
        self.done = 0
        self.warmup = 1  # tests that end before the time left is estimated: one window per process
        self.spent: float | None = None  # USD so far, where prices apply
        self.running = False  # between the first test's start and the session's end
        self.show = False  # only sessions with eval cases print status lines
        self._first_start: float | None = None  # when the first test started
        self._last_end = self._last_output = self.start  # a test's end; anything written (a result, a line)
        self._verbose = config.get_verbosity() > 0  # pytest writes each test's name as it starts
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.in_phase = False  # a test's setup, call or teardown runs here, where pytest captures the output
        self._captures = config.getoption("capture", "fd") != "no"

    # --- events ---------------------------------------------------------------------------------------
    def started(self) -> None:
        if self._verbose:
            with self._lock:
                self._last_output = self.clock()
        if self.running or self._stop.is_set():
            return
        self.running = True
        self._first_start = self._last_end = self._last_output = self.clock()
        self.watch()

    def watch(self) -> None:
        """Start watching for quiet stretches (once the tests are known: the first may take long to start,
        a window's cases report only when they end)."""
        if self._thread is None and not self._stop.is_set() and self._reporter() is not None:
            self._last_output = max(self._last_output, self.clock())
            self._thread = threading.Thread(target=self._watch, name="evals-progress", daemon=True)
            self._thread.start()

    def finished(self, show: bool = True) -> None:
        """A test ended (its teardown report); ``show``: the session has eval cases."""
        with self._lock:
            self.done += 1
            self._last_end = self._last_output = self.clock()
            self.show = self.show or show

    def due(self) -> None:
        """After pytest wrote a test's result: a status line if one is due."""
        now = self.clock()
        if now < self.next or not self.total or not self.show or self.done >= self.total:
            return
        self.next = now + self.EVERY_S
        self._write(self.line(now))

    def phase(self):
        """Wraps a test phase (a hook wrapper's body): a line written now would be captured as the test's."""
        self.in_phase = True
        try:
            return (yield)
        finally:
            self.in_phase = False

    def stop(self) -> None:
        self._stop.set()
        self.running = False

    # --- text -----------------------------------------------------------------------------------------
    def line(self, now: float) -> str:
        elapsed = max(now - (self._first_start if self._first_start is not None else self.start), 1e-9)
        line = f"evals: {self.done} of {self.total} tests done"
        left = self.left(now)  # (and the rate: before the first windows end, both would be a batch's burst)
        line += (f", {self.done / elapsed:.1f}/s, about {_minutes(left)} left" if left is not None
                 else ", time left not known yet (the first batches are still running)")
        if self.spent is not None and self.done:
            line += f", ${self.spent:.4f} spent, about ${self.spent / self.done * self.total:.4f} for all"
        return line

    def left(self, now: float) -> float | None:
        """Seconds left at the average time per test so far; None until the first windows have ended."""
        origin = self._first_start if self._first_start is not None else self.start
        if self.done < self.warmup or not self.done or now <= origin:
            return None
        return max(self.total - self.done, 0) * (now - origin) / self.done

    def quiet_line(self, now: float) -> str:
        return (f"evals: {self.done} of {self.total} tests done; no test has ended for {_minutes(now - self._last_end)} "
                "(a batch across cases, a model load or a slow case is running)")

    def say(self, text: str) -> None:
        """A line now (a long model load begins), wherever the run is: between tests or inside a phase."""
        if not self._stop.is_set():
            self._write(text)

    # --- output ---------------------------------------------------------------------------------------
    def _quiet_since(self) -> float:
        """When the terminal last got something: a test's result (or name, with -v), or a line of ours."""
        return self._last_output

    def _reporter(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            now = self.clock()
            if self.show and self.total and now - self._quiet_since() >= self.QUIET_S:
                self._write(self.quiet_line(now), quiet=True)

    def _write(self, text: str, quiet: bool = False) -> None:
        reporter = self._reporter()
        if reporter is None:
            return
        with self._lock:
            if quiet and self.clock() - self._quiet_since() < self.QUIET_S:
                return  # a test ended meanwhile: pytest is writing now
            # Where pytest captures, through the stream its capture saved: a window's bodies run their
            # phases in turns, so whether one runs now (and pytest's own writes would be its output) is
            # not known here; that stream is the terminal either way.
            out = capture_stream(self.config) if self._captures else None
            if out is None and self.in_phase and self._captures:
                return  # no saved stream: the line would be the test's output
            if write_between_lines(reporter, self._verbose, text, out):
                self._last_output = self.clock()


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


class ProgressPlugin:
    """The hooks that feed :class:`Progress` what pytest does (the controller counts tests that end)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

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
