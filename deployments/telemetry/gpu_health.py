"""What the GPUs visible to this process are doing, read through NVML (`pynvml`).

Whether NVML works is decided once per process: on a machine without an NVIDIA driver `nvmlInit`
fails, and every reading is then an empty list, with one debug line rather than an error per
report. Only the GPUs this process may use count: those `CUDA_VISIBLE_DEVICES` names (indexes or
UUIDs, as Ray and Kubernetes set it), or all of them when it is unset.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from pydantic import BaseModel

logger = logging.getLogger("capserve.gpu")
MB = 1024 * 1024


class GpuReading(BaseModel):
    index: int
    """NVML's index of the GPU on its machine (as `nvidia-smi` numbers them)."""
    uuid: str
    name: str
    memory_used_mb: float
    memory_total_mb: float
    utilization_pct: float
    """Share of the last sample period in which a kernel ran."""


def _text(value: str | bytes) -> str:
    # Older pynvml releases answer bytes.
    return value.decode() if isinstance(value, bytes) else value


def _handles(nvml: Any, visible: str | None) -> list[Any]:
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for entry in (part.strip() for part in visible.split(",")):
        if entry.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
        elif entry.startswith(("GPU-", "MIG-")):
            handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
        # CUDA stops at the first entry it cannot read ("" or "-1" hide every GPU), so do we.
        else:
            break
    return handles


def read_gpus(nvml: Any, visible: str | None) -> list[GpuReading]:
    """The GPUs `visible` (a CUDA_VISIBLE_DEVICES value, None when unset) names, through an
    initialised `nvml` module."""
    readings = []
    for handle in _handles(nvml, visible):
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        readings.append(
            GpuReading(
                index=nvml.nvmlDeviceGetIndex(handle),
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_used_mb=round(memory.used / MB, 1),
                memory_total_mb=round(memory.total / MB, 1),
                utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            )
        )
    return readings


@functools.cache
def _nvml() -> Any | None:
    """The initialised `pynvml` module, or None where NVML cannot start (no driver, no GPU)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - any failure means: no GPUs to report
        logger.debug("NVML unavailable, no GPU readings: %s", error)
        return None
    return pynvml


def visible_gpus() -> list[GpuReading]:
    """This process's GPUs now; empty without NVML or when a reading fails (a GPU lost)."""
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        return read_gpus(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
    except nvml.NVMLError as error:
        _warn_once(str(error))
        return []


@functools.cache
def _warn_once(problem: str) -> None:
    # Readings repeat every few seconds; one line per distinct problem is enough.
    logger.warning("reading the GPUs through NVML failed: %s", problem)
