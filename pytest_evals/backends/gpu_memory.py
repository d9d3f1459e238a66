"""GPU memory in use, from the driver: for backends whose engine runs in another process (vLLM), where
torch's allocator in this process does not see it."""

from __future__ import annotations

from typing import Any

_NVML: dict[str, Any] = {}


def nvml_used_mib() -> float | None:
    """GPU memory in use on this worker's GPU (pynvml), for backends whose engine runs in another
    process; None where there is no GPU or no driver. pynvml is imported on first use only."""
    import os

    if "failed" in _NVML:
        return None
    try:
        import pynvml

        if "init" not in _NVML:
            pynvml.nvmlInit()
            _NVML["init"] = True
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        index = int(visible) if visible.isdigit() else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:  # no driver, no device, no library: the figure does not exist here
        _NVML["failed"] = True
        return None
