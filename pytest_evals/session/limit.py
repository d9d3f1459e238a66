"""``--evals-limit N``: a deterministic, seeded subset of N cases per benchmark.

A case is a test function's parameter set without its model and sample: with two models, or with
repeats, the same N cases run for each. The subset is the N cases whose digest of (seed, benchmark,
case) is smallest, so it does not depend on collection order or on the worker, and a case keeps its
place when others are added. ``--evals-seed`` picks another subset.

A test's ``@pytest.mark.evals_limit(N)`` is its benchmark's own default subset (a long suite that runs
a sample unless asked for all of it). Precedence: ``--evals-limit`` on the command line, then the
marker, then ini ``evals_limit``; ``--evals-limit all`` runs every case, markers included.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import pytest

from ..errors import ConfigError
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


def case_rank(seed: int, benchmark: str, case: str) -> str:
    """A case's place in its benchmark's seeded order (--evals-limit's subset, shards, --evals-stop-early)."""
    return hashlib.sha256(f"{seed}\0{benchmark}\0{case}".encode()).hexdigest()


MARKER = "evals_limit"
EVERY = 0  # --evals-limit all: no subset, markers included


def limit_value(text: str) -> int:
    """``--evals-limit`` / ini ``evals_limit``: a number of cases (at least 1), or ``all`` (:data:`EVERY`)."""
    if str(text).strip().lower() == "all":
        return EVERY
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 1:
        raise ValueError(f"--evals-limit {text}: must be a number of cases per benchmark (at least 1) or 'all'")
    return value


def limit_from_marker(mark: pytest.Mark, where: str) -> int:
    """``@pytest.mark.evals_limit(N)``: this benchmark's default subset of N cases."""
    values = list(mark.args) + ([mark.kwargs["n"]] if "n" in mark.kwargs else [])
    if len(values) != 1 or set(mark.kwargs) - {"n"} or isinstance(values[0], bool) or not isinstance(
            values[0], int) or values[0] < 1:
        raise ConfigError(f"{where}: @pytest.mark.{MARKER} takes a number of cases (at least 1), e.g. "
                          f"@pytest.mark.{MARKER}(20)")
    return values[0]


def choose(items: list[pytest.Item], limits: Callable[[str], int | None], seed: int, is_case: Any) -> tuple[
        list[pytest.Item], list[pytest.Item], dict[str, tuple[int, int]]]:
    """(kept, deselected, per limited benchmark (cases kept, cases in all)); ``limits(benchmark)`` is its
    number of cases, or None (or :data:`EVERY`) for all of them. Items that are not eval cases stay."""
    identities = {id(item): (benchmark_of(item.nodeid), case_identity(item)) for item in items if is_case(item)}
    cases: dict[str, dict[str, None]] = {}
    for benchmark, case in identities.values():
        cases.setdefault(benchmark, {})[case] = None
    chosen: dict[str, set[str]] = {}
    totals: dict[str, tuple[int, int]] = {}
    for benchmark, found in cases.items():
        limit = limits(benchmark)
        if not limit:
            continue
        ranked = sorted(found, key=lambda case: case_rank(seed, benchmark, case))
        chosen[benchmark] = set(ranked[:limit])
        totals[benchmark] = (min(limit, len(found)), len(found))
    kept, dropped = [], []
    for item in items:
        found = identities.get(id(item))
        if found is not None and found[0] in chosen and found[1] not in chosen[found[0]]:
            dropped.append(item)
        else:
            kept.append(item)
    return kept, dropped, totals
