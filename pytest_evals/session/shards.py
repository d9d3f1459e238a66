"""``--evals-shard K/N``: the K-th of N disjoint parts of the collected eval cases, one part per machine.

A case is what ``--evals-limit`` counts (``limit.case_identity``: the test's parameter set without its model
and sample), so a case's models and samples always run in the same shard. The split is made per benchmark,
after ``-k``/``-m`` and ``--evals-limit``, from each case's identity alone, so every shard computes the same
split without talking to the others and the collection order does not matter.

How a benchmark's cases are dealt (:func:`deal`): sizes come first, so the N shards hold within one case of
each other; within those sizes each case stays where its digest (``limit``'s seeded ranking) points,
``digest mod N``, and only a shard's surplus (its cases with the largest digests) goes, in digest order,
to the shards with room. Adding a case changes one shard's size and at most one shard's surplus, so few
other cases move: 1.1 on average and at most 3 for N=4, 2.0 and at most 6 for N=8, on 1,000-case
benchmarks (``benchmarks/shard_moves.py``); dealing the ranked cases round-robin (``rank mod N``) moves
every case ranked after the new one, 501 on average. Reordering cases moves none.

``--evals-shard auto`` reads K and N from the scheduler that started the job (:data:`SCHEDULERS`); a
Kubernetes Indexed Job gives only the index, so there it is ``auto/N``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pytest

from ..errors import ConfigError
from .limit import case_identity, case_rank
from .recorder import benchmark_of

# (scheduler, its index variable, the first index's value, its count variable; None: N from auto/N)
SCHEDULERS = (
    ("GitLab CI", "CI_NODE_INDEX", 1, "CI_NODE_TOTAL"),
    ("SLURM", "SLURM_ARRAY_TASK_ID", None, "SLURM_ARRAY_TASK_COUNT"),  # first: SLURM_ARRAY_TASK_MIN
    ("Kubernetes", "JOB_COMPLETION_INDEX", 0, None),
)
FORMS = "K/N (the K-th of N parts, from 1: 2/4), auto, or auto/N"


@dataclass
class Shard:
    """Which part this run is, and where that came from; ``suite`` is what the whole split was made of,
    filled in once the cases are collected (by the processes that collect)."""

    index: int  # K, from 1
    count: int  # N
    source: str  # where K and N came from, as the header says it
    suite: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def _number(text: str, what: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {what} {text.strip()!r} is not a whole number; expected {FORMS}") from None


def _checked(index: int, count: int, source: str, where: str) -> Shard:
    if count < 1:
        raise ConfigError(f"{where}: N is {count}; there must be at least 1 part")
    if not 1 <= index <= count:
        raise ConfigError(f"{where}: K is {index}, outside 1..{count}; shards count from 1 (1/{count} to "
                          f"{count}/{count})")
    return Shard(index, count, source)


def parse_shard(text: str, environ: Mapping[str, str], where: str = "--evals-shard") -> Shard:
    """``K/N``, ``auto`` (K and N from the scheduler) or ``auto/N`` (K from it); bad input names the fix."""
    shown = f"{where} {text.strip()}"
    head, slash, tail = text.strip().partition("/")
    if head.strip().lower() == "auto":
        count = _number(tail, "N", shown) if slash else None
        return _from_scheduler(environ, count, shown)
    if not slash:
        raise ConfigError(f"{shown}: expected {FORMS}")
    index, count = _number(head, "K", shown), _number(tail, "N", shown)
    return _checked(index, count, f"{where} {index}/{count}", shown)


def _from_scheduler(environ: Mapping[str, str], count: int | None, where: str) -> Shard:
    for name, index_var, first, count_var in SCHEDULERS:
        if not environ.get(index_var, "").strip():
            continue
        if count_var is None and count is None:
            raise ConfigError(f"{where}: {name}'s {index_var} gives K but not N; pass --evals-shard auto/N "
                              "(N: the Job's completions)")
        found = [f"{index_var}={environ[index_var].strip()}"]
        index = _number(environ[index_var], index_var, where)
        if first is None:  # a SLURM array's ids run from its first id, in steps: --array=1-8 or 0-14:2
            low = environ.get("SLURM_ARRAY_TASK_MIN", "0") or "0"
            step = environ.get("SLURM_ARRAY_TASK_STEP", "1") or "1"
            offset = index - _number(low, "SLURM_ARRAY_TASK_MIN", where)
            steps = _number(step, "SLURM_ARRAY_TASK_STEP", where)
            if steps < 1 or offset % steps:
                raise ConfigError(f"{where}: SLURM_ARRAY_TASK_ID={index} is not on the array's steps "
                                  f"(SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_STEP={step}); pass --evals-shard K/N")
            index = offset // steps + 1
            found.append(f"SLURM_ARRAY_TASK_MIN={low}")
        else:
            index = index - first + 1
        if count_var is not None and environ.get(count_var, "").strip():
            total = _number(environ[count_var], count_var, where)
            if count is not None and total != count:
                raise ConfigError(f"{where}: {count_var}={total} but N is {count}; pass --evals-shard auto to take "
                                  f"N from {name}")
            count = total
            found.append(f"{count_var}={total}")
        elif count is None:
            raise ConfigError(f"{where}: {name}'s {index_var} is set but {count_var} is not; pass --evals-shard "
                              "auto/N")
        return _checked(index, count, f"{name}: {', '.join(found)}", where)
    wanted = "; ".join(f"{name}: {index_var}" + (f"/{count_var}" if count_var else " with auto/N")
                       for name, index_var, _, count_var in SCHEDULERS)
    raise ConfigError(f"{where}: no scheduler variables found ({wanted}); pass --evals-shard K/N")


def deal(cases: list[str], count: int, seed: int, benchmark: str) -> dict[str, int]:
    """Each case's shard (0 to count - 1): sizes within one of each other; a case where its digest points
    unless its shard is full (module docstring)."""
    digests = {case: int(case_rank(seed, benchmark, case), 16) for case in cases}
    size, extra = divmod(len(cases), count)
    # which shards take one case more turns with the benchmark, so that a run of many small benchmarks
    # does not load one shard with every benchmark's extra case
    first = int(hashlib.sha256(f"{seed}\0{benchmark}".encode()).hexdigest(), 16) % count
    room = [size + ((k - first) % count < extra) for k in range(count)]
    preferred: list[list[str]] = [[] for _ in range(count)]
    for case in sorted(cases, key=digests.__getitem__):
        preferred[digests[case] % count].append(case)
    shard_of: dict[str, int] = {}
    surplus: list[str] = []
    for k, found in enumerate(preferred):
        shard_of.update((case, k) for case in found[:room[k]])
        surplus += found[room[k]:]
    slots = [k for k, found in enumerate(preferred) for _ in range(room[k] - min(room[k], len(found)))]
    surplus.sort(key=digests.__getitem__)
    shard_of.update(zip(surplus, slots))
    return shard_of


def split(items: list[pytest.Item], shard: Shard, seed: int, is_case: Callable[[pytest.Item], bool]) -> tuple[
        list[pytest.Item], list[pytest.Item], dict[str, Any]]:
    """(kept, deselected, the suite): this shard's eval cases and every item that is not one; the suite is
    a digest of every shard's eval tests and their number per benchmark (stored as ``runs.suite``)."""
    identities = {id(item): (benchmark_of(item.nodeid), case_identity(item)) for item in items if is_case(item)}
    cases: dict[str, dict[str, None]] = {}
    for benchmark, case in identities.values():
        cases.setdefault(benchmark, {})[case] = None
    shard_of = {benchmark: deal(list(found), shard.count, seed, benchmark) for benchmark, found in cases.items()}
    kept, dropped = [], []
    for item in items:
        found = identities.get(id(item))
        (dropped if found is not None and shard_of[found[0]][found[1]] != shard.index - 1 else kept).append(item)
    nodeids = sorted(item.nodeid for item in items if id(item) in identities)
    tests: dict[str, int] = {}
    for benchmark, _ in identities.values():
        tests[benchmark] = tests.get(benchmark, 0) + 1
    suite = {"digest": hashlib.sha256("\n".join(nodeids).encode()).hexdigest()[:16], "tests": tests,
             "here": len(identities) - len(dropped)}
    return kept, dropped, suite
