"""Several sibling cases set up at once: a case's function-level setup, parked while its body waits.

pytest sets up one item at a time: its ``SetupState`` stack holds the chain of one item, and a
function-scoped fixture keeps one cached value. A window of cases whose bodies wait on a shared batch
needs each case's fixtures alive until its body ends, while the next case is set up. Parking a case
takes its entry off the stack and its function-scoped fixtures' cached values and finalizers out of
their definitions, so the next sibling sets up its own; unparking puts them back, so the case's
teardown runs through pytest's own hooks as if it had never left. Module, class and session fixtures
are shared and stay where they are.
"""

from __future__ import annotations

from typing import Any

import pytest


class Parked:
    """A set-up case taken off pytest's setup stack (see the module's text)."""

    def __init__(self, item: pytest.Item) -> None:
        state = item.session._setupstate
        self.item = item
        self.fixtures: list[tuple[Any, Any, list[Any]]] = []
        self.entry: Any = None
        if not state.stack or next(reversed(state.stack)) is not item:
            return  # its setup failed above it (a module fixture): nothing of its own is set up
        self.entry = state.stack.pop(item)
        for definition in _function_scoped(item):
            self.fixtures.append((definition, definition.cached_result, list(definition._finalizers)))
            definition.cached_result = None
            definition._finalizers.clear()

    def unpark(self) -> None:
        """Back on the stack, as the item set up last (its parent must be on top)."""
        if self.entry is None:
            return
        state = self.item.session._setupstate
        chain = self.item.listchain()
        if list(state.stack) != chain[:-1]:
            raise RuntimeError(f"cannot unpark {self.item.nodeid}: another case is set up")
        state.stack[self.item] = self.entry
        for definition, cached, finalizers in self.fixtures:
            definition.cached_result = cached
            definition._finalizers[:] = finalizers


def _function_scoped(item: pytest.Item) -> list[Any]:
    """The function-scoped fixture definitions set up for ``item``: the ones it uses, and the ones they
    override (a fixture that takes the one it overrides)."""
    found: dict[int, Any] = {}
    request = getattr(item, "_request", None)
    info = getattr(item, "_fixtureinfo", None)
    candidates = list(getattr(request, "_fixture_defs", {}).values())
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        candidates.extend(definitions)
    for definition in candidates:
        if (getattr(definition, "scope", None) == "function" and getattr(definition, "cached_result", None) is not None
                and hasattr(definition, "_finalizers")):
            found[id(definition)] = definition
    return list(found.values())


def parkable(item: pytest.Item, head: pytest.Item) -> bool:
    """Whether ``item`` can be set up beside ``head``: same parent, and the same value of every
    parametrized fixture broader than a function (its setup must not tear down ``head``'s)."""
    if item.parent is not head.parent:
        return False
    return _broad_params(item) == _broad_params(head)


def _broad_params(item: pytest.Item) -> dict[str, Any]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return {}
    scopes = getattr(callspec, "_arg2scope", {})
    return {name: index for name, index in callspec.indices.items()
            if getattr(scopes.get(name), "value", "function") != "function"}
