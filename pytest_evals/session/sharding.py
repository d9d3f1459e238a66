"""The plugin of ``--evals-shard``: keeps this shard's eval cases at collection and says which shard ran.

Registered in every process (workers collect under xdist). It deselects the other shards' cases after
every other selection (``-k``, ``-m``, ``--evals-limit``: ``trylast``), so the shards split what one run
would have run. Tests that are not eval cases run in every shard (each shard's exit status covers them).
The suite the split was made of reaches the controller, which stores it with the run (``runs.suite``):
from its own collection, or under xdist from a worker's ``workeroutput`` as the worker ends.
"""

from __future__ import annotations

import pytest

from .shards import Shard, split
from .state import RunState, spec_of

WIRE_KEY = "evals_shard_suite"  # workeroutput key: the suite a worker collected


class ShardPlugin:
    def __init__(self, config: pytest.Config, state: RunState, shard: Shard) -> None:
        self.config = config
        self.state = state
        self.shard = shard

    @pytest.hookimpl(trylast=True)  # after -k/-m, --evals-limit and the markers: the split is of what would run
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        kept, dropped, suite = split(items, self.shard, self.state.seed, lambda item: spec_of(item) is not None)
        if dropped:
            self.config.hook.pytest_deselected(items=dropped)
            items[:] = kept
        self.shard.suite = suite
        workeroutput = getattr(self.config, "workeroutput", None)  # an xdist worker's, sent as it ends
        if workeroutput is not None:
            workeroutput[WIRE_KEY] = suite

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        suite = getattr(node, "workeroutput", {}).get(WIRE_KEY)
        if suite and self.shard.suite is None:
            self.shard.suite = suite

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [f"evals: shard {self.shard.label} ({self.shard.source}): this run's part of the eval cases; "
                "pytest-evals merge joins the shards' databases into one run"]

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        suite = self.shard.suite
        if suite is None or self.state.is_worker:
            return
        total = sum(suite["tests"].values())
        terminalreporter.write_line(
            f"evals-shard: shard {self.shard.label} ran {suite['here']} of the suite's {total} eval tests "
            f"({len(suite['tests'])} benchmarks; the others are in the other {self.shard.count - 1} shards)")
