"""``--evals-limit N``: a deterministic, seeded subset of N cases per benchmark.

A case is a test function's parameter set without its model and sample: with two models, or with
repeats, the same N cases run for each. The subset is the N cases whose digest of (seed, benchmark,
case) is smallest, so it does not depend on collection order or on the worker, and a case keeps its
place when others are added. ``--evals-seed`` picks another subset.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from .recorder import benchmark_of
from .repeats import SAMPLE_PARAM


def case_identity(item: pytest.Item) -> str:
    """The case an item runs, apart from its model and sample (a dataset row by its id)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return item.nodeid
    parts = []
    for name, value in sorted(callspec.params.items()):
        if name in ("model", SAMPLE_PARAM):
            continue
        shown = getattr(value, "__name__", None)
        parts.append(f"{name}={shown if isinstance(shown, str) else repr(value)[:500]}")
    return ";".join(parts)


def _rank(seed: int, benchmark: str, case: str) -> str:
    return hashlib.sha256(f"{seed}\0{benchmark}\0{case}".encode()).hexdigest()


def choose(items: list[pytest.Item], limit: int, seed: int, is_case: Any) -> tuple[
        list[pytest.Item], list[pytest.Item], dict[str, tuple[int, int]]]:
    """(kept, deselected, per benchmark (cases kept, cases in all)); items that are not eval cases stay."""
    identities = {id(item): (benchmark_of(item.nodeid), case_identity(item)) for item in items if is_case(item)}
    cases: dict[str, dict[str, None]] = {}
    for benchmark, case in identities.values():
        cases.setdefault(benchmark, {})[case] = None
    chosen: dict[str, set[str]] = {}
    totals: dict[str, tuple[int, int]] = {}
    for benchmark, found in cases.items():
        ranked = sorted(found, key=lambda case: _rank(seed, benchmark, case))
        chosen[benchmark] = set(ranked[:limit])
        totals[benchmark] = (min(limit, len(found)), len(found))
    kept, dropped = [], []
    for item in items:
        found = identities.get(id(item))
        if found is not None and found[1] not in chosen[found[0]]:
            dropped.append(item)
        else:
            kept.append(item)
    return kept, dropped, totals
