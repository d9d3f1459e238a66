"""The xdist hooks of the controller (registered only where xdist is loaded; defining them without it is
a ``PluginValidationError``): every worker gets the finished cases of a resumed run and its GPUs
through ``workerinput`` (and, under a budget, a channel to the controller's ledger), and the controller
learns how many tests the workers collected."""

from __future__ import annotations

import pytest

from .._pytest_internals import new_worker_channel, paths_remote_workers_miss, queue_one_test_per_worker
from ..calls.ceiling import serve
from ..errors import ConfigError
from .controller import Controller
from .gpus import WORKER_KEY, worker_index
from .options import CEILING_WIRE_KEY, RESUME_WIRE_KEY, usage_error
from .state import RunState


class XdistControllerPlugin:
    def __init__(self, config: pytest.Config, state: RunState, controller: Controller) -> None:
        self.config = config
        self.state = state
        self.controller = controller
        missed = paths_remote_workers_miss(config)
        if missed:  # xdist would stop at it with a traceback, once the workers start
            raise usage_error(ConfigError(
                f"{missed[0]}: xdist hands --tx workers in folders of their own (ssh=, //chdir=) no path outside an "
                "--rsyncdir; with the suite already on each host, give no path: name the tests in the ini's "
                "testpaths and pick with -k or -m"))
        if state.budget is not None:
            # Few tests queued per worker, so a spent budget stops the run within the cases in flight.
            queue_one_test_per_worker(config)

    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        self.controller.node_collected(ids)

    def pytest_configure_node(self, node: object) -> None:
        workerinput = node.workerinput  # type: ignore[attr-defined]
        if self.state.resume_state is not None:
            workerinput[RESUME_WIRE_KEY] = self.state.resume_state.to_wire()
        gpu_plan = self.state.gpu_plan
        if gpu_plan is not None and gpu_plan.groups:
            workerinput[WORKER_KEY] = gpu_plan.for_worker(worker_index(workerinput["workerid"]))
        if self.state.ceiling is not None and self.state.ceiling.ledger is not None:
            # the worker's reservations go to the run's ledger, here, over a channel of their own (sent to the
            # worker inside its workerinput; execnet carries channels, over ssh too)
            channel = new_worker_channel(node)
            serve(self.state.ceiling.ledger, channel)
            workerinput[CEILING_WIRE_KEY] = channel
