"""``--evals-stop-early``: each benchmark's cases in a seeded random order, and no more of them once its
gate's verdict is settled (``scoring.early``: certain, or by an exact test whose error rate is held
over every look).

At collection the eval cases of each benchmark are put in the order of their seeded digests (the same
as ``--evals-limit``'s, so ``--evals-seed`` picks another order), in the benchmark's place among the
tests. As each case ends, the benchmark's (per model) passes, errors and cases run are checked; once
settled, the cases of that benchmark and model not yet started are skipped with the reason, and the
summary says where it stopped and what that saved. Only a pass-rate gate can stop a benchmark early: one
with named-metric minimums, repeated samples or a baseline to compare with runs all its cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .._pytest_internals import dist_mode
from ..scoring.early import Settled, settle
from ..scoring.stats import PASS_RATE
from .controller import Controller
from .limit import case_identity, case_rank
from .recorder import benchmark_of
from .state import RECORD_ATTR, RunState, model_name, spec_of

OPTION = "--evals-stop-early"


@dataclass
class Stop:
    settled: Settled
    minimum: float
    skipped: int = 0  # cases not run
    calls: int = 0  # model calls of the cases that ran (for the saving's estimate)
    cost: float | None = 0.0  # their cost, None where one was unknown


@dataclass
class Tally:
    """A benchmark's (per model) cases so far, counted as they end (a count over the gates' outcomes at every
    case would cost the whole benchmark each time)."""

    ran: int = 0  # passed, failed or errored
    passed: int = 0
    errors: int = 0
    calls: int = 0  # model calls of the cases run (for the saving's estimate)
    cost: float | None = 0.0  # their cost, None where one was unknown


class StopEarlyPlugin:
    def __init__(self, config: pytest.Config, state: RunState, controller: Controller) -> None:
        self.config = config
        self.state = state
        self.controller = controller
        self.totals: dict[tuple[str, str], int] = {}  # (benchmark, model) -> cases collected
        self.stops: dict[tuple[str, str], Stop] = {}
        self.tallies: dict[tuple[str, str], Tally] = {}
        controller.stopped_early = self.stops

    @pytest.hookimpl(trylast=True)  # after --evals-limit's subset
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        places = [i for i, item in enumerate(items) if spec_of(item) is not None]
        first: dict[str, int] = {}
        for i in places:
            first.setdefault(benchmark_of(items[i].nodeid), i)
        seed = self.state.seed

        def order(item: pytest.Item) -> tuple[int, str]:
            benchmark = benchmark_of(item.nodeid)
            return first[benchmark], case_rank(seed, benchmark, case_identity(item))

        ordered = sorted((items[i] for i in places), key=order)
        for i, item in zip(places, ordered):
            items[i] = item
            key = (benchmark_of(item.nodeid), model_name(item, spec_of(item)))
            self.totals[key] = self.totals.get(key, 0) + 1

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """(After the case's log is made, so the skip is recorded.) A settled benchmark's next cases skip."""
        spec = spec_of(item)
        if spec is None:
            return
        stop = self.stops.get((benchmark_of(item.nodeid), model_name(item, spec)))
        if stop is not None:
            stop.skipped += 1
            pytest.skip(f"evals-stop-early: {stop.settled.describe(stop.minimum)}")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport):
        """Around the controller's count of the case: its calls and cost before, the check after."""
        data = getattr(report, RECORD_ATTR, None) if report.when == "teardown" else None
        result = yield
        if data and data["case"]["outcome"] in ("passed", "failed", "error"):
            self._check(data)
        return result

    def _check(self, data: dict) -> None:
        key, outcome = (data["case"]["benchmark"], data["case"]["model"]), data["case"]["outcome"]
        tally = self.tallies.setdefault(key, Tally())
        made = [c for c in data["calls"] if c.get("role") == "model"]
        costs = [c.get("cost_usd") for c in made]
        tally.ran += 1
        tally.passed += outcome == "passed"
        tally.errors += outcome == "error"
        tally.calls += len(made)
        tally.cost = None if tally.cost is None or None in costs else tally.cost + sum(costs)
        scores = self.controller.gates.scores.get(key)
        if scores is None or key in self.stops or key not in self.totals:
            return
        minimums = dict(self.controller.gates.threshold_for(key[0]).minimums)
        if set(minimums) != {PASS_RATE} or scores.repeated or self.controller.baseline is not None:
            return  # only a pass-rate gate, on single samples, without a baseline, can stop early
        settled = settle(tally.passed, tally.errors, tally.ran, self.totals[key], minimums[PASS_RATE],
                         self.controller.gates.alpha)
        if settled is not None and tally.ran < self.totals[key]:
            self.stops[key] = Stop(settled, minimums[PASS_RATE], calls=tally.calls, cost=tally.cost)


def usage_problem(config: pytest.Config, state: RunState) -> str | None:
    """Why --evals-stop-early cannot run here, or None."""
    if dist_mode(config) != "no":
        return (f"{OPTION}: not under xdist yet (the workers run their cases without the controller's "
                "count); drop -n/--tx, or drop --evals-stop-early")
    if state.repeat is not None and state.repeat.count > 1:
        return f"{OPTION} stops on single samples; drop --evals-repeat, or drop {OPTION}"
    return None


def saving_lines(stops: dict[tuple[str, str], Stop]) -> list[str]:
    """Where each benchmark stopped and what that saved (estimated from the cases that ran before the stop)."""
    lines = []
    for (benchmark, model), stop in sorted(stops.items()):
        if not stop.skipped:
            continue  # settled as its last cases were running: nothing was saved
        ran = stop.settled.ran
        saved = f"{stop.skipped} case{'s' * (stop.skipped != 1)} not run"
        if stop.calls:
            saved += f", about {round(stop.calls / ran * stop.skipped)} model calls"
        if stop.cost:
            saved += f" and ${stop.cost / ran * stop.skipped:.4f}"
        lines.append(f"evals-stop-early: {benchmark} [{model}]: {stop.settled.describe(stop.minimum)}; saved {saved}")
    return lines
