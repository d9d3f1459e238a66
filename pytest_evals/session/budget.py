"""What the run's model calls cost so far, and ``--evals-budget``: the run stops once a call's worst case
would pass it (``calls.ceiling`` reserves each call before it is sent), or once it is spent (costs
known only after the call: GPU time).

The controller adds each case's cost as its record arrives (every worker's, under xdist); a replayed
case cost nothing now. A cost nobody knows is never shown as $0: the text says "at least", or "an
unknown amount".
"""

from __future__ import annotations

from ..calls.ceiling import REFUSED_STOP, Ledger


class Spending:
    """The run's spending against its budget (None: no budget)."""

    def __init__(self, budget: float | None, ledger: Ledger | None = None) -> None:
        self.budget = budget
        self.ledger = ledger  # the run's reservations (the controller's; None without a budget)
        self.spent = 0.0
        self.stopped_at: int | None = None  # tests done when the budget stopped the run

    def add(self, cost: float, done: int) -> str | None:
        """Add a case's cost (``done`` tests have ended before it); the stop message the first time the
        budget is reached, else None."""
        self.spent += cost
        if self.budget is None or self.spent < self.budget or self.stopped_at is not None:
            return None
        self.stopped_at = done + 1
        return (f"evals budget of ${self.budget:g} spent (${self.spent:.4f}); "
                "cases in flight finish, the rest are not run")

    def refusals(self, done: int) -> str | None:
        """The stop message the first time the ledger has refused a call (``done`` tests have ended)."""
        if self.ledger is None or not self.ledger.refused or self.stopped_at is not None:
            return None
        self.stopped_at = done
        return f"evals budget of ${self.budget:g}: {REFUSED_STOP}"

    def text(self, unknown_costs: int) -> str:
        """Never $0 for costs nobody knows: "at least", or "an unknown amount"."""
        if unknown_costs:
            return "an unknown amount" if not self.spent else f"at least ${self.spent:.4f}"
        return f"${self.spent:.4f}"
