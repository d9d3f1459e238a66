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

from .._pytest_internals import broad_params, function_fixtures, put_fixture_value, setup_stack, take_fixture_value


class Parked:
    """A set-up case taken off pytest's setup stack (see the module's text)."""

    def __init__(self, item: pytest.Item) -> None:
        stack = setup_stack(item.session)
        self.item = item
        self.fixtures: list[tuple[Any, Any, list[Any]]] = []
        self.entry: Any = None
        if not stack or next(reversed(stack)) is not item:
            return  # its setup failed above it (a module fixture): nothing of its own is set up
        self.entry = stack.pop(item)
        for definition in function_fixtures(item):
            self.fixtures.append((definition, *take_fixture_value(definition)))

    def unpark(self) -> None:
        """Back on the stack, as the item set up last (its parent must be on top)."""
        if self.entry is None:
            return
        stack = setup_stack(self.item.session)
        chain = self.item.listchain()
        if list(stack) != chain[:-1]:
            raise RuntimeError(f"cannot unpark {self.item.nodeid}: another case is set up")
        stack[self.item] = self.entry
        for definition, cached, finalizers in self.fixtures:
            put_fixture_value(definition, cached, finalizers)


def parkable(item: pytest.Item, head: pytest.Item) -> bool:
    """Whether ``item`` can be set up beside ``head``: same parent, and the same value of every
    parametrized fixture broader than a function (its setup must not tear down ``head``'s)."""
    if item.parent is not head.parent:
        return False
    return broad_params(item) == broad_params(head)
