"""What a case needs and which backend serves it: capabilities, ``evals_task``, ``--evals-route``, judge.

Every backend class lists the tasks it serves in ``capabilities`` (``generate``, ``chat``,
``loglikelihood``, ``tools``, and ``streaming`` where time to first token comes from a stream). A case
marked ``@pytest.mark.evals_task("loglikelihood")`` whose model cannot serve that task goes to the spec
``--evals-route loglikelihood=SPEC`` names; with no route it is skipped with the reason and the fix.
Nothing here loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..backends.registry import BackendRegistry
from ..backends.specs import ModelSpec, SpecError, parse_spec
from ..errors import ConfigError

TASK_MARKER = "evals_task"
JUDGE_MARKER = "evals_judge"
TASKS = ("generate", "chat", "loglikelihood", "tools")
KIND_TASK = {"generate": "generate", "chat": "chat", "loglikelihood": "loglikelihood", "choose": "loglikelihood"}


class RoutingError(ConfigError):
    """A bad route, task or judge spec; the message names the fix."""


def capabilities_of(spec: ModelSpec, registry: BackendRegistry) -> frozenset[str]:
    """What a spec's backend class declares (before loading; a loaded backend may serve less)."""
    return registry.resolve(spec.backend).capabilities


def route_examples(registry: BackendRegistry, task: str) -> str | None:
    """Specs to suggest as a route for ``task``: the backends that declare themselves suited to it."""
    examples = []
    for prefix in registry.prefixes:
        try:
            suited = task in registry.resolve(prefix).suggested_for
        except SpecError:  # a plugin's broken path is reported where its specs are used
            continue
        if suited:
            examples.append(f"{prefix}:ORG/NAME")
    return " or ".join(examples) or None


def cannot_serve(label: str, task: str, capabilities: frozenset[str], example: str | None = None,
                 marked: bool = False) -> str:
    """The one line a case gets when its model cannot serve ``task``."""
    serves = ", ".join(sorted(capabilities & {*TASKS})) or "nothing"
    line = (f"{label} cannot serve {task} (it serves {serves}); send such cases elsewhere with "
            f"--evals-route {task}=SPEC" + (f" (e.g. {example})" if example else ""))
    return line if marked else line + f" and mark them @pytest.mark.{TASK_MARKER}({task!r})"


def parse_task(args: Sequence[object], kwargs: dict[str, object], where: str) -> str:
    values = list(args) + ([kwargs["task"]] if "task" in kwargs else [])
    if len(values) != 1 or set(kwargs) - {"task"} or values[0] not in TASKS:
        raise RoutingError(f"{where}: @pytest.mark.{TASK_MARKER} takes one of {', '.join(map(repr, TASKS))}, "
                           f"got {', '.join(map(repr, values)) or 'nothing'}")
    return str(values[0])


def parse_judge(args: Sequence[object], where: str, registry: BackendRegistry) -> ModelSpec:
    if len(args) != 1 or not isinstance(args[0], str):
        raise RoutingError(f"{where}: @pytest.mark.{JUDGE_MARKER} takes one spec string, e.g. "
                           f"@pytest.mark.{JUDGE_MARKER}('openai:gpt-4o-mini')")
    try:
        return parse_spec(args[0], registry)
    except SpecError as exc:
        raise RoutingError(f"{where}: @pytest.mark.{JUDGE_MARKER}: {exc}") from None


@dataclass(frozen=True)
class Routes:
    """``--evals-route TASK=SPEC`` lines: the spec that serves each task a case's model cannot."""

    table: dict[str, ModelSpec]
    registry: BackendRegistry = field(compare=False, repr=False, default_factory=BackendRegistry)

    @classmethod
    def parse(cls, lines: Sequence[str], registry: BackendRegistry, source: str = "--evals-route") -> "Routes":
        table: dict[str, ModelSpec] = {}
        for line in lines:
            task, sep, text = line.strip().partition("=")
            task = task.strip()
            if not sep or task not in TASKS or not text.strip():
                raise RoutingError(f"{source} {line!r}: expected TASK=SPEC with TASK one of {', '.join(TASKS)}, "
                                   "e.g. loglikelihood=hf:/models/smol")
            try:
                spec = parse_spec(text.strip(), registry)
            except SpecError as exc:
                raise RoutingError(f"{source} {line!r}: {exc}") from None
            if task not in capabilities_of(spec, registry):
                raise RoutingError(f"{source} {line!r}: {spec.label} cannot serve {task} either "
                                   f"(it serves {', '.join(sorted(capabilities_of(spec, registry)))})")
            if task in table and table[task] != spec:
                raise RoutingError(f"{source}: two routes for {task} ({table[task].raw}, {spec.raw}); keep one")
            table[task] = spec
        return cls(table, registry)

    def route(self, spec: ModelSpec, task: str | None,
              serves: Callable[[ModelSpec], frozenset[str]]) -> tuple[ModelSpec | None, str | None]:
        """(the spec that serves a case of ``spec`` needing ``task``, or None with the reason)."""
        if task is None:
            return spec, None
        capabilities = serves(spec)
        if task in capabilities:
            return spec, None
        if task in self.table:
            return self.table[task], None
        return None, cannot_serve(spec.label, task, capabilities, route_examples(self.registry, task), marked=True)
