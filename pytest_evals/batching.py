"""Batching across cases: each case stays an ordinary pytest item, but its first model call is served
from a batched backend call made for a window of cases before they run.

Before a case runs, the plugin takes the window of up to W cases that are about to run in this
process (the next items of the same module or class; under xdist, this worker's queue) and *traces*
them: it runs each through pytest's own protocol, unlogged, with a model that records the case's first
request and stops the case there. The recorded requests are deduplicated and sent to each backend as
one batched call (the backend sorts by length and pads; an HTTP backend sends them concurrently). Then
each case runs normally: a call whose requests are in the window's results is answered from them; any
other call (a second turn, a request the trace did not reach, a batch that failed) goes to the backend
alone, as without batching, with its retries. A traced case that never runs (``-x``, Ctrl-C, the
budget) records nothing.

The cost: code in a test body before its first model call runs twice (once traced). A function whose
traced case ends without calling the model (a body that never or only sometimes calls it, or fails
first) is not traced again, so its bodies run once from then on; ``@pytest.mark.evals_batch(False)``
(or ini ``evals_batch = false`` for every test) opts out, and a batch size of 1
(``--evals-batch-size 1``) turns batching off.

The requests and results of a window live in the process's ``planner.Planner``; this module holds the
plugin that traces windows, registered only where a backend of the run batches across cases.
"""

from __future__ import annotations

import pytest

from .context import RunContext, batch_key, case_key_of, served_spec, spec_of
from .planner import Planner, TraceStop

traced_key = pytest.StashKey[bool]()
head_key = pytest.StashKey[bool]()  # the first case of a window


class BatchPlugin:
    """Traces the window ahead of each untraced eval case and runs its requests as batches."""

    def __init__(self, config: pytest.Config, run: RunContext, planner: Planner) -> None:
        self.config = config
        self.run = run
        self.planner = planner
        self._no_call: set[object] = set()  # test functions whose traced body ended before any model call

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        if self.planner.tracing or not self._plannable(item):
            return
        if not item.stash.get(traced_key, False):
            self._trace_window(item, item)
            self.planner.run_traced(background=True)  # HTTP: in flight while the next window is traced
            item.stash[head_key] = True
        if item.stash.get(head_key, False) and self.planner.can_prefetch:
            # HTTP: trace the next window now and send its requests while this one's cases run
            following = next((o for o in self._upcoming(item) if o.parent is item.parent
                              and not o.stash.get(traced_key, False) and self._plannable(o)), None)
            if following is not None:
                self._trace_window(following, item)
                following.stash[head_key] = True
                self.planner.run_traced(background=True)

    def _trace_window(self, first: pytest.Item, current: pytest.Item) -> None:
        """Trace ``first`` and the untraced cases that follow it in this process, up to the window size."""
        window = [first]
        for other in self._upcoming(first):
            if len(window) >= self.planner.window:
                break
            if (other is not first and other.parent is first.parent and not other.stash.get(traced_key, False)
                    and self._plannable(other)):
                window.append(other)
        for case in window:
            if _function_of(case) in self._no_call:
                continue  # an earlier case of its function showed its body does not reach the model
            case.stash[traced_key] = True
            self._trace(case, current)
        self.planner.can_prefetch = self.planner.can_prefetch or any(
            backend.background_batches for backend, _, _, _ in self.planner.traced)

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self) -> None:
        """Ctrl-C: the batches in flight are for cases that will not run; stop them now, before pytest
        formats the interrupt and the session finishes."""
        self.planner.close()

    def pytest_sessionfinish(self) -> None:
        self.planner.close()

    def _plannable(self, item: pytest.Item) -> bool:
        spec = spec_of(item)
        if spec is None or any(item.get_closest_marker(m) is not None for m in ("skip", "skipif", "xfail")):
            return False  # a body pytest would skip is never run, traced or not
        if not item.stash.get(batch_key, self.run.batch) or _function_of(item) in self._no_call:
            return False  # opted out (evals_batch(False)), or its bodies do not reach the model: run once
        if not self.run.pool.batches_across_cases(served_spec(item, spec)):
            return False  # its backend gains nothing from batches: no trace to pay for
        state = self.run.resume_state
        return state is None or case_key_of(item, spec) not in state.finished  # a replayed case makes no call

    def _upcoming(self, item: pytest.Item) -> list[pytest.Item]:
        """The items this process runs after ``item``, in order (under xdist: this worker's queue)."""
        items = item.session.items
        interactor = next((p for p in self.config.pluginmanager.get_plugins()
                           if hasattr(p, "torun") and hasattr(p, "nextitem_index")), None)
        if interactor is None:
            try:
                return items[items.index(item) + 1:]
            except ValueError:
                return []
        with interactor.torun.lock() as queue:
            pending = [i for i in queue if isinstance(i, int)]
        following = interactor.nextitem_index
        indices = ([following] if isinstance(following, int) else []) + pending
        return [items[i] for i in indices]

    def _trace(self, case: pytest.Item, current: pytest.Item) -> None:
        """Run ``case`` up to its first model call: its fixtures set up, its body called, its fixtures
        torn down, without pytest's run-test hooks or reports (nothing is logged, recorded or formatted;
        a failure here is the case's own to meet when it runs). The teardown stops at the parent it
        shares with ``current``, so module and class fixtures stay up."""
        setup_state = case.session._setupstate  # the same bookkeeping pytest's own protocol uses
        self.planner.tracing = True
        has_request = hasattr(case, "_request")
        try:
            if has_request and not case._request:  # type: ignore[attr-defined]
                case._initrequest()  # type: ignore[attr-defined]
            try:
                setup_state.setup(case)
            except (pytest.exit.Exception, KeyboardInterrupt):
                raise
            except BaseException:  # noqa: BLE001 - a fixture that fails, fails when the case runs
                pass
            else:
                try:
                    case.runtest()
                except (pytest.exit.Exception, KeyboardInterrupt):
                    raise
                except TraceStop:
                    pass  # stopped at its first model call, as it should
                except BaseException:  # noqa: BLE001 - the case's own failure, met again when it runs
                    self._no_call.add(_function_of(case))
                else:  # its body ran to the end without calling the model: never trace its function again
                    self._no_call.add(_function_of(case))
            try:
                setup_state.teardown_exact(current.parent)  # type: ignore[arg-type]
            except (pytest.exit.Exception, KeyboardInterrupt):
                raise
            except BaseException:  # noqa: BLE001 - a failing teardown fails when the case runs
                pass
        finally:
            self.planner.tracing = False
            if has_request:  # as pytest's protocol leaves an item: the real run builds its request anew
                case._request = False  # type: ignore[attr-defined]
                case.funcargs = None  # type: ignore[attr-defined]


def _function_of(item: pytest.Item) -> object:
    """What a test's cases share: its function's code (the nodeid without parameters where there is none)."""
    function = getattr(item, "function", None)
    return getattr(function, "__code__", None) or item.nodeid.split("[")[0]
