"""The xdist hooks of the controller (registered only where xdist is loaded; defining them without it is
a ``PluginValidationError``): every worker gets the finished cases of a resumed run and its GPUs
through ``workerinput``, and the controller learns how many tests the workers collected."""

from __future__ import annotations

import pytest

from .._pytest_internals import queue_one_test_per_worker
from .controller import Controller
from .gpus import WORKER_KEY, worker_index
from .options import RESUME_WIRE_KEY
from .state import RunState


class XdistControllerPlugin:
    def __init__(self, config: pytest.Config, state: RunState, controller: Controller) -> None:
        self.config = config
        self.state = state
        self.controller = controller
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
