"""GPU discovery on the xdist controller and pinning of each worker to its own GPUs.

With ``--evals-gpus-per-worker N`` the controller counts the GPUs with pynvml (only those an outer
``CUDA_VISIBLE_DEVICES`` leaves visible), cuts them into groups of N, and hands each worker one group
through ``workerinput``; the worker sets ``CUDA_VISIBLE_DEVICES`` in its ``pytest_configure``, before
anything initialises CUDA. ``-n auto`` starts one worker per group. Without GPUs, or without the NVML
library, nothing is pinned and the header says why.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

WORKER_KEY = "evals_gpus"  # workerinput key


@functools.lru_cache(maxsize=1)  # asked for -n auto and again at configure: the driver is asked once
def count_gpus() -> tuple[int, str | None]:
    """(number of GPUs the driver sees, or 0 with the reason). pynvml is imported here only."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecated pynvml shim warns
            import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount()), None
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        return 0, "pynvml is not installed (pip install nvidia-ml-py)"
    except Exception as exc:  # NVMLError: no driver, no library
        return 0, f"NVML: {exc}"


def visible_gpus(count: int, outer: str | None) -> list[str]:
    """The GPU ids this run may use: all ``count``, or those an outer CUDA_VISIBLE_DEVICES names."""
    if outer is None:
        return [str(i) for i in range(count)]
    listed = [part.strip() for part in outer.split(",") if part.strip()]
    visible = []
    for part in listed:
        if part.lstrip("-").isdigit() and not 0 <= int(part) < count:
            break  # CUDA stops at the first invalid ordinal
        visible.append(part)
    return visible


@dataclass(frozen=True)
class GpuPlan:
    groups: tuple[tuple[str, ...], ...]
    note: str  # the header line

    def for_worker(self, index: int) -> str | None:
        """The CUDA_VISIBLE_DEVICES value of worker ``index`` (groups are shared round-robin when
        there are more workers than groups)."""
        if not self.groups:
            return None
        return ",".join(self.groups[index % len(self.groups)])


def plan(per_worker: int, workers: int | None, count: int | None = None, problem: str | None = None,
         outer: str | None = None) -> GpuPlan:
    """Cut the visible GPUs into groups of ``per_worker`` for ``workers`` xdist workers (None: no xdist)."""
    if count is None:
        count, problem = count_gpus()
        outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible_gpus(count, outer)
    if not ids:
        why = problem or ("CUDA_VISIBLE_DEVICES hides them" if count else "no GPU found")
        return GpuPlan((), f"evals-gpus: workers are not pinned to GPUs ({why})")
    groups = tuple(tuple(ids[i:i + per_worker]) for i in range(0, len(ids) - per_worker + 1, per_worker))
    if not groups:
        return GpuPlan((), f"evals-gpus: workers are not pinned: {len(ids)} GPU(s) visible, fewer than "
                           f"--evals-gpus-per-worker {per_worker}")
    shown = " ".join("[" + ",".join(g) + "]" for g in groups)
    note = f"evals-gpus: {len(ids)} GPU(s) visible, {len(groups)} group(s) of {per_worker}: {shown}"
    if workers is None:
        note += "; this process uses the first"
    elif workers > len(groups):
        note += f"; {workers} workers share them round-robin"
    else:
        note += f"; one per worker ({workers} workers)"
    unused = len(ids) - len(groups) * per_worker
    if unused:
        note += f"; {unused} left unused"
    return GpuPlan(groups, note)


def worker_index(workerid: str) -> int:
    match = re.search(r"(\d+)$", workerid)
    return int(match.group(1)) if match else 0


def pin(value: str) -> None:
    """Make only ``value``'s GPUs visible to this process, numbered as the driver (and NVML) does."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = value
