"""Batching across cases: each case stays an ordinary pytest item with its own reports, while every
model call it makes is batched with the same call of the other cases in its window.

When pytest reaches an eval case, the plugin takes the window of up to W cases that run next in this
process (the following items of the same module or class; under xdist, this worker's queue) and runs
them together, through pytest's own hooks (for a backend that submits, HTTP, the window slides: the
cases of up to ``SLIDING_WINDOWS`` windows are taken, and one starts as soon as another ends): each case is set up, its body starts in a greenlet and runs
until it calls the model, and its setup is parked (``batching.parking``) so the next case can be set up. The
planner batches the waiting calls (rounds for a local model, each request at once for an HTTP
server) and resumes each body, set up again, with its answer until it calls again or ends: second
turns, tool rounds and judge calls are batched as first calls are. A body that ends is torn down at
once, and reported as soon as every case before it was, in pytest's order; the window's last case is
torn down last (with the item after it), at its own turn where that item is not yet known (xdist).

Each body runs once; a tool runs once per call the model makes. ``-x``, a spent budget or a failed
database stop the window at its next round: no more cases start, and a body still waiting is skipped
there. ``@pytest.mark.evals_batch(False)`` (or ini ``evals_batch = false``) runs a test one case at a
time, as do ``--evals-batch-size 1``, ``--dist worksteal``, async tests and tests that use
``request``, ``capsys``, ``capfd``, ``caplog`` or ``monkeypatch`` (see ``ONE_AT_A_TIME``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import greenlet
import pytest

from .._pytest_internals import (
    dist_mode,
    forget_request,
    join_report_sections,
    prepare_request,
    setup_stack,
    test_arguments,
)
from ..calls.planner import Answer, Body, Planner
from ..session.state import RunState, batch_key, case_key_of, served_spec, spec_of
from .parking import Parked, parkable
from .queue import Queue

# fixtures that reach state of one item at a time (pytest's request, output and log capture) or change
# the process for the test's duration (monkeypatch: two bodies of a window would undo each other's changes)
SLIDING_WINDOWS = 8  # a sliding window's cases: this many windows' worth (then the last one is torn down)
ONE_AT_A_TIME = frozenset({"request", "capsys", "capfd", "capsysbinary", "capfdbinary", "caplog", "monkeypatch"})


@dataclass
class Ran:
    """A case the window ran: its phases' results, in pytest's order, until they are reported."""

    calls: list[pytest.CallInfo[Any]] = field(default_factory=list)
    reported: bool = False
    teardown_left: bool = False  # its teardown waits for its own turn (the item after it was not known)


ran_key = pytest.StashKey[Ran]()


class WindowPlugin:
    """Runs a window of eval cases together and batches every model call they make."""

    def __init__(self, config: pytest.Config, state: RunState, planner: Planner) -> None:
        self.config = config
        self.state = state
        self.planner = planner
        self.capture = config.pluginmanager.getplugin("capturemanager")
        self.queue = Queue(config)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        ran = item.stash.get(ran_key, None)
        if ran is not None:  # its window ran it
            if not ran.reported:
                self._report(item, ran)
            if ran.teardown_left:
                self._teardown_and_report(item, ran, nextitem)
            return True
        if not self._plannable(item):
            return None
        window = [item]
        upcoming = self.queue.upcoming(item)
        # sliding: the cases that start as others end, up to a window at once
        most = self.planner.window * (SLIDING_WINDOWS if self.planner.sliding else 1)
        for other in upcoming:
            if len(window) >= most or not parkable(other, item) or not self._plannable(other):
                break
            window.append(other)
        if len(window) < 2:
            return None  # nothing to batch with: pytest's own protocol
        after = upcoming[len(window) - 1:]
        last_next = after[0] if after else None
        # None is the session's end, except under xdist, where more may come to this worker's queue
        self._run_window(window, last_next, known=bool(after) or not self.queue.distributed)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """A run stopped (-x, the budget) before the turn of a case whose teardown waited for it: the
        case ran and was reported, so its teardown runs and is reported too, before the session's."""
        for item in session.items:
            ran = item.stash.get(ran_key, None)
            if ran is not None and ran.teardown_left:
                self._teardown_and_report(item, ran, None)

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self) -> None:
        """Ctrl-C: the batch in flight is for bodies that will not go on; stop it now."""
        self.planner.close()

    # --- which cases ----------------------------------------------------------------------------
    def _plannable(self, item: pytest.Item) -> bool:
        spec = spec_of(item)
        if spec is None or any(item.get_closest_marker(m) is not None for m in ("skip", "skipif", "xfail")):
            return False
        if not item.stash.get(batch_key, self.state.batch_across_cases) or ran_key in item.stash:
            return False  # opted out (evals_batch(False)), or already run
        own = test_arguments(item)  # the test's own arguments (fixtures may take request)
        if "request" in own or (ONE_AT_A_TIME - {"request"}) & set(getattr(item, "fixturenames", ())):
            return False
        option = self.config.option
        if getattr(option, "setuponly", False) or getattr(option, "setupplan", False):
            return False
        if dist_mode(self.config) == "worksteal":
            return False  # another worker may take a queued case: a window must own its cases
        if inspect.iscoroutinefunction(getattr(item, "obj", None)):
            return False  # an async test runs its own event loop
        if not self.state.pool.batches_across_cases(served_spec(item, spec)):
            return False  # its backend gains nothing from batches
        resume = self.state.resume_state
        return resume is None or case_key_of(item, spec) not in resume.finished  # a replayed case makes no call

    # --- running a window -------------------------------------------------------------------------
    def _run_window(self, window: list[pytest.Item], last_next: pytest.Item | None, known: bool) -> None:
        """Set up each case and start its body; batch the parked calls round by round; tear each case
        down as its body ends (the last one with ``last_next``, or at its own turn where that is not
        ``known``)."""
        last = window[-1]
        following = {case: (window[i + 1] if i + 1 < len(window) else last_next) for i, case in enumerate(window)}
        parked: dict[pytest.Item, Parked] = {}
        waiting: list[tuple[Body, Any]] = []
        bodies: list[Body] = []
        ended: set[pytest.Item] = set()
        unreported = iter(window[:-1])
        due: list[pytest.Item | None] = [next(unreported, None)]  # the next case to report, in pytest's order

        def finish(case: pytest.Item) -> None:
            if case is last:  # its teardown may reach above the window's parent: after every other case's
                parked[case] = Parked(case)
                return
            case.stash[ran_key].calls.append(_phase(case, "teardown", nextitem=following[case]))
            ended.add(case)
            # reported as soon as it and every case before it have ended: recorded early (a kill later
            # loses none of it), in the order pytest would have run them
            while due[0] is not None and due[0] in ended:
                self._report(due[0], due[0].stash[ran_key])
                due[0] = next(unreported, None)

        queued = iter(window)
        position = {case: n for n, case in enumerate(window)}
        started: list[pytest.Item] = []
        active = [0]  # bodies started and not yet ended
        at_once = self.planner.window

        def start_more() -> list[tuple[Body, Any]]:
            """Start cases while fewer than a window run at once (and fewer than two windows' worth wait
            to be reported): each is set up and its body runs to its first model call."""
            begun: list[tuple[Body, Any]] = []
            while active[0] < at_once:
                if due[0] is not None and len(started) - position[due[0]] >= 2 * at_once:
                    break  # reports wait for an earlier case still running: no more until it ends
                case = next(queued, None)
                if case is None or _stopping(case.session) is not None:
                    break  # -x, the budget: no more cases start (the window's last never does)
                started.append(case)
                ran = case.stash[ran_key] = Ran()
                prepare_request(case)
                setup = _phase(case, "setup")
                ran.calls.append(setup)
                if setup.excinfo is not None:
                    finish(case)
                    continue
                body, value = self.planner.start(lambda case=case: _phase(case, "call"), case)
                bodies.append(body)
                if body.dead:
                    ran.calls.append(value)
                    finish(case)
                else:
                    active[0] += 1
                    self._take_output(case)
                    parked[case] = Parked(case)
                    begun.append((body, value))
            return begun

        def more() -> list[tuple[Body, Any]]:
            active[0] -= 1  # a body ended
            return start_more() if self.planner.sliding else []

        try:
            waiting.extend(start_more())
            def resume(body: Body, answer: Answer) -> Any:
                """A body goes on set up, as pytest's own protocol runs it; parked again if it waits."""
                case = body.case
                parked.pop(case).unpark()
                if self.capture is not None:
                    self.capture.resume_global_capture()
                value = body.switch(answer)
                if not body.dead:
                    self._take_output(case)
                    parked[case] = Parked(case)
                return value

            for body, value in self.planner.rounds(waiting, resume, lambda: _stopping(last.session), more):
                body.case.stash[ran_key].calls.append(value)
                finish(body.case)  # (set up again by resume)
        except BaseException:
            _abandon(bodies, parked)
            raise
        if last not in parked:
            return  # it never started
        parked.pop(last).unpark()
        if known:
            last.stash[ran_key].calls.append(_phase(last, "teardown", nextitem=last_next))
        else:
            last.stash[ran_key].teardown_left = True  # at its own turn, when the item after it is known
        self._report(last, last.stash[ran_key])

    def _take_output(self, case: pytest.Item) -> None:
        """What a parked body printed so far is its own (the capture of its call phase is still open)."""
        if self.capture is None:
            return
        self.capture.suspend_global_capture(in_=False)
        out, err = self.capture.read_global_capture()
        if out:
            case.add_report_section("call", "stdout", out)
        if err:
            case.add_report_section("call", "stderr", err)

    # --- reports ------------------------------------------------------------------------------------
    def _report(self, item: pytest.Item, ran: Ran) -> None:
        with self.queue.reporting(item):
            self._send(item, ran)

    def _send(self, item: pytest.Item, ran: Ran) -> None:
        ran.reported = True
        join_report_sections(item)
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for call in ran.calls:
            _log(item, call)
        if not ran.teardown_left:
            forget_request(item)  # after its reports, which may read its fixtures' values
            ran.calls.clear()  # a long run keeps no results or tracebacks of reported cases
            ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _teardown_and_report(self, item: pytest.Item, ran: Ran, nextitem: pytest.Item | None) -> None:
        ran.teardown_left = False
        call = _phase(item, "teardown", nextitem=nextitem)
        ran.calls.append(call)
        with self.queue.reporting(item):
            _log(item, call)
            forget_request(item)
            ran.calls.clear()
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _abandon(bodies: list[Body], parked: dict[pytest.Item, Parked]) -> None:
    """Ctrl-C or pytest.exit while a window runs: end the bodies still waiting and tear down what
    they set up (pytest tears down the rest at the session's end)."""
    for body in bodies:
        if not body.dead:
            try:
                body.throw(greenlet.GreenletExit)
            except BaseException:  # noqa: BLE001 - already on the way out
                pass
    if not parked:
        return
    stack = setup_stack(next(iter(parked)).session)

    def tear(node: Any) -> None:
        finalizers, _ = stack.pop(node)
        while finalizers:
            try:
                finalizers.pop()()
            except BaseException:  # noqa: BLE001 - best effort on the way out
                pass

    while stack and isinstance(next(reversed(stack)), pytest.Item):
        tear(next(reversed(stack)))  # the case that was running: set up, not parked
    for case, parking in list(parked.items()):
        case.stash[ran_key].reported = True  # nothing more of it is reported
        try:
            parking.unpark()
            if case in stack:
                tear(case)
        except BaseException:  # noqa: BLE001 - best effort on the way out
            pass

def _stopping(session: pytest.Session) -> BaseException | None:
    """-x, a spent budget or a database that failed stop the run: a body of the window still waiting for
    an answer is skipped there, its calls so far recorded (a later run with --evals-resume runs it again)."""
    reason = session.shouldstop or session.shouldfail
    if not reason:
        return None
    return pytest.skip.Exception(f"not run to its end: the run is stopping ({reason})")


def _phase(item: pytest.Item, when: str, **kwargs: Any) -> pytest.CallInfo[Any]:
    """One phase through pytest's hooks, as its runner calls it."""
    hook: Callable[..., Any] = getattr(item.ihook, f"pytest_runtest_{when}")
    reraise: tuple[type[BaseException], ...] = (pytest.exit.Exception,)
    if not item.config.getoption("usepdb", False):
        reraise += (KeyboardInterrupt,)
    return pytest.CallInfo.from_call(lambda: hook(item=item, **kwargs), when=when, reraise=reraise)  # type: ignore[arg-type]


def _log(item: pytest.Item, call: pytest.CallInfo[Any]) -> None:
    report = item.ihook.pytest_runtest_makereport(item=item, call=call)
    item.ihook.pytest_runtest_logreport(report=report)
    excinfo = call.excinfo
    if (excinfo is not None and not hasattr(report, "wasxfail")
            and not isinstance(excinfo.value, pytest.skip.Exception) and item.config.getoption("usepdb", False)):
        item.ihook.pytest_exception_interact(node=item, call=call, report=report)
